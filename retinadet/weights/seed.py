"""Import of the seed pipeline's checkpoints (state_dict, pickled module, DataParallel).

The seed's conventions (anchors centred at (i + 0.5) * stride, unrounded base anchors,
box-coder weights 10/10/5/5 with no clamp, P6 from C5, per-class NMS with no top-k or cap,
clipping to the padded tensor, 608/1024 resizing) are the ``seed_resnet*`` presets;
this module picks the preset from the layer shapes and maps the keys.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from retinadet.errors import CheckpointError
from retinadet.model.config import ModelConfig
from retinadet.model.presets import get_preset
from retinadet.model.retinanet import RetinaNet
from retinadet.weights.checkpoint import make_checkpoint
from retinadet.weights.fit import load_state_strict
from retinadet.weights.format import parse_class_names
from retinadet.weights.identify import resnet_depth
from retinadet.weights.keymaps import from_seed

_SEED_PRESETS = {18: "seed_resnet18", 34: "seed_resnet18", 50: "seed_resnet50", 101: "seed_resnet101", 152: "seed_resnet101"}


def _strip(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def seed_config(state: dict[str, Tensor], where: str = "seed weights") -> ModelConfig:
    """The seed preset that fits a seed state_dict: backbone depth, class count, widths."""
    flat = _strip(state)
    for key in ("classificationModel.output.weight", "regressionModel.output.weight", "fpn.P5_1.weight"):
        if key not in flat:
            raise CheckpointError(f"{where}: not a seed-pipeline state_dict (no '{key}')")
    depth = resnet_depth(flat)
    if depth is None:
        raise CheckpointError(f"{where}: the backbone's layer1..layer4 blocks do not match a ResNet-18/34/50/101/152")
    reg, cls = flat["regressionModel.output.weight"], flat["classificationModel.output.weight"]
    num_anchors = reg.shape[0] // 4
    base = get_preset(_SEED_PRESETS[depth])
    if num_anchors != base.anchors.num_anchors or reg.shape[0] % 4:
        raise CheckpointError(
            f"{where}: regressionModel.output has {reg.shape[0]} channels = {reg.shape[0] / 4:g} anchors per location; "
            f"the seed layout has {base.anchors.num_anchors}"
        )
    if cls.shape[0] % num_anchors:
        raise CheckpointError(f"{where}: classificationModel.output has {cls.shape[0]} channels, not a multiple of {num_anchors} anchors")
    num_convs = len({m.group(1) for k in flat if (m := re.match(r"^classificationModel\.conv(\d+)\.weight$", k))})
    overrides: dict[str, Any] = {
        "num_classes": cls.shape[0] // num_anchors,
        "fpn.channels": int(flat["fpn.P5_1.weight"].shape[0]),
        "head.channels": int(flat["classificationModel.conv1.weight"].shape[0]) if num_convs else base.head.channels,
        "head.num_convs": num_convs,
    }
    name = _SEED_PRESETS[depth]
    if depth not in (18, 50, 101):
        overrides["backbone.name"] = f"resnet{depth}"
    cfg = get_preset(name, overrides)
    cfg.preset = name if depth in (18, 50, 101) else f"{name}(backbone=resnet{depth})"
    return cfg


def import_seed(
    state: dict[str, Tensor], class_names: Sequence[str] | None, where: str = "seed weights", source: dict | None = None
) -> dict[str, Any]:
    """Our checkpoint from a seed state_dict (``module.`` prefixes allowed)."""
    cfg = seed_config(state, where)
    names = parse_class_names(class_names)
    if names is None:
        raise CheckpointError(
            f"{where}: seed checkpoints do not store class names; pass them in label order, "
            f"e.g. --classes {','.join(f'class{i}' for i in range(cfg.num_classes))} ({cfg.num_classes} classes)"
        )
    if len(names) != cfg.num_classes:
        raise CheckpointError(f"{where}: {len(names)} class names given, but the model has {cfg.num_classes} classes")
    mapped, unmapped = from_seed(state)
    if unmapped:
        raise CheckpointError(f"{where}: {len(unmapped)} key(s) with no place in the seed layout: {', '.join(unmapped[:10])}")
    model = RetinaNet(cfg)
    load_state_strict(model, mapped, where)
    return make_checkpoint(model, names, source=source or {"kind": "seed"})
