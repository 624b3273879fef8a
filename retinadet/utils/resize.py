"""The resize rule: which size an image is resized to before the network. Torch-free, so the
numpy ONNX runner computes exactly the sizes the torch path does.

The scale is ``min(min_size / short side, max_size / long side)`` (torchvision's
GeneralizedRCNNTransform), or ``fixed_size / long side`` for letterbox models; each side is
``floor(side * scale)`` as torchvision computes it, with a 1e-6 margin so that a side the scale
maps exactly onto an integer (the long side of a letterbox) is not lost to float rounding.
The resampler that goes with it is antialiased bilinear (``retinadet.model.preprocess.resize_image``;
``retinadet.export.onnx_runtime.resize_uint8`` computes the same pixels in numpy).
"""

from __future__ import annotations

import math


def resize_scale(height: int, width: int, min_size: float, max_size: float, fixed_size: float | None = None) -> float:
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if fixed_size:
        return fixed_size / max(height, width)
    return min(min_size / min(height, width), max_size / max(height, width))


def resized_size(height: int, width: int, min_size: float, max_size: float,
                 fixed_size: float | None = None) -> tuple[int, int]:
    """(h, w) after the resize."""
    scale = resize_scale(height, width, min_size, max_size, fixed_size)
    return max(1, math.floor(height * scale + 1e-6)), max(1, math.floor(width * scale + 1e-6))


def padded_size(sizes, size_divisible: int, fixed_size: int | None = None) -> tuple[int, int]:
    """The canvas a batch of resized images is zero-padded into (bottom-right): a multiple of
    ``size_divisible``, and at least ``fixed_size`` square for letterbox models."""
    h = max(int(s[0]) for s in sizes)
    w = max(int(s[1]) for s in sizes)
    if fixed_size:
        h, w = max(h, int(fixed_size)), max(w, int(fixed_size))
    d = max(1, int(size_divisible or 1))
    return math.ceil(h / d) * d, math.ceil(w / d) * d
