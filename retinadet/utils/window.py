"""Windowing: how an image of more than 8 bits (16-bit fluorescence or radiology, 32-bit, float) becomes the
network's intensities in [0, 1], without first truncating it to 8 bits.

A rule is a fixed range of raw values (``"0,4095"``: a 12-bit camera) or per-image percentiles (``"p0.5,99.5"``:
each image stretched between its own 0.5th and 99.5th percentile, which suits exposures that vary). The rule is a
field of the model's preprocessing (``preprocess.window``), so checkpoints and the ONNX metadata carry it and every
path (train, val, predict, cam, serve, the ONNX runner) applies the same one. 8-bit images are left as they are.
Torch-free: the ONNX runner uses it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from retinadet.errors import DataError

# The rule a 16-bit dataset gets when none is given: robust to a few hot pixels, and to images whose values all
# fit in 8 bits (a fixed 0-65535 range would make those black).
DEFAULT_WINDOW = "p0.5,99.5"
# Percentiles are estimated on at most this many samples (a strided subset): exact enough, and fast on a slide tile.
_PERCENTILE_SAMPLES = 1 << 20
_SPEC = re.compile(r"^\s*(p)?\s*([-+]?[\d.]+(?:e[-+]?\d+)?)\s*[,:]\s*([-+]?[\d.]+(?:e[-+]?\d+)?)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Window:
    percentile: bool  # True: low/high are percentiles of each image; False: raw values
    low: float
    high: float

    @property
    def spec(self) -> str:
        """The rule as written in configs, checkpoints and ONNX metadata."""
        return f"{'p' if self.percentile else ''}{self.low:g},{self.high:g}"

    def describe(self) -> str:
        if self.percentile:
            return f"each image stretched between its {self.low:g}th and {self.high:g}th percentiles"
        return f"raw values {self.low:g}..{self.high:g} mapped to 0..1"


def parse_window(spec: str | Window | None, field: str = "--window") -> Window | None:
    """``"0,4095"``, ``"p0.5,99.5"``, ``"auto"`` (the default rule) or None / ``"none"`` (8-bit images only)."""
    if spec is None or isinstance(spec, Window):
        return spec
    text = str(spec).strip().lower()
    if text in ("", "none", "off"):
        return None
    if text == "auto":
        text = DEFAULT_WINDOW
    m = _SPEC.match(text)
    if m is None:
        raise DataError(f"{field}: {spec!r} is not a windowing rule: give LOW,HIGH raw values (e.g. 0,4095) or pLOW,HIGH "
                        "percentiles (e.g. p0.5,99.5)")
    percentile, low, high = bool(m.group(1)), float(m.group(2)), float(m.group(3))
    if not low < high:
        raise DataError(f"{field}: {spec!r}: LOW must be below HIGH")
    if percentile and not (0 <= low and high <= 100):
        raise DataError(f"{field}: {spec!r}: percentiles must lie in 0..100")
    return Window(percentile, low, high)


def is_high_bit_depth(array: np.ndarray) -> bool:
    """Whether ``array`` holds more than 8 bits a sample (and so needs a window)."""
    return array.dtype != np.uint8 and array.dtype != np.bool_


def window_limits(array: np.ndarray, window: Window) -> tuple[float, float]:
    """The raw values that map to 0 and 1 for this image."""
    if not window.percentile:
        return window.low, window.high
    flat = array.reshape(-1)
    step = max(1, flat.size // _PERCENTILE_SAMPLES)
    sample = flat[::step].astype(np.float64)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(sample, [window.low, window.high])
    if high <= low:  # a flat image: keep it flat instead of dividing by zero
        high = low + 1.0
    return float(low), float(high)


def apply_window(array: np.ndarray, window: Window, limits: tuple[float, float] | None = None) -> np.ndarray:
    """Raw samples -> float32 in [0, 1] by ``window`` (or the given ``limits``, e.g. those of the whole slide)."""
    low, high = window_limits(array, window) if limits is None else limits
    out = array.astype(np.float32)
    np.nan_to_num(out, copy=False, nan=low, posinf=high, neginf=low)
    out -= np.float32(low)
    out *= np.float32(1.0 / (high - low))
    np.clip(out, 0.0, 1.0, out=out)
    return out


def require_window(window: Window | None, path: str, dtype: np.dtype, peak: float | None = None) -> Window:
    """The window for a high-bit-depth image, or the one-line error of an 8-bit model given one."""
    if window is not None:
        return window
    bits = {np.dtype(np.uint16): "16-bit", np.dtype(np.int16): "16-bit", np.dtype(np.uint32): "32-bit",
            np.dtype(np.int32): "32-bit"}.get(np.dtype(dtype), f"{np.dtype(dtype).name}")
    values = f" (values up to {peak:g})" if peak is not None else ""
    raise DataError(f"{path}: {bits} image{values}, but the model reads 8-bit images and has no windowing rule: "
                    f"give one (--window {DEFAULT_WINDOW} for per-image percentiles, or --window LOW,HIGH raw values), "
                    "or train on these images (train records the rule)")
