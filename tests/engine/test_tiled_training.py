"""`retinadet train --tile`: the tiled loader (shards, determinism, resume), the CLI run and what it records."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml

from retinadet.data.discover import load_dataset
from retinadet.data.shapes_large import LargeShapesConfig, write_large_shapes_dataset
from retinadet.data.tiles import TileSampling, tiles_per_image
from retinadet.engine.config import TrainConfig
from retinadet.engine.loaders import TrainLoader, scaled_preprocess
from retinadet.engine.train import train
from retinadet.errors import ConfigError
from retinadet.model.presets import get_preset
from retinadet.utils.tiling import TrainingScale

# 320-420 px images of 8-20 px objects: a few tiles of 256 (or 128) px each, and a val image that needs slicing.
TINY_LARGE = LargeShapesConfig(num_train=2, num_val=1, num_test=1, seed=2, min_width=320, max_width=420, min_height=320,
                               max_height=420, min_object=8, max_object=20, min_objects=3, max_objects=15, negative_fraction=0.0)


@pytest.fixture(scope="module")
def large_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "tiny-large"
    write_large_shapes_dataset(root, TINY_LARGE, workers=1)
    return root


def _tiles(data, size):
    return sum(tiles_per_image(r.height, r.width, size) for r in data.records)


def test_cli_tiled_training_records_the_tile_scale(large_data, tmp_path, cli):
    res = cli(["train", "--data", str(large_data), "--tile", "256", "--epochs", "1", "--batch", "2", "--workers", "0",
               "--progressive", "0", "--no-plots", "--project", str(tmp_path), "--name", "tiled"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    run = tmp_path / "train" / "tiled"
    ck = torch.load(run / "weights" / "last.pt", weights_only=True)
    assert ck["scale"]["tile"] == 256 and TrainingScale.from_dict(ck["scale"]).tile == 256
    assert ck["scale"]["image_size"] == [256, 256]  # the training inputs are the tiles, not the whole images
    assert (ck["train_config"]["tile"], ck["train_config"]["tile_negatives"], ck["train_config"]["tile_min_visibility"]) == (256, 0.1, 0.5)
    log = (run / "train.log").read_text()
    n = _tiles(load_dataset(large_data, split="train"), 256)
    assert f"tiled training: {n} tiles of 256 px an epoch from 2 images" in log
    assert f"1 epochs x {n // 2} iterations" in log
    assert "validation: sliced inference on 1 of 1 images" in log
    assert f"{n} tiles, " in log and "ignored as under 50% inside" in log  # the epoch's tile stats


def test_tiled_loader_shards_determinism_and_progressive_resizing(large_data):
    data = load_dataset(large_data, split="train")
    pre = dataclasses.replace(get_preset("fast").preprocess, min_size=128, max_size=128, fixed_size=128)
    sampling = TileSampling(128)
    n = _tiles(data, 128)

    def samples(loader, epoch):
        dataset, _, batches = loader.plan(epoch)
        return [dataset.samples[i] for b in batches for i in b]  # (image, slot, kind)

    one = TrainLoader(data, pre, 4, seed=1, tiles=sampling)
    assert len(one) == -(-n // 4) and samples(one, 0) == samples(one, 0) and samples(one, 0) != samples(one, 1)
    for world in (2, 3):
        shards = [samples(TrainLoader(data, pre, 4, seed=1, rank=r, world=world, tiles=sampling), 0) for r in range(world)]
        every = [s for shard in shards for s in shard]
        per_rank = -(-n // world)
        # Same count on every rank; together they cover the epoch, each tile once (padding repeats the first ones).
        assert {len(s) for s in shards} == {per_rank} and set(every) == set(samples(one, 0))
        assert len(set(every)) == n and len(every) - n == per_rank * world - n

    # Batches are a function of (seed, epoch, index): the same twice, a resumed epoch is the tail, the next differs.
    def images(loader, epoch, start=0):
        return [b["images"] for b in loader.epoch(epoch, start)]

    first = images(one, 0)
    assert all(torch.equal(a, b) for a, b in zip(first, images(one, 0)))
    assert all(torch.equal(a, b) for a, b in zip(first[1:], images(one, 0, start=1))) and len(first) == len(one)
    assert not torch.equal(first[0], images(one, 1)[0])
    assert one.counters.images == 4 * n - 4 and "tiles" in one.counters.reset().summary()

    # Progressive resizing only changes the resize of the tiles.
    small = TrainLoader(data, pre, 4, seed=1, tiles=sampling, small=(1, scaled_preprocess(pre, 0.5)))
    assert next(iter(small.epoch(0)))["images"].shape[-1] == 64 and next(iter(small.epoch(1)))["images"].shape[-1] == 128
    assert samples(small, 0) == samples(one, 0)


OPTS = dict(epochs=2, batch=8, imgsz=128, workers=0, deterministic=True, seed=4, plots=False, progress=False)


def test_tile_auto_is_recorded_and_resume_restores_the_tiling(large_data, tmp_path):
    full = train(data=str(large_data), project=str(tmp_path), name="full", tile="auto", **OPTS)
    ck = torch.load(full.last, weights_only=True)
    assert ck["train_config"]["tile"] == 128 == ck["scale"]["tile"]  # auto: the model's 128 px canvas, as an int
    assert yaml.safe_load((full.save_dir / "args.yaml").read_text())["tile"] == 128

    # Interrupted inside the first (progressive, smaller) epoch, then resumed from its train_config alone.
    part = train(data=str(large_data), project=str(tmp_path), name="part", tile="auto", max_iters=2, **OPTS)
    assert part.interrupted
    resumed = train(resume=str(part.save_dir), workers=0, progress=False)
    assert not resumed.interrupted and resumed.epochs_completed == 2
    a, b = torch.load(full.last, weights_only=True)["model"], torch.load(resumed.last, weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    n = _tiles(load_dataset(large_data, split="train"), 128)
    assert (part.save_dir / "train.log").read_text().count(f"tiled training: {n} tiles of 128 px") == 2  # the resumed call too


def test_tile_options_are_validated(cli):
    for bad, flag in (({"tile": 16}, "--tile"), ({"tile": "big"}, "--tile"), ({"tile_negatives": 1.5}, "--tile-negatives"),
                      ({"tile_min_visibility": -0.1}, "--tile-min-visibility")):
        with pytest.raises(ConfigError, match=flag):
            TrainConfig(**bad).validate()
    assert TrainConfig(tile="auto").validate().tile == "auto"
    res = cli(["train", "--tile", "huge"])
    assert res.exit_code == 2 and "--tile" in res.output
