"""Heatmap overlays with the detection drawn on top, and grids of them (numpy + Pillow)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def normalize_map(heat: Tensor) -> Tensor:
    """[H, W] -> [0, 1] by its own min and max (a constant map becomes zeros)."""
    heat = heat.float()
    lo, hi = heat.min(), heat.max()
    span = float(hi - lo)
    return (heat - lo) / span if span > 0 else torch.zeros_like(heat)


def colormap(values: np.ndarray, name: str = "jet") -> np.ndarray:
    """[H, W] in [0, 1] -> RGB uint8 [H, W, 3] with a matplotlib colormap."""
    from matplotlib import colormaps

    rgba = colormaps[name](np.clip(values, 0.0, 1.0))
    return (rgba[..., :3] * 255.0 + 0.5).astype(np.uint8)


def image_to_numpy(image: Tensor) -> np.ndarray:
    """uint8 or [0, 1] float [3, H, W] -> uint8 [H, W, 3]."""
    if image.dtype != torch.uint8:
        image = (image.float().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8)
    return image.permute(1, 2, 0).cpu().numpy().copy()


def draw_box(rgb: np.ndarray, box: Sequence[float], label: str | None, color=(255, 255, 255)) -> np.ndarray:
    from PIL import Image, ImageDraw

    pil = Image.fromarray(rgb)
    draw = ImageDraw.Draw(pil)
    width = max(1, round(max(rgb.shape[:2]) / 250))
    x1, y1, x2, y2 = (float(v) for v in box)
    draw.rectangle([x1, y1, x2, y2], outline=color, width=width)
    if label:
        tx, ty = x1, max(0.0, y1 - 12)
        bbox = draw.textbbox((tx, ty), label)
        draw.rectangle(bbox, fill=(0, 0, 0))
        draw.text((tx, ty), label, fill=color)
    return np.asarray(pil).copy()


def overlay(image: Tensor, heat: Tensor, box: Sequence[float] | None = None, label: str | None = None,
            alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """The heatmap (scaled to [0, 1]) blended on the image, with the detection drawn."""
    base = image_to_numpy(image).astype(np.float32)
    colour = colormap(normalize_map(heat).cpu().numpy(), cmap).astype(np.float32)
    blended = np.clip((1 - alpha) * base + alpha * colour + 0.5, 0, 255).astype(np.uint8)
    if box is not None:
        blended = draw_box(blended, box, label)
    return blended


def grid(tiles: Sequence[np.ndarray], columns: int | None = None, pad: int = 4) -> np.ndarray:
    """Equal-size RGB tiles laid out in a grid (white gaps)."""
    if not tiles:
        raise ValueError("no tiles to lay out")
    n = len(tiles)
    cols = columns or min(n, max(1, math.ceil(math.sqrt(n))))
    rows = math.ceil(n / cols)
    h = max(t.shape[0] for t in tiles)
    w = max(t.shape[1] for t in tiles)
    out = np.full((rows * h + (rows + 1) * pad, cols * w + (cols + 1) * pad, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        out[y:y + t.shape[0], x:x + t.shape[1]] = t
    return out


def save_png(rgb: np.ndarray, path: str | os.PathLike) -> Path:
    """Write atomically (temp file + rename)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    Image.fromarray(rgb).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
