"""Anchor boxes for pyramid levels P3..P7, cached per (sizes, device, dtype).

Order matches torchvision and the seed pipeline: level, then row, then column, then
the anchors of one location, ratio-major and scale-minor (a = ratio * n_scales + scale).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from retinadet.model.config import AnchorConfig

LEVELS = (3, 4, 5, 6, 7)


def base_anchors(cfg: AnchorConfig, size: float) -> Tensor:
    """Anchors centred on (0, 0) for one level, shape [A, 4], float64.

    Built in float64 and cast once at the end, so unrounded anchors carry no float32
    rounding of intermediate products (as the numpy-based seed pipeline computes them)."""
    sizes = [size * s for s in cfg.scales]
    if cfg.truncate_sizes:
        sizes = [float(int(s)) for s in sizes]
    scales = torch.as_tensor(sizes, dtype=torch.float64)
    ratios = torch.as_tensor(cfg.ratios, dtype=torch.float64)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1.0 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    anchors = torch.stack([-ws, -hs, ws, hs], dim=1) / 2
    return anchors.round() if cfg.round_base else anchors


def level_strides(cfg: AnchorConfig, image_size: Sequence[int], grid_sizes: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    if cfg.stride_mode == "nominal":
        return [(2**lvl, 2**lvl) for lvl in LEVELS[: len(grid_sizes)]]
    return [(image_size[0] // g[0], image_size[1] // g[1]) for g in grid_sizes]


def grid_anchors(cfg: AnchorConfig, image_size: Sequence[int], grid_sizes: Sequence[Sequence[int]]) -> list[Tensor]:
    """Per-level anchors [H_l * W_l * A, 4] for a padded image of ``image_size`` (H, W)."""
    out = []
    for size, (gh, gw), (sh, sw) in zip(cfg.sizes, grid_sizes, level_strides(cfg, image_size, grid_sizes)):
        base = base_anchors(cfg, size)
        shift_x = (torch.arange(gw, dtype=torch.float64) + cfg.center_offset) * sw
        shift_y = (torch.arange(gh, dtype=torch.float64) + cfg.center_offset) * sh
        yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
        shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)
        out.append((shifts + base.view(1, -1, 4)).reshape(-1, 4).float())
    return out


def feature_sizes_for(image_size: Sequence[int]) -> list[tuple[int, int]]:
    """Grid size of P3..P7 for a padded input, as a stride-2 pyramid produces it."""
    return [(math.ceil(image_size[0] / 2**lvl), math.ceil(image_size[1] / 2**lvl)) for lvl in LEVELS]


def anchors_for_image_size(cfg: AnchorConfig, image_size: Sequence[int]) -> Tensor:
    """All anchors [N, 4] for a padded input of ``image_size`` (H, W), without running a model."""
    return torch.cat(grid_anchors(cfg, image_size, feature_sizes_for(image_size)))


class AnchorGenerator(nn.Module):
    """Builds anchors once per input geometry and reuses them on every later step."""

    def __init__(self, cfg: AnchorConfig, max_cache: int = 32):
        super().__init__()
        self.cfg = cfg
        self.max_cache = max_cache
        self._cache: dict[tuple, tuple[Tensor, list[int]]] = {}

    @property
    def num_anchors(self) -> int:
        return self.cfg.num_anchors

    def forward(self, image_size: Sequence[int], grid_sizes: Sequence[Sequence[int]], device: torch.device,
                dtype: torch.dtype) -> tuple[Tensor, list[int]]:
        """Returns all anchors [N, 4] and the number of anchors on each level."""
        key = (tuple(int(s) for s in image_size), tuple(tuple(int(v) for v in g) for g in grid_sizes), device, dtype)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        levels = grid_anchors(self.cfg, key[0], key[1])
        anchors = torch.cat(levels).to(device=device, dtype=dtype)
        entry = (anchors, [lv.shape[0] for lv in levels])
        if len(self._cache) >= self.max_cache:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = entry
        return entry
