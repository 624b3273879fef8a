"""Augmentation and resizing with torchvision.transforms.v2, boxes as ``tv_tensors.BoundingBoxes``.

Every geometric step is followed by clamping and dropping degenerate boxes; boxes
clipped or dropped are counted in the returned stats, never lost silently.
Presets: ``none`` (resize only); ``upright`` (horizontal flips, mild scale jitter, colour: for images with an
up, such as photographs or street scenes); ``default`` (``upright`` with vertical flips and 90-degree rotations:
microscopy, histology and cytology have no up, and on BCCD they gained 0.017 test AP at 90 epochs,
docs/own_data.md); ``strong`` (``default`` with random IoU crops and wider jitter). Every part can be set on its
own through :class:`TransformConfig`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as F
from torchvision import tv_tensors

from retinadet.errors import ConfigError
from retinadet.model.preprocess import resize_image
from retinadet.utils.resize import resized_size


@dataclass
class TransformConfig:
    # Resize (the model's preprocess config): short side -> min_size, long side <= max_size,
    # or, with fixed_size, the long side -> fixed_size (letterbox; the collate pads to a square).
    min_size: int = 800
    max_size: int = 1333
    fixed_size: int | None = None
    # Multi-scale training: the target size is multiplied by a factor drawn from this range.
    scale_range: tuple[float, float] = (1.0, 1.0)
    hflip: float = 0.0  # probabilities
    vflip: float = 0.0
    rot90: float = 0.0  # rotate by a random multiple of 90 degrees
    photometric: float = 0.0
    iou_crop: float = 0.0
    min_box_size: float = 1.0  # boxes thinner than this (px, after the step) are dropped

    def replace(self, **changes: Any) -> TransformConfig:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown transform option(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    "upright": {"hflip": 0.5, "scale_range": (0.8, 1.2), "photometric": 0.5},
    "default": {"hflip": 0.5, "vflip": 0.5, "rot90": 0.5, "scale_range": (0.8, 1.2), "photometric": 0.5},
    "strong": {"hflip": 0.5, "vflip": 0.5, "rot90": 0.5, "scale_range": (0.5, 1.5), "photometric": 0.8, "iou_crop": 0.5},
}


def transform_config(preset: str = "default", preprocess: Any = None, **overrides: Any) -> TransformConfig:
    """A preset, sized from a model's ``cfg.preprocess`` (or ``min_size=...`` overrides)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown augmentation preset '{preset}' (choose from {', '.join(PRESETS)})")
    cfg = TransformConfig(**PRESETS[preset])
    if preprocess is not None:
        cfg = cfg.replace(min_size=preprocess.min_size, max_size=preprocess.max_size, fixed_size=preprocess.fixed_size)
    return cfg.replace(**overrides) if overrides else cfg


@dataclass
class BoxStats:
    """Boxes seen, clipped to the image, and dropped (degenerate after a transform)."""

    boxes: int = 0
    clipped: int = 0
    dropped: int = 0

    def add(self, other: BoxStats) -> None:
        self.boxes += other.boxes
        self.clipped += other.clipped
        self.dropped += other.dropped


