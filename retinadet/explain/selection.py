"""Detections that remember where they came from: the anchor, class and pyramid level.

``RetinaNet.postprocess`` returns boxes, scores and labels only. To explain one detection we
need the exact pre-NMS logit that produced it, so this module repeats postprocess's
selection step by step (threshold, top-k only where a level overflows, decode, clip,
class-aware batched NMS, per-image ``max_det``) while carrying each candidate's flat anchor
index along. ``tests/explain`` checks that the result equals ``postprocess`` exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms


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
    """Same arguments and result as ``model.postprocess``, plus anchor index and level."""
    inf = model.cfg.inference
    score_thresh = inf.score_thresh if score_thresh is None else score_thresh
    nms_iou = inf.nms_iou if nms_iou is None else nms_iou
    max_det = inf.max_det if max_det == -1 else max_det
    b, _, k = cls_logits.shape
    topk = inf.topk_per_level
    parts = []
    offset = 0
    for lvl, (logits, deltas, level_anchors) in enumerate(
        zip(cls_logits.split(list(per_level), dim=1), box_deltas.split(list(per_level), dim=1), anchors.split(list(per_level)))
    ):
        scores = torch.sigmoid(logits.float()).flatten(1)
        above = scores > score_thresh
        if topk is not None and int(above.sum(dim=1).max()) > topk:
            top_scores, top_idx = scores.topk(topk, dim=1)
            img_idx, col = (top_scores > score_thresh).nonzero(as_tuple=True)
            flat_idx = top_idx[img_idx, col]
        else:
            img_idx, flat_idx = above.nonzero(as_tuple=True)
        anchor_idx = flat_idx // k
        boxes = model.box_coder.decode(deltas[img_idx, anchor_idx].float(), level_anchors[anchor_idx])
        level = torch.full_like(anchor_idx, lvl)
        parts.append((img_idx, boxes, scores[img_idx, flat_idx], flat_idx % k, anchor_idx + offset, level))
        offset += logits.shape[1]
    img_idx, boxes, scores, labels, anchor_index, level = (torch.cat(t) for t in zip(*parts))
    boxes = model._clip(boxes, image_sizes[img_idx], padded_size)
    keep = batched_nms(boxes, scores, img_idx * k + labels, nms_iou)
    keep = keep[torch.sort(img_idx[keep], stable=True).indices]
    counts = torch.bincount(img_idx[keep], minlength=b)
    if max_det is not None:
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(keep.numel(), device=keep.device) - starts[img_idx[keep]]
        keep = keep[rank < max_det]
        counts = counts.clamp(max=max_det)
    splits = counts.tolist()
    return [
        Selection(*fields)
        for fields in zip(*(t[keep].split(splits) for t in (boxes, scores, labels, anchor_index, level)))
    ]
