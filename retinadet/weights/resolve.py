"""From a weights spec to our checkpoint and model: the top of ``retinadet.weights``.

Strict readers of our own files (:func:`load_checkpoint`, :func:`load_safetensors_checkpoint`)
say what a file is when it is not ours; :func:`resolve_weights` and :func:`load_weights` take
every spec: our .pt or safetensors, a torchvision or seed file, or a torchvision name.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from retinadet.errors import CheckpointError
from retinadet.model.retinanet import RetinaNet
from retinadet.weights.fit import build_from_checkpoint
from retinadet.weights.format import (
    BACKBONE,
    IMPORT_HINT,
    RETINADET,
    SEED_KINDS,
    TORCHVISION,
    is_checkpoint,
    validate_checkpoint,
)
from retinadet.weights.identify import classify_object, identify_safetensors, read_weights
from retinadet.weights.seed import import_seed
from retinadet.weights.torch_io import torch_load_weights
from retinadet.weights.torchvision_import import import_named, import_torchvision

SOURCES = ("auto", "seed", "torchvision")
NAMED_PREFIX = "torchvision:"


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict[str, Any]:
    """Reads a retinadet checkpoint (``torch.load(weights_only=True)`` only)."""
    path = os.fspath(path)
    obj = torch_load_weights(path, map_location)
    if not is_checkpoint(obj):
        kind = classify_object(obj).description
        raise CheckpointError(f"{path}: {kind}, not a retinadet checkpoint; " + IMPORT_HINT.format(path=path))
    validate_checkpoint(obj, path)
    return obj


def load_safetensors_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Our checkpoint dict from a safetensors file written by :func:`export_safetensors`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    info = identify_safetensors(path)
    if info.checkpoint is None:
        raise CheckpointError(
            f"{path}: {info.description} without retinadet metadata; "
            f"convert it with `retinadet weights import {path} --from auto -o OUT.pt`"
        )
    validate_checkpoint(info.checkpoint, path)
    return info.checkpoint


def import_weights(
    path: str | os.PathLike, source: str = "auto", class_names: Sequence[str] | str | None = None
) -> dict[str, Any]:
    """Our checkpoint dict from a foreign weights file or ``torchvision:<name>``; ``source`` is auto, seed or torchvision."""
    path = os.fspath(path)
    if source not in SOURCES:
        raise CheckpointError(f"unknown --from '{source}'; use one of {', '.join(SOURCES)}")
    if path.startswith(NAMED_PREFIX) and not os.path.exists(path):
        if source == "seed":
            raise CheckpointError(f"{path}: named weights are torchvision's; use --from torchvision or auto")
        return import_named(path[len(NAMED_PREFIX):], class_names)
    info = read_weights(path)
    wanted = {"seed": SEED_KINDS, "torchvision": (TORCHVISION,)}.get(source)
    if wanted is not None and info.kind not in wanted:
        raise CheckpointError(f"{path}: --from {source} given, but the file is {info.description}")
    source_info = {"file": os.path.abspath(path), "kind": info.kind}
    if info.kind == RETINADET:
        return info.checkpoint
    if info.kind in SEED_KINDS:
        return import_seed(info.state, class_names, where=path, source=source_info)
    if info.kind == TORCHVISION:
        return import_torchvision(info.state, class_names, where=path, source=source_info)
    if info.kind == BACKBONE:
        raise CheckpointError(
            f"{path}: {info.description}, not detector weights; use it as ImageNet backbone weights "
            f"(model config backbone.weights={path})"
        )
    raise CheckpointError(f"{path}: {info.description} ({'; '.join(info.notes) or 'no known key layout'})")


def resolve_weights(spec: str | os.PathLike, class_names: Sequence[str] | str | None = None) -> dict[str, Any]:
    """A checkpoint dict for ``--weights``: our .pt or safetensors, a torchvision or seed file
    (seed files need ``class_names``), or ``torchvision:retinanet_resnet50_fpn[_v2]_coco``."""
    spec_str = os.fspath(spec)
    ckpt = import_weights(spec_str, "auto", class_names)
    validate_checkpoint(ckpt, spec_str)
    return ckpt


@dataclass
class LoadedWeights:
    """A model built from a weights spec, with what the API needs around it."""

    model: RetinaNet
    class_names: list[str]
    category_ids: list[int] | None
    checkpoint: dict[str, Any]  # everything but the state dict: config, data, metrics, ...


def load_weights(spec: str | os.PathLike, class_names: Sequence[str] | str | None = None) -> LoadedWeights:
    """The model of any weights spec (see :func:`resolve_weights`); a foreign file that is not
    a known layout gets a pointer to ``retinadet weights import``."""
    spec_str = os.fspath(spec)
    try:
        ckpt = resolve_weights(spec, class_names)
    except CheckpointError as exc:
        msg = str(exc)
        if "weights import" in msg or not os.path.isfile(spec_str):
            raise
        raise CheckpointError(f"{msg}; not a retinadet checkpoint: if it comes from another tool, convert it with "
                              f"`retinadet weights import {spec_str} -o OUT.pt` (see `retinadet weights info`)") from None
    model, names = build_from_checkpoint(ckpt, spec_str)
    meta = {k: v for k, v in ckpt.items() if k != "model"}
    return LoadedWeights(model, list(names), ckpt.get("category_ids"), meta)
