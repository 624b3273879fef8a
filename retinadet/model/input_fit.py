"""Fit the input size to a dataset's objects: the smallest input at which its small objects reach the anchors.

A detector sees an object at ``side * resize_scale`` pixels. The smallest anchor (``sizes[0] * min(scales)``,
on the stride-8 P3 grid) is where localisation ends: an object much smaller than it matches no anchor at
IoU 0.5, and its box regresses from an anchor several times its size. So the input grows until the typical
small object reaches that anchor, and no further than

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
                   max_area: float = MAX_AREA) -> InputSizeChoice:
    """The input size for boxes of ``sides`` (sqrt of area, in the pixels of the preset's input ``preprocess``)
    and classes ``labels``. ``max_area``: how many times the preset's pixels the input may grow to."""
    seen = np.asarray(sides, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    keep = np.isfinite(seen) & (seen > 0)
    seen, labels = seen[keep], labels[keep]
    if not len(seen):
        return InputSizeChoice(preprocess, 1.0, "no boxes to fit the input size to: the preset's size", None, None)
    smallest_anchor = float(anchors.sizes[0]) * min(anchors.scales)
    largest_anchor = float(anchors.sizes[-1]) * max(anchors.scales)
    classes = [c for c in np.unique(labels) if (labels == c).sum() >= MIN_CLASS_BOXES]
    small = min((float(np.percentile(seen[labels == c], SMALL_QUANTILE)) for c in classes),
                default=float(np.percentile(seen, SMALL_QUANTILE)))
    large = float(np.percentile(seen, LARGE_QUANTILE))
    cap = math.sqrt(max(1.0, float(max_area)))
    need = smallest_anchor / small  # the factor at which the typical small object reaches the smallest anchor
    room = largest_anchor / large  # the factor at which the largest objects fill the largest anchor
    if need <= 1.0:
        factor, why = 1.0, (f"the typical small object is {small:.0f} px at the preset's input, at or above the "
                            f"smallest anchor ({smallest_anchor:.0f} px)")
    elif need > room:
        factor = max(1.0, min(cap, room))
        why = (f"small objects ({small:.0f} px) need {need:.2f}x to reach the smallest anchor "
               f"({smallest_anchor:.0f} px), but the largest ({large:.0f} px) would outgrow the largest anchor "
               f"({largest_anchor:.0f} px) beyond {room:.2f}x")
    elif need > cap:
        factor = cap
        why = (f"small objects ({small:.0f} px) need {need:.2f}x to reach the smallest anchor ({smallest_anchor:.0f} px); "
               f"capped at {cap:.2f}x ({max_area:g}x the pixels) by the time budget: --imgsz for more, or --tile for "
               "large images")
    else:
        factor, why = need, (f"the typical small object ({small:.0f} px at the preset's input) reaches the smallest "
                             f"anchor ({smallest_anchor:.0f} px) at {need:.2f}x")
    rule = scaled_rule(preprocess, factor) if factor > 1.0 else preprocess
    actual = (rule.fixed_size or rule.min_size) / (preprocess.fixed_size or preprocess.min_size)
    return InputSizeChoice(rule, actual, why, small * actual, large * actual)
