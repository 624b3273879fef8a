"""Encoding of boxes as (dx, dy, dw, dh) offsets from anchors, and back.

Works on any leading shape ([..., 4]), so a whole batch is coded in one call.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class BoxCoder:
    def __init__(self, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), clamp: float | None = None, scale_mode: str = "divide"):
        if scale_mode not in ("divide", "multiply_std"):
            raise ValueError(f"box coder scale_mode must be 'divide' or 'multiply_std', got '{scale_mode}'")
        self.weights = tuple(float(w) for w in weights)
        self.clamp = clamp
        self.scale_mode = scale_mode

    def encode(self, boxes: Tensor, anchors: Tensor) -> Tensor:
        wx, wy, ww, wh = self.weights
        aw = anchors[..., 2] - anchors[..., 0]
        ah = anchors[..., 3] - anchors[..., 1]
        acx = anchors[..., 0] + 0.5 * aw
        acy = anchors[..., 1] + 0.5 * ah
        gw = boxes[..., 2] - boxes[..., 0]
        gh = boxes[..., 3] - boxes[..., 1]
        gcx = boxes[..., 0] + 0.5 * gw
        gcy = boxes[..., 1] + 0.5 * gh
        return torch.stack(
            [wx * (gcx - acx) / aw, wy * (gcy - acy) / ah, ww * torch.log(gw / aw), wh * torch.log(gh / ah)], dim=-1
        )

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        deltas = deltas.to(anchors.dtype) if deltas.dtype != anchors.dtype else deltas
        aw = anchors[..., 2] - anchors[..., 0]
        ah = anchors[..., 3] - anchors[..., 1]
        acx = anchors[..., 0] + 0.5 * aw
        acy = anchors[..., 1] + 0.5 * ah
        if self.scale_mode == "divide":
            scaled = deltas / deltas.new_tensor(self.weights)
        else:
            scaled = deltas * deltas.new_tensor([1.0 / w for w in self.weights])
        dx, dy, dw, dh = scaled.unbind(-1)
        if self.clamp is not None:
            dw = dw.clamp(max=self.clamp)
            dh = dh.clamp(max=self.clamp)
        cx = dx * aw + acx
        cy = dy * ah + acy
        half_w = 0.5 * (torch.exp(dw) * aw)
        half_h = 0.5 * (torch.exp(dh) * ah)
        return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)
