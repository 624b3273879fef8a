"""Images read by region: whole-slide images and large tiled TIFFs are never decoded whole.

A :class:`RegionImage` looks like an image tensor ``[3, H, W]`` to sliced inference: its ``shape`` is that of the
chosen resolution, and ``image[:, y1:y2, x1:x2]`` decodes only the file tiles under that region, so the memory of a
run is the tiles in flight, not the slide. Two readers:

* :class:`TiffRegions`: pyramidal TIFF, BigTIFF, OME-TIFF and SVS read through tifffile's zarr store (``tiff`` extra),
  of any bit depth (more than 8 bits are windowed with limits measured once on the smallest level, so every tile of a
  slide gets the same mapping);
* :class:`OpenSlideRegions`: what OpenSlide reads (SVS, NDPI, MRXS, SCN, BIF, generic tiled TIFF; ``slide`` extra,
  the library ships inside the ``openslide-bin`` wheel).

A slide is read at a pyramid ``level`` or at a resolution in microns per pixel (``mpp``): the level at or finer than
it, each region resampled by what remains. ``downsample`` maps the pixels read back to level 0, where boxes are
reported. :func:`open_slide` picks the reader and the level, and fails with one line naming the file.
"""

from __future__ import annotations

import math
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from retinadet.errors import DataError
from retinadet.utils.samples import to_rgb
from retinadet.utils.sources import SLIDE_EXTENSIONS
from retinadet.utils.window import Window, parse_window, require_window, window_limits

# A tiled TIFF whose decoded pixels would take this much or more is read by region; a smaller one is decoded whole.
REGION_BYTES = 256 * 2**20
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".ome.tif", ".ome.tiff")
OPENSLIDE_SUFFIXES = SLIDE_EXTENSIONS  # vendor formats only OpenSlide reads
# A requested mpp matches a level within this relative difference (scanners round: 0.2527 for "0.25").
MPP_TOLERANCE = 0.05


@dataclass(frozen=True)
class Level:
    width: int
    height: int
    downsample: float  # level-0 pixels per pixel of this level


