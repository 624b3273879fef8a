"""Export to, and read from, safetensors: weights plus JSON metadata, no pickle at all.

Metadata keys (all JSON strings): ``format`` ("retinadet"), ``format_version``,
``model_config``, ``class_names``, ``category_ids``, ``epoch``, ``metrics``, ``versions``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from retinadet.errors import CheckpointError
from retinadet.weights.checkpoint import atomic_write
from retinadet.weights.format import FORMAT, FORMAT_VERSION, validate_checkpoint

_META_JSON = ("model_config", "class_names", "category_ids", "epoch", "metrics", "versions", "source")


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def export_safetensors(ckpt: dict[str, Any], out: str | os.PathLike) -> str:
    """Writes a checkpoint's weights and metadata (training state is left out)."""
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
    return atomic_write(out, lambda fh: fh.write(safetensors_bytes(tensors, metadata=meta)))


def is_safetensors(path: str) -> bool:
    """Whether the file starts like safetensors: an 8-byte header length, then a JSON object."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 1 < n < 100_000_000 and head[8:9] == b"{"


def read_safetensors(path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """``(state_dict, our checkpoint dict or None)``: the checkpoint when the header holds our metadata."""
    try:
        state = load_file(path, device="cpu")
        with safe_open(path, framework="pt") as fh:
            meta = dict(fh.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({exc})") from exc
    if meta.get("format") != FORMAT:
        return state, None
    ckpt: dict[str, Any] = {"format": FORMAT}
    try:
        ckpt["format_version"] = int(meta.get("format_version", "1"))
        for key in _META_JSON:
            if key in meta:
                ckpt[key] = json.loads(meta[key])
    except (ValueError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: invalid retinadet metadata in safetensors header ({exc})") from exc
    ckpt["model"] = state
    return state, ckpt
