"""One entry point for every weights spec: our .pt, safetensors, torchvision, seed, or a name."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from retinadet.errors import CheckpointError
from retinadet.model.retinanet import RetinaNet
from retinadet.weights import identify
from retinadet.weights.checkpoint import build_from_checkpoint

SOURCES = ("auto", "seed", "torchvision")
NAMED_PREFIX = "torchvision:"


def import_weights(
    path: str | os.PathLike, source: str = "auto", class_names: Optional[Sequence[str] | str] = None
) -> dict[str, Any]:
    """Our checkpoint dict from a foreign weights file; ``source`` is auto, seed or torchvision."""
    from retinadet.weights.seed import import_seed
    from retinadet.weights.torchvision_import import import_torchvision

    path = os.fspath(path)
    if source not in SOURCES:
        raise CheckpointError(f"unknown --from '{source}'; use one of {', '.join(SOURCES)}")
    info = identify.read_weights(path)
    wanted = {"seed": identify.SEED_KINDS, "torchvision": (identify.TORCHVISION,)}.get(source)
    if wanted is not None and info.kind not in wanted:
        raise CheckpointError(f"{path}: --from {source} given, but the file is {info.description}")
    source_info = {"file": os.path.abspath(path), "kind": info.kind}
    if info.kind == identify.RETINADET:
        return info.checkpoint
    if info.kind in identify.SEED_KINDS:
        return import_seed(info.state, class_names, where=path, source=source_info)
    if info.kind == identify.TORCHVISION:
        return import_torchvision(info.state, class_names, where=path, source=source_info)
    if info.kind == identify.BACKBONE:
        raise CheckpointError(
            f"{path}: {info.description}, not detector weights; use it as ImageNet backbone weights "
            f"(model config backbone.weights={path})"
        )
    raise CheckpointError(f"{path}: {info.description} ({'; '.join(info.notes) or 'no known key layout'})")


def resolve_weights(spec: str | os.PathLike, class_names: Optional[Sequence[str] | str] = None) -> dict[str, Any]:
    """A checkpoint dict for ``--weights``: our .pt or safetensors, a torchvision or seed file
    (seed files need ``class_names``), or ``torchvision:retinanet_resnet50_fpn[_v2]_coco``."""
    from retinadet.weights.checkpoint import validate_checkpoint
    from retinadet.weights.torchvision_import import import_named

    spec_str = os.fspath(spec)
    if spec_str.startswith(NAMED_PREFIX) and not os.path.exists(spec_str):
        return import_named(spec_str[len(NAMED_PREFIX):], class_names)
    ckpt = import_weights(spec_str, "auto", class_names)
    validate_checkpoint(ckpt, spec_str)
    return ckpt


@dataclass
class LoadedWeights:
    """A model built from a weights spec, with what the API needs around it."""

    model: RetinaNet
    class_names: list[str]
    category_ids: Optional[list[int]]
    checkpoint: dict[str, Any]  # everything but the state dict: config, data, metrics, ...


def load_weights(spec: str | os.PathLike, class_names: Optional[Sequence[str] | str] = None) -> LoadedWeights:
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
