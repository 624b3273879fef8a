"""The `shapes-large` dataset: deterministic bytes, small exact boxes, clusters and negatives, and its entry points."""

from __future__ import annotations

import hashlib
import json

import numpy as np
from click.testing import CliRunner

from retinadet.cli import main
from retinadet.data import shapes_large
from retinadet.data.discover import load_splits
from retinadet.data.shapes_large import (
    _KINDS,
    LARGE_CLASS_NAMES,
    LargeShapesConfig,
    render_image,
    sample_layout,
    write_large_shapes_dataset,
)
from retinadet.data.synthetic import _shape_mask, cache_dir

TINY = LargeShapesConfig(num_train=2, num_val=1, num_test=1, seed=5)


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_and_annotations(tmp_path):
    write_large_shapes_dataset(tmp_path / "a", TINY, workers=1)
    write_large_shapes_dataset(tmp_path / "b", TINY, workers=2)  # the worker count does not change a byte
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    other = LargeShapesConfig(num_train=1, num_val=0, num_test=0, seed=6)
    write_large_shapes_dataset(tmp_path / "c", other, workers=1)
    assert (tmp_path / "a/train/train_00000.jpg").read_bytes() != (tmp_path / "c/train/train_00000.jpg").read_bytes()
    # The written annotations are exactly what the renderer drew.
    data = json.loads((tmp_path / "a/train/_annotations.coco.json").read_text())
    pixels, objects = render_image(0, 0, TINY)
    image = next(im for im in data["images"] if im["file_name"] == "train_00000.jpg")
    assert (image["height"], image["width"]) == pixels.shape[:2]
    written = [(x, y, x + w, y + h, c - 1) for a in data["annotations"] if a["image_id"] == image["id"]
               for (x, y, w, h), c in [(a["bbox"], a["category_id"])]]
    assert len(objects) > 10 and written == objects


def _pairs_within(boxes: np.ndarray, gap: int) -> np.ndarray:
    """Boolean (N, N): the boxes come within ``gap`` px of each other along one axis while overlapping along the other."""
    x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
    dx = np.maximum(x1[:, None], x1[None]) - np.minimum(x2[:, None], x2[None])  # > 0: a horizontal gap
    dy = np.maximum(y1[:, None], y1[None]) - np.minimum(y2[:, None], y2[None])
    near = ((dx <= gap) & (dy < 0)) | ((dy <= gap) & (dx < 0))
    np.fill_diagonal(near, False)
    return near


def test_layouts_small_objects_clusters_negatives():
    cfg = LargeShapesConfig()
    layouts = [sample_layout(i, 0, cfg) for i in range(200)]
    sizes = np.array([(lay.width, lay.height) for lay in layouts])
    assert sizes[:, 0].min() >= 1700 and sizes[:, 0].max() <= 2300 and sizes[:, 1].min() >= 1500 and sizes[:, 1].max() <= 2100
    assert len(set(sizes[:, 0])) > 50 and (sizes[:, 0] != sizes[:, 1]).mean() > 0.9
    counts = np.array([len(lay.boxes) for lay in layouts])
    assert 0.08 <= (counts == 0).mean() <= 0.25
    assert counts[counts > 0].min() >= 15 and counts.max() <= 150 and counts.max() >= 120
    boxes = np.concatenate([lay.boxes for lay in layouts if len(lay.boxes)])
    sides = np.concatenate([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]])
    assert sides.min() >= 10 and sides.max() <= 40 and sides.min() <= 11 and sides.max() >= 39
    assert 17 <= np.median(sides) <= 23  # log-uniform: the median is near sqrt(10 * 40) = 20, not 25
    touching = 0
    for lay in layouts:
        b = lay.boxes
        if not len(b):
            continue
        assert b[:, :2].min() >= 0 and (b[:, 2] <= lay.width).all() and (b[:, 3] <= lay.height).all()
        assert not _pairs_within(b, -1).any()  # no two boxes share a pixel
        touching += int(_pairs_within(b, 2).any(1).sum())
    assert 0.2 <= touching / len(boxes) <= 0.5  # about a third of the objects sit in clusters


