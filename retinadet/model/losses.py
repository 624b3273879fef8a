"""Classification by focal loss or quality focal loss, boxes by L1, smooth-L1, GIoU, DIoU or CIoU; batched.

Quality focal loss (Li et al., 2020, "Generalized Focal Loss") trains the class score of a positive anchor
towards the IoU of its decoded box with its object, so that at inference the score ranks boxes by how well
they fit too: NMS then keeps the tighter of two overlapping boxes, which is what AP at IoU 0.75 rewards.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import (
    complete_box_iou_loss,
    distance_box_iou_loss,
    generalized_box_iou_loss,
    sigmoid_focal_loss,
)

from retinadet.model.box_coder import BoxCoder
from retinadet.model.config import LossConfig
from retinadet.model.matching import IGNORE

IOU_LOSSES = {"giou": generalized_box_iou_loss, "diou": distance_box_iou_loss, "ciou": complete_box_iou_loss}


def quality_focal_loss(logits: Tensor, target: Tensor, beta: float = 2.0) -> Tensor:
    """Element-wise QFL: binary cross-entropy against a soft target in [0, 1] (the IoU for the object's class at a
    positive anchor, 0 elsewhere), scaled by ``|target - sigmoid(logits)| ** beta`` so that well-scored anchors,
    most of them easy negatives, count little (focal loss's role)."""
    scale = (target - logits.sigmoid()).abs().pow(beta)
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none") * scale


def _paired_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of a[i] with b[i] (box_iou's diagonal, without its [N, N] matrix)."""
    lt, rb = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda x: (x[:, 2:] - x[:, :2]).clamp(min=0).prod(-1)  # noqa: E731
    return inter / (area(a) + area(b) - inter).clamp(min=1e-9)


def detection_losses(
    cls_logits: Tensor,
    box_deltas: Tensor,
    anchors: Tensor,
    matched: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    box_coder: BoxCoder,
    cfg: LossConfig,
) -> dict[str, Tensor]:
    """cls_logits [B, N, K]; box_deltas [B, N, 4]; anchors [N, 4]; matched [B, N] from
    ``match_anchors``; gt_boxes [B, M, 4]; gt_labels [B, M]. Returns scalar losses."""
    b, n, k = cls_logits.shape
    fg = matched >= 0
    valid = matched != IGNORE
    num_fg = fg.sum(dim=1)
    safe_idx = matched.clamp(min=0)

    if gt_labels.shape[1] > 0:
        anchor_labels = torch.gather(gt_labels, 1, safe_idx).clamp(min=0)
    else:
        anchor_labels = torch.zeros_like(matched)

    img_idx, anchor_idx = fg.nonzero(as_tuple=True)
    box_per_image = cls_logits.new_zeros(b)
    quality = None
    if img_idx.numel() > 0:
        target_boxes = gt_boxes[img_idx, matched[img_idx, anchor_idx]]
        fg_anchors = anchors[anchor_idx]
        pred = box_deltas[img_idx, anchor_idx]
        decoded = box_coder.decode(pred, fg_anchors) if cfg.box_loss in IOU_LOSSES or cfg.cls_loss == "qfl" else None
        if cfg.box_loss in IOU_LOSSES:
            per_box = IOU_LOSSES[cfg.box_loss](decoded, target_boxes, reduction="none")
        else:
            target_deltas = box_coder.encode(target_boxes, fg_anchors)
            if cfg.box_loss == "l1":
                per_box = F.l1_loss(pred, target_deltas, reduction="none").sum(-1)
            else:
                per_box = F.smooth_l1_loss(pred, target_deltas, beta=cfg.smooth_l1_beta, reduction="none").sum(-1)
        box_per_image = box_per_image.index_add(0, img_idx, per_box.to(box_per_image.dtype))
        if cfg.cls_loss == "qfl":
            # The score target is the IoU reached, not a gradient path into the boxes (as in GFL).
            quality = _paired_iou(decoded.detach(), target_boxes).clamp(min=0.0).to(cls_logits.dtype)

    if cfg.cls_loss == "qfl":
        target = torch.zeros_like(cls_logits)
        if quality is not None:
            target[img_idx, anchor_idx, anchor_labels[img_idx, anchor_idx]] = quality
        cls_elem = quality_focal_loss(cls_logits, target, cfg.qfl_beta)
    else:
        onehot = F.one_hot(anchor_labels, k).to(cls_logits.dtype) * fg.unsqueeze(-1).to(cls_logits.dtype)
        cls_elem = sigmoid_focal_loss(cls_logits, onehot, alpha=cfg.alpha, gamma=cfg.gamma, reduction="none")
    cls_per_image = (cls_elem * valid.unsqueeze(-1).to(cls_elem.dtype)).sum(dim=(1, 2))

    if cfg.normalize == "per_image":
        denom = num_fg.clamp(min=1).to(cls_per_image.dtype)
        cls_loss = (cls_per_image / denom).mean()
        box_loss = (box_per_image / denom).mean()
    else:
        denom = num_fg.sum().clamp(min=1).to(cls_per_image.dtype)
        cls_loss = cls_per_image.sum() / denom
        box_loss = box_per_image.sum() / denom
    return {"cls": cls_loss, "box": cfg.box_weight * box_loss}
