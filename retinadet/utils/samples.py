"""Decoded samples (any dtype, 1-4 channels) -> the RGB array every path works on: uint8 for 8-bit images, float32
in [0, 1] by the windowing rule for deeper ones. Torch-free: the data layer and the exported-model runners share it.

Channels: 1 is gray (repeated), 2 are gray+alpha when 8-bit (a decoder's LA) and two stains or fluorophores when
deeper (the third channel left at zero), 3 are RGB, 4 are RGBA (alpha dropped); more are refused.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from retinadet.errors import DataError
from retinadet.utils.window import Window, apply_window, is_high_bit_depth, parse_window, require_window

# Pillow's modes of more than 8 bits a sample.
DEEP_PIL_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
TIFF_SUFFIXES = (".tif", ".tiff")


def to_rgb(samples: np.ndarray, path: str, window: Window | str | None, limits: tuple[float, float] | None = None
           ) -> np.ndarray:
    """HxW or HxWxC samples -> HxWx3, uint8 (8-bit samples) or float32 in [0, 1] (deeper ones, windowed; an 8-bit
    model, without a rule, is refused naming ``path``). ``limits``: the raw values of 0 and 1 fixed for a whole slide."""
    if samples.ndim == 2:
        samples = samples[..., None]
    if samples.ndim != 3 or samples.shape[0] == 0 or samples.shape[1] == 0:
        raise DataError(f"{path}: decoded to an unexpected shape {samples.shape}")
    channels = samples.shape[2]
    if channels > 4:
        raise DataError(f"{path}: {channels} channels; images of 1 (gray), 2, 3 (RGB) or 4 (RGBA) channels are read")
    if not is_high_bit_depth(samples):
        if channels in (1, 2):  # gray, gray+alpha
            return np.repeat(samples[..., :1], 3, axis=2)
        return np.ascontiguousarray(samples[..., :3])
    if limits is None:
        rule = require_window(parse_window(window), path, samples.dtype, float(np.nanmax(samples[::8, ::8])))
    else:
        rule = parse_window(window)
    values = apply_window(samples[..., :3], rule, limits)
    if values.shape[2] == 1:
        return np.repeat(values, 3, axis=2)
    if values.shape[2] == 2:
        return np.concatenate([values, np.zeros_like(values[..., :1])], axis=2)
    return values


def read_tiff_samples(path: str | os.PathLike) -> np.ndarray | None:
    """A TIFF's first image as HxWxC samples of its own dtype, through tifffile (Pillow reads 16-bit RGB TIFFs as
    8-bit, and multi-channel ones not at all); None when tifffile is absent or the file is a plain 8-bit gray or RGB
    one, which Pillow reads with its orientation tag."""
    try:
        import tifffile
    except ImportError:
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes, dtype = series.axes, series.dtype
            if dtype == np.uint8 and axes in ("YX", "YXS"):
                return None
            data = series.asarray(level=0) if series.levels else series.asarray()
    except Exception as exc:  # noqa: BLE001 - tifffile raises many kinds for a bad file
        raise DataError(f"{path}: unreadable TIFF ({str(exc) or type(exc).__name__})") from exc
    return tiff_to_hwc(data, axes, path)


def tiff_to_hwc(data: np.ndarray, axes: str, path: str | os.PathLike) -> np.ndarray:
    """tifffile's array with its axes string -> HxWxC (a channel axis C/S/Q moved last; one leading plane taken)."""
    axes = axes.upper()
    for name in ("T", "Z"):  # time points or focal planes: the first is read
        if name in axes and len(axes) > 2:
            data = np.take(data, 0, axis=axes.index(name))
            axes = axes.replace(name, "")
    if axes == "YX":
        return data[..., None]
    if axes == "YXS":
        return data
    if len(axes) == 3 and axes.endswith("YX") and axes[0] in "CSQI":
        return np.moveaxis(data, 0, -1)
    raise DataError(f"{path}: TIFF axes {axes} {tuple(data.shape)}: expected gray, RGB or channels x height x width")


def is_tiff(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in TIFF_SUFFIXES
