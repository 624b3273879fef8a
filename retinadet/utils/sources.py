"""Prediction sources: an image, a folder, a glob, a text file of paths, or a video.

Free of torch on purpose: the torch-free ONNX runner lists its sources with it too.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from pathlib import Path

from retinadet.errors import DataError

# Whole-slide formats only OpenSlide reads (predict reads them by region: retinadet.data.regions).
SLIDE_EXTENSIONS = (".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".btf") + SLIDE_EXTENSIONS
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}


def is_image_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def list_sources(source: str | os.PathLike, video: Callable[[str], None] | None = None) -> list[str]:
    """Image paths, or one video path, from ``source``.

    ``video`` checks that a video can be decoded (raising a clear error otherwise); without it,
    videos are refused.
    """
    s = os.fspath(source)
    p = Path(s)
    if p.is_dir():
        files = sorted(str(f) for f in p.iterdir() if f.is_file() and is_image_path(f))
        where = f"folder {s}"
    elif p.is_file() and p.suffix.lower() == ".txt":
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.startswith("#")]
        files = [str(f if Path(f).is_absolute() else p.parent / f) for f in lines]
        missing = [f for f in files if not Path(f).is_file()]
        if missing:
            raise DataError(f"{s}: {len(missing)} listed path(s) do not exist (first: {missing[0]})")
        where = f"path list {s}"
    elif p.is_file():
        if p.suffix.lower() in VIDEO_SUFFIXES:
            if video is None:
                raise DataError(f"{s}: video sources are not supported here (this runner reads images); "
                                "extract frames first, or predict with the .pt weights")
            video(s)
            return [s]
        if not is_image_path(p):
            raise DataError(f"{s}: not an image or video file (by its extension)")
        return [s]
    elif any(c in s for c in "*?["):
        files = sorted(f for f in glob.glob(s, recursive=True) if Path(f).is_file() and is_image_path(f))
        where = f"glob {s}"
    else:
        raise DataError(f"{s}: source not found (expected an image, a folder, a glob, a .txt list of paths, or a video)")
    if not files:
        raise DataError(f"no images found at {where}")
    return files
