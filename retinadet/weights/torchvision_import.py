"""Import of torchvision RetinaNet weights (v1 and v2), from a file or by name.

torchvision's COCO models predict in the 91-id COCO label space: label ``i`` is COCO
category id ``i``; entry 0 is ``'__background__'`` and the ids COCO never used are
``'N/A'``. Both are kept so that label indices stay torchvision's; those classes were never
trained and practically never fire. ``category_ids`` is stored as ``0..90``.

Named weights (``torchvision:retinanet_resnet50_fpn_coco``,
``torchvision:retinanet_resnet50_fpn_v2_coco``) are read from torch's usual cache,
``torch.hub.get_dir()/checkpoints/<file>``, and downloaded there when missing and online.
"""

from __future__ import annotations

import os
import re
import urllib.error
from collections.abc import Sequence
from typing import Any

import torch
import torchvision.models.detection as detection
from torch import Tensor

from retinadet.errors import CheckpointError
from retinadet.model.presets import get_preset
from retinadet.model.retinanet import RetinaNet
from retinadet.weights.checkpoint import make_checkpoint
from retinadet.weights.fit import load_state_strict
from retinadet.weights.format import TORCHVISION, UNKNOWN, parse_class_names
from retinadet.weights.identify import WeightsInfo, classify_state
from retinadet.weights.keymaps import from_torchvision, strip_module
from retinadet.weights.torch_io import torch_load_weights

NAMED = {
    "retinanet_resnet50_fpn_coco": ("RetinaNet_ResNet50_FPN_Weights", "retinanet_resnet50_fpn"),
    "retinanet_resnet50_fpn_v2_coco": ("RetinaNet_ResNet50_FPN_V2_Weights", "retinanet_resnet50_fpn_v2"),
}
OFFLINE_ENV = "RETINADET_OFFLINE"


def coco_categories() -> list[str]:
    """torchvision's 91 COCO names (index = category id), from its weights metadata."""
    return list(detection.RetinaNet_ResNet50_FPN_Weights.COCO_V1.meta["categories"])


def _weights_enum(name: str):
    if name not in NAMED:
        raise CheckpointError(
            f"unknown torchvision weights 'torchvision:{name}'; available: {', '.join('torchvision:' + n for n in NAMED)}"
        )
    return getattr(detection, NAMED[name][0]).COCO_V1


def named_weights_path(name: str) -> str:
    """Where torch's cache keeps the file for ``torchvision:<name>``."""
    url = _weights_enum(name).url
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def fetch_named(name: str) -> str:
    """The local path of named torchvision weights, downloading them if missing and online."""
    weights = _weights_enum(name)
    path = named_weights_path(name)
    if os.path.isfile(path):
        return path
    place = (f"download {weights.url} and place it at {path} "
             f"(torch.hub.get_dir()/checkpoints/{os.path.basename(path)}; set TORCH_HOME to change the folder)")
    if os.environ.get(OFFLINE_ENV):
        raise CheckpointError(f"torchvision:{name}: not in the local cache and {OFFLINE_ENV} is set; {place}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    match = re.search(r"-([a-f0-9]*)\.", os.path.basename(path))
    try:
        torch.hub.download_url_to_file(weights.url, path, hash_prefix=match.group(1) if match else None, progress=True)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"torchvision:{name}: download failed ({exc}); to work offline, {place}") from exc
    return path


def import_torchvision(
    state: dict[str, Tensor],
    class_names: Sequence[str] | None = None,
    where: str = "torchvision weights",
    source: dict | None = None,
) -> dict[str, Any]:
    """Our checkpoint from a torchvision RetinaNet state_dict (v1 or v2 detected from the keys)."""
    state = strip_module(state)
    info = classify_state(state, WeightsInfo(kind=UNKNOWN))
    if info.kind != TORCHVISION:
        raise CheckpointError(f"{where}: not a torchvision RetinaNet state_dict (no head.classification_head.cls_logits)")
    if info.preset is None:
        raise CheckpointError(f"{where}: the backbone.body layers do not match a ResNet-18/34/50/101/152")
    overrides: dict[str, Any] = {"num_classes": info.num_classes}
    cfg = get_preset(info.preset, overrides)
    names = parse_class_names(class_names)
    category_ids = None
    if names is None:
        if info.num_classes != 91:
            raise CheckpointError(
                f"{where}: {info.num_classes} classes and no class names; pass them in label order with --classes"
            )
        names = coco_categories()
        category_ids = list(range(91))
    elif len(names) != info.num_classes:
        raise CheckpointError(f"{where}: {len(names)} class names given, but the model has {info.num_classes} classes")
    mapped, unmapped = from_torchvision(state)
    if unmapped:
        raise CheckpointError(f"{where}: {len(unmapped)} key(s) with no place in our layout: {', '.join(unmapped[:10])}")
    model = RetinaNet(cfg)
    load_state_strict(model, mapped, where)
    src = {"kind": "torchvision", "variant": info.variant, **(source or {})}
    if category_ids is not None:
        src["label_space"] = "coco91: label = COCO category id; '__background__' and 'N/A' entries are unused ids"
    return make_checkpoint(model, names, category_ids=category_ids, source=src)


def import_named(name: str, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Our checkpoint for ``torchvision:<name>`` (from torch's cache; downloaded when missing)."""
    path = fetch_named(name)
    state = torch_load_weights(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state_dict, got {type(state).__name__}")
    ckpt = import_torchvision(state, class_names, where=path, source={"name": f"torchvision:{name}", "file": path})
    expected = NAMED[name][1]
    if ckpt["model_config"]["preset"] != expected:
        raise CheckpointError(f"{path}: holds a {ckpt['model_config']['preset']} layout, expected {expected}")
    return ckpt
