"""Anchor-to-ground-truth assignment for a whole batch at once (ground truth padded)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou

from retinadet.model.config import MatcherConfig

BACKGROUND = -1
IGNORE = -2


def match_anchors(anchors: Tensor, gt_boxes: Tensor, gt_valid: Tensor, gt_crowd: Tensor, cfg: MatcherConfig) -> Tensor:
    """Index of the matched box per anchor, or BACKGROUND / IGNORE; shape [B, N].

    anchors [N, 4]; gt_boxes [B, M, 4]; gt_valid, gt_crowd [B, M] (padding is not valid).
    Crowd boxes never become targets; anchors overlapping them by bg_iou or more are ignored.
    Low-quality matching follows torchvision's Matcher: each box's best anchors keep their
    argmax box even below fg_iou.
    """
    b, m = gt_boxes.shape[:2]
    n = anchors.shape[0]
    if m == 0:
        return torch.full((b, n), BACKGROUND, dtype=torch.long, device=anchors.device)
    iou = box_iou(gt_boxes.reshape(-1, 4), anchors).view(b, m, n)
    targets = gt_valid & ~gt_crowd
    match_iou = iou.masked_fill(~targets[:, :, None], -1.0)
    best_iou, best_idx = match_iou.max(dim=1)
    matched = best_idx.clone()
    matched[best_iou < cfg.fg_iou] = IGNORE
    matched[best_iou < cfg.bg_iou] = BACKGROUND
    if cfg.allow_low_quality:
        best_per_gt = match_iou.max(dim=2).values
        is_best = (match_iou == best_per_gt[:, :, None]) & targets[:, :, None]
        restore = is_best.any(dim=1)
        matched = torch.where(restore, best_idx, matched)
    if bool(gt_crowd.any()):
        crowd_iou = iou.masked_fill(~(gt_crowd & gt_valid)[:, :, None], -1.0).max(dim=1).values
        matched = torch.where((matched == BACKGROUND) & (crowd_iou >= cfg.bg_iou), torch.full_like(matched, IGNORE), matched)
    return matched
