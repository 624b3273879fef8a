"""Tiled training's sampling (retinadet.data.tiles): windows, cut boxes, the epoch plan, the dataset and its stats."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from retinadet.data import tiles as T
from retinadet.data.images import read_image
from retinadet.data.records import DatasetRecords, ImageRecord
from retinadet.data.tiles import (
    NEGATIVE,
    OBJECT,
    RANDOM,
    TileCollate,
    TileCounters,
    TileDataset,
    TileSampling,
    crop_tile,
    epoch_tiles,
    tile_size,
    tile_window,
    tiles_per_image,
)
from retinadet.errors import DataError


def _dataset(root, specs) -> DatasetRecords:
    """PNG images (lossless, so pixels compare exactly) of the given (width, height, boxes)."""
    records = []
    for i, (w, h, boxes) in enumerate(specs):
        path = root / f"img{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        records.append(ImageRecord(path, w, h, boxes, np.zeros(len(boxes), np.int64), np.zeros(len(boxes), bool), i + 1))
    return DatasetRecords(records, ["thing"], [1], root=root, split="train")


@st.composite
def scenes(draw):
    h, w = draw(st.integers(4, 48)), draw(st.integers(4, 48))
    n = draw(st.integers(0, 8))
    boxes = []
    for _ in range(n):
        x1, y1 = draw(st.integers(0, w - 1)), draw(st.integers(0, h - 1))
        boxes.append([x1, y1, draw(st.integers(x1 + 1, w)), draw(st.integers(y1 + 1, h))])
    x0, y0 = draw(st.integers(0, w - 1)), draw(st.integers(0, h - 1))
    window = (x0, y0, draw(st.integers(x0 + 1, w)), draw(st.integers(y0 + 1, h)))
    crowd = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return h, w, boxes, crowd, window, draw(st.floats(0, 1)), draw(st.integers(0, 2**16))


@settings(max_examples=300, deadline=None)
@given(scenes())
def test_cut_boxes_are_clipped_kept_or_ignored_and_follow_the_pixels(scene):
    h, w, boxes, crowd, window, vis, seed = scene
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    c = torch.tensor(crowd, dtype=torch.bool)
    tile, kept, labels, kcrowd, cut = crop_tile(image, b, torch.arange(len(b)), c, window, vis)
    x0, y0, x1, y1 = window
    assert torch.equal(tile, image[:, y0:y1, x0:x1])
    tw, th = x1 - x0, y1 - y0
    # Every kept box lies inside its tile.
    assert bool((kept[:, :2] >= 0).all() and (kept[:, 2] <= tw).all() and (kept[:, 3] <= th).all())
    # Exactly the boxes overlapping the window are kept, in order (those entirely outside are removed).
    ix1, iy1 = np.maximum(b[:, 0].numpy(), x0), np.maximum(b[:, 1].numpy(), y0)
    ix2, iy2 = np.minimum(b[:, 2].numpy(), x1), np.minimum(b[:, 3].numpy(), y1)
    overlap = (ix2 > ix1) & (iy2 > iy1)
    assert labels.tolist() == np.flatnonzero(overlap).tolist()
    n_cut = n_ignored = 0
    for k, i in enumerate(labels.tolist()):
        bx1, by1, bx2, by2 = (int(v) for v in kept[k])
        # The box follows the pixels: the tile under it is the image under the original box (its part inside).
        assert (bx1 + x0, by1 + y0, bx2 + x0, by2 + y0) == (ix1[i], iy1[i], ix2[i], iy2[i])
        assert torch.equal(tile[:, by1:by2, bx1:bx2], image[:, by1 + y0:by2 + y0, bx1 + x0:bx2 + x0])
        visible = (bx2 - bx1) * (by2 - by1) / float((b[i, 2] - b[i, 0]) * (b[i, 3] - b[i, 1]))
        ignored = not crowd[i] and visible < vis - 1e-6
        # A kept target has at least min_visibility inside; a less visible one is crowd (ignored), not dropped.
        assert bool(kcrowd[k]) == (crowd[i] or ignored)
        if not kcrowd[k]:
            assert visible >= vis - 1e-6
        n_cut += visible < 1
        n_ignored += ignored
    assert (cut.clipped + cut.ignored, cut.ignored) == (n_cut, n_ignored)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300), st.integers(1, 300), st.integers(32, 128), st.sampled_from([OBJECT, RANDOM, NEGATIVE]),
       st.integers(0, 2**16))
def test_windows_lie_in_the_image_and_hold_their_object(h, w, size, kind, seed):
    x1, y1 = (seed % w), (seed // 7 % h)
    box = np.array([[x1, y1, min(w, x1 + 1 + seed % 20), min(h, y1 + 1 + seed % 13)]], np.float32)
    wx0, wy0, wx1, wy1 = tile_window(h, w, box, np.zeros(1, bool), kind, size, torch.Generator().manual_seed(seed))
    # A side smaller than the tile is taken whole.
    assert (wx1 - wx0, wy1 - wy0) == (min(size, w), min(size, h))
    assert 0 <= wx0 and 0 <= wy0 and wx1 <= w and wy1 <= h
    if kind == OBJECT:  # the only object fits the tile, so the window holds it whole
        assert wx0 <= box[0, 0] and wy0 <= box[0, 1] and box[0, 2] <= wx1 and box[0, 3] <= wy1


def test_negative_windows_hold_no_box_and_fall_back_to_a_random_one():
    box = np.array([[0, 0, 10, 10]], np.float32)  # a corner object: most 100 px windows of 300 px miss it
    for seed in range(200):
        x0, y0, x1, y1 = tile_window(300, 300, box, np.zeros(1, bool), NEGATIVE, 100, torch.Generator().manual_seed(seed))
        assert x0 >= 10 or y0 >= 10
    # No empty window exists: still a window of the tile's size.
    full = np.array([[0, 0, 300, 300]], np.float32)
    x0, y0, x1, y1 = tile_window(300, 300, full, np.zeros(1, bool), NEGATIVE, 100, torch.Generator().manual_seed(0))
    assert (x1 - x0, y1 - y0) == (100, 100)


def test_tile_counts_and_auto_size():
    assert tiles_per_image(2000, 1700, 256) == 8 * 7
    assert tiles_per_image(100, 90, 256) == 1 and tiles_per_image(0, 0, 256) == 1
    assert tiles_per_image(40, 600, 256) == 3

    class Pre:
        fixed_size, min_size = None, 608

    assert tile_size("auto", Pre) == 608 and tile_size(300, Pre) == 300 and tile_size(None, Pre) is None
    Pre.fixed_size = 288
    assert tile_size("AUTO", Pre) == 288


def _records(specs):
    return [ImageRecord(f"/x/{i}.png", w, h, np.asarray(b, np.float32).reshape(-1, 4), np.zeros(len(b), np.int64),
                        np.zeros(len(b), bool), i) for i, (w, h, b) in enumerate(specs)]


def test_epoch_plan_is_deterministic_consecutive_and_has_the_set_shares():
    specs = [(1000, 900, [[5, 5, 20, 20]]), (700, 1300, [[50, 50, 70, 80]]), (1200, 1200, []), (256, 256, [[1, 1, 9, 9]])]
    records = _records(specs)
    sampling = TileSampling(256, negatives=0.2)
    plan = epoch_tiles(records, sampling, seed=3, epoch=4)
    assert plan == epoch_tiles(records, sampling, seed=3, epoch=4)
    assert plan != epoch_tiles(records, sampling, seed=3, epoch=5) and plan != epoch_tiles(records, sampling, seed=4, epoch=4)
    counts = [tiles_per_image(h, w, 256) for w, h, _ in specs]
    # One coverage of every image, each image's slots once.
    assert Counter((s.image, s.slot) for s in plan) == Counter((i, k) for i, n in enumerate(counts) for k in range(n))
    # An image's tiles are consecutive (so they share batches and a worker's decoded image).
    images = [s.image for s in plan]
    assert [i for k, i in enumerate(images) if k == 0 or images[k - 1] != i] == list(dict.fromkeys(images))
    # The shares are exact over the tiles of images with objects; an empty image's tiles are all random windows.
    kinds = Counter(s.kind for s in plan if s.image != 2)
    n = sum(counts) - counts[2]
    neg = int(0.2 * n + 0.5)
    assert kinds[NEGATIVE] == neg and kinds[OBJECT] == int((n - neg) * 2 / 3 + 0.5)
    assert {s.kind for s in plan if s.image == 2} == {RANDOM}
    # The image order is shuffled per epoch.
    orders = {tuple(dict.fromkeys(s.image for s in epoch_tiles(records, sampling, 0, e))) for e in range(8)}
    assert len(orders) > 1


def test_dataset_tiles_follow_the_image_and_are_seeded_per_index(tmp_path):
    data = _dataset(tmp_path, [(300, 200, [[10, 10, 40, 30], [280, 150, 300, 200]]), (90, 40, [[0, 0, 20, 20]])])
    ds = TileDataset(data, None, TileSampling(128)).epoch(seed=0, epoch=0)
    assert len(ds) == tiles_per_image(200, 300, 128) + tiles_per_image(40, 90, 128)
    for k, sample in enumerate(ds.samples):
        torch.manual_seed(k)
        tile, target = ds[k]
        x0, y0, x1, y1 = target["window"]
        source = read_image(data.records[sample.image].path)
        assert torch.equal(tile, source[:, y0:y1, x0:x1])
        if sample.image == 1:  # smaller than the tile in both dimensions: the whole image
            assert target["window"] == (0, 0, 90, 40) and tile.shape[-2:] == (40, 90)
        torch.manual_seed(k)
        again, target2 = ds[k]
        assert torch.equal(tile, again) and target["window"] == target2["window"]


def test_negative_tiles_contain_no_box(tmp_path):
    data = _dataset(tmp_path, [(400, 400, [[0, 0, 12, 12], [390, 390, 400, 400]])])
    ds = TileDataset(data, None, TileSampling(96, negatives=1.0)).epoch(seed=1, epoch=0)
    assert {s.kind for s in ds.samples} == {NEGATIVE}
    for k in range(len(ds)):
        torch.manual_seed(k)
        assert ds[k][1]["boxes"].shape[0] == 0


def test_unreadable_images_are_skipped_counted_and_decoded_once(tmp_path, monkeypatch):
    data = _dataset(tmp_path, [(300, 300, [[10, 10, 60, 60]]), (300, 300, [[100, 100, 190, 140]])])
    data.records[0].path.write_bytes(b"not an image")
    reads = Counter()
    real = T.read_image

    def counting(path, window=None):
        reads[path] += 1
        return real(path, window)

    monkeypatch.setattr(T, "read_image", counting)
    ds = TileDataset(data, None, TileSampling(128, min_visibility=1.0)).epoch(seed=0, epoch=0)
    with pytest.warns(RuntimeWarning, match="skipping unreadable image"):
        samples = [ds[k] for k in range(len(ds))]
    # Each file read once for its 9 tiles (the broken one too); every tile of the broken image came from the next.
    assert sorted(reads.values()) == [1, 1]
    assert all(t["path"] == str(data.records[1].path) for _, t in samples)
    batch = TileCollate(32)(samples)
    counters = TileCounters(min_visibility=1.0)
    counters.update(len(batch["paths"]), batch["stats"])
    assert counters.skipped_images == 9 and set(counters.skipped_files) == {str(data.records[0].path)}
    cut = sum(t["tile"].clipped + t["tile"].ignored for _, t in samples)
    assert counters.tile_ignored == cut and counters.tile_clipped == 0  # min visibility 1: every cut box is ignored
    text = counters.summary()
    assert text.startswith("18 tiles,") and f"{cut} ({0} kept clipped, {cut} ignored" in text and "9 unreadable" in text
    snap = counters.reset()
    assert isinstance(snap, TileCounters) and snap.tile_ignored == cut and counters.tile_ignored == counters.images == 0
    with pytest.raises(DataError):
        TileDataset(data, None, TileSampling(128), strict=True).epoch(0, 0)[0]
