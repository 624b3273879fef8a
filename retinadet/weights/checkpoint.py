"""Writing retinadet checkpoints (the format is in :mod:`retinadet.weights.format`): a dict made
from a model, saved atomically so that a reader never sees half a file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import IO, Any

import torch
import torchvision
from torch import nn

from retinadet.errors import CheckpointError, ConfigError
from retinadet.weights.format import FORMAT, FORMAT_VERSION, REQUIRED_KEYS


def versions() -> dict[str, str]:
    try:
        ours = version("retinadet")
    except PackageNotFoundError:
        ours = "unknown"
    return {"retinadet": str(ours), "torch": str(torch.__version__), "torchvision": str(torchvision.__version__)}


def make_checkpoint(
    model: nn.Module,
    class_names: Sequence[str],
    category_ids: Sequence[int] | None = None,
    epoch: int | None = None,
    metrics: dict[str, Any] | None = None,
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
    return atomic_write(path, lambda fh: torch.save(payload, fh))


def atomic_write(path: str, write: Callable[[IO[bytes]], Any]) -> str:
    """Calls ``write`` on a temp file in ``path``'s folder, fsyncs it, then renames it to ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
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
