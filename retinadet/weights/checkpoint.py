"""retinadet's own checkpoint format: everything needed to rebuild a model, in one file.

A checkpoint is a dict::

    {"format": "retinadet", "format_version": 1,
     "model": state_dict, "model_config": ModelConfig.to_dict(),
     "class_names": [...], "category_ids": [...] | None,
     "epoch": int | None, "metrics": {...},
     "versions": {"retinadet": ..., "torch": ..., "torchvision": ...},
     # optional: "optimizer", "scheduler", "scaler", "ema", "rng", "source", ...}

It is written with :func:`save_checkpoint` (atomically) and read with
:func:`load_checkpoint`, which only ever uses ``torch.load(weights_only=True)``: optional
training state must therefore hold only tensors, numbers, strings, lists and dicts
(e.g. ``torch.get_rng_state()``, not numpy's RNG tuple).
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from typing import Any, Optional, Sequence

import torch
from torch import nn

from retinadet.errors import CheckpointError, ConfigError

FORMAT = "retinadet"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("model", "model_config", "class_names")
# What torch.load raises on a damaged or foreign file (besides UnpicklingError).
READ_ERRORS = (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, IndexError, KeyError, TypeError)
IMPORT_HINT = "convert it with `retinadet weights import {path} --from auto -o OUT.pt` (see `retinadet weights info {path}`)"


def versions() -> dict[str, str]:
    import torchvision

    try:
        from importlib.metadata import PackageNotFoundError, version

        ours = version("retinadet")
    except PackageNotFoundError:
        ours = "unknown"
    return {"retinadet": str(ours), "torch": str(torch.__version__), "torchvision": str(torchvision.__version__)}


def make_checkpoint(
    model: nn.Module,
    class_names: Sequence[str],
    category_ids: Optional[Sequence[int]] = None,
    epoch: Optional[int] = None,
    metrics: Optional[dict[str, Any]] = None,
    **extra: Any,
) -> dict[str, Any]:
    """A checkpoint dict for a :class:`RetinaNet` (``extra``: optimizer, scheduler, ema, rng, ...)."""
    class_names = [str(c) for c in class_names]
    if len(class_names) != model.cfg.num_classes:
        raise ConfigError(f"{len(class_names)} class names for a model with num_classes={model.cfg.num_classes}")
    if category_ids is not None and len(category_ids) != len(class_names):
        raise ConfigError(f"{len(category_ids)} category_ids for {len(class_names)} class names")
    ckpt = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        # contiguous: a channels_last model's tensors would otherwise keep NHWC strides, which
        # safetensors refuses.
        "model": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "model_config": model.cfg.to_dict(),
        "class_names": class_names,
        "category_ids": [int(c) for c in category_ids] if category_ids is not None else None,
        "epoch": epoch,
        "metrics": dict(metrics or {}),
        "versions": versions(),
    }
    ckpt.update(extra)
    return ckpt


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> str:
    """Writes ``payload`` atomically: a temp file in the same folder, fsync, then rename.

    Missing ``format``/``format_version``/``versions`` fields are filled in.
    """
    path = os.fspath(path)
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: checkpoint payload lacks {', '.join(missing)}")
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "versions": versions(),
               "category_ids": None, "epoch": None, "metrics": {}, **payload}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)
    return path


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open a directory; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # fsync on a directory is unsupported on some file systems; nothing to recover
    finally:
        os.close(fd)


def torch_load_weights(path: str, map_location="cpu") -> Any:
    """``torch.load(weights_only=True)`` with one clear :class:`CheckpointError` per failure."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: not a file")
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


def _unreadable_message(path: str, exc: BaseException) -> str:
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head.startswith(b"PK"):
        return f"{path}: truncated or corrupt weights file (a damaged zip archive: {str(exc).splitlines()[0][:200]})"
    return f"{path}: not a PyTorch weights file ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"


def _unpickling_message(path: str, exc: BaseException) -> str:
    from retinadet.weights.unpickler import is_standin_name, pickle_globals, read_torch_zip_pickle

    with open(path, "rb") as fh:
        head = fh.read(2)
    if not (head.startswith(b"PK") or head[:1] == b"\x80"):
        return f"{path}: not a PyTorch weights file (its first bytes {head!r} are neither a zip archive nor a pickle)"
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


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict[str, Any]:
    """Reads a retinadet checkpoint (``torch.load(weights_only=True)`` only)."""
    path = os.fspath(path)
    obj = torch_load_weights(path, map_location)
    if not is_checkpoint(obj):
        from retinadet.weights.identify import classify_object

        kind = classify_object(obj).description
        raise CheckpointError(f"{path}: {kind}, not a retinadet checkpoint; " + IMPORT_HINT.format(path=path))
    validate_checkpoint(obj, path)
    return obj


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


def model_config_of(ckpt: dict[str, Any], where: str = "checkpoint"):
    from retinadet.model.config import ModelConfig

    try:
        cfg = ModelConfig.from_dict(ckpt["model_config"]).validate()
    except ConfigError as exc:
        raise CheckpointError(f"{where}: invalid model_config: {exc}") from exc
    # The state_dict holds every weight; never fetch ImageNet weights again when rebuilding.
    cfg.backbone.weights = None
    return cfg


def build_from_checkpoint(ckpt: dict[str, Any], where: str = "checkpoint"):
    """``(RetinaNet in eval mode, class_names)`` from a checkpoint dict."""
    from retinadet.model.retinanet import RetinaNet

    validate_checkpoint(ckpt, where)
    cfg = model_config_of(ckpt, where)
    names = [str(c) for c in ckpt["class_names"]]
    if len(names) != cfg.num_classes:
        raise CheckpointError(f"{where}: {len(names)} class_names for model_config.num_classes={cfg.num_classes}")
    model = RetinaNet(cfg)
    load_state_strict(model, ckpt["model"], where)
    model.eval()
    return model, names


def state_dict_problems(state: dict, target: dict, skip: tuple = ()) -> list[str]:
    """Missing, unexpected and mis-shaped keys of ``state`` against ``target``, by name."""
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
              for k in target if k in state and k not in skip and tuple(state[k].shape) != tuple(target[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s): {', '.join(missing[:10])}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): {', '.join(unexpected[:10])}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {'; '.join(shapes[:5])}")
    return problems


def load_state_strict(model: nn.Module, state: dict, where: str) -> None:
    """``load_state_dict(strict=True)`` with missing/unexpected/mis-shaped keys named."""
    from retinadet.weights.keymaps import drop_unused_buffers

    target = model.state_dict()
    state = drop_unused_buffers(state, target.keys())
    problems = state_dict_problems(state, target)
    if problems:
        raise CheckpointError(f"{where}: weights do not fit the model: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
