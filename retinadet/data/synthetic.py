"""``shapes``: a built-in synthetic detection dataset, written as Roboflow-style COCO.

Five filled shape classes (circle, square, triangle, cross, ellipse) with a
deliberate class imbalance, sizes log-uniform from 10 px to 60% of the image (so
P3..P7 all get positives), overlaps and border truncation, textured tinted
backgrounds, a lighting gradient, sensor noise, and ~10% negative images.

Written once to ``$RETINADET_CACHE`` (default ``~/.cache/retinadet``) as
``shapes-v1-<params>/{train,valid,test}/_annotations.coco.json`` so training
reads it through the same COCO code path as user data. Every image is a pure
function of (seed, split, index): the same seed gives the same bytes. Speed comes
from precomputed per-seed texture and noise banks that each image crops from,
and drawing each shape only inside its own window.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from retinadet.data.formats.coco import ROBOFLOW_ANNOTATION_FILE
from retinadet.errors import DataError

SHAPES_VERSION = 1
CLASS_NAMES = ["circle", "square", "triangle", "cross", "ellipse"]
# Imbalanced on purpose: the rarest class has ~1/3 the boxes of the most common.
CLASS_WEIGHTS = np.array([0.30, 0.25, 0.20, 0.15, 0.10])
SPLIT_DIRS = {"train": "train", "val": "valid", "test": "test"}
JPEG_QUALITY = 90
_CLASS_CDF = np.cumsum(CLASS_WEIGHTS)[:-1]


@dataclass(frozen=True)
class ShapesConfig:
    num_train: int = 600
    num_val: int = 150
    num_test: int = 150
    size: int = 320
    seed: int = 0
    negative_fraction: float = 0.10
    max_objects: int = 8
    min_object: int = 10
    max_object_frac: float = 0.6

    def __post_init__(self) -> None:
        if self.size < 64:
            raise DataError(f"shapes: --size must be >= 64 px, got {self.size}")
        if min(self.num_train, self.num_val, self.num_test) < 0:
            raise DataError("shapes: split sizes must be >= 0")

    @property
    def cache_name(self) -> str:
        return f"shapes-v{SHAPES_VERSION}-s{self.size}-n{self.num_train}-{self.num_val}-{self.num_test}-seed{self.seed}"


def cache_dir() -> Path:
    return Path(os.environ.get("RETINADET_CACHE") or Path.home() / ".cache" / "retinadet")


class _Banks:
    """Per-seed texture, lighting and noise fields that every image crops from.

    Each image is then a handful of integer passes over contiguous memory
    (crop, draw, multiply by light, add noise), which is what makes >= 200 images/s
    possible on two cores. Arrays are stored as (rows, cols * 3) so that every
    pass runs over contiguous rows.
    """

    def __init__(self, size: int, seed: int, textures: int = 8, lights: int = 8, noises: int = 3):
        rng = np.random.default_rng([seed, 0xBA7C])
        big = size + size // 2  # crops start anywhere in the first half-size
        yy, xx = np.mgrid[0:big, 0:big].astype(np.float32) / big
        self.size = size
        self.textures = []
        for _ in range(textures):
            coarse = rng.normal(0, 1, (big // 32 + 2, big // 32 + 2)).astype(np.float32)
            low = np.asarray(Image.fromarray(coarse, mode="F").resize((big, big), Image.BICUBIC))
            fine = rng.normal(0, 1, (big // 6 + 2, big // 6 + 2)).astype(np.float32)
            mid = np.asarray(Image.fromarray(fine, mode="F").resize((big, big), Image.BILINEAR))
            fx, fy, phase = rng.uniform(4, 24), rng.uniform(4, 24), rng.uniform(0, 2 * np.pi)
            stripes = np.sin(2 * np.pi * (fx * xx + fy * yy) + phase)
            tex = 0.5 + 0.12 * low + 0.05 * mid + rng.uniform(0, 0.08) * stripes
            tint = rng.uniform(0.25, 0.85, 3).astype(np.float32)
            rgb = np.clip(tex, 0, 1)[:, :, None] * (1.6 * tint) + 0.2 * tint
            self.textures.append(np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8).reshape(big, big * 3))
        self.lights = []
        for _ in range(lights):
            gx, gy = rng.uniform(-0.7, 0.7, 2)
            field = rng.uniform(0.8, 1.0) + gx * (xx - 0.5) + gy * (yy - 0.5)
            field = np.clip(field, 0.45, 1.0) * 256
            self.lights.append(np.repeat(field, 3, axis=1).astype(np.uint16))
        # Noise is stored with an offset of NOISE_OFFSET so that it stays unsigned.
        self.noises = [np.clip(np.rint(rng.normal(NOISE_OFFSET, sigma, (big, big * 3))), 0, 2 * NOISE_OFFSET).astype(np.uint16)
                       for sigma in (2.5, 5.0, 9.0)[:noises]]

    def crop(self, arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        y, x = rng.integers(0, arr.shape[0] - self.size, 2)
        return arr[y : y + self.size, 3 * x : 3 * (x + self.size)]


NOISE_OFFSET = 32


def _shape_mask(kind: int, h: int, w: int) -> np.ndarray:
    """Boolean mask of a shape filling an h x w window (touching all four sides)."""
    y = (np.arange(h, dtype=np.float32) + 0.5) / h * 2 - 1
    x = (np.arange(w, dtype=np.float32) + 0.5) / w * 2 - 1
    Y, X = y[:, None], x[None, :]
    name = CLASS_NAMES[kind]
    if name in ("circle", "ellipse"):
        return X * X + Y * Y <= 1.0
    if name == "square":
        return np.ones((h, w), dtype=bool)
    if name == "triangle":  # apex at the top, base at the bottom
        return np.abs(X) <= (Y + 1) / 2 + 1.0 / w
    if name == "cross":
        return (np.abs(X) <= 0.3) | (np.abs(Y) <= 0.3)
    raise ValueError(kind)


def _object_size(kind: int, rng: np.random.Generator, cfg: ShapesConfig) -> tuple[int, int]:
    lo, hi = np.log(cfg.min_object), np.log(cfg.max_object_frac * cfg.size)
    s = float(np.exp(rng.uniform(lo, hi)))
    if CLASS_NAMES[kind] == "ellipse":  # clearly elongated, so it is not a circle
        ratio = rng.uniform(1.7, 2.5)
        long_side, short_side = s, max(cfg.min_object * 0.6, s / ratio)
        return (int(round(short_side)), int(round(long_side))) if rng.random() < 0.5 else (int(round(long_side)), int(round(short_side)))
    if CLASS_NAMES[kind] == "triangle":
        return int(round(s * rng.uniform(0.85, 1.1))), int(round(s))
    side = int(round(s))
    return side, side


def render_image(index: int, split_index: int, cfg: ShapesConfig, banks: _Banks) -> tuple[np.ndarray, list]:
    """One image (uint8 HxWx3) and its objects [(x1, y1, x2, y2, label)], from (seed, split, index)."""
    rng = np.random.default_rng([cfg.seed, split_index, index])
    S = cfg.size
    flat = banks.crop(banks.textures[rng.integers(len(banks.textures))], rng)
    flat = np.array(flat[::-1] if rng.random() < 0.5 else flat)  # contiguous, writable copy
    img = flat.reshape(S, S, 3)

    objects = []
    n = 0 if rng.random() < cfg.negative_fraction else int(rng.integers(1, cfg.max_objects + 1))
    for _ in range(n):
        kind = int(np.searchsorted(_CLASS_CDF, rng.random(), side="right"))
        h, w = _object_size(kind, rng, cfg)
        for _attempt in range(15):
            # Up to 25% of an object may fall outside the image (truncated objects).
            x1 = int(rng.integers(-w // 4, S - w + w // 4 + 1))
            y1 = int(rng.integers(-h // 4, S - h + h // 4 + 1))
            bx = (max(x1, 0), max(y1, 0), min(x1 + w, S), min(y1 + h, S))
            area = (bx[2] - bx[0]) * (bx[3] - bx[1])
            ok = area > 0
            for ox1, oy1, ox2, oy2, _ in objects:
                iw = min(bx[2], ox2) - max(bx[0], ox1)
                ih = min(bx[3], oy2) - max(bx[1], oy1)
                if iw > 0 and ih > 0:
                    inter = iw * ih
                    # Partial occlusion is fine; hiding most of an earlier object is not.
                    if inter > 0.35 * (ox2 - ox1) * (oy2 - oy1) or inter > 0.6 * area:
                        ok = False
                        break
            if ok:
                break
        else:
            continue
        mask = _shape_mask(kind, h, w)[bx[1] - y1 : bx[3] - y1, bx[0] - x1 : bx[2] - x1]
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if len(rows) < 2 or len(cols) < 2:
            continue
        window = img[bx[1] : bx[3], bx[0] : bx[2]]
        # A colour far enough from the local background to stay visible under any lighting.
        local = window[:: max(1, window.shape[0] // 8), :: max(1, window.shape[1] // 8)].reshape(-1, 3).mean(0)
        color = rng.integers(10, 246, 3)
        if np.abs(color - local).max() < 80:
            color = np.where(local > 128, local - 100, local + 100)
        np.copyto(window, color.astype(np.uint8), where=mask[:, :, None])
        box = (bx[0] + int(cols[0]), bx[1] + int(rows[0]), bx[0] + int(cols[-1]) + 1, bx[1] + int(rows[-1]) + 1)
        objects.append((*box, kind))

    # Lighting gradient and sensor noise, in integer arithmetic on contiguous rows.
    buf = np.empty(flat.shape, np.uint16)
    np.multiply(flat, banks.crop(banks.lights[rng.integers(len(banks.lights))], rng), out=buf)
    np.right_shift(buf, 8, out=buf)
    np.add(buf, banks.crop(banks.noises[rng.integers(len(banks.noises))], rng), out=buf)
    np.clip(buf, NOISE_OFFSET, 255 + NOISE_OFFSET, out=buf)
    np.subtract(buf, NOISE_OFFSET, out=buf)
    return buf.astype(np.uint8).reshape(S, S, 3), objects


def encode_jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # Fixed quality and no optimisation passes: identical bytes for identical pixels.
    Image.fromarray(image).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


_WORKER_BANKS: dict = {}


def _render_chunk(args) -> list[tuple[int, int, int, list]]:
    """Render and write images [start, stop) of one split; returns (index, width, height, objects) for each."""
    cfg, split_index, start, stop, folder = args
    key = (cfg.size, cfg.seed)
    if key not in _WORKER_BANKS:
        _WORKER_BANKS.clear()
        _WORKER_BANKS[key] = _Banks(cfg.size, cfg.seed)
    banks = _WORKER_BANKS[key]
    split = list(SPLIT_DIRS)[split_index]
    out = []
    for i in range(start, stop):
        pixels, objects = render_image(i, split_index, cfg, banks)
        (Path(folder) / f"{split}_{i:05d}.jpg").write_bytes(encode_jpeg(pixels))
        out.append((i, cfg.size, cfg.size, objects))
    return out


def parallel_map(fn: Callable, jobs: list, workers: int) -> list:
    """``[fn(job) for job in jobs]``, in a fork pool of ``workers`` processes when that helps."""
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            return list(pool.map(fn, jobs))
    return [fn(job) for job in jobs]


def write_shapes_dataset(out: str | os.PathLike, cfg: ShapesConfig = ShapesConfig(), workers: int | None = None,
                         progress: bool = False) -> dict:
    """Write the dataset under ``out`` (Roboflow COCO layout). Returns timing stats.

    ``workers`` processes share the work (default: up to 4, one per CPU); the output
    does not depend on it because every image is a function of (seed, split, index).
    """
    stats = write_rendered(out, cfg, CLASS_NAMES, _render_chunk, lambda count, workers: max(25, count // (4 * workers) + 1),
                           f"retinadet shapes v{SHAPES_VERSION}", workers)
    if progress:
        print(f"shapes: {stats['images']} images in {stats['seconds']:.1f}s ({stats['images_per_s']:.0f} images/s)")
    return stats


def write_rendered(out: str | os.PathLike, cfg, class_names, render_chunk, chunk, description: str,
                   workers: int | None = None) -> dict:
    """A synthetic dataset (train/val/test of ``cfg``'s sizes) rendered by ``render_chunk`` over (cfg, split index,
    start, stop, folder) jobs of ``chunk(count, workers)`` images, in ``workers`` processes (default: up to 4, one
    per CPU), then its COCO annotations. Returns timing stats."""
    out = Path(out)
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    categories = [{"id": i + 1, "name": n, "supercategory": "shapes"} for i, n in enumerate(class_names)]
    counts = {"train": cfg.num_train, "val": cfg.num_val, "test": cfg.num_test}
    t0 = time.perf_counter()
    jobs = []
    for split_index, (split, count) in enumerate(counts.items()):
        folder = out / SPLIT_DIRS[split]
        folder.mkdir(parents=True, exist_ok=True)
        step = max(1, chunk(count, max(workers, 1)))
        jobs += [(cfg, split_index, a, min(a + step, count), str(folder)) for a in range(0, count, step)]
    rendered: dict[int, list] = {}
    for job, result in zip(jobs, parallel_map(render_chunk, jobs, workers)):
        rendered.setdefault(job[1], []).extend(result)
    total = write_annotations(out, counts, rendered, categories, description, cfg.__dict__)
    elapsed = time.perf_counter() - t0
    return {"images": total, "seconds": elapsed, "images_per_s": total / max(elapsed, 1e-9), "root": out, "workers": workers}


def write_annotations(out: Path, counts: dict[str, int], rendered: dict[int, list], categories: list[dict],
                      description: str, config: dict) -> int:
    """Each split's ``_annotations.coco.json`` from its rendered images, ``rendered[split index]`` holding
    (index, width, height, objects) with objects (x1, y1, x2, y2, label); returns the images written."""
    total = 0
    for split_index, split in enumerate(counts):
        images, annotations = [], []
        for i, width, height, objects in sorted(rendered.get(split_index, []), key=lambda r: r[0]):
            images.append({"id": i + 1, "file_name": f"{split}_{i:05d}.jpg", "width": width, "height": height})
            for x1, y1, x2, y2, label in objects:
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": label + 1,
                                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        total += len(images)
        data = {"info": {"description": description, "config": config}, "images": images, "annotations": annotations,
                "categories": categories}
        (out / SPLIT_DIRS[split] / ROBOFLOW_ANNOTATION_FILE).write_text(json.dumps(data))
    return total


def ensure_cached(name: str, write: Callable[[Path], object], root: str | os.PathLike | None = None) -> Path:
    """``root/name`` (default root: the cache), written by ``write(folder)`` on first use.

    ``write`` fills a temporary sibling folder that is renamed into place only when
    complete, so an interrupted run or a concurrent one never leaves a partial dataset.
    """
    base = Path(root) if root is not None else cache_dir()
    target = base / name
    if (target / ".complete").is_file():
        return target
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=name + ".tmp-", dir=base))
    try:
        write(tmp)
        (tmp / ".complete").write_text("ok\n")
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished first (or a stale partial folder exists).
            if not (target / ".complete").is_file():
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure_shapes_dataset(cfg: ShapesConfig | None = None, root: str | os.PathLike | None = None) -> Path:
    """Path to the cached dataset, generating it (atomically) on first use."""
    cfg = cfg or ShapesConfig()
    return ensure_cached(cfg.cache_name, lambda folder: write_shapes_dataset(folder, cfg), root)
