"""Anchor-to-ground-truth assignment for a whole batch at once (ground truth padded)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import box_iou

from retinadet.model.config import MatcherConfig

BACKGROUND = -1
IGNORE = -2


def match_anchors(anchors: Tensor, gt_boxes: Tensor, gt_valid: Tensor, gt_crowd: Tensor, cfg: MatcherConfig,
                  per_level: Sequence[int] | None = None) -> Tensor:
    """Index of the matched box per anchor, or BACKGROUND / IGNORE; shape [B, N].

    anchors [N, 4]; gt_boxes [B, M, 4]; gt_valid, gt_crowd [B, M] (padding is not valid);
    per_level: anchors per pyramid level, in order (needed by ``cfg.kind == "atss"``).
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
    if cfg.kind == "atss":
        if per_level is None:
            raise ValueError("ATSS matching needs the number of anchors per level")
        matched = _atss(anchors, gt_boxes, targets, iou, cfg.topk, per_level)
        return _ignore_near_crowd(matched, iou, gt_valid, gt_crowd, cfg.bg_iou)
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
    return _ignore_near_crowd(matched, iou, gt_valid, gt_crowd, cfg.bg_iou)


def _ignore_near_crowd(matched: Tensor, iou: Tensor, gt_valid: Tensor, gt_crowd: Tensor, bg_iou: float) -> Tensor:
    if not bool(gt_crowd.any()):
        return matched
    crowd_iou = iou.masked_fill(~(gt_crowd & gt_valid)[:, :, None], -1.0).max(dim=1).values
    return torch.where((matched == BACKGROUND) & (crowd_iou >= bg_iou), torch.full_like(matched, IGNORE), matched)


def _atss(anchors: Tensor, gt_boxes: Tensor, targets: Tensor, iou: Tensor, topk: int, per_level: Sequence[int]) -> Tensor:
    """Adaptive training sample selection over the whole batch; iou [B, M, N]."""
    b, m, n = iou.shape
    anchor_centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    gt_centres = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2
    dist = torch.cdist(gt_centres.reshape(b * m, 1, 2), anchor_centres[None]).view(b, m, n)
    candidates, start = [], 0
    for count in per_level:
        k = min(topk, count)
        candidates.append(dist[..., start:start + count].topk(k, dim=2, largest=False).indices + start)
        start += count
    cand = torch.cat(candidates, dim=2)  # [B, M, C]
    cand_iou = iou.gather(2, cand)
    threshold = cand_iou.mean(dim=2, keepdim=True) + cand_iou.std(dim=2, keepdim=True, correction=int(cand.shape[2] > 1))
    cx, cy = anchor_centres[cand, 0], anchor_centres[cand, 1]
    x1, y1, x2, y2 = gt_boxes[..., None, :].unbind(-1)
    inside = torch.stack([cx - x1, cy - y1, x2 - cx, y2 - cy], dim=-1).amin(dim=-1) > 0.01
    positive = (cand_iou >= threshold) & inside & targets[:, :, None]
    # An anchor chosen by several boxes goes to the one it overlaps most.
    pos_iou = torch.full_like(iou, -1.0).scatter_(2, cand, torch.where(positive, cand_iou, torch.full_like(cand_iou, -1.0)))
    best_iou, best_idx = pos_iou.max(dim=1)
    return torch.where(best_iou >= 0, best_idx, torch.full_like(best_idx, BACKGROUND))
