"""Two small synthetic detection sets for benchmarks that must not be tuned to blood-cell microscopy alone.

* ``clutter`` (COCO): 1-4 large objects (disc, star, blob; sides 20-70% of the image's short side, some cut
  by the border, a little overlap) on images of 480x360 to 800x600 in both orientations, over strong clutter:
  textured noise and 10-40 unlabelled lines, rings and small rectangles in the objects' own colours (3-15% of
  the short side), so size and form, not colour, tell an object from the clutter. ~5% images are empty.
  It tests input-size fitting: objects this large are found on a small canvas, so a recipe that picks its
  input size from the boxes should go smaller than the blood-cell one.
* ``elongated`` (YOLO): 3-15 thin objects per 640x640 or 768x576 image on a mildly textured, blurred
  background: "fibre" (long, dark, straight or slightly curved, 3-8 px thick, 40-300 px long, boxes 1:5 to
  1:15) and "needle" (short, bright, tapered, straight, boxes 1:4 to 1:8). Objects lie within 10 degrees of
  an axis, because the axis-aligned box of a diagonal rod is square; half are vertical, so they cross.
  It tests anchor fitting: the default anchor ratios (1:2 to 2:1) match few of these boxes.

Every image is a function of (seed, split, index), so a seed gives the same files (with the same numpy and
Pillow); one process writes a full set in about 10 s (no pool: benchmarks share the CPU with training). Boxes
are the tight boxes of the drawn pixels (alpha >= 0.5 where edges are soft), clipped to the image.

    from own_data_sets import ensure_set
    data = ensure_set("elongated", cache_dir)  # pass as --data
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFilter

from retinadet.data.synthetic import encode_jpeg, ensure_cached

VERSION = 1  # part of the cache folder's name: bump it when the images or boxes change
SPLITS = ("train", "val", "test")
Objects = list[tuple[int, int, int, int, int]]  # (x1, y1, x2, y2, label), x2/y2 exclusive
Rendered = dict[str, list[tuple[str, int, int, Objects]]]  # split -> (file name, width, height, objects)


@dataclass(frozen=True)
class DataSet:
    class_names: tuple[str, ...]
    render: Callable[[np.random.Generator], tuple[np.ndarray, Objects]]
    write_labels: Callable[[Path, Rendered, tuple[str, ...]], None]
    entry: str  # what --data names, relative to the set's folder ("": the folder itself)
    counts: tuple[int, int, int] = (300, 100, 100)


def _field(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Smooth RGB noise in [-1, 1] with features of about ``cell`` px: a coarse random grid that PIL upsamples
    (far cheaper than filtering full-size noise)."""
    small = rng.integers(0, 256, (h // cell + 2, w // cell + 2, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), np.float32) / 127.5 - 1


def _paint(canvas: np.ndarray, alpha: np.ndarray, fill: np.ndarray, x0: int, y0: int) -> None:
    """Blend a patch (alpha [h, w], fill [h, w, 3] or [3]) into ``canvas`` at (x0, y0), clipped to the canvas."""
    H, W = canvas.shape[:2]
    h, w = alpha.shape
    ya, yb, xa, xb = max(y0, 0), min(y0 + h, H), max(x0, 0), min(x0 + w, W)
    a = alpha[ya - y0 : yb - y0, xa - x0 : xb - x0, None]
    f = fill[ya - y0 : yb - y0, xa - x0 : xb - x0] if fill.ndim == 3 else fill
    window = canvas[ya:yb, xa:xb]
    window += a * (f - window)


def _tight(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _overlap(box: tuple[int, int, int, int], others: Objects) -> float:
    """The largest share of the smaller box that ``box`` covers of any of ``others``."""
    worst = 0.0
    for ox1, oy1, ox2, oy2, _ in others:
        iw, ih = min(box[2], ox2) - max(box[0], ox1), min(box[3], oy2) - max(box[1], oy1)
        if iw > 0 and ih > 0:
            small = min((box[2] - box[0]) * (box[3] - box[1]), (ox2 - ox1) * (oy2 - oy1))
            worst = max(worst, iw * ih / small)
    return worst


def _finish(canvas: np.ndarray, rng: np.random.Generator, noise: int) -> np.ndarray:
    canvas += rng.integers(-noise, noise + 1, canvas.shape, dtype=np.int16)  # sensor noise
    return np.clip(canvas, 0, 255, out=canvas).astype(np.uint8)


# -- clutter ------------------------------------------------------------------------------------------------

CLUTTER_NAMES = ("disc", "star", "blob")
MIN_SIDE, MAX_SIDE = 0.2, 0.7  # object sides, as fractions of the image's short side


def _object_patch(kind: int, bw: int, bh: int, color: np.ndarray, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """(alpha, fill, tight box in the patch) of a bw x bh object with soft edges and its class's shading."""
    pad = 4
    mask = Image.new("L", (bw + 2 * pad, bh + 2 * pad), 0)
    draw = ImageDraw.Draw(mask)
    if kind == 0:
        draw.ellipse([pad, pad, pad + bw - 1, pad + bh - 1], fill=255)
    else:
        if kind == 1:
            n = int(rng.integers(5, 9))
            theta = rng.uniform(0, 2 * np.pi) + np.arange(2 * n) * np.pi / n
            radius = np.where(np.arange(2 * n) % 2 == 0, 1.0, rng.uniform(0.38, 0.55))
        else:  # a few low harmonics make an irregular, still convex-ish outline
            theta = np.linspace(0, 2 * np.pi, 48, endpoint=False)
            radius = 1 + sum(rng.uniform(0, 0.15) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4))
        x, y = radius * np.cos(theta), radius * np.sin(theta)
        # Stretched to touch all four sides, like the ellipse: the box size is then the drawn size.
        x = pad + (x - x.min()) / (x.max() - x.min()) * (bw - 1)
        y = pad + (y - y.min()) / (y.max() - y.min()) * (bh - 1)
        draw.polygon(list(zip(x.tolist(), y.tolist())), fill=255)
    alpha = np.asarray(mask.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 2.5))), np.float32) / 255
    v, u = np.mgrid[-1 : 1 : complex(0, alpha.shape[0]), -1 : 1 : complex(0, alpha.shape[1])].astype(np.float32)
    phi = rng.uniform(0, 2 * np.pi)
    along = u * np.cos(phi) + v * np.sin(phi)
    if kind == 0:  # lit from one side: a radial highlight off centre
        hx, hy = rng.uniform(-0.4, 0.4, 2)
        shade = 1.3 - 0.6 * ((u - hx) ** 2 + (v - hy) ** 2)
    elif kind == 1:  # a linear gradient
        shade = 0.8 + 0.35 * along
    else:  # stripes
        shade = 0.85 + 0.25 * np.sin(2 * np.pi * rng.uniform(2.5, 5) * along)
    return alpha, color * shade[:, :, None], _tight(alpha >= 0.5)


