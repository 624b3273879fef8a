"""What is this weights file? Identification of every layout retinadet can read.

Kinds (in :mod:`retinadet.weights.format`): ``retinadet`` (our checkpoint, .pt or
safetensors), ``torchvision`` (a torchvision RetinaNet state_dict, v1 or v2),
``seed_state_dict`` / ``seed_module`` / ``seed_dataparallel`` (the seed pipeline),
``backbone`` (an ImageNet classification state_dict), ``unknown``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from retinadet.errors import CheckpointError
from retinadet.weights.format import (
    BACKBONE,
    DESCRIPTIONS,
    RETINADET,
    SEED_DATAPARALLEL,
    SEED_KINDS,
    SEED_MODULE,
    SEED_STATE_DICT,
    TORCHVISION,
    UNKNOWN,
    is_checkpoint,
    require_file,
)
from retinadet.weights.keymaps import strip_module
from retinadet.weights.safetensors_io import is_safetensors, read_safetensors
from retinadet.weights.torch_io import read_torch_object
from retinadet.weights.unpickler import SEED_CLASSES, WRAPPER_CLASSES, Inert, is_module, module_state_dict

_RESNET_DEPTHS = {("basic", (2, 2, 2, 2)): 18, ("basic", (3, 4, 6, 3)): 34, ("bottleneck", (3, 4, 6, 3)): 50,
                  ("bottleneck", (3, 4, 23, 3)): 101, ("bottleneck", (3, 8, 36, 3)): 152}
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network")


@dataclass
class WeightsInfo:
    kind: str
    path: str | None = None
    container: str = "torch"  # "torch" (zip/pickle) | "safetensors"
    variant: str | None = None  # torchvision "v1"/"v2", backbone architecture, ...
    preset: str | None = None
    num_classes: int | None = None
    class_names: list[str] | None = None
    epoch: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    size_bytes: int | None = None
    notes: list[str] = field(default_factory=list)
    # The flat state_dict as read (keys of the source layout), and our checkpoint when kind == retinadet.
    state: dict[str, Tensor] | None = field(default=None, repr=False)
    checkpoint: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def description(self) -> str:
        text = DESCRIPTIONS[self.kind]
        if self.container == "safetensors":
            text += " (safetensors)"
        return text

    @property
    def num_tensors(self) -> int:
        return len(self.state) if self.state is not None else 0

    @property
    def num_params(self) -> int:
        if self.state is None:
            return 0
        return sum(v.numel() for k, v in self.state.items() if isinstance(v, Tensor) and v.is_floating_point()
                   and not k.endswith(("running_mean", "running_var")))


# --------------------------------------------------------------------------- layouts


def resnet_depth(state: dict[str, Tensor], prefix: str = "") -> int | None:
    """18/34/50/101/152 from a torchvision-named ResNet's block counts, or None."""
    counts = []
    for stage in range(1, 5):
        pat = re.compile(rf"^{re.escape(prefix)}layer{stage}\.(\d+)\.")
        idx = {int(m.group(1)) for k in state if (m := pat.match(k))}
        if not idx:
            return None
        counts.append(max(idx) + 1)
    block = "bottleneck" if f"{prefix}layer1.0.conv3.weight" in state else "basic"
    return _RESNET_DEPTHS.get((block, tuple(counts)))


def classify_state(state: dict[str, Tensor], info: WeightsInfo) -> WeightsInfo:
    """Fills ``info`` from a flat state_dict."""
    info.state = state
    flat = strip_module(state)
    if "head.classification_head.cls_logits.weight" in flat:
        info.kind = TORCHVISION
        v2 = "head.classification_head.conv.0.1.weight" in flat or (
            "backbone.fpn.extra_blocks.p6.weight" in flat and flat["backbone.fpn.extra_blocks.p6.weight"].shape[1] == 2048
        )
        info.variant = "v2" if v2 else "v1"
        anchors = flat["head.regression_head.bbox_reg.weight"].shape[0] // 4
        info.num_classes = flat["head.classification_head.cls_logits.weight"].shape[0] // anchors
        depth = resnet_depth(flat, "backbone.body.")
        if v2:
            info.preset = "retinanet_resnet50_fpn_v2"
        elif depth is not None:
            info.preset = f"retinanet_resnet{depth}_fpn"
        if depth is not None and depth != 50 and v2:
            info.notes.append(f"v2 layout on ResNet-{depth}")
        return info
    if "classificationModel.output.weight" in flat:
        if info.kind not in SEED_KINDS:
            info.kind = SEED_STATE_DICT
        anchors = flat["regressionModel.output.weight"].shape[0] // 4
        info.num_classes = flat["classificationModel.output.weight"].shape[0] // max(anchors, 1)
        depth = resnet_depth(flat)
        info.variant = f"resnet{depth}" if depth else None
        info.preset = f"seed_resnet{depth}" if depth in (18, 50, 101) else (
            f"seed_resnet{18 if depth == 34 else 50}(backbone=resnet{depth})" if depth else None)
        return info
    depth = resnet_depth(flat)
    if depth is not None or any(k.startswith(("fc.", "classifier.", "head.fc.")) for k in flat):
        info.kind = BACKBONE
        info.variant = f"resnet{depth}" if depth else None
        if "fc.weight" in flat:
            info.num_classes = int(flat["fc.weight"].shape[0])
        return info
    info.kind = UNKNOWN
    return info


