"""The complete, serialisable description of a RetinaNet model.

Every convention that differs between RetinaNet implementations (torchvision v1/v2,
the seed pipeline, the paper) is an explicit field here, so a checkpoint that stores
``ModelConfig.to_dict()`` can be rebuilt exactly with no other file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from retinadet.errors import ConfigError, DataError
from retinadet.utils.window import parse_window


@dataclass
class BackboneConfig:
    # A torchvision model name ("resnet50", "convnext_tiny"), or "timm:<name>" for timm.
    name: str = "resnet50"
    # "frozen_bn" | "bn" | "gn" | "syncbn"
    norm: str = "frozen_bn"
    # torchvision's meaning: how many stages, counted from the top, stay trainable (0..5).
    trainable_layers: int = 5
    # Optional ImageNet weights: a torchvision weights enum name ("DEFAULT",
    # "IMAGENET1K_V1"), True for timm's pretrained tag, or a local file path.
    weights: str | None = None
    in_channels: int = 3
    # Constructor options for the model builder, e.g. {"channels": [32, 64, 128, 256]} for a
    # slimmer timm ResNet. Pretrained weights only fit when these leave the shapes unchanged.
    kwargs: dict = field(default_factory=dict)


@dataclass
class FPNConfig:
    channels: int = 256
    # Which map feeds P6: "p5" (torchvision v1, the paper) or "c5" (v2, the seed).
    p6_input: str = "p5"
    # None | "gn" | "bn"
    norm: str | None = None


@dataclass
class HeadConfig:
    num_convs: int = 4
    channels: int = 256
    # None | "gn"
    norm: str | None = None
    prior_prob: float = 0.01


@dataclass
class AnchorConfig:
    # One base size per pyramid level P3..P7.
    sizes: list[float] = field(default_factory=lambda: [32.0, 64.0, 128.0, 256.0, 512.0])
    scales: list[float] = field(default_factory=lambda: [1.0, 2 ** (1 / 3), 2 ** (2 / 3)])
    # Height / width.
    ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    # Anchor centre at (i + center_offset) * stride.
    center_offset: float = 0.0
    round_base: bool = True
    # torchvision truncates size * scale to an int before building base anchors.
    truncate_sizes: bool = True
    # "nominal": stride 2**level; "floor_div": padded image size // grid size (torchvision).
    stride_mode: str = "floor_div"

    @property
    def num_anchors(self) -> int:
        return len(self.scales) * len(self.ratios)


@dataclass
class BoxCoderConfig:
    weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    # Upper clamp on dw/dh before exp; None disables it (the seed). Default is log(1000/16).
    clamp: float | None = 4.135166556742356
    # Decoding divides deltas by the weights (torchvision) or multiplies them by float32
    # 1/weights, the "std" of the seed pipeline; the two round differently in float32.
    scale_mode: str = "divide"


@dataclass
class MatcherConfig:
    # "iou": fixed IoU thresholds (the paper). "atss": adaptive thresholds (Zhang et al., 2020): per box, the
    # ``topk`` anchors nearest its centre on each level are candidates, and those whose IoU reaches the
    # candidates' mean + std and whose centre lies inside the box are positive; fg_iou is then unused.
    kind: str = "iou"
    fg_iou: float = 0.5
    bg_iou: float = 0.4  # "atss": crowd boxes overlapping an anchor by this much make it ignored
    allow_low_quality: bool = True
    topk: int = 9


@dataclass
class LossConfig:
    alpha: float = 0.25
    gamma: float = 2.0
    # "focal" | "qfl" (quality focal loss: positives' score target is their box's IoU; losses.py)
    cls_loss: str = "focal"
    qfl_beta: float = 2.0
    # "l1" | "smooth_l1" | "giou" | "diou" | "ciou"
    box_loss: str = "l1"
    smooth_l1_beta: float = 1.0 / 9.0
    box_weight: float = 1.0
    # "per_image" (torchvision: each image by its own foreground count, then averaged)
    # or "batch" (the paper: the whole batch by its total foreground count).
    normalize: str = "per_image"


@dataclass
class InferenceConfig:
    score_thresh: float = 0.05
    # Candidates kept per level before NMS; None keeps all (the seed).
    topk_per_level: int | None = 1000
    nms_iou: float = 0.5
    # Detections kept per image; None keeps all (the seed).
    max_det: int | None = 100
    # Clip boxes to each image's resized size ("image", torchvision) or to the padded
    # batch tensor ("padded", the seed).
    clip_to: str = "image"


@dataclass
class PreprocessConfig:
    # Short side after resize, and cap on the long side. fixed_size letterboxes to a square.
    min_size: int = 800
    max_size: int = 1333
    fixed_size: int | None = None
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    size_divisible: int = 32
    # How images of more than 8 bits become [0, 1] intensities (retinadet.utils.window): "p0.5,99.5" (per-image
    # percentiles), "0,4095" (a fixed raw range), or None: an 8-bit model, which refuses such images.
    window: str | None = None

    def __post_init__(self) -> None:
        if self.window is not None:
            try:
                self.window = None if (rule := parse_window(self.window, "preprocess.window")) is None else rule.spec
            except DataError as exc:
                raise ConfigError(str(exc)) from exc

    def size_overrides(self, imgsz: int) -> dict[str, int]:
        """Dotted-key overrides for an ``--imgsz``: the letterbox side if fixed, else short side and cap."""
        sizes = {"preprocess.min_size": int(imgsz), "preprocess.max_size": int(imgsz)}
        return {**sizes, "preprocess.fixed_size": int(imgsz)} if self.fixed_size else sizes

    def at_size(self, imgsz: int | None) -> PreprocessConfig:
        """This resize rule at another input size (``--imgsz``); None: unchanged."""
        if not imgsz:
            return self
        if int(imgsz) < 32:
            raise ConfigError(f"--imgsz must be >= 32, got {imgsz}")
        return dataclasses.replace(self, **{k.split(".", 1)[1]: v for k, v in self.size_overrides(imgsz).items()})

    def with_window(self, window: str | None) -> PreprocessConfig:
        """This preprocessing with another windowing rule (``--window``); None: unchanged."""
        return self if window is None else dataclasses.replace(self, window=window)


@dataclass
class ModelConfig:
    num_classes: int = 91
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    box_coder: BoxCoderConfig = field(default_factory=BoxCoderConfig)
    matcher: MatcherConfig = field(default_factory=MatcherConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    # Name of the preset this config started from, for display only.
    preset: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return _from_dict(cls, data, "model")

    def replace(self, overrides: dict[str, Any]) -> ModelConfig:
        """A copy with dotted-key overrides applied, e.g. ``{"backbone.name": "resnet18"}``."""
        data = self.to_dict()
        if "backbone.name" in overrides and "backbone.kwargs" not in overrides:
            data["backbone"]["kwargs"] = {}  # constructor options belong to the backbone being replaced
        for key, value in overrides.items():
            node = data
            parts = key.split(".")
            for part in parts[:-1]:
                if not isinstance(node.get(part), dict):
                    raise ConfigError(f"unknown model config field '{key}'")
                node = node[part]
            if parts[-1] not in node:
                raise ConfigError(f"unknown model config field '{key}'")
            node[parts[-1]] = value
        return ModelConfig.from_dict(data)

    def validate(self) -> ModelConfig:
        if self.num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {self.num_classes}")
        if len(self.anchors.sizes) != 5:
            raise ConfigError(f"anchors.sizes needs one size per level P3..P7 (5), got {len(self.anchors.sizes)}")
        if self.fpn.p6_input not in ("p5", "c5"):
            raise ConfigError(f"fpn.p6_input must be 'p5' or 'c5', got '{self.fpn.p6_input}'")
        if self.anchors.stride_mode not in ("nominal", "floor_div"):
            raise ConfigError(f"anchors.stride_mode must be 'nominal' or 'floor_div', got '{self.anchors.stride_mode}'")
        if self.loss.box_loss not in ("l1", "smooth_l1", "giou", "diou", "ciou"):
            raise ConfigError(f"loss.box_loss must be l1, smooth_l1, giou, diou or ciou, got '{self.loss.box_loss}'")
        if self.loss.cls_loss not in ("focal", "qfl"):
            raise ConfigError(f"loss.cls_loss must be focal or qfl, got '{self.loss.cls_loss}'")
        if self.loss.normalize not in ("per_image", "batch"):
            raise ConfigError(f"loss.normalize must be 'per_image' or 'batch', got '{self.loss.normalize}'")
        if self.backbone.norm not in ("frozen_bn", "bn", "gn", "syncbn"):
            raise ConfigError(f"backbone.norm must be frozen_bn, bn, gn or syncbn, got '{self.backbone.norm}'")
        if not 0 <= self.backbone.trainable_layers <= 5:
            raise ConfigError(f"backbone.trainable_layers must be in 0..5, got {self.backbone.trainable_layers}")
        if self.backbone.in_channels not in (1, 2, 3):
            raise ConfigError(f"backbone.in_channels must be 1 (gray), 2 or 3 (RGB), got {self.backbone.in_channels}")
        if not self.matcher.bg_iou <= self.matcher.fg_iou:
            raise ConfigError("matcher.bg_iou must be <= matcher.fg_iou")
        if self.matcher.kind not in ("iou", "atss"):
            raise ConfigError(f"matcher.kind must be 'iou' or 'atss', got '{self.matcher.kind}'")
        if self.matcher.topk < 1:
            raise ConfigError(f"matcher.topk must be >= 1, got {self.matcher.topk}")
        pre = self.preprocess
        for name in ("min_size", "max_size", "size_divisible"):
            if getattr(pre, name) < 1:
                raise ConfigError(f"preprocess.{name} must be >= 1, got {getattr(pre, name)}")
        if pre.fixed_size is not None and pre.fixed_size < 1:
            raise ConfigError(f"preprocess.fixed_size must be >= 1 (or null), got {pre.fixed_size}")
        return self


def _from_dict(cls, data: dict[str, Any], where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; valid: {', '.join(known)}")
    kwargs = {}
    for name, value in data.items():
        sub = _NESTED.get((cls, name))
        kwargs[name] = _from_dict(sub, value, f"{where}.{name}") if sub is not None else value
    return cls(**kwargs)


_NESTED = {
    (ModelConfig, "backbone"): BackboneConfig,
    (ModelConfig, "fpn"): FPNConfig,
    (ModelConfig, "head"): HeadConfig,
    (ModelConfig, "anchors"): AnchorConfig,
    (ModelConfig, "box_coder"): BoxCoderConfig,
    (ModelConfig, "matcher"): MatcherConfig,
    (ModelConfig, "loss"): LossConfig,
    (ModelConfig, "inference"): InferenceConfig,
    (ModelConfig, "preprocess"): PreprocessConfig,
}
