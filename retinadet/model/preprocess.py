"""Inference preprocessing: resize keeping the aspect ratio, normalise, pad into a batch.

Follows torchvision's GeneralizedRCNNTransform (normalise, bilinear resize by one scale
factor, zero padding bottom-right to a multiple of the stride), so imported torchvision
weights see exactly the input they were trained on.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from retinadet.model.config import PreprocessConfig


def resize_scale(height: int, width: int, cfg: PreprocessConfig) -> float:
    if cfg.fixed_size is not None:
        return cfg.fixed_size / max(height, width)
    return min(cfg.min_size / min(height, width), cfg.max_size / max(height, width))


def resize_normalized(image: Tensor, cfg: PreprocessConfig) -> Tensor:
    """A normalised float image [3, H, W] resized by ``resize_scale``."""
    scale = resize_scale(image.shape[-2], image.shape[-1], cfg)
    return F.interpolate(image[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True, align_corners=False)[0]


def padded_size(sizes: Sequence[Sequence[int]], cfg: PreprocessConfig) -> tuple[int, int]:
    if cfg.fixed_size is not None:
        side = int(math.ceil(cfg.fixed_size / cfg.size_divisible) * cfg.size_divisible)
        return side, side
    h = max(s[0] for s in sizes)
    w = max(s[1] for s in sizes)
    d = cfg.size_divisible
    return int(math.ceil(h / d) * d), int(math.ceil(w / d) * d)


def preprocess_batch(images: Sequence[Tensor], cfg: PreprocessConfig, device: torch.device) -> tuple[Tensor, Tensor]:
    """uint8 or [0, 1] float images [3, h, w] -> (normalised padded batch, resized sizes [B, 2])."""
    mean = torch.tensor(cfg.mean, device=device).view(-1, 1, 1)
    std = torch.tensor(cfg.std, device=device).view(-1, 1, 1)
    resized = []
    for img in images:
        x = img.to(device)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        resized.append(resize_normalized((x - mean) / std, cfg))
    sizes = [tuple(r.shape[-2:]) for r in resized]
    h, w = padded_size(sizes, cfg)
    batch = torch.zeros(len(resized), resized[0].shape[0], h, w, device=device)
    for i, r in enumerate(resized):
        batch[i, :, : r.shape[-2], : r.shape[-1]] = r
    return batch, torch.tensor(sizes, dtype=torch.long, device=device)


def boxes_to_original(boxes: Tensor, resized_hw: Sequence[int], original_hw: Sequence[int]) -> Tensor:
    """Maps boxes from resized-image pixels back to the original image (as torchvision)."""
    ratio_h = torch.tensor(original_hw[0], dtype=torch.float32, device=boxes.device) / torch.tensor(resized_hw[0], dtype=torch.float32, device=boxes.device)
    ratio_w = torch.tensor(original_hw[1], dtype=torch.float32, device=boxes.device) / torch.tensor(resized_hw[1], dtype=torch.float32, device=boxes.device)
    return boxes * torch.stack([ratio_w, ratio_h, ratio_w, ratio_h])
