"""Mosaic augmentation (retinadet.data.mosaic): the canvas, the boxes it moves, cuts and drops, its determinism,
the options that turn it on (TrainConfig) and the epochs the training loader makes mosaics of."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from retinadet.data.loading import DetectionDataset
from retinadet.data.mosaic import FILL, MosaicDataset
from retinadet.data.records import DatasetRecords, ImageRecord
from retinadet.data.tiles import TileSampling
from retinadet.data.transforms import BoxStats, build_transform
from retinadet.engine.config import TrainConfig
from retinadet.engine.loaders import SeededDataset, TrainLoader, mosaic_epochs, scaled_preprocess
from retinadet.errors import ConfigError
from retinadet.model.presets import get_preset

COLOURS = [(10, 20, 30), (200, 0, 0), (0, 200, 0), (0, 0, 200)]


def _dataset(root, specs, constant: bool = True) -> DatasetRecords:
    """PNG images (lossless) of the given (width, height, boxes): constant colours (COLOURS) or noise."""
    records = []
    for i, (w, h, boxes) in enumerate(specs):
        path = root / f"img{i}.png"
        if constant:
            pixels = np.broadcast_to(np.array(COLOURS[i % 4], np.uint8), (h, w, 3)).copy()
        else:
            pixels = np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        records.append(ImageRecord(path, w, h, boxes, np.full(len(boxes), i % 2, np.int64), np.zeros(len(boxes), bool), i + 1))
    return DatasetRecords(records, ["a", "b"], [1, 2], root=root, split="train")


def _pre(size: int = 64):
    return dataclasses.replace(get_preset("fast").preprocess, min_size=size, max_size=size, fixed_size=size)


# Image 0 (the canvas, 64 x 64) has: a box cut to 40% by the canvas edge (crowd), one cut to 80% (kept, clipped),
# one wholly outside its quadrant (dropped) and one whole; the others are smaller, so grey shows.
SPECS = [
    (64, 64, [[20, 40, 40, 50], [24, 40, 64, 50], [0, 0, 10, 10], [40, 40, 60, 60]]),
    (24, 40, [[2, 30, 10, 38]]),  # top-right: its bottom-left corner at the centre
    (40, 24, [[30, 2, 38, 10]]),  # bottom-left: its top-right corner at the centre
    (48, 48, [[2, 2, 10, 10], [40, 40, 47, 47]]),  # bottom-right: the second box beyond the canvas (dropped)
]


@pytest.fixture
def colours(tmp_path):
    return DetectionDataset(_dataset(tmp_path, SPECS))


def test_compose_places_four_images_and_their_boxes(colours):
    samples = [colours[i] for i in range(4)]
    image, target = MosaicDataset(colours, 1.0).compose(samples, centre=(32, 32))
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8

    def at(x, y):
        return tuple(image[:, y, x].tolist())

    # Each quadrant around the centre shows its image; uncovered canvas is mean grey.
    assert at(31, 31) == COLOURS[0] and at(32, 31) == COLOURS[1] and at(31, 32) == COLOURS[2] and at(32, 32) == COLOURS[3]
    assert at(0, 0) == COLOURS[0]
    assert at(32 + 24, 0) == (FILL,) * 3 and at(32 + 23, 31) == COLOURS[1]  # the top-right image is 24 wide, 40 high
    assert at(60, 60) == COLOURS[3]  # the 48 px bottom-right image reaches past the canvas: cropped
    assert at(0, 32 + 24) == (FILL,) * 3 and at(0, 32 + 23) == COLOURS[2]  # the bottom-left one is 40 wide, 24 high

    boxes, crowd = target["boxes"], target["crowd"]
    expected = torch.tensor([
        [0, 8, 8, 18],  # image 0: offset (-32, -32); 8 of 20 px inside: crowd
        [0, 8, 32, 18],  # 32 of 40 px inside: kept, clipped
        [8, 8, 28, 28],  # whole
        [34, 22, 42, 30],  # image 1, offset (32, 32 - 40)
        [22, 34, 30, 42],  # image 2, offset (32 - 40, 32)
        [34, 34, 42, 42],  # image 3, offset (32, 32); its box at 72..79 is off the canvas
    ], dtype=torch.float32)
    assert torch.equal(boxes, expected)
    assert crowd.tolist() == [True, False, False, False, False, False]
    assert target["labels"].tolist() == [0, 0, 0, 1, 0, 1]
    assert target["stats"] == BoxStats(boxes=8, clipped=2, dropped=2)
    # Sample 0's identity and bookkeeping, for collate, counters and evaluation.
    first = samples[0][1]
    assert (target["image_id"], target["orig_size"], target["path"], target["skipped"]) == (
        first["image_id"], first["orig_size"], first["path"], [])
    assert set(target) >= set(first)


def test_getitem_draws_partners_and_centre_from_torch_rng(colours):
    mosaic = MosaicDataset(colours, 1.0)
    torch.manual_seed(5)
    image, target = mosaic[0]
    torch.manual_seed(5)
    partners = torch.randint(0, 4, (3,)).tolist()
    xc, yc = int(torch.randint(16, 49, ())), int(torch.randint(16, 49, ()))
    again = mosaic.compose([colours[0]] + [colours[j] for j in partners], centre=(xc, yc))
    assert torch.equal(image, again[0]) and torch.equal(target["boxes"], again[1]["boxes"])
    assert 16 <= xc <= 48 and 16 <= yc <= 48
    assert tuple(image[:, yc - 1, xc - 1].tolist()) == COLOURS[0]


def test_float_images_keep_their_dtype(colours):
    samples = [(img.float() / 255, t) for img, t in (colours[i] for i in range(4))]
    image, _ = MosaicDataset(colours, 1.0).compose(samples, centre=(32, 32))
    assert image.dtype == torch.float32
    assert torch.allclose(image[:, 0, 60], torch.full((3,), FILL / 255))
    assert torch.allclose(image[:, 40, 40] * 255, torch.tensor(COLOURS[3], dtype=torch.float32))
    # A float canvas with uint8 partners (images of mixed bit depths): scaled to [0, 1].
    mixed, _ = MosaicDataset(colours, 1.0).compose([samples[0]] + [colours[i] for i in (1, 2, 3)], centre=(32, 32))
    assert mixed.dtype == torch.float32 and float(mixed.max()) <= 1.0


def test_prob_zero_is_the_inner_sample_and_seeded_mosaics_repeat(tmp_path):
    data = _dataset(tmp_path, [(64 + 8 * i, 64, [[4, 4, 30, 30], [30, 20, 60, 50]]) for i in range(6)], constant=False)
    inner = DetectionDataset(data, build_transform("upright", _pre()))  # the draws these assertions were measured on
    plain = SeededDataset(inner, seed=3, epoch=1)
    off = SeededDataset(MosaicDataset(inner, 0.0), seed=3, epoch=1)
    for i in range(len(inner)):
        (a, ta), (b, tb) = plain[i], off[i]
        assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"]) and ta["stats"] == tb["stats"]

    # Same (seed, epoch, index): identical mosaics; another epoch: another.
    on = SeededDataset(MosaicDataset(inner, 1.0), seed=3, epoch=1)
    for i in range(len(inner)):
        (a, ta), (b, tb) = on[i], on[i]
        assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"]) and torch.equal(ta["crowd"], tb["crowd"])
        assert a.shape == plain[i][0].shape  # the canvas of sample i
    assert not torch.equal(on[0][0], SeededDataset(MosaicDataset(inner, 1.0), seed=3, epoch=2)[0][0])

    # With 0 < prob < 1 a sample not drawn is exactly the inner one (its augmentation is drawn first).
    half = SeededDataset(MosaicDataset(inner, 0.5), seed=3, epoch=1)
    same = [torch.equal(half[i][0], plain[i][0]) for i in range(len(inner))]
    assert any(same) and not all(same)


def test_train_config_validates_mosaic():
    # Default: half the samples, none with tiles (where mosaic is refused only when asked for).
    assert (TrainConfig().mosaic_prob, TrainConfig(tile=256).mosaic_prob, TrainConfig().mosaic_close) == (0.5, 0.0, 0.15)
    TrainConfig(tile=256).validate()
    TrainConfig(mosaic=1.0, mosaic_close=0.0).validate()
    for bad in ({"mosaic": 1.5}, {"mosaic": -0.1}, {"mosaic_close": 1.0}, {"mosaic_close": -0.5}):
        with pytest.raises(ConfigError, match="--mosaic"):
            TrainConfig(**bad).validate()
    with pytest.raises(ConfigError, match="--mosaic .*--tile"):
        TrainConfig(mosaic=0.5, tile=256).validate()
    TrainConfig(mosaic=0.0, tile=256).validate()  # off: tiles as before


def test_mosaic_epochs():
    assert [mosaic_epochs(e, 0.15) for e in (1, 2, 7, 14, 20, 100)] == [1, 2, 6, 12, 17, 85]
    assert mosaic_epochs(10, 0.0) == 10 and mosaic_epochs(10, 0.99) == 1 and mosaic_epochs(10, 0.3) == 7


def test_train_loader_makes_mosaics_until_the_close_point(tmp_path):
    data = _dataset(tmp_path, [(64, 48 + 8 * (i % 3), [[4, 4, 30, 30], [20, 10, 60, 40]]) for i in range(6)], constant=False)
    pre = _pre()
    loader = TrainLoader(data, pre, 4, augment="none", seed=1, mosaic=(1.0, mosaic_epochs(4, 0.25)))
    kinds = [isinstance(loader.plan(e)[0], MosaicDataset) for e in range(4)]
    assert kinds == [True, True, True, False]
    plain = TrainLoader(data, pre, 4, augment="none", seed=1)
    assert plain.plan(0)[2] == loader.plan(0)[2]  # the same batches
    assert not isinstance(plain.plan(0)[0], MosaicDataset)
    assert not isinstance(TrainLoader(data, pre, 4, mosaic=(0.0, 4)).plan(0)[0], MosaicDataset)
    assert TrainLoader(data, pre, 4, mosaic=(0.5, None)).is_mosaic(10**6)  # a time budget: every epoch

    # A mosaic epoch collates and counts like any other; the plain epoch after the close point equals the plain loader's.
    batches = list(loader.epoch(0))
    assert len(batches) == len(loader) and batches[0]["images"].shape[-2:] == (64, 64)
    assert loader.counters.images == 6 and loader.counters.boxes == 6 * 4 * 2
    last = [b["images"] for b in loader.epoch(3)]
    assert all(torch.equal(a, b) for a, b in zip(last, (b["images"] for b in plain.epoch(3))))

    # Progressive resizing: the small epochs' dataset is wrapped too.
    small = TrainLoader(data, pre, 4, augment="none", small=(1, scaled_preprocess(pre, 0.5)), mosaic=(1.0, 2))
    first = small.plan(0)[0]
    assert isinstance(first, MosaicDataset) and first.inner is small.small[0]
    assert small.plan(1)[0].inner is small.full[0] and not isinstance(small.plan(2)[0], MosaicDataset)
    assert next(iter(small.epoch(0)))["images"].shape[-1] == 32

    with pytest.raises(ConfigError, match="--mosaic"):
        TrainLoader(data, pre, 4, tiles=TileSampling(32), mosaic=(0.5, 2))
