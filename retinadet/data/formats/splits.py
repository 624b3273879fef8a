"""Split names as datasets spell them (``valid``, ``Training``) and the order splits are listed in; a module of its own
so that every format reader can use them without importing the discovery that imports the readers."""

from __future__ import annotations

SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "test": "test",
                 "testing": "test", "trainval": "trainval"}
SPLIT_ORDER = ("train", "val", "test", "trainval")


def normalize_split(name: str) -> str:
    return SPLIT_ALIASES.get(name.lower(), name)
