"""The tile grid, the slicing decision, seam filtering and the cross-tile merge (torch-free)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retinadet.errors import ConfigError
from retinadet.utils.tiling import (
    TileOptions,
    TilePlan,
    TrainingScale,
    merge_detections,
    merge_tiles,
    plan_tiles,
    shrink_warning,
    tile_grid,
    tile_starts,
)

LETTERBOX = {"min_size": 288, "max_size": 288, "fixed_size": 288}


@settings(max_examples=200, deadline=None)
@given(h=st.integers(1, 3000), w=st.integers(1, 3000), th=st.integers(32, 700), tw=st.integers(32, 700),
       frac=st.floats(0.0, 0.6))
def test_grid_covers_the_image_exactly(h, w, th, tw, frac):
    overlap = (int(th * frac), int(tw * frac))
    grid = tile_grid(h, w, (th, tw), overlap)
    assert (grid[:, :2] >= 0).all() and (grid[:, 2] <= w).all() and (grid[:, 3] <= h).all()
    sizes = grid[:, 2:] - grid[:, :2]
    assert (sizes == [min(tw, w), min(th, h)]).all()  # one tile geometry: one anchor set, one batch shape
    cover = np.zeros((h, w), dtype=np.int32)
    for x1, y1, x2, y2 in grid:
        cover[y1:y2, x1:x2] += 1
    assert cover.min() >= 1
    for length, tile, ov in ((h, th, overlap[0]), (w, tw, overlap[1])):
        starts = tile_starts(length, tile, ov)
        assert starts[0] == 0 and starts[-1] + min(tile, length) == length
        if len(starts) > 1:
            assert (np.diff(starts) <= tile - ov).all()  # neighbours overlap by at least the overlap
            assert (np.diff(starts) > 0).all()


def test_options_reject_bad_values_with_one_line_each():
    cases = {"--tile must be": dict(tile="big"), "at least 32": dict(tile=8), "--tile-overlap": dict(overlap=1.0),
             "--tile-merge": dict(merge="wbf"), "--tile-match": dict(match="giou"), "--tile-threshold": dict(threshold=0.0)}
    for text, kwargs in cases.items():
        with pytest.raises(ConfigError, match=text) as err:
            TileOptions.parse(**kwargs)
        assert "\n" not in str(err.value)
    assert TileOptions.parse("640x480").tile == (480, 640)
    assert TileOptions.parse("off").tile is None and TileOptions.parse("0").tile is None
    assert TileOptions.parse(" AUTO ").tile == "auto"


def test_auto_slices_only_below_the_training_scale():
    bccd = TrainingScale(0.45, (0.8, 1.2), 100.0, 164.0, (480, 640))
    assert plan_tiles(480, 640, LETTERBOX, bccd, TileOptions()) is None  # a training-sized field
    assert plan_tiles(600, 800, LETTERBOX, bccd, TileOptions()) is None  # 0.36x: inside the scale jitter
    plan = plan_tiles(1440, 1920, LETTERBOX, bccd, TileOptions())
    assert plan is not None and plan.tile == (480, 640)  # shaped like the training fields, at their scale
    assert plan.overlap == (164, 164)  # at least the large objects, so none is cut for good
    assert "0.15x" in plan.reason and shrink_warning(1440, 1920, LETTERBOX, bccd) is not None
    assert shrink_warning(480, 640, LETTERBOX, bccd) is None
    assert plan_tiles(1440, 1920, LETTERBOX, None, TileOptions()) is None  # no recorded scale: whole image
    assert plan_tiles(1440, 1920, LETTERBOX, bccd, TileOptions(tile=None)) is None
    assert plan_tiles(100, 100, LETTERBOX, None, TileOptions(tile=256)).tile == (256, 256)  # forced


def _ideal_tile_detections(objects, grid, h, w, rng):
    """What a perfect detector reports per tile: each object's visible part, a cut one scored lower."""
    boxes, scores, labels, tiles = [], [], [], []
    for t, (x1, y1, x2, y2) in enumerate(grid):
        for k, b in enumerate(objects):
            vis = [max(b[0], x1), max(b[1], y1), min(b[2], x2), min(b[3], y2)]
            if vis[2] - vis[0] < 2 or vis[3] - vis[1] < 2:
                continue
            full = vis == list(b)
            jitter = rng.normal(0, 0.7, 4) if full else 0.0
            boxes.append(np.asarray(vis, dtype=float) + jitter)
            scores.append(0.9 - 0.1 * rng.random() if full else 0.5 + 0.2 * rng.random())
            labels.append(k % 2)
            tiles.append(t)
    return np.array(boxes), np.array(scores), np.array(labels), np.array(tiles)


