"""Export to, and read from, safetensors: weights plus JSON metadata, no pickle at all.

Metadata keys (all JSON strings): ``format`` ("retinadet"), ``format_version``,
``model_config``, ``class_names``, ``category_ids``, ``epoch``, ``metrics``, ``versions``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from retinadet.errors import CheckpointError

_META_JSON = ("model_config", "class_names", "category_ids", "epoch", "metrics", "versions", "source")


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def export_safetensors(ckpt: dict[str, Any], out: str | os.PathLike) -> str:
    """Writes a checkpoint's weights and metadata (training state is left out)."""
    from safetensors.torch import save_file

    from retinadet.weights.checkpoint import FORMAT, FORMAT_VERSION, validate_checkpoint

    out = os.fspath(out)
    validate_checkpoint(ckpt, out)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in ckpt["model"].items()}
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION)}
    for key in _META_JSON:
        if key in ckpt:
            try:
                meta[key] = json.dumps(ckpt[key], default=_jsonable)
            except TypeError as exc:
                raise CheckpointError(f"{out}: checkpoint field '{key}' cannot be stored as JSON: {exc}") from exc
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(out)}.tmp")
    save_file(tensors, tmp, metadata=meta)
    os.replace(tmp, out)
    return out


def read_safetensors(path: str, info=None):
    """A :class:`WeightsInfo` for a safetensors file (ours, or a plain state_dict)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from retinadet.weights.identify import UNKNOWN, WeightsInfo, classify_object, classify_state

    info = info or WeightsInfo(kind=UNKNOWN, path=path)
    info.container = "safetensors"
    try:
        state = load_file(path, device="cpu")
        meta = _metadata(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({exc})") from exc
    if meta.get("format") != "retinadet":
        return classify_state(state, info)
    ckpt = {"format": "retinadet"}
    try:
        ckpt["format_version"] = int(meta.get("format_version", "1"))
        for key in _META_JSON:
            if key in meta:
                ckpt[key] = json.loads(meta[key])
    except (ValueError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: invalid retinadet metadata in safetensors header ({exc})") from exc
    ckpt["model"] = state
    return classify_object(ckpt, info)


def _metadata(path: str) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as fh:
        return dict(fh.metadata() or {})


def load_safetensors_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Our checkpoint dict from a safetensors file written by :func:`export_safetensors`."""
    from retinadet.weights.checkpoint import validate_checkpoint

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    info = read_safetensors(path)
    if info.checkpoint is None:
        raise CheckpointError(
            f"{path}: {info.description} without retinadet metadata; "
            f"convert it with `retinadet weights import {path} --from auto -o OUT.pt`"
        )
    validate_checkpoint(info.checkpoint, path)
    return info.checkpoint