def classify_object(obj: Any, info: WeightsInfo | None = None) -> WeightsInfo:
    """Identifies an object read from a torch file (a dict, or an inert pickled module)."""
    info = info or WeightsInfo(kind=UNKNOWN)
    if is_checkpoint(obj):
        info.kind = RETINADET
        info.checkpoint = obj
        info.state = obj.get("model") if isinstance(obj.get("model"), dict) else None
        cfg = obj.get("model_config") or {}
        info.preset = cfg.get("preset") if isinstance(cfg, dict) else None
        info.num_classes = cfg.get("num_classes") if isinstance(cfg, dict) else None
        info.class_names = list(obj.get("class_names") or [])
        info.epoch = obj.get("epoch")
        info.metrics = dict(obj.get("metrics") or {})
        return info
    if is_module(obj):
        state = module_state_dict(obj)
        info.notes.append(f"pickled module {obj.global_name}")
        is_seed = obj.global_name in SEED_CLASSES or any(
            isinstance(m, Inert) and m.global_name in SEED_CLASSES for m in obj.__dict__.get("_modules", {}).values()
        )
        if is_seed:
            info.kind = SEED_DATAPARALLEL if obj.global_name in WRAPPER_CLASSES else SEED_MODULE
        return classify_state(state, info)
    if isinstance(obj, dict) and obj and all(isinstance(k, str) for k in obj):
        tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
        if tensors and len(tensors) == len(obj):
            return classify_state(dict(obj), info)
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, dict) or is_module(inner):
                info.notes.append(f"weights found under the '{key}' entry of a dict")
                if isinstance(obj.get("epoch"), int):
                    info.epoch = obj["epoch"]
                return classify_object(inner, info)
    info.kind = UNKNOWN
    info.notes.append(f"top-level object: {type(obj).__name__}")
    return info


# --------------------------------------------------------------------------- files


def read_weights(path: str | os.PathLike) -> WeightsInfo:
    """Reads and identifies any supported weights file (never runs code from it)."""
    path = os.fspath(path)
    require_file(path)
    info = WeightsInfo(kind=UNKNOWN, path=path, size_bytes=os.path.getsize(path))
    if is_safetensors(path):
        return identify_safetensors(path, info)
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise CheckpointError(
            f"{path}: not a weights file (neither a PyTorch zip/pickle nor safetensors; first bytes {head!r})"
        )
    return classify_object(read_torch_object(path), info)


def identify_safetensors(path: str, info: WeightsInfo | None = None) -> WeightsInfo:
    """A :class:`WeightsInfo` for a safetensors file (ours, or a plain state_dict)."""
    info = info or WeightsInfo(kind=UNKNOWN, path=path)
    info.container = "safetensors"
    state, ckpt = read_safetensors(path)
    return classify_state(state, info) if ckpt is None else classify_object(ckpt, info)


def format_info(info: WeightsInfo) -> str:
    lines = [f"file:      {info.path}", f"kind:      {info.kind} - {info.description}"]
    if info.size_bytes is not None:
        lines.append(f"size:      {info.size_bytes / 1e6:.1f} MB")
    if info.variant:
        lines.append(f"variant:   {info.variant}")
    if info.preset:
        lines.append(f"preset:    {info.preset}")
    if info.state is not None:
        lines.append(f"tensors:   {info.num_tensors} ({info.num_params / 1e6:.2f} M parameters)")
    if info.num_classes is not None:
        lines.append(f"classes:   {info.num_classes}")
    if info.class_names:
        shown = ", ".join(info.class_names[:20]) + (", ..." if len(info.class_names) > 20 else "")
        lines.append(f"names:     {shown}")
    if info.epoch is not None:
        lines.append(f"epoch:     {info.epoch}")
    for key, value in info.metrics.items():
        lines.append(f"metric:    {key} = {value:.4f}" if isinstance(value, float) else f"metric:    {key} = {value}")
    ckpt = info.checkpoint or {}
    if ckpt.get("versions"):
        lines.append("versions:  " + ", ".join(f"{k} {v}" for k, v in ckpt["versions"].items()))
    if ckpt.get("source"):
        lines.append(f"source:    {ckpt['source']}")
    extra = [k for k in ("optimizer", "scheduler", "scaler", "ema", "rng") if k in ckpt]
    if extra:
        lines.append(f"training state: {', '.join(extra)}")
    lines.extend(f"note:      {n}" for n in info.notes)
    if info.kind in (TORCHVISION, *SEED_KINDS):
        lines.append(f"use:       retinadet weights import {info.path} --from auto -o OUT.pt"
                     + (" --classes a,b,c" if info.kind in SEED_KINDS else ""))
    elif info.kind == BACKBONE:
        lines.append("use:       as ImageNet backbone weights: model config backbone.weights=<this file>")
    return "\n".join(lines)