@pytest.mark.parametrize("seed", range(3))
def test_objects_on_seams_are_reported_once_whole(seed):
    """Touching 30 px cells packed over a 1000 px image sliced into 256 px tiles: of the objects a seam cuts, at
    least 99% come out exactly once (one output box at IoU >= 0.5), whole (no edge more than 3 px off)."""
    rng = np.random.default_rng(seed)
    h = w = 1000
    xs = np.arange(2, w - 32, 31)  # 30 px cells 1 px apart: crowded and touching
    objects = [(x, y, x + 30, y + 30) for y in np.arange(2, h - 32, 31) for x in xs]
    plan = TilePlan.of(256, 0.2)
    grid = plan.grid(h, w)
    boxes, scores, labels, tiles = _ideal_tile_detections(objects, grid, h, w, rng)
    keep, merged = merge_tiles(boxes, scores, labels, tiles, grid, h, w, TileOptions(), nms_iou=0.5)
    gt = np.array(objects, dtype=float)
    iou = _iou(gt, merged)
    best = merged[iou.argmax(1)]
    once = ((iou >= 0.5).sum(1) == 1) & (np.abs(best - gt).max(1) < 3)
    inner_x, inner_y = np.unique(grid[:, [0, 2]]), np.unique(grid[:, [1, 3]])
    on_seam = np.array([any(b[0] < e < b[2] for e in inner_x if 0 < e < w) or any(b[1] < e < b[3] for e in inner_y if 0 < e < h)
                        for b in objects])
    assert on_seam.sum() > 100
    assert once[on_seam].mean() >= 0.99, once[on_seam].mean()
    assert once.mean() >= 0.99
    assert len(merged) <= len(objects) * 1.01  # no leftover fragments


def test_greedy_nmm_by_ios_merges_touching_neighbours_from_different_tiles():
    # Two touching cells that two tiles both see whole, reported slightly apart: NMS keeps two, union-merging by
    # IoS at a loose threshold stretches a box over its neighbour, which barely overlaps it.
    boxes = np.array([[0, 0, 30, 30], [29, 0, 59, 30], [0.5, 0, 30.5, 30], [29.5, 0, 59.5, 30]], dtype=float)
    scores = np.array([0.9, 0.8, 0.85, 0.75])
    labels = np.zeros(4, dtype=int)
    group = np.array([0, 0, 1, 1])
    keep, merged = merge_detections(boxes, scores, labels, group, method="nms", match="iou", threshold=0.5)
    assert sorted(keep.tolist()) == [0, 1]
    keep, merged = merge_detections(boxes, scores, labels, group, method="greedy-nmm", match="ios", threshold=0.01)
    assert merged[0].tolist() == [0, 0, 59.5, 30]  # one box over two cells
    # Detections of one tile are never merged with each other, however they overlap.
    keep, _ = merge_detections(boxes[:2], scores[:2], labels[:2], np.zeros(2, dtype=int), method="greedy-nmm",
                               match="ios", threshold=0.01)
    assert len(keep) == 2


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000))
def test_cross_tile_nms_agrees_with_torchvision(seed):
    torch = pytest.importorskip("torch")
    from torchvision.ops import batched_nms

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    xy = rng.uniform(0, 200, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 60, (n, 2))], axis=1)
    scores = rng.permutation(n) / n + 0.01  # distinct, so the order is unambiguous
    labels = rng.integers(0, 2, n)
    group = np.arange(n)  # every detection from its own tile: plain class-aware NMS
    keep, _ = merge_detections(boxes, scores, labels, group, method="nms", match="iou", threshold=0.5)
    ref = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), 0.5).numpy()
    assert keep.tolist() == ref.tolist()


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(b) == 0:
        return np.zeros((len(a), 0))
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)
