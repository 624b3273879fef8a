"""Detections that remember where they came from: the anchor, class and pyramid level.

To explain one detection we need the exact pre-NMS logit that produced it;
``RetinaNet.postprocess`` reports each detection's flat anchor index and level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor


@dataclass
class Selection:
    """Kept detections of one image, best first, in the resized (network input) frame."""

    boxes: Tensor  # [D, 4] xyxy, resized-image pixels
    scores: Tensor  # [D]
    labels: Tensor  # [D] class index
    anchor_index: Tensor  # [D] index into the flat anchor list (all levels)
    level: Tensor  # [D] pyramid level index, 0 = P3

    def __len__(self) -> int:
        return int(self.scores.numel())

    def subset(self, idx: Tensor) -> "Selection":
        return Selection(self.boxes[idx], self.scores[idx], self.labels[idx], self.anchor_index[idx], self.level[idx])


@torch.no_grad()
def select_detections(
    model,
    cls_logits: Tensor,
    box_deltas: Tensor,
    anchors: Tensor,
    per_level: Sequence[int],
    image_sizes: Tensor,
    padded_size,
    score_thresh: Optional[float] = None,
    nms_iou: Optional[float] = None,
    max_det: Optional[int] = -1,
) -> list[Selection]:
    """``model.postprocess``'s detections as :class:`Selection` objects."""
    dets = model.postprocess(cls_logits, box_deltas, anchors, list(per_level), image_sizes, padded_size,
                             score_thresh=score_thresh, nms_iou=nms_iou, max_det=max_det)
    return [Selection(d["boxes"], d["scores"], d["labels"], d["anchor_index"], d["level"]) for d in dets]
