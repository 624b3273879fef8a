"""The class colours every drawing and export uses (torch-free, shared with the ONNX runner)."""

from __future__ import annotations

import colorsys


def class_colors(num_classes: int) -> list[tuple[int, int, int]]:
    """A distinct RGB colour per class: hues a golden-ratio step apart, so neighbouring classes never look alike."""
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.85, 0.95)) for i in range(max(1, num_classes))]