def _side_contrasts(img: np.ndarray, box, label: int, owner: np.ndarray, j: int) -> list[float]:
    """For each side of ``box``: how far the drawn pixels on its border line are (max over channels, in grey
    levels) from the pixels just outside them. ``owner`` maps each pixel to the object whose box holds it (-1:
    none); sides at the image border or against another object's box are skipped."""
    H, W = img.shape[:2]
    x1, y1, x2, y2 = box
    mask = _shape_mask(_KINDS[label], y2 - y1, x2 - x1)
    sides = [((y1, slice(x1, x2)), mask[0], (y1 - 1, slice(x1, x2)), y1 > 0),
             ((y2 - 1, slice(x1, x2)), mask[-1], (y2, slice(x1, x2)), y2 < H),
             ((slice(y1, y2), x1), mask[:, 0], (slice(y1, y2), x1 - 1), x1 > 0),
             ((slice(y1, y2), x2 - 1), mask[:, -1], (slice(y1, y2), x2), x2 < W)]
    out = []
    for inner, drawn, outer, inside in sides:
        if not inside:
            continue
        beside = drawn & np.isin(owner[outer], (-1, j))
        if beside.sum() >= 2:
            diff = img[inner][drawn].astype(np.float32).mean(0) - img[outer][beside].astype(np.float32).mean(0)
            out.append(float(np.abs(diff).max()))
    return out


def test_boxes_tight_to_the_drawn_pixels():
    cfg = LargeShapesConfig()
    index = next(i for i in range(10) if len(sample_layout(i, 0, cfg).boxes) > 50)
    img, objects = render_image(index, 0, cfg)
    owner = np.full(img.shape[:2], -1, np.int32)
    for j, (x1, y1, x2, y2, _) in enumerate(objects):
        owner[y1:y2, x1:x2] = j

    def min_contrast(grow: int) -> np.ndarray:
        out = []
        for j, (x1, y1, x2, y2, label) in enumerate(objects):
            c = _side_contrasts(img, (x1 - grow, y1 - grow, x2 + grow, y2 + grow), label, owner, j)
            out.append(min(c) if c else np.inf)
        return np.array(out)

    tight = min_contrast(0)
    assert np.isfinite(tight).mean() > 0.9 and tight.min() > 20  # every side of every box is an edge of the object
    # The check has teeth: a box one pixel too large or too small has a side without an edge.
    assert (min_contrast(1) < 20).mean() > 0.95 and (min_contrast(-1) < 20).mean() > 0.95


def test_load_splits_builtin_name_and_cli(tmp_path, monkeypatch):
    from retinadet.engine.datasets import data_spec

    assert data_spec("shapes-large") == "shapes-large"
    # The default config is 72 full images; shrink it so the built-in name generates into the cache quickly.
    small = LargeShapesConfig(num_train=2, num_val=1, num_test=1)
    monkeypatch.setattr(shapes_large.ensure_large_shapes_dataset, "__defaults__", (small, None))
    splits = load_splits("shapes-large")
    assert (cache_dir() / small.cache_name / ".complete").is_file()
    assert list(splits) == ["train", "val", "test"] and [len(s) for s in splits.values()] == [2, 1, 1]
    train = splits["train"]
    assert train.class_names == LARGE_CLASS_NAMES and train.format == "coco" and not train.problems
    assert min(r.width for r in train.records) >= 1700

    result = CliRunner().invoke(main, ["data", "synth", "--large", "-o", str(tmp_path / "out"), "--n", "6", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "wrote 6 images (train 4, val 1, test 1)" in result.output
    written = load_splits(tmp_path / "out")
    assert [len(s) for s in written.values()] == [4, 1, 1] and written["val"].class_names == LARGE_CLASS_NAMES


def test_cli_large_defaults_and_rejects_size(tmp_path, monkeypatch):
    seen = []

    def fake_write(out, cfg, workers=None):
        seen.append(cfg)
        return {"images": cfg.total, "seconds": 1.0, "images_per_s": float(cfg.total)}

    monkeypatch.setattr(shapes_large, "write_large_shapes_dataset", fake_write)
    result = CliRunner().invoke(main, ["data", "synth", "--large", "-o", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert (seen[0].num_train, seen[0].num_val, seen[0].num_test) == (48, 12, 12)

    # Even the default value, given explicitly, is refused: one line, no traceback, nothing written.
    result = CliRunner().invoke(main, ["data", "synth", "--large", "--size", "320", "-o", str(tmp_path / "e")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "--size" in lines[0] and "--large" in lines[0], result.output
    assert len(seen) == 1 and not (tmp_path / "e").exists()