class DetectionTransform:
    """Callable: (uint8 image [3,H,W], boxes [N,4] xyxy, labels [N], crowd [N]) ->
    (image, boxes, labels, crowd, BoxStats). Random state comes from ``torch``'s RNG."""

    def __init__(self, cfg: TransformConfig):
        self.cfg = cfg
        self._iou_crop = T.RandomIoUCrop()

    def __repr__(self) -> str:
        return f"DetectionTransform({self.cfg})"

    def _fix(self, sample: dict, stats: BoxStats) -> dict:
        """Clamp to the canvas (counting boxes that change) and drop degenerate ones (counted)."""
        boxes = sample["boxes"]
        if boxes.shape[0] == 0:
            return sample
        # Plain tensor arithmetic on XYXY boxes: torchvision's clamp and sanitize (transform or functional)
        # cost 1.5 ms an image in format checks and conversions, as much as decoding it.
        h, w = boxes.canvas_size
        raw = boxes.as_subclass(torch.Tensor)
        limit = raw.new_tensor([w, h, w, h])
        clamped = torch.minimum(raw.clamp(min=0), limit)
        changed = (clamped - raw).abs().amax(dim=1) > 1e-3
        bw, bh = clamped[:, 2] - clamped[:, 0], clamped[:, 3] - clamped[:, 1]
        min_size = self.cfg.min_box_size
        valid = (bw >= min_size) & (bh >= min_size) & (bw * bh >= min_size)
        n, kept = int(valid.numel()), int(valid.sum())
        if kept < n:
            clamped, sample["labels"], sample["crowd"] = clamped[valid], sample["labels"][valid], sample["crowd"][valid]
        sample["boxes"] = tv_tensors.wrap(clamped, like=boxes)
        stats.dropped += n - kept
        # Clipped boxes that survived; boxes clipped to nothing count once, as dropped.
        stats.clipped += max(0, int(changed.sum()) - (n - kept))
        return sample

    def __call__(self, image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, crowd: torch.Tensor):
        cfg = self.cfg
        stats = BoxStats(boxes=int(boxes.shape[0]))
        h, w = image.shape[-2:]
        sample = {
            "image": tv_tensors.Image(image),
            "boxes": tv_tensors.BoundingBoxes(boxes.float().reshape(-1, 4), format="XYXY", canvas_size=(h, w)),
            "labels": labels.long().reshape(-1),
            "crowd": crowd.bool().reshape(-1),
        }
        sample = self._fix(sample, stats)  # annotations that already reach outside the file

        if cfg.iou_crop > 0 and sample["boxes"].shape[0] > 0 and torch.rand(()) < cfg.iou_crop:
            cropped = self._iou_crop(sample)
            sample = self._fix(cropped, stats)
        if cfg.rot90 > 0 and torch.rand(()) < cfg.rot90:
            sample = self._rot90(sample, int(torch.randint(1, 4, ())))
        if cfg.hflip > 0 and torch.rand(()) < cfg.hflip:
            sample["image"], sample["boxes"] = F.horizontal_flip(sample["image"]), F.horizontal_flip(sample["boxes"])
        if cfg.vflip > 0 and torch.rand(()) < cfg.vflip:
            sample["image"], sample["boxes"] = F.vertical_flip(sample["image"]), F.vertical_flip(sample["boxes"])

        h, w = sample["image"].shape[-2:]
        jitter = 1.0
        lo, hi = cfg.scale_range
        if hi > lo:
            jitter = float(torch.empty(()).uniform_(lo, hi))
        elif lo != 1.0:
            jitter = lo
        out_h, out_w = resized_size(h, w, cfg.min_size * jitter, cfg.max_size * jitter,
                                    cfg.fixed_size * jitter if cfg.fixed_size else None)
        if cfg.fixed_size:  # jittered letterbox content must still fit the fixed canvas
            s = min(1.0, cfg.fixed_size / max(out_h, out_w))
            out_h, out_w = max(1, int(out_h * s)), max(1, int(out_w * s))
        if (out_h, out_w) != (h, w):
            sample["image"] = tv_tensors.wrap(resize_image(sample["image"].as_subclass(torch.Tensor), (out_h, out_w)),
                                              like=sample["image"])
            sample["boxes"] = F.resize(sample["boxes"], [out_h, out_w])
            sample = self._fix(sample, stats)

        if cfg.photometric > 0 and torch.rand(()) < cfg.photometric:
            sample["image"] = self._photometric(sample["image"])

        return (sample["image"].as_subclass(torch.Tensor), sample["boxes"].as_subclass(torch.Tensor).float(),
                sample["labels"], sample["crowd"], stats)

    @staticmethod
    def _photometric(image: torch.Tensor) -> torch.Tensor:
        """Brightness, contrast, saturation (each with p=0.5, random order of the last two)
        and a mild per-channel colour cast. Hue rotation (as in RandomPhotometricDistort)
        is left out: it costs ~20 ms per 320 px image on one CPU core, more than all else.
        The image is converted to float once, not by each step and back."""
        r = torch.rand(5)
        x = F.to_dtype(image.as_subclass(torch.Tensor), torch.float32, scale=True)
        if r[0] < 0.5:
            x = F.adjust_brightness(x, float(torch.empty(()).uniform_(0.875, 1.125)))
        ops = [F.adjust_contrast, F.adjust_saturation]
        if r[1] < 0.5:
            ops.reverse()
        for op, u in zip(ops, (r[2], r[3])):
            if u < 0.5:
                x = op(x, float(torch.empty(()).uniform_(0.5, 1.5)))
        if r[4] < 0.5:
            x = (x * torch.empty(3, 1, 1).uniform_(0.9, 1.1)).clamp_(0, 1)
        # Back to the input's dtype: uint8 stays uint8, a windowed image of more than 8 bits stays float.
        return tv_tensors.wrap(F.to_dtype(x, image.dtype, scale=True), like=image)

    @staticmethod
    def _rot90(sample: dict, k: int) -> dict:
        """Rotate counter-clockwise by k*90 degrees (exact: pixels and boxes move together)."""
        image = sample["image"]
        h, w = image.shape[-2:]
        b = sample["boxes"].as_subclass(torch.Tensor)
        x1, y1, x2, y2 = b.unbind(-1)
        if k == 1:  # new[i, j] = old[j, w-1-i]
            nb, size = torch.stack([y1, w - x2, y2, w - x1], -1), (w, h)
        elif k == 2:
            nb, size = torch.stack([w - x2, h - y2, w - x1, h - y1], -1), (h, w)
        else:  # k == 3: new[i, j] = old[h-1-j, i]
            nb, size = torch.stack([h - y2, x1, h - y1, x2], -1), (w, h)
        sample["image"] = tv_tensors.wrap(torch.rot90(image.as_subclass(torch.Tensor), k, dims=(-2, -1)).contiguous(), like=image)
        sample["boxes"] = tv_tensors.BoundingBoxes(nb.reshape(-1, 4), format="XYXY", canvas_size=size)
        return sample


def build_transform(preset: str | TransformConfig = "default", preprocess: Any = None, **overrides: Any) -> DetectionTransform:
    cfg = preset if isinstance(preset, TransformConfig) else transform_config(preset, preprocess, **overrides)
    if isinstance(preset, TransformConfig) and overrides:
        cfg = cfg.replace(**overrides)
    return DetectionTransform(cfg)
