"""``shapes-large``: ~2000 px images crowded with small objects, for sliced (tiled) inference and training.

Three classes (circle, square, cross) of 10-40 px (log-uniform sides) on images of
1700-2300 x 1500-2100 px, 20-150 objects per image, about a third of them in
clusters of touching neighbours (0-2 px between boxes, like crowded cells), the
rest scattered; objects never overlap, and ~15% of the images are empty. Boxes are
tight to the drawn masks. Written, like ``shapes``, as Roboflow-style COCO into
``$RETINADET_CACHE/shapes-large-v1-<params>/`` on first use, and every image is a
pure function of (seed, split, index).

The layout (sizes and boxes) comes from its own random stream, so it can be sampled
without drawing a pixel. The background is made per image from coarse random fields
upsampled by PIL, not from precomputed banks (a bank would have to be larger than
every image), and the sensor noise is a byte per value mapped through a Gaussian
quantile table, which is ~7x cheaper than drawing normal floats.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np
from PIL import Image

from retinadet.data.synthetic import CLASS_NAMES as _SHAPE_NAMES
from retinadet.data.synthetic import SPLIT_DIRS, _shape_mask, encode_jpeg, ensure_cached, write_rendered
from retinadet.errors import DataError

LARGE_SHAPES_VERSION = 1
LARGE_CLASS_NAMES = ["circle", "square", "cross"]
# Our label -> the kind index _shape_mask takes.
_KINDS = [_SHAPE_NAMES.index(n) for n in LARGE_CLASS_NAMES]
_LAYOUT_STREAM, _PIXEL_STREAM = 0x1A7, 0xB6  # separate streams: the layout never depends on the pixels
_NOISE_QUANTILES = np.array([NormalDist().inv_cdf((k + 0.5) / 256) for k in range(256)], dtype=np.float32)
_SCATTER_MARGIN = 3  # scattered objects keep this far from any other box, so touching pairs come from clusters
_MAX_TOUCH_GAP = 2


@dataclass(frozen=True)
class LargeShapesConfig:
    num_train: int = 48
    num_val: int = 12
    num_test: int = 12
    seed: int = 0
    min_width: int = 1700
    max_width: int = 2300
    min_height: int = 1500
    max_height: int = 2100
    min_object: int = 10
    max_object: int = 40
    min_objects: int = 20
    max_objects: int = 150
    cluster_fraction: float = 0.33
    negative_fraction: float = 0.15

    def __post_init__(self) -> None:
        if min(self.num_train, self.num_val, self.num_test) < 0:
            raise DataError("shapes-large: split sizes must be >= 0")
        if not 4 <= self.min_object <= self.max_object:
            raise DataError(f"shapes-large: need 4 <= min_object <= max_object, got {self.min_object}, {self.max_object}")
        if not 8 * self.max_object <= self.min_width <= self.max_width or not 8 * self.max_object <= self.min_height <= self.max_height:
            raise DataError("shapes-large: need 8 * max_object <= min_width <= max_width (and the same for heights)")
        if not 1 <= self.min_objects <= self.max_objects:
            raise DataError(f"shapes-large: need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        if not (0 <= self.cluster_fraction <= 1 and 0 <= self.negative_fraction <= 1):
            raise DataError("shapes-large: cluster_fraction and negative_fraction must be in [0, 1]")

    @property
    def total(self) -> int:
        return self.num_train + self.num_val + self.num_test

    @property
    def cache_name(self) -> str:
        return (f"shapes-large-v{LARGE_SHAPES_VERSION}-w{self.min_width}-{self.max_width}-h{self.min_height}-{self.max_height}"
                f"-o{self.min_object}-{self.max_object}-k{self.min_objects}-{self.max_objects}"
                f"-c{self.cluster_fraction:g}-neg{self.negative_fraction:g}"
                f"-n{self.num_train}-{self.num_val}-{self.num_test}-seed{self.seed}")


@dataclass
class Layout:
    """One image's geometry: boxes (N, 4) xyxy int, labels (N,), and for a cluster member the
    index of the neighbour it was placed against (-1 otherwise), so that the two get different colours."""

    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    neighbour: np.ndarray


def _free(boxes: np.ndarray, box: tuple[int, int, int, int], margin: int) -> bool:
    """No earlier box comes within ``margin`` px of ``box`` (margin 0: boxes may touch, never overlap)."""
    if len(boxes) == 0:
        return True
    x1, y1, x2, y2 = box
    iw = np.minimum(boxes[:, 2], x2 + margin) - np.maximum(boxes[:, 0], x1 - margin)
    ih = np.minimum(boxes[:, 3], y2 + margin) - np.maximum(boxes[:, 1], y1 - margin)
    return not bool(((iw > 0) & (ih > 0)).any())


def sample_layout(index: int, split_index: int, cfg: LargeShapesConfig) -> Layout:
    """The size and objects of image ``index`` of split ``split_index`` (0 train, 1 val, 2 test), without pixels."""
    rng = np.random.default_rng([cfg.seed, split_index, index, _LAYOUT_STREAM])
    W = int(rng.integers(cfg.min_width, cfg.max_width + 1))
    H = int(rng.integers(cfg.min_height, cfg.max_height + 1))
    n = 0 if rng.random() < cfg.negative_fraction else int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    boxes = np.zeros((n, 4), np.int64)
    labels = np.zeros(n, np.int64)
    neighbour = np.full(n, -1, np.int64)
    lo, hi = np.log(cfg.min_object), np.log(cfg.max_object)
    count = 0

    def add(box, label, near=-1):
        nonlocal count
        boxes[count], labels[count], neighbour[count] = box, label, near
        count += 1

    # Clusters: a seed placed freely, then each member against a random earlier member, on a random side,
    # 0-2 px away and sharing at least a third of the smaller side, so that the two read as touching.
    n_clustered = int(round(n * cfg.cluster_fraction))
    for _attempt in range(4 * n_clustered):
        if count >= n_clustered:
            break
        size = min(int(rng.integers(3, 9)), n_clustered - count)
        s = int(round(np.exp(rng.uniform(lo, hi))))
        x1, y1 = int(rng.integers(0, W - s + 1)), int(rng.integers(0, H - s + 1))
        box = (x1, y1, x1 + s, y1 + s)
        if not _free(boxes[:count], box, _SCATTER_MARGIN):
            continue
        members = [count]
        add(box, int(rng.integers(len(LARGE_CLASS_NAMES))))
        for _grow in range(4 * size):
            if len(members) >= size:
                break
            a = members[int(rng.integers(len(members)))]
            ax1, ay1, ax2, ay2 = (int(v) for v in boxes[a])
            s = int(round(np.exp(rng.uniform(lo, hi))))
            gap, side = int(rng.integers(0, _MAX_TOUCH_GAP + 1)), int(rng.integers(4))
            share = max(1, min(s, ax2 - ax1) // 3)
            along_x = int(rng.integers(ax1 - s + share, ax2 - share + 1))
            along_y = int(rng.integers(ay1 - s + share, ay2 - share + 1))
            x1, y1 = [(ax2 + gap, along_y), (ax1 - gap - s, along_y), (along_x, ay2 + gap), (along_x, ay1 - gap - s)][side]
            box = (x1, y1, x1 + s, y1 + s)
            if x1 < 0 or y1 < 0 or x1 + s > W or y1 + s > H or not _free(boxes[:count], box, 0):
                continue
            members.append(count)
            add(box, int(rng.integers(len(LARGE_CLASS_NAMES))), a)

    for _ in range(n - count):
        s = int(round(np.exp(rng.uniform(lo, hi))))
        for _attempt in range(20):
            x1, y1 = int(rng.integers(0, W - s + 1)), int(rng.integers(0, H - s + 1))
            if _free(boxes[:count], (x1, y1, x1 + s, y1 + s), _SCATTER_MARGIN):
                add((x1, y1, x1 + s, y1 + s), int(rng.integers(len(LARGE_CLASS_NAMES))))
                break
    return Layout(W, H, boxes[:count], labels[:count], neighbour[:count])


def _upsampled(rng: np.random.Generator, cell: int, W: int, H: int, resample) -> np.ndarray:
    coarse = rng.normal(0, 1, (H // cell + 2, W // cell + 2)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((W, H), resample))


def _pick_color(rng: np.random.Generator, local: np.ndarray, avoid: np.ndarray | None) -> np.ndarray:
    """A colour at least 80 levels (in some channel) from the local background and 60 from ``avoid``
    (the touching neighbour), so neither the object nor the edge between two neighbours disappears."""
    for _ in range(8):
        color = rng.integers(10, 246, 3).astype(np.float32)
        if np.abs(color - local).max() >= 80 and (avoid is None or np.abs(color - avoid).max() >= 60):
            return color
    return np.where(local > 128, local - 100, local + 100).astype(np.float32)


def render_image(index: int, split_index: int, cfg: LargeShapesConfig) -> tuple[np.ndarray, list]:
    """One image (uint8 HxWx3) and its objects [(x1, y1, x2, y2, label)], from (seed, split, index)."""
    layout = sample_layout(index, split_index, cfg)
    W, H = layout.width, layout.height
    rng = np.random.default_rng([cfg.seed, split_index, index, _PIXEL_STREAM])
    # Texture: broad blotches, finer grain and faint stripes, in grey, then tinted (0-255 scale).
    tex = 0.5 + 0.12 * _upsampled(rng, 128, W, H, Image.BICUBIC) + 0.05 * _upsampled(rng, 20, W, H, Image.BICUBIC)
    fx, fy = rng.uniform(4, 24, 2) * 2 * np.pi
    phase, amp = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.06)
    ax, ay = fx * np.arange(W) / W + phase, fy * np.arange(H) / H
    # sin(ax + ay) = sin(ax) cos(ay) + cos(ax) sin(ay): two outer products instead of a sin per pixel.
    tex += (amp * np.cos(ay)[:, None].astype(np.float32)) * np.sin(ax)[None, :].astype(np.float32)
    tex += (amp * np.sin(ay)[:, None].astype(np.float32)) * np.cos(ax)[None, :].astype(np.float32)
    np.clip(tex, 0, 1, out=tex)
    tint = rng.uniform(0.25, 0.85, 3).astype(np.float32) * 255
    img = tex[:, :, None] * (1.6 * tint) + 0.2 * tint
    np.minimum(img, 255, out=img)

    colors = np.zeros((len(layout.boxes), 3), np.float32)
    objects = []
    for j, ((x1, y1, x2, y2), label) in enumerate(zip(layout.boxes.tolist(), layout.labels.tolist())):
        window = img[y1:y2, x1:x2]
        local = window[:: max(1, window.shape[0] // 6), :: max(1, window.shape[1] // 6)].reshape(-1, 3).mean(0)
        near = int(layout.neighbour[j])
        colors[j] = _pick_color(rng, local, colors[near] if near >= 0 else None)
        mask = _shape_mask(_KINDS[label], y2 - y1, x2 - x1)
        np.copyto(window, colors[j], where=mask[:, :, None])
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        # The three masks touch all four sides of their window; taking the extent keeps boxes exact regardless.
        objects.append((x1 + int(cols[0]), y1 + int(rows[0]), x1 + int(cols[-1]) + 1, y1 + int(rows[-1]) + 1, label))

    # Lighting gradient over everything, then sensor noise, then round to uint8.
    gx, gy = rng.uniform(-0.7, 0.7, 2)
    light = (rng.uniform(0.8, 1.0) + gy * (np.arange(H, dtype=np.float32) / H - 0.5))[:, None] \
        + gx * (np.arange(W, dtype=np.float32) / W - 0.5)[None, :]
    np.clip(light, 0.45, 1.0, out=light)
    img *= light[:, :, None]
    flat = img.reshape(H, W * 3)
    noise = (_NOISE_QUANTILES * np.float32(rng.uniform(2.0, 8.0)))[np.frombuffer(rng.bytes(H * W * 3), np.uint8)]
    flat += noise.reshape(H, W * 3)
    flat += 0.5
    np.clip(flat, 0, 255, out=flat)
    return flat.astype(np.uint8).reshape(H, W, 3), objects


def _render_chunk(args) -> list[tuple[int, int, int, list]]:
    """Render and write images [start, stop) of one split; returns (index, width, height, objects) for each."""
    cfg, split_index, start, stop, folder = args
    split = list(SPLIT_DIRS)[split_index]
    out = []
    for i in range(start, stop):
        pixels, objects = render_image(i, split_index, cfg)
        (Path(folder) / f"{split}_{i:05d}.jpg").write_bytes(encode_jpeg(pixels))
        out.append((i, pixels.shape[1], pixels.shape[0], objects))
    return out


def write_large_shapes_dataset(out: str | os.PathLike, cfg: LargeShapesConfig = LargeShapesConfig(), workers: int | None = None,
                               progress: bool = False) -> dict:
    """Write the dataset under ``out`` (Roboflow COCO layout). Returns timing stats.

    ``workers`` processes (default: up to 4, one per CPU) share the work two images at a
    time; the output does not depend on their number.
    """
    stats = write_rendered(out, cfg, LARGE_CLASS_NAMES, _render_chunk, lambda count, workers: 2,
                           f"retinadet shapes-large v{LARGE_SHAPES_VERSION}", workers)
    if progress:
        print(f"shapes-large: {stats['images']} images in {stats['seconds']:.1f}s "
              f"({stats['seconds'] / max(stats['images'], 1):.2f} s/image)")
    return stats


def ensure_large_shapes_dataset(cfg: LargeShapesConfig | None = None, root: str | os.PathLike | None = None) -> Path:
    """Path to the cached dataset, generating it (atomically) on first use."""
    cfg = cfg or LargeShapesConfig()
    return ensure_cached(cfg.cache_name, lambda folder: write_large_shapes_dataset(folder, cfg), root)