def _clutter_image(rng: np.random.Generator) -> tuple[np.ndarray, Objects]:
    w = int(rng.integers(480, 801))
    h = int(np.clip(round(w * rng.uniform(0.68, 0.82)), 360, 600))
    if rng.random() < 0.3:
        w, h = h, w
    short = min(w, h)
    base = rng.uniform(50, 200, 3)
    # One palette for objects and clutter, each colour away from the background so that nothing is invisible.
    palette = rng.uniform(20, 235, (4, 3))
    close = np.abs(palette - base).max(1) < 70
    palette[close] = np.where(base > 128, base - 100, base + 100)
    canvas = base + 40 * _field(rng, h, w, 40) + 22 * _field(rng, h, w, 8)

    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(10, 41))):
        d = rng.uniform(0.03, 0.15) * short
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        color = tuple(np.clip(palette[rng.integers(4)] * rng.uniform(0.8, 1.2), 0, 255).astype(int).tolist())
        form = rng.integers(3)
        if form == 0:
            t = rng.uniform(0, np.pi)
            dx, dy = d / 2 * np.cos(t), d / 2 * np.sin(t)
            draw.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=color, width=int(rng.integers(2, 6)))
        elif form == 1:
            ry = d / 2 * rng.uniform(0.7, 1.0)
            draw.ellipse([cx - d / 2, cy - ry, cx + d / 2, cy + ry], outline=color, width=int(rng.integers(2, 5)))
        else:
            t, a, b = rng.uniform(0, np.pi), d / 2, d / 2 * rng.uniform(0.4, 1.0)
            corners = [(cx + sx * a * np.cos(t) - sy * b * np.sin(t), cy + sx * a * np.sin(t) + sy * b * np.cos(t))
                       for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
            draw.polygon(corners, fill=color)
    canvas = np.asarray(image, np.float32)

    objects: Objects = []
    need = MIN_SIDE * short  # a visible side below this is not allowed, so border cuts are bounded
    for _ in range(0 if rng.random() < 0.05 else int(rng.integers(1, 5))):
        kind = int(rng.integers(3))
        bw = int(rng.uniform(MIN_SIDE + 0.015, MAX_SIDE) * short)
        bh = int(np.clip(bw * rng.uniform(0.75, 1.33), (MIN_SIDE + 0.015) * short, MAX_SIDE * short))
        color = palette[rng.integers(4)]
        alpha, fill, (tx1, ty1, tx2, ty2) = _object_patch(kind, bw, bh, color, rng)
        tw, th = tx2 - tx1, ty2 - ty1
        for _attempt in range(20):
            # Up to a quarter of a side may fall outside the image.
            x = int(rng.integers(-tw // 4, w - tw + tw // 4 + 1))
            y = int(rng.integers(-th // 4, h - th + th // 4 + 1))
            box = (max(x, 0), max(y, 0), min(x + tw, w), min(y + th, h))
            if box[2] - box[0] >= need and box[3] - box[1] >= need and _overlap(box, objects) <= 0.25:
                break
        else:
            continue
        _paint(canvas, alpha, fill, x - tx1, y - ty1)
        objects.append((*box, kind))

    gx, gy = rng.uniform(-0.35, 0.35, 2)  # uneven lighting
    canvas *= (1 + gx * np.linspace(-0.5, 0.5, w, dtype=np.float32))[None, :, None]
    canvas *= (1 + gy * np.linspace(-0.5, 0.5, h, dtype=np.float32))[:, None, None]
    return _finish(canvas, rng, 12), objects


def _write_coco(root: Path, rendered: Rendered, names: tuple[str, ...]) -> None:
    """``annotations/instances_<split>.json`` naming ``<split>/<file>`` under ``images/`` (the classic COCO
    layout the reader finds from the JSON's folder)."""
    (root / "annotations").mkdir()
    categories = [{"id": i + 1, "name": n, "supercategory": "object"} for i, n in enumerate(names)]
    for split, items in rendered.items():
        images, annotations = [], []
        for image_id, (file_name, width, height, objects) in enumerate(items, start=1):
            images.append({"id": image_id, "file_name": f"{split}/{file_name}", "width": width, "height": height})
            for x1, y1, x2, y2, label in objects:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1,
                                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        data = {"info": {"description": f"benchmarks/own_data_sets.py v{VERSION}"}, "images": images,
                "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))


# -- elongated ----------------------------------------------------------------------------------------------

ELONGATED_NAMES = ("fibre", "needle")
MAX_TILT = np.sin(np.radians(10))


def _rod_patch(kind: int, base: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """(alpha, colour, tight box in the patch) of a fibre or a needle, horizontal or vertical."""
    if kind == 0:
        length, thick, aspect = np.exp(rng.uniform(np.log(40), np.log(300))), int(rng.integers(3, 9)), rng.uniform(5, 15)
    else:
        length, aspect = np.exp(rng.uniform(np.log(25), np.log(90))), rng.uniform(4, 8)
        thick = int(np.clip(rng.integers(3, 7), 3, max(3, length / aspect)))
    # The box's short side is the thickness plus the spread of the centre line across the axis (`spare`), which
    # comes from a tilt and, for curved fibres, a parabolic bow: 4 * bow = 2 spare - rise + 2 sqrt(spare (spare -
    # rise)) makes rise * s + 4 bow s (1 - s) spread exactly `spare`, so the box keeps its planned aspect.
    spare = max(length / aspect - thick, 0.0)
    curved = kind == 0 and rng.random() < 0.6
    rise = min(spare * (rng.uniform(0, 0.7) if curved else 1.0), MAX_TILT * length)
    bow = (2 * spare - rise + 2 * np.sqrt(spare * (spare - rise))) / 4 if curved else 0.0
    s = np.linspace(0, 1, 17)
    along, across = s * length, (rise * s + 4 * bow * s * (1 - s)) * rng.choice([-1, 1])
    if kind == 1:  # a spindle: widest in the middle, pointed ends
        half = thick / 2 * np.sqrt(1 - (2 * s - 1) ** 2) + 0.3
        along = np.concatenate([along, along[::-1]])
        across = np.concatenate([across + half, (across - half)[::-1]])
    x, y = (along, across) if rng.random() < 0.5 else (across, along)
    pad = thick
    x, y = x - x.min() + pad, y - y.min() + pad
    mask = Image.new("L", (int(x.max()) + 2 * pad, int(y.max()) + 2 * pad), 0)
    points = list(zip(x.tolist(), y.tolist()))
    if kind == 0:
        ImageDraw.Draw(mask).line(points, fill=255, width=thick, joint="curve")
        color = base * rng.uniform(0.3, 0.6) * rng.uniform(0.8, 1.2, 3)  # dark, often tinted (hyphae, fibres)
        opacity = rng.uniform(0.75, 0.95)
    else:
        ImageDraw.Draw(mask).polygon(points, fill=255)
        color = np.minimum(base + rng.uniform(70, 110) + rng.uniform(0, 20, 3), 250)
        opacity = rng.uniform(0.9, 1.0)
    drawn = np.asarray(mask) > 0
    return drawn * np.float32(opacity), color, _tight(drawn)


def _elongated_image(rng: np.random.Generator) -> tuple[np.ndarray, Objects]:
    w, h = (640, 640) if rng.random() < 0.5 else (768, 576)
    base = rng.uniform(90, 170) + rng.normal(0, 12, 3)  # grey, sometimes tinted
    canvas = base + 12 * _field(rng, h, w, 64) + 6 * _field(rng, h, w, 12)
    objects: Objects = []
    for _ in range(int(rng.integers(3, 16))):
        kind = int(rng.random() < 0.35)
        alpha, color, (tx1, ty1, tx2, ty2) = _rod_patch(kind, base, rng)
        tw, th = tx2 - tx1, ty2 - ty1
        for _attempt in range(10):
            x, y = int(rng.integers(2, w - tw - 1)), int(rng.integers(2, h - th - 1))
            box = (x, y, x + tw, y + th)
            # Crossings are wanted (a horizontal box covers little of a vertical one); parallel stacks are not.
            if _overlap(box, objects) <= 0.3:
                break
        else:
            continue
        _paint(canvas, alpha, color, x - tx1, y - ty1)
        objects.append((*box, kind))
    blurred = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).filter(ImageFilter.BoxBlur(rng.uniform(0.5, 1.0)))
    return _finish(np.asarray(blurred, np.float32), rng, 6), objects


def _write_yolo(root: Path, rendered: Rendered, names: tuple[str, ...]) -> None:
    """``labels/<split>/<stem>.txt`` beside ``images/<split>/`` and a ``data.yaml``. Its ``path`` is ``.``
    (relative to the yaml), so the folder stays valid after the rename into place or a move."""
    for split, items in rendered.items():
        folder = root / "labels" / split
        folder.mkdir(parents=True)
        for file_name, width, height, objects in items:
            lines = [f"{label} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} {(x2 - x1) / width:.6f} "
                     f"{(y2 - y1) / height:.6f}\n" for x1, y1, x2, y2, label in objects]
            (folder / file_name).with_suffix(".txt").write_text("".join(lines))
    spec = {"path": ".", **{split: f"images/{split}" for split in SPLITS}, "names": dict(enumerate(names))}
    (root / "data.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


SETS = {
    "clutter": DataSet(CLUTTER_NAMES, _clutter_image, _write_coco, ""),
    "elongated": DataSet(ELONGATED_NAMES, _elongated_image, _write_yolo, "data.yaml"),
}


def _spec(name: str) -> DataSet:
    if name not in SETS:
        raise ValueError(f"unknown data set {name!r}: expected one of {', '.join(SETS)}")
    return SETS[name]


def _render_into(spec: DataSet, root: Path, seed: int, counts: tuple[int, int, int]) -> None:
    """Write every image and the labels under ``root``."""
    rendered: Rendered = {}
    for split_index, (split, count) in enumerate(zip(SPLITS, counts)):
        folder = root / "images" / split
        folder.mkdir(parents=True)
        rendered[split] = []
        for i in range(count):
            pixels, objects = spec.render(np.random.default_rng([seed, split_index, i]))
            file_name = f"{split}_{i:04d}.jpg"
            (folder / file_name).write_bytes(encode_jpeg(pixels))
            rendered[split].append((file_name, pixels.shape[1], pixels.shape[0], objects))
    spec.write_labels(root, rendered, spec.class_names)


def write_set(name: str, root: str | os.PathLike, seed: int = 0, counts: tuple[int, int, int] | None = None) -> Path:
    """Write set ``name`` as the folder ``root`` (replacing one there) and return what to pass as ``--data``: the
    folder (COCO) or its data.yaml (YOLO). ``counts`` (train, val, test) defaults to the set's 300/100/100.

    The set is written into a temporary sibling and renamed into place, so ``root`` is never seen half written.
    """
    spec = _spec(name)
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{root.name}.tmp-", dir=root.parent))
    try:
        _render_into(spec, tmp, seed, tuple(counts or spec.counts))
        shutil.rmtree(root, ignore_errors=True)
        os.rename(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root / spec.entry


def ensure_set(name: str, cache: str | os.PathLike, seed: int = 0) -> Path:
    """Set ``name`` in ``cache/<name>-v<VERSION>-seed<seed>``, written on first use and reused after (a concurrent
    first use is safe: see ``ensure_cached``); returns the path to pass as ``--data``."""
    spec = _spec(name)
    target = ensure_cached(f"{name}-v{VERSION}-seed{seed}", lambda folder: _render_into(spec, folder, seed, spec.counts), cache)
    return target / spec.entry
