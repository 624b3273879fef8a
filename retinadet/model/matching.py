"""Anchor-to-ground-truth assignment for a whole batch at once (ground truth padded)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import box_iou

from retinadet.model.config import MatcherConfig

BACKGROUND = -1
IGNORE = -2


def anchor_iou(boxes: Tensor, anchors: Tensor, per_level: Sequence[int] | None = None, shapes: int | None = None) -> Tensor:
    """IoU [G, N] of boxes [G, 4] with anchors [N, 4]: torchvision's ``box_iou``, bit for bit.

    Anchors laid out on grids (level, row, column, ``shapes`` per location; ``anchors.py``) take a faster path:
    along a grid, an anchor's x extent depends only on its column and its y extent only on its row, so the
    overlaps' widths [G, W, A] and heights [G, H, A] are small and one broadcast product gives the intersections.
    That is 4 passes over the [G, N] result where ``box_iou`` makes about 12, and it was 0.3 of a training
    step of the ``fast`` model. A level that is not such a grid goes through ``box_iou``.
    """
    if per_level is None or shapes is None or boxes.shape[0] == 0:
        return box_iou(boxes, anchors)
    out = torch.empty(boxes.shape[0], anchors.shape[0], dtype=torch.promote_types(boxes.dtype, anchors.dtype),
                      device=boxes.device)
    area_g = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[:, None, None, None]
    gx, gy = boxes[:, None, None, 0::2], boxes[:, None, None, 1::2]  # [G, 1, 1, 2]: (x1, x2), (y1, y2)
    start = 0
    for count in per_level:
        level = anchors[start:start + count]
        grid = _grid(level, shapes)
        if grid is None:
            out[:, start:start + count] = box_iou(boxes, level)
        else:
            ax, ay = grid  # [W, A, 2] column extents, [H, A, 2] row extents
            w = (torch.minimum(gx[..., 1], ax[None, :, :, 1]) - torch.maximum(gx[..., 0], ax[None, :, :, 0])).clamp_(min=0)
            h = (torch.minimum(gy[..., 1], ay[None, :, :, 1]) - torch.maximum(gy[..., 0], ay[None, :, :, 0])).clamp_(min=0)
            area_a = (ay[:, None, :, 1] - ay[:, None, :, 0]) * (ax[None, :, :, 1] - ax[None, :, :, 0])  # [H, W, A]
            inter = out[:, start:start + count].view(-1, ay.shape[0], ax.shape[0], shapes)
            torch.mul(h[:, :, None], w[:, None], out=inter)
            inter.div_((area_g + area_a).sub_(inter))
        start += count
    return out


def _grid(level: Tensor, shapes: int) -> tuple[Tensor, Tensor] | None:
    """(column x extents [W, A, 2], row y extents [H, A, 2]) when the level's anchors [H * W * A, 4] are a grid."""
    if shapes <= 0 or level.shape[0] % shapes:
        return None
    y1 = level[::shapes, 1]
    width = int((y1 == y1[0]).sum())  # positions on the first row
    if width == 0 or level.shape[0] % (width * shapes):
        return None
    grid = level.view(-1, width, shapes, 4)
    ax, ay = grid[0, :, :, 0::2], grid[:, 0, :, 1::2]
    if not (torch.equal(grid[..., 0::2], ax.expand_as(grid[..., 0::2]))
            and torch.equal(grid[..., 1::2], ay[:, None].expand_as(grid[..., 1::2]))):
        return None
    return ax, ay


def match_anchors(anchors: Tensor, gt_boxes: Tensor, gt_valid: Tensor, gt_crowd: Tensor, cfg: MatcherConfig,
                  per_level: Sequence[int] | None = None, shapes: int | None = None) -> Tensor:
    """Index of the matched box per anchor, or BACKGROUND / IGNORE; shape [B, N].

    anchors [N, 4]; gt_boxes [B, M, 4]; gt_valid, gt_crowd [B, M] (padding is not valid);
    per_level: anchors per pyramid level, in order (needed by ``cfg.kind == "atss"``); with ``shapes``, the
    anchors per location, the IoU takes its grid path (``anchor_iou``).
    Crowd boxes never become targets; anchors overlapping them by bg_iou or more are ignored.
    Low-quality matching follows torchvision's Matcher: each box's best anchors keep their
    argmax box even below fg_iou.
    """
    b, m = gt_boxes.shape[:2]
    n = anchors.shape[0]
    if m == 0:
        return torch.full((b, n), BACKGROUND, dtype=torch.long, device=anchors.device)
    iou = anchor_iou(gt_boxes.reshape(-1, 4), anchors, per_level, shapes).view(b, m, n)
    targets = gt_valid & ~gt_crowd
    crowd_iou = _crowd_iou(iou, gt_valid & gt_crowd)
    if cfg.kind == "atss":
        if per_level is None:
            raise ValueError("ATSS matching needs the number of anchors per level")
        return _ignore_near_crowd(_atss(anchors, gt_boxes, targets, iou, cfg.topk, per_level), crowd_iou, cfg.bg_iou)
    iou[~targets] = -1.0  # padding and crowd rows, in place: the [B, M, N] array is the step's largest
    best_iou, best_idx = iou.max(dim=1)
    matched = best_idx.clone()
    matched[best_iou < cfg.fg_iou] = IGNORE
    matched[best_iou < cfg.bg_iou] = BACKGROUND
    if cfg.allow_low_quality:
        best_per_gt = iou.max(dim=2).values
        best_per_gt[~targets] = 2.0  # above any IoU: rows that are not targets restore nothing
        restore = (iou == best_per_gt[:, :, None]).any(dim=1)
        matched = torch.where(restore, best_idx, matched)
    return _ignore_near_crowd(matched, crowd_iou, cfg.bg_iou)


def _crowd_iou(iou: Tensor, crowd: Tensor) -> Tensor | None:
    """Each anchor's highest IoU with a crowd box [B, N], or None without crowd boxes."""
    if not bool(crowd.any()):
        return None
    return iou.masked_fill(~crowd[:, :, None], -1.0).max(dim=1).values


def _ignore_near_crowd(matched: Tensor, crowd_iou: Tensor | None, bg_iou: float) -> Tensor:
    if crowd_iou is None:
        return matched
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