class RegionImage:
    """One resolution of a slide, read region by region (see the module docstring)."""

    def __init__(self, path: Path, levels: list[Level], mpp: tuple[float, float] | None, level: int, resample: float,
                 window: Window | None):
        self.path, self.levels, self.mpp0, self.level = path, levels, mpp, level
        self.resample = float(resample)  # pixels of the level per pixel handed out (1: none)
        base = levels[level]
        self.width = max(1, int(base.width / self.resample))
        self.height = max(1, int(base.height / self.resample))
        self.downsample = base.downsample * self.resample
        self.window = window
        self.limits: tuple[float, float] | None = None
        self._tiles: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    # -- what sliced inference sees ---------------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int, int]:
        return (3, self.height, self.width)

    def __len__(self) -> int:
        return 3

    @property
    def level0_size(self) -> tuple[int, int]:
        return self.levels[0].width, self.levels[0].height

    @property
    def mpp(self) -> tuple[float, float] | None:
        """Microns per pixel of the pixels handed out (None: the file records none)."""
        return None if self.mpp0 is None else (self.mpp0[0] * self.downsample, self.mpp0[1] * self.downsample)

    def __getitem__(self, key) -> torch.Tensor:
        """``[:, y1:y2, x1:x2]``: that region as a tensor [3, h, w] (uint8, or float in [0, 1] when windowed)."""
        if not (isinstance(key, tuple) and len(key) == 3 and key[0] == slice(None)):
            raise TypeError("a RegionImage is read as image[:, y1:y2, x1:x2]")
        rows, cols = key[1], key[2]
        y1, y2, _ = rows.indices(self.height)
        x1, x2, _ = cols.indices(self.width)
        if rows.step not in (None, 1) or cols.step not in (None, 1) or y2 <= y1 or x2 <= x1:
            raise TypeError(f"a RegionImage is read as image[:, y1:y2, x1:x2] with y1 < y2, x1 < x2, got {rows}, {cols}")
        if self.resample == 1.0:
            return self._as_tensor(self.read_level(self.level, x1, y1, x2, y2))
        f = self.resample
        base = self.levels[self.level]
        lx1, ly1 = int(x1 * f), int(y1 * f)
        lx2, ly2 = min(base.width, max(lx1 + 1, round(x2 * f))), min(base.height, max(ly1 + 1, round(y2 * f)))
        region = self._as_tensor(self.read_level(self.level, lx1, ly1, lx2, ly2))
        from torchvision.transforms.v2.functional import resize

        return resize(region, [y2 - y1, x2 - x1], antialias=True)

    def _as_tensor(self, samples: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(to_rgb(samples, str(self.path), self.window, self.limits)).permute(2, 0, 1)

    # -- the reader's part -------------------------------------------------------------------------------------

    def read_level(self, level: int, x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
        """Samples [y1:y2, x1:x2] of ``level`` as HxW(xC), in the file's dtype."""
        raise NotImplementedError

    def thumbnail(self, min_side: int = 1024) -> tuple[np.ndarray, float]:
        """The coarsest level whose long side is at least ``min_side`` (or the finest there is, when none is) as uint8
        HxWx3 (windowed when deeper), and its level-0 pixels per pixel. Coarse on purpose: it is held, masked and
        drawn on whole (1875 px for a 30000 px slide with 1/16 levels)."""
        ordered = sorted(range(len(self.levels)), key=lambda k: -self.levels[k].downsample)
        pick = next((k for k in ordered if max(self.levels[k].width, self.levels[k].height) >= min_side), ordered[-1])
        lv = self.levels[pick]
        if lv.width * lv.height > 64 * 2**20:  # no small level in the file: a slide without a pyramid
            raise DataError(f"{self.path}: no pyramid level under 64 Mpx to take a thumbnail from (levels: "
                            f"{describe_levels(self.levels)})")
        samples = self.read_level(pick, 0, 0, lv.width, lv.height)
        image = self._as_tensor(samples)
        if image.is_floating_point():
            image = (image * 255).round_().to(torch.uint8)
        return image.permute(1, 2, 0).numpy(), lv.downsample

    def close(self) -> None:
        self._tiles.clear()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path}, level {self.level}, {self.width}x{self.height})"


