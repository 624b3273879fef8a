"""Focal loss for classification and L1 / smooth-L1 / GIoU for boxes, batched."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from retinadet.model.box_coder import BoxCoder
from retinadet.model.config import LossConfig
from retinadet.model.matching import IGNORE


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
    target = F.one_hot(anchor_labels, k).to(cls_logits.dtype) * fg.unsqueeze(-1).to(cls_logits.dtype)
    focal = sigmoid_focal_loss(cls_logits, target, alpha=cfg.alpha, gamma=cfg.gamma, reduction="none")
    cls_per_image = (focal * valid.unsqueeze(-1).to(focal.dtype)).sum(dim=(1, 2))

    img_idx, anchor_idx = fg.nonzero(as_tuple=True)
    box_per_image = cls_per_image.new_zeros(b)
    if img_idx.numel() > 0:
        target_boxes = gt_boxes[img_idx, matched[img_idx, anchor_idx]]
        fg_anchors = anchors[anchor_idx]
        pred = box_deltas[img_idx, anchor_idx]
        if cfg.box_loss == "giou":
            per_box = generalized_box_iou_loss(box_coder.decode(pred, fg_anchors), target_boxes, reduction="none")
        else:
            target_deltas = box_coder.encode(target_boxes, fg_anchors)
            if cfg.box_loss == "l1":
                per_box = F.l1_loss(pred, target_deltas, reduction="none").sum(-1)
            else:
                per_box = F.smooth_l1_loss(pred, target_deltas, beta=cfg.smooth_l1_beta, reduction="none").sum(-1)
        box_per_image = box_per_image.index_add(0, img_idx, per_box.to(box_per_image.dtype))

    if cfg.normalize == "per_image":
        denom = num_fg.clamp(min=1).to(cls_per_image.dtype)
        cls_loss = (cls_per_image / denom).mean()
        box_loss = (box_per_image / denom).mean()
    else:
        denom = num_fg.sum().clamp(min=1).to(cls_per_image.dtype)
        cls_loss = cls_per_image.sum() / denom
        box_loss = box_per_image.sum() / denom
    return {"cls": cls_loss, "box": cfg.box_weight * box_loss}
