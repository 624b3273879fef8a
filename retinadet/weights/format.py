"""retinadet's checkpoint format, the kinds of weights files retinadet identifies, and the
checks and messages that every reader shares. The bottom of ``retinadet.weights``: it imports
nothing else of the package but its errors.

A checkpoint is a dict::

    {"format": "retinadet", "format_version": 1,
     "model": state_dict, "model_config": ModelConfig.to_dict(),
     "class_names": [...], "category_ids": [...] | None,
     "epoch": int | None, "metrics": {...},
     "versions": {"retinadet": ..., "torch": ..., "torchvision": ...},
     # optional: "optimizer", "scheduler", "scaler", "ema", "rng", "source", ...}

It is read only with ``torch.load(weights_only=True)``: optional training state must therefore
hold only tensors, numbers, strings, lists and dicts (e.g. ``torch.get_rng_state()``, not
numpy's RNG tuple).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from retinadet.errors import CheckpointError

FORMAT = "retinadet"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("model", "model_config", "class_names")
IMPORT_HINT = "convert it with `retinadet weights import {path} --from auto -o OUT.pt` (see `retinadet weights info {path}`)"

# Kinds of weights files (``WeightsInfo.kind``).
RETINADET = "retinadet"
TORCHVISION = "torchvision"
SEED_STATE_DICT = "seed_state_dict"
SEED_MODULE = "seed_module"
SEED_DATAPARALLEL = "seed_dataparallel"
BACKBONE = "backbone"
UNKNOWN = "unknown"
SEED_KINDS = (SEED_STATE_DICT, SEED_MODULE, SEED_DATAPARALLEL)

DESCRIPTIONS = {
    RETINADET: "a retinadet checkpoint",
    TORCHVISION: "a torchvision RetinaNet state_dict",
    SEED_STATE_DICT: "a seed-pipeline state_dict",
    SEED_MODULE: "a seed-pipeline pickled model (torch.save(model))",
    SEED_DATAPARALLEL: "a seed-pipeline pickled DataParallel model (torch.save(DataParallel(model)))",
    BACKBONE: "an ImageNet classification (backbone) state_dict",
    UNKNOWN: "an unrecognised weights file",
}


def is_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def validate_checkpoint(ckpt: dict[str, Any], where: str = "checkpoint") -> None:
    version = ckpt.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: format_version {version!r} is not supported by this retinadet (reads <= {FORMAT_VERSION}); upgrade retinadet"
        )
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{where}: checkpoint lacks field(s) {', '.join(missing)}")
    if not isinstance(ckpt["model"], dict):
        raise CheckpointError(f"{where}: field 'model' must be a state_dict, got {type(ckpt['model']).__name__}")
    if not isinstance(ckpt["class_names"], (list, tuple)):
        raise CheckpointError(f"{where}: field 'class_names' must be a list, got {type(ckpt['class_names']).__name__}")


def parse_class_names(classes: Sequence[str] | str | None) -> list[str] | None:
    """``"a,b,c"``, a list, or a path to a text file with one name per line."""
    if classes is None:
        return None
    if isinstance(classes, str):
        if os.path.isfile(classes):
            with open(classes, encoding="utf-8") as fh:
                names = [line.strip() for line in fh if line.strip()]
        else:
            names = [c.strip() for c in classes.split(",")]
    else:
        names = [str(c).strip() for c in classes]
    if not names or any(not n for n in names):
        raise CheckpointError(f"class names must be non-empty, got {classes!r}")
    return names


def require_file(path: str) -> None:
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: not a file")