class TiffRegions(RegionImage):
    """A TIFF's pyramid through tifffile's zarr store, with the file tiles of three rows kept (an LRU), so the
    overlapping slices of sliced inference decode each file tile once."""

    def __init__(self, path: str | os.PathLike, level: int | None = None, mpp: float | None = None,
                 window: Window | str | None = None):
        import tifffile
        import zarr

        path = Path(path)
        try:
            self._tif = tifffile.TiffFile(path)
            series = self._tif.series[0]
            pyramid = [series] + list(series.levels[1:]) if series.levels else [series]
            _check_intact(pyramid, path)
            self._axes = series.axes
            self._arrays = [zarr.open(series.aszarr(level=k), mode="r") for k in range(len(pyramid))]
        except Exception as exc:  # noqa: BLE001 - tifffile raises many kinds for a bad file
            if hasattr(self, "_tif"):
                self._tif.close()
            if isinstance(exc, DataError):
                raise
            raise DataError(f"{path}: unreadable TIFF ({str(exc) or type(exc).__name__})") from exc
        self._yx = _yx_axes(self._axes, path)
        sizes = [(int(a.shape[self._yx[1]]), int(a.shape[self._yx[0]])) for a in self._arrays]
        levels = [Level(w, h, sizes[0][0] / w) for w, h in sizes]
        chosen, resample = choose_level(path, levels, tiff_mpp(self._tif), level, mpp)
        rule = parse_window(window)
        if series.dtype != np.uint8 and series.dtype != np.bool_:
            rule = require_window(rule, str(path), series.dtype)
        super().__init__(path, levels, tiff_mpp(self._tif), chosen, resample, rule)
        arr = self._arrays[chosen]
        self._chunk = (int(arr.chunks[self._yx[0]]), int(arr.chunks[self._yx[1]]))
        self._keep = 3 * (-(-levels[chosen].width // self._chunk[1]))
        if rule is not None and rule.percentile and series.dtype != np.uint8:
            # One mapping for the whole slide, from its smallest level: tiles must not each stretch their own range.
            small = min(range(len(levels)), key=lambda k: levels[k].width * levels[k].height)
            lv = levels[small]
            self.limits = window_limits(self._read(small, 0, 0, lv.width, lv.height), rule)

    def read_level(self, level: int, x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
        if level != self.level:
            return self._read(level, x1, y1, x2, y2)
        th, tw = self._chunk
        parts = []
        for ty in range(y1 // th, (y2 - 1) // th + 1):
            row = [self._tile(ty, tx) for tx in range(x1 // tw, (x2 - 1) // tw + 1)]
            parts.append(np.concatenate(row, axis=1) if len(row) > 1 else row[0])
        block = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
        oy, ox = (y1 // th) * th, (x1 // tw) * tw
        return block[y1 - oy:y2 - oy, x1 - ox:x2 - ox]

    def _read(self, level: int, x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
        """Samples of a region of ``level`` straight from the store, as HxW(xC)."""
        index = [slice(None)] * len(self._axes)
        index[self._yx[0]], index[self._yx[1]] = slice(y1, y2), slice(x1, x2)
        for k, a in enumerate(self._axes):  # time points or focal planes: the first
            if a in "TZ":
                index[k] = 0
        try:
            data = np.asarray(self._arrays[level][tuple(index)])
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{self.path}: cannot read level {level} at x {x1}-{x2}, y {y1}-{y2} "
                            f"({str(exc) or type(exc).__name__})") from exc
        axes = "".join(a for a in self._axes if a not in "TZ")
        if axes.index("Y") > 0 and axes[0] in "CSQI":  # channels first: moved last
            data = np.moveaxis(data, 0, -1)
        return data

    def _tile(self, ty: int, tx: int) -> np.ndarray:
        key = (ty, tx)
        hit = self._tiles.get(key)
        if hit is not None:
            self._tiles.move_to_end(key)
            return hit
        th, tw = self._chunk
        lv = self.levels[self.level]
        try:
            tile = self._read(self.level, tx * tw, ty * th, min(lv.width, (tx + 1) * tw), min(lv.height, (ty + 1) * th))
        except DataError as exc:
            raise DataError(f"{self.path}: cannot read the tile at row {ty}, column {tx} of level {self.level} "
                            f"({str(exc).rsplit('(', 1)[-1].rstrip(')')})") from exc
        self._tiles[key] = tile
        if len(self._tiles) > self._keep:
            self._tiles.popitem(last=False)
        return tile

    def close(self) -> None:
        super().close()
        self._tif.close()


class OpenSlideRegions(RegionImage):
    """A slide through OpenSlide (``openslide-python`` with the library of ``openslide-bin``): RGBA regions, the
    alpha (outside the scanned area) made white as OpenSlide's own thumbnails do."""

    def __init__(self, path: str | os.PathLike, level: int | None = None, mpp: float | None = None):
        path = Path(path)
        try:
            import openslide
        except ImportError as exc:
            raise DataError(f"{path}: reading this slide needs OpenSlide: pip install \"retinadet[slide]\" "
                            "(openslide-bin and openslide-python; the library ships inside the wheel)") from exc
        try:
            self._slide = openslide.OpenSlide(str(path))
        except Exception as exc:  # noqa: BLE001 - OpenSlideUnsupportedFormatError, OpenSlideError, OSError
            raise DataError(f"{path}: unreadable slide (OpenSlide: {str(exc) or type(exc).__name__})") from exc
        props = self._slide.properties
        levels = [Level(int(w), int(h), float(d)) for (w, h), d in zip(self._slide.level_dimensions,
                                                                         self._slide.level_downsamples)]
        slide_mpp = None
        try:
            if props.get("openslide.mpp-x") and props.get("openslide.mpp-y"):
                slide_mpp = (float(props["openslide.mpp-x"]), float(props["openslide.mpp-y"]))
        except ValueError:
            slide_mpp = None
        chosen, resample = choose_level(path, levels, slide_mpp, level, mpp)
        super().__init__(path, levels, slide_mpp, chosen, resample, None)

    def read_level(self, level: int, x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
        d = self.levels[level].downsample
        try:
            rgba = np.asarray(self._slide.read_region((int(x1 * d), int(y1 * d)), level, (x2 - x1, y2 - y1)))
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{self.path}: cannot read level {level} at x {x1}-{x2}, y {y1}-{y2} "
                            f"(OpenSlide: {str(exc) or type(exc).__name__})") from exc
        alpha = rgba[..., 3:4].astype(np.uint16)
        # Premultiplied-alpha pixels over white: transparent (unscanned) areas come out as background, not black.
        return (rgba[..., :3].astype(np.uint16) + (255 - alpha)).clip(0, 255).astype(np.uint8)

    def close(self) -> None:
        super().close()
        self._slide.close()


def _check_intact(pyramid: list, path: Path) -> None:
    """tifffile opens a cut or damaged file leniently (it logs, then fails at some tile): every level's tiles must be
    listed and lie inside the file, or the slide is refused now, in one line."""
    size = os.path.getsize(path)
    for k, level in enumerate(pyramid):
        for page in level.pages:
            if page is None:
                raise DataError(f"{path}: unreadable TIFF (level {k} has a missing page)")
            offsets, counts = page.dataoffsets, page.databytecounts
            if not len(offsets) or len(offsets) != len(counts):
                raise DataError(f"{path}: unreadable TIFF (level {k} lists no tile data: a cut or damaged file)")
            ends = np.asarray(offsets, dtype=np.int64) + np.asarray(counts, dtype=np.int64)
            if int(ends.max()) > size:
                raise DataError(f"{path}: unreadable TIFF (level {k}'s tiles run past the end of the {size} byte file: "
                                "a cut or damaged file)")


def _yx_axes(axes: str, path: Path) -> tuple[int, int]:
    if "Y" not in axes or "X" not in axes:
        raise DataError(f"{path}: TIFF axes {axes}: no Y and X axes")
    rest = "".join(a for a in axes if a not in "YX")
    if any(a not in "SCQITZ" for a in rest):
        raise DataError(f"{path}: TIFF axes {axes}: expected gray, RGB or channels x height x width")
    return axes.index("Y"), axes.index("X")


def tiff_mpp(tif) -> tuple[float, float] | None:
    """Microns per pixel of a TIFF's level 0: Aperio's ``MPP = x`` description, OME's PhysicalSizeX/Y, else the
    resolution tags (centimetre or inch units; none without a unit)."""
    page = tif.pages[0]
    description = page.description or ""
    m = re.search(r"MPP\s*=\s*([\d.]+)", description)
    if m:
        value = float(m.group(1))
        return (value, value) if value > 0 else None
    if tif.is_ome:
        sx = re.search(r'PhysicalSizeX="([\d.eE+-]+)"', description)
        sy = re.search(r'PhysicalSizeY="([\d.eE+-]+)"', description)
        unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', description)
        if sx and sy and (unit is None or unit.group(1) in ("µm", "um", "micron")):
            return float(sx.group(1)), float(sy.group(1))
    tags = page.tags
    unit = tags.get("ResolutionUnit")
    xres, yres = tags.get("XResolution"), tags.get("YResolution")
    if unit is None or xres is None or yres is None:
        return None
    per = {2: 25400.0, 3: 10000.0}.get(int(unit.value))  # microns per inch / centimetre
    if per is None:
        return None
    (xn, xd), (yn, yd) = xres.value, yres.value
    if not (xn and yn):
        return None
    return per * xd / xn, per * yd / yn


def describe_levels(levels: list[Level]) -> str:
    return ", ".join(f"{k}: {lv.width}x{lv.height}" for k, lv in enumerate(levels))


def choose_level(path: Path, levels: list[Level], slide_mpp: tuple[float, float] | None, level: int | None,
                 mpp: float | None) -> tuple[int, float]:
    """(level to read, resampling factor after it) for ``level`` or ``mpp`` (neither: level 0, as scanned)."""
    if level is not None and mpp is not None:
        raise DataError(f"{path}: give --level or --mpp, not both")
    if level is not None:
        if not 0 <= int(level) < len(levels):
            raise DataError(f"{path}: no level {level}; the slide has levels 0-{len(levels) - 1} ({describe_levels(levels)})")
        return int(level), 1.0
    if mpp is None:
        return 0, 1.0
    if mpp <= 0:
        raise DataError(f"{path}: --mpp must be positive, got {mpp}")
    if slide_mpp is None:
        raise DataError(f"{path}: --mpp {mpp:g} asked, but the slide records no microns per pixel (no MPP, OME physical "
                        "size or resolution tags); choose a --level instead")
    base = math.sqrt(slide_mpp[0] * slide_mpp[1])
    if mpp < base * (1 - MPP_TOLERANCE):
        raise DataError(f"{path}: --mpp {mpp:g} is finer than the slide's level 0 ({base:.4g} µm/px); the scan holds no "
                        "more detail")
    want = mpp / base  # level-0 pixels per output pixel
    # The coarsest level at or finer than the resolution asked, then a resample of what remains.
    finer = [k for k, lv in enumerate(levels) if lv.downsample <= want * (1 + MPP_TOLERANCE)]
    pick = max(finer, key=lambda k: levels[k].downsample)
    rest = want / levels[pick].downsample
    return pick, 1.0 if abs(rest - 1) <= MPP_TOLERANCE else rest


def open_slide(path: str | os.PathLike, level: int | None = None, mpp: float | None = None,
               window: Window | str | None = None, backend: str = "auto") -> RegionImage:
    """A slide at ``level`` or ``mpp``: vendor formats through OpenSlide, TIFFs through tifffile (``backend``
    ``openslide`` reads a tiled TIFF through OpenSlide instead)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: slide file not found")
    if backend == "openslide" or str(path).lower().endswith(OPENSLIDE_SUFFIXES):
        return OpenSlideRegions(path, level, mpp)
    try:
        import tifffile  # noqa: F401
        import zarr  # noqa: F401
    except ImportError as exc:
        raise DataError(f"{path}: reading a slide by region needs tifffile and zarr: pip install \"retinadet[tiff]\"") from exc
    return TiffRegions(path, level, mpp, window)


def open_regions(path: str | os.PathLike, min_bytes: int | None = None, window: Window | str | None = None,
                 level: int | None = None, mpp: float | None = None) -> RegionImage | None:
    """A :class:`RegionImage` of ``path`` when it should be read by region: a vendor slide (always), a TIFF when a
    ``level`` or ``mpp`` is asked, or a tiled TIFF of at least ``min_bytes`` decoded (default REGION_BYTES) with
    tifffile and zarr installed; None when it should be decoded whole (any other file, or a small one)."""
    lower = str(path).lower()
    if lower.endswith(OPENSLIDE_SUFFIXES) or (lower.endswith(TIFF_SUFFIXES) and (level is not None or mpp is not None)):
        return open_slide(path, level, mpp, window)
    if not lower.endswith(TIFF_SUFFIXES):
        return None
    try:
        import tifffile
        import zarr  # noqa: F401 - needed by TiffRegions
    except ImportError:
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            if not page.is_tiled:
                return None
            h, w = int(page.imagelength), int(page.imagewidth)
            itemsize = np.dtype(page.dtype).itemsize
    except Exception:  # noqa: BLE001 - not a TIFF tifffile reads: the ordinary decoder reports it
        return None
    if h * w * 3 * itemsize < (REGION_BYTES if min_bytes is None else min_bytes):
        return None
    return TiffRegions(path, window=window)
