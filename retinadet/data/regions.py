"""Images read by region: a large tiled TIFF (pyramidal TIFF, BigTIFF) is never decoded whole.

:class:`RegionImage` looks like a uint8 ``[3, H, W]`` tensor to sliced inference: its ``shape`` is the image's, and
``image[:, y1:y2, x1:x2]`` decodes only the TIFF tiles under that region (tifffile's zarr store of level 0), so the
memory of a run is the tiles in flight, not the slide. Optional: tifffile and zarr (``pip install "retinadet[tiff]"``).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from retinadet.errors import DataError

# A tiled TIFF whose decoded pixels would take this much or more is read by region; a smaller one is decoded whole.
REGION_BYTES = 256 * 2**20
_TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")


class RegionImage:
    """Level 0 of a tiled TIFF, read region by region (see the module docstring). 8-bit samples only; 16-bit
    images go through :func:`retinadet.data.images.read_image`."""

    def __init__(self, path: str | os.PathLike):
        import tifffile
        import zarr

        self.path = Path(path)
        try:
            self._tif = tifffile.TiffFile(self.path)
            series = self._tif.series[0]
            self._array = zarr.open(series.aszarr(level=0), mode="r")
        except Exception as exc:  # noqa: BLE001 - tifffile raises many kinds for a bad file
            raise DataError(f"{self.path}: unreadable TIFF ({str(exc) or type(exc).__name__})") from exc
        shape, axes = self._array.shape, series.axes
        if series.dtype != np.uint8:
            self.close()
            raise DataError(f"{self.path}: {series.dtype} samples; only 8-bit TIFFs are read by region")
        if axes in ("YX",):
            self._channels = None
        elif axes in ("YXS",) and shape[-1] in (3, 4):
            self._channels = slice(0, 3)
        elif axes == "YXS" and shape[-1] == 1:
            self._channels = None
        else:
            self.close()
            raise DataError(f"{self.path}: TIFF axes {axes} {tuple(shape)}: expected gray or RGB(A) pixels (YX or YXS)")
        self.height, self.width = int(shape[0]), int(shape[1])
        # Decoded file tiles, least recently used first: three rows of them, so the overlapping slices of sliced
        # inference (along a row, and the row below) decode each file tile once.
        self._chunk = (int(self._array.chunks[0]), int(self._array.chunks[1]))
        self._tiles: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._keep = 3 * (-(-self.width // self._chunk[1]))

    @property
    def shape(self) -> tuple[int, int, int]:
        return (3, self.height, self.width)

    def __len__(self) -> int:
        return 3

    def __getitem__(self, key) -> torch.Tensor:
        """``[:, y1:y2, x1:x2]``: that region as a uint8 [3, h, w] tensor (only its tiles are decoded)."""
        if not (isinstance(key, tuple) and len(key) == 3 and key[0] == slice(None)):
            raise TypeError("a RegionImage is read as image[:, y1:y2, x1:x2]")
        rows, cols = key[1], key[2]
        y1, y2, _ = rows.indices(self.height)
        x1, x2, _ = cols.indices(self.width)
        if rows.step not in (None, 1) or cols.step not in (None, 1) or y2 <= y1 or x2 <= x1:
            raise TypeError(f"a RegionImage is read as image[:, y1:y2, x1:x2] with y1 < y2, x1 < x2, got {rows}, {cols}")
        region = self._region(y1, y2, x1, x2)
        if region.ndim == 3:
            region = region[..., self._channels] if self._channels is not None else region[..., 0]
        if region.ndim == 2:
            region = np.repeat(region[..., None], 3, axis=2)
        return torch.from_numpy(np.ascontiguousarray(region)).permute(2, 0, 1)

    def _region(self, y1: int, y2: int, x1: int, x2: int) -> np.ndarray:
        """Pixels [y1:y2, x1:x2], assembled from the file tiles under them."""
        th, tw = self._chunk
        parts = []
        for ty in range(y1 // th, (y2 - 1) // th + 1):
            row = [self._tile(ty, tx) for tx in range(x1 // tw, (x2 - 1) // tw + 1)]
            parts.append(np.concatenate(row, axis=1) if len(row) > 1 else row[0])
        block = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
        oy, ox = (y1 // th) * th, (x1 // tw) * tw
        return block[y1 - oy:y2 - oy, x1 - ox:x2 - ox]

    def _tile(self, ty: int, tx: int) -> np.ndarray:
        key = (ty, tx)
        hit = self._tiles.get(key)
        if hit is not None:
            self._tiles.move_to_end(key)
            return hit
        th, tw = self._chunk
        try:
            tile = np.asarray(self._array[ty * th:(ty + 1) * th, tx * tw:(tx + 1) * tw])
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{self.path}: cannot read the tile at row {ty}, column {tx} "
                            f"({str(exc) or type(exc).__name__})") from exc
        self._tiles[key] = tile
        if len(self._tiles) > self._keep:
            self._tiles.popitem(last=False)
        return tile

    def close(self) -> None:
        self._tiles.clear()
        self._tif.close()

    def __repr__(self) -> str:
        return f"RegionImage({self.path}, {self.width}x{self.height})"


def open_regions(path: str | os.PathLike, min_bytes: int | None = None) -> RegionImage | None:
    """A :class:`RegionImage` of ``path`` when it is a tiled 8-bit TIFF of at least ``min_bytes`` decoded (default
    REGION_BYTES) and tifffile and zarr are installed; None when it should be decoded whole (any other file, or a
    small one)."""
    if Path(path).suffix.lower() not in _TIFF_SUFFIXES:
        return None
    try:
        import tifffile
        import zarr  # noqa: F401 - needed by RegionImage
    except ImportError:
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            if not page.is_tiled or page.dtype != np.uint8:
                return None
            h, w = int(page.imagelength), int(page.imagewidth)
    except Exception:  # noqa: BLE001 - not a TIFF tifffile reads: the ordinary decoder reports it
        return None
    if h * w * 3 < (REGION_BYTES if min_bytes is None else min_bytes):
        return None
    return RegionImage(path)
