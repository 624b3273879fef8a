"""``train`` fits the input size to the objects unless --imgsz is given, says why in one line, records the choice
in the checkpoint, and a resumed run keeps it."""

from __future__ import annotations

import pytest
import torch

from retinadet.engine.config import TrainConfig
from retinadet.engine.train import INPUT_AREA_MAX, input_area_budget, train
from retinadet.model.input_fit import MAX_AREA

TINY = dict(epochs=2, batch=2, workers=0, plots=False, progress=False, autoanchor=False)


@pytest.fixture(scope="module")
def small_objects(tmp_path_factory):
    """640 px images of 8-32 px objects: 4-14 px at the fast preset's 288 px input, under its 14 px anchor."""
    from retinadet.data.synthetic import ShapesConfig, write_shapes_dataset

    root = tmp_path_factory.mktemp("data") / "small"
    write_shapes_dataset(root, ShapesConfig(num_train=4, num_val=2, num_test=0, size=640, seed=1, min_object=8,
                                            max_object_frac=0.05), workers=1)
    return root


def _line(run, start):
    return next(x for x in (run / "train.log").read_text().splitlines() if x.startswith(start))


def test_small_objects_grow_the_input_and_the_checkpoint_records_it(small_objects, tmp_path):
    res = train(data=str(small_objects), project=str(tmp_path), name="fit", max_iters=1, **TINY)
    line = _line(res.save_dir, "input size ")
    assert line.startswith("input size 416px (1.44x the preset's)") and "capped" in line and "--imgsz" in line, line
    ck = torch.load(res.last, weights_only=True)
    assert ck["model_config"]["preprocess"]["fixed_size"] == 416
    assert ck["input_fit"]["size"] == 416 and ck["input_fit"]["small_object_px"] < 14

    # The resumed run keeps the size its weights were trained at.
    resumed = train(resume=str(res.save_dir), workers=0, progress=False)
    again = torch.load(resumed.last, weights_only=True)
    assert again["model_config"]["preprocess"]["fixed_size"] == 416 and again["input_fit"] == ck["input_fit"]


def test_imgsz_wins_and_large_objects_keep_the_preset(small_objects, tiny_data, tmp_path):
    given = train(data=str(small_objects), imgsz=288, project=str(tmp_path), name="given", max_iters=1, **TINY)
    ck = torch.load(given.last, weights_only=True)
    assert ck["model_config"]["preprocess"]["fixed_size"] == 288 and "input_fit" not in ck
    assert not any(x.startswith("input size ") for x in (given.save_dir / "train.log").read_text().splitlines())
    kept = train(data=str(tiny_data), project=str(tmp_path), name="kept", max_iters=1, **TINY)
    assert _line(kept.save_dir, "input size 288px (1.00x the preset's)")
    assert torch.load(kept.last, weights_only=True)["input_fit"]["factor"] == 1.0


def test_the_time_budget_sets_how_far_the_input_may_grow():
    assert input_area_budget(TrainConfig()) == MAX_AREA
    assert input_area_budget(TrainConfig(time="2m")) == 1.0
    assert input_area_budget(TrainConfig(time="10m")) == MAX_AREA
    assert input_area_budget(TrainConfig(time="15m")) == pytest.approx(3.0)
    assert input_area_budget(TrainConfig(time="2h")) == INPUT_AREA_MAX


def test_without_epochs_the_length_is_the_recipes_in_steps(tiny_data, tmp_path):
    from retinadet.engine.config import MAX_EPOCHS, MIN_EPOCHS, RECIPE_STEPS, recipe_epochs

    assert recipe_epochs(RECIPE_STEPS // 40) == 40 and recipe_epochs(10**6) == MIN_EPOCHS and recipe_epochs(1) == MAX_EPOCHS
    # 8 training images in batches of 4: 2 steps an epoch, so the recipe's longest run; it is recorded for a resume.
    res = train(data=str(tiny_data), imgsz=64, batch=4, workers=0, plots=False, progress=False, project=str(tmp_path),
                name="steps", max_iters=1)
    assert _line(res.save_dir, "epochs: ").startswith(f"epochs: {MAX_EPOCHS} of 2 steps")
    assert torch.load(res.last, weights_only=True)["train_config"]["epochs"] == MAX_EPOCHS
