"""The scale a model is trained at, recorded in its checkpoints: how much training resizes its inputs and how
large its objects are. Inference reads it back (:class:`retinadet.utils.tiling.TrainingScale`) to show a larger
image to the network at that scale, slicing it when it would not fit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from retinadet.data.records import DatasetRecords
from retinadet.utils.resize import resize_scale
from retinadet.utils.tiling import TileOptions, TrainingScale, describe_plan, plan_tiles


def training_scale(data: DatasetRecords, preprocess: Any, scale_range: Sequence[float] = (1.0, 1.0),
                   tile: Sequence[int] | None = None) -> TrainingScale:
    """The scale of training on ``data`` under the resize rule ``preprocess``; ``tile`` (h, w): tiled training,
    whose inputs are crops of that size (or the whole image, where smaller)."""
    sizes = np.array([(r.height, r.width) for r in data.records if r.height > 0 and r.width > 0], dtype=np.int64)
    if tile is not None and len(sizes):
        sizes = np.minimum(sizes, np.asarray(tile, dtype=np.int64))
    if not len(sizes):
        sizes = np.array([[preprocess.max_size, preprocess.max_size]])
    scales = [resize_scale(int(h), int(w), preprocess.min_size, preprocess.max_size, preprocess.fixed_size) for h, w in sizes]
    boxes = [r.boxes[~r.crowd] for r in data.records]
    boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)
    sides = np.sqrt(np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None))
    sides = sides[sides > 0]
    median_size = (int(np.median(sizes[:, 0])), int(np.median(sizes[:, 1])))
    return TrainingScale(float(np.median(scales)), (float(min(scale_range)), float(max(scale_range))),
                         float(np.median(sides)) if sides.size else None,
                         float(np.percentile(sides, 95)) if sides.size else None, median_size,
                         int(max(tile)) if tile is not None else None)


def describe_scale(scale: TrainingScale) -> str:
    objects = f", objects {scale.object_size:.0f} px (95% under {scale.object_size_p95:.0f} px)" if scale.object_size else ""
    h, w = scale.image_size or (0, 0)
    return f"training scale {scale.resize_scale:.3g}x of {w}x{h} px inputs{objects}"


def sliced_validation(data: DatasetRecords, preprocess: Any, scale: TrainingScale, tiling: TileOptions) -> str | None:
    """A line saying which validation images sliced inference will cut, and how (None: none)."""
    plans = [(r, plan_tiles(r.height, r.width, preprocess, scale, tiling)) for r in data.records]
    sliced = [(r, p) for r, p in plans if p is not None]
    if not sliced:
        return None
    r, p = sliced[0]
    return (f"validation: sliced inference on {len(sliced)} of {len(data)} images (e.g. {describe_plan(p, r.height, r.width)}), "
            "so val AP is the full-image AP")
