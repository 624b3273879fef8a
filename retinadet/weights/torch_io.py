"""Reading ``torch.save`` files without running their code.

Plain weights go through ``torch.load(weights_only=True)`` only; a whole pickled model
(which that refuses) is read by :mod:`retinadet.weights.unpickler`, never by a full
``torch.load``. Every failure becomes one :class:`CheckpointError` saying what the file is.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from typing import Any

import torch

from retinadet.errors import CheckpointError
from retinadet.weights.format import IMPORT_HINT, require_file
from retinadet.weights.unpickler import is_standin_name, pickle_globals, read_torch_zip_pickle, restricted_load

# What torch.load raises on a damaged or foreign file (besides UnpicklingError).
READ_ERRORS = (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, IndexError, KeyError, TypeError)


def torch_load_weights(path: str, map_location="cpu") -> Any:
    """``torch.load(weights_only=True)`` with one clear :class:`CheckpointError` per failure."""
    path = os.fspath(path)
    require_file(path)
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not (head.startswith(b"PK") or head[:1] == b"\x80"):
        raise CheckpointError(
            f"{path}: not a PyTorch weights file (its first bytes {head!r} are neither a zip archive nor a pickle)"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(_unpickling_message(path, exc)) from exc
    except READ_ERRORS as exc:
        raise CheckpointError(_unreadable_message(path, exc)) from exc


def read_torch_object(path: str) -> Any:
    """``torch.load(weights_only=True)``; a pickled module falls back to the restricted unpickler."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Not plain weights (e.g. a whole pickled module): read it without running anything;
        # a global that is neither a tensor nor a known model class is refused by name.
        return restricted_load(path)
    except READ_ERRORS as exc:
        raise CheckpointError(_unreadable_message(path, exc)) from exc


def _unreadable_message(path: str, exc: BaseException) -> str:
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head.startswith(b"PK"):
        return f"{path}: truncated or corrupt weights file (a damaged zip archive: {str(exc).splitlines()[0][:200]})"
    return f"{path}: not a PyTorch weights file ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"


def _unpickling_message(path: str, exc: BaseException) -> str:
    # Scanning the pickle's opcodes names its globals without executing any of them.
    try:
        names = pickle_globals(read_torch_zip_pickle(path)) if zipfile.is_zipfile(path) else []
    except CheckpointError:
        names = []
    foreign = [n for n in names if not n.startswith(("torch._utils.", "collections.", "torch.", "builtins."))
               or n.startswith("torch.nn.")]
    if foreign and all(is_standin_name(n) or n.startswith(("numpy.", "_codecs.")) for n in foreign):
        return (f"{path}: a whole pickled model (classes {', '.join(foreign[:3])}, ...), not a retinadet checkpoint; "
                + IMPORT_HINT.format(path=path))
    if foreign:
        return (f"{path}: refused: the file pickles Python objects that are not plain weights "
                f"({', '.join(foreign[:5])}); it is not a retinadet checkpoint and was not executed")
    return f"{path}: not a retinadet checkpoint (it cannot be read as plain weights: {str(exc).splitlines()[0][:200]})"
