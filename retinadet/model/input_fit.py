"""Fit the input size to a dataset's objects: the smallest input at which its small objects reach the anchors.

A detector sees an object at ``side * resize_scale`` pixels. The smallest anchors (``sizes[0]`` times each of
the scales, on the stride-8 P3 grid) are where localisation ends: an object much smaller than the bottom one
matches no anchor at IoU 0.5, and its box regresses from an anchor several times its size. So the input grows
until the typical small object reaches the middle of those anchors (``sizes[0]`` times the geometric mean of the
scales), where it matches the scales on both sides, not only the bottom one. On BCCD that is 320 px, not 288:
+0.014 and +0.012 test AP in two 70-epoch runs, val AP within their spread (docs/own_data.md, e17 and e20).
Past the images' own resolution an input only grows as far as the bottom anchor needs: upsampling adds pixels to
pay for, but no detail. And no further than

- the largest anchor, which the largest objects (99th percentile) must stay within, and
- a cost cap: a step costs about the pixels of its inputs, so the canvas may grow to ``max_area`` times the
  preset's pixels (``--time`` sets it from the budget in :mod:`retinadet.engine.train`).

The input never shrinks below the preset's: a preset's size is the smallest its backbone was tuned for, and
large objects still need the pixels that tell them from clutter. "Typical small object" is per class: the
25th percentile side of each class with enough boxes, then the smallest of those, so that a rare class of
small objects (platelets among red cells) is not averaged away by a common class of large ones.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from retinadet.model.config import AnchorConfig, PreprocessConfig

SMALL_QUANTILE = 25.0  # per class: the "typical small object" of that class
LARGE_QUANTILE = 99.0  # of all boxes: the largest objects, that the largest anchor must still hold
MIN_CLASS_BOXES = 10  # classes with fewer boxes are too few for a percentile (they count in LARGE_QUANTILE)
MAX_AREA = 2.0  # how many times the preset's pixels the input may grow to, when no time budget says otherwise


@dataclass(frozen=True)
class InputSizeChoice:
    """The resize rule chosen, the factor it applies to the preset's sizes, and why."""

    preprocess: PreprocessConfig
    factor: float
    reason: str
    small_side: float | None  # the typical small object's side at the chosen input (px), None without boxes
    large_side: float | None

    @property
    def size(self) -> int:
        return int(self.preprocess.fixed_size or self.preprocess.min_size)

    def to_dict(self) -> dict:
        return {"size": self.size, "min_size": self.preprocess.min_size, "max_size": self.preprocess.max_size,
                "fixed_size": self.preprocess.fixed_size, "factor": round(self.factor, 4), "reason": self.reason,
                "small_object_px": None if self.small_side is None else round(self.small_side, 1),
                "large_object_px": None if self.large_side is None else round(self.large_side, 1)}


def scaled_rule(preprocess: PreprocessConfig, factor: float) -> PreprocessConfig:
    """``preprocess`` with every size times ``factor``, rounded up to a multiple of its size divisor."""
    step = preprocess.size_divisible or 32

    def up(value: int | None) -> int | None:
        return None if value is None else max(step, math.ceil(value * factor / step - 1e-9) * step)

    return dataclasses.replace(preprocess, min_size=up(preprocess.min_size), max_size=up(preprocess.max_size),
                               fixed_size=up(preprocess.fixed_size))


def fit_input_size(sides: np.ndarray, labels: np.ndarray, preprocess: PreprocessConfig, anchors: AnchorConfig,
                   max_area: float = MAX_AREA, native: np.ndarray | None = None) -> InputSizeChoice:
    """The input size for boxes of ``sides`` (sqrt of area, in the pixels of the preset's input ``preprocess``)
    and classes ``labels``. ``max_area``: how many times the preset's pixels the input may grow to. ``native``: per
    box, the factor on the preset's input at which its image is at its own resolution (None: not bounded by it)."""
    seen = np.asarray(sides, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    keep = np.isfinite(seen) & (seen > 0)
    if native is not None and np.size(native) != len(seen):
        raise ValueError(f"native: one factor per box expected ({len(seen)} boxes), got {np.size(native)}")
    native_of = None if native is None else np.asarray(native, dtype=np.float64).reshape(-1)[keep]
    seen, labels = seen[keep], labels[keep]
    if not len(seen):
        return InputSizeChoice(preprocess, 1.0, "no boxes to fit the input size to: the preset's size", None, None)
    bottom_anchor = float(anchors.sizes[0]) * min(anchors.scales)
    middle_anchor = float(anchors.sizes[0]) * float(np.exp(np.mean(np.log(anchors.scales))))  # the scales' geometric mean
    largest_anchor = float(anchors.sizes[-1]) * max(anchors.scales)
    classes = [c for c in np.unique(labels) if (labels == c).sum() >= MIN_CLASS_BOXES]
    small = min((float(np.percentile(seen[labels == c], SMALL_QUANTILE)) for c in classes),
                default=float(np.percentile(seen, SMALL_QUANTILE)))
    large = float(np.percentile(seen, LARGE_QUANTILE))
    cap = math.sqrt(max(1.0, float(max_area)))
    finite = native_of[np.isfinite(native_of)] if native_of is not None else np.empty(0)
    own = float(np.median(finite)) if len(finite) else math.inf  # the typical image at its own resolution
    # The factor at which the typical small object reaches the middle anchor scale; past the images' own
    # resolution, only the bottom scale.
    need = max(bottom_anchor / small, min(middle_anchor / small, own))
    target = middle_anchor if need >= middle_anchor / small else small * need
    room = largest_anchor / large  # the factor at which the largest objects fill the largest anchor
    if target >= middle_anchor:
        aim = f"the smallest anchors' middle scale ({middle_anchor:.0f} px)"
    elif target <= bottom_anchor * (1 + 1e-9):
        aim = (f"the smallest anchor ({bottom_anchor:.0f} px; its middle scale, {middle_anchor:.0f} px, would "
               f"upsample the images past their own resolution, {own:.2f}x)")
    else:
        aim = (f"{target:.0f} px, toward the smallest anchors' middle scale ({middle_anchor:.0f} px) as far as the "
               f"images' own resolution ({own:.2f}x) allows")
    if need <= 1.0:
        factor, why = 1.0, f"the typical small object is {small:.0f} px at the preset's input, at or above {aim}"
    elif need > room:
        factor = max(1.0, min(cap, room))
        why = (f"small objects ({small:.0f} px) need {need:.2f}x to reach {aim}, but the largest ({large:.0f} px) "
               f"would outgrow the largest anchor ({largest_anchor:.0f} px) beyond {room:.2f}x")
    elif need > cap:
        factor = cap
        why = (f"small objects ({small:.0f} px) need {need:.2f}x to reach {aim}; capped at {cap:.2f}x ({max_area:g}x the "
               "pixels) by the time budget: --imgsz for more, or --tile for large images")
    else:
        factor, why = need, f"the typical small object ({small:.0f} px at the preset's input) reaches {aim} at {need:.2f}x"
    rule = scaled_rule(preprocess, factor) if factor > 1.0 else preprocess
    actual = (rule.fixed_size or rule.min_size) / (preprocess.fixed_size or preprocess.min_size)
    return InputSizeChoice(rule, actual, why, small * actual, large * actual)
