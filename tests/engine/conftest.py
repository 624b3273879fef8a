"""Tiny synthetic data (96 px shapes, 8 train / 4 val / 4 test) and one shared short training run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

TINY = dict(epochs=2, batch=4, imgsz=64, workers=0)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    from retinadet.data.synthetic import ShapesConfig, write_shapes_dataset

    root = tmp_path_factory.mktemp("data") / "tiny"
    write_shapes_dataset(root, ShapesConfig(num_train=8, num_val=4, num_test=4, size=96, seed=3), workers=1)
    return root


def run_cli(args: list[str]):
    from click.testing import CliRunner

    from retinadet.cli import main

    return CliRunner().invoke(main, args, catch_exceptions=True)


@pytest.fixture(scope="session")
def cli():
    return run_cli


@pytest.fixture(scope="session")
def trained_run(tiny_data, tmp_path_factory) -> Path:
    """`retinadet train` through the CLI; the YAML config says 5 epochs, the flag (2) must win."""
    base = tmp_path_factory.mktemp("runs")
    config = base / "train.yaml"
    # A low score threshold so an under-trained model still emits detections to evaluate.
    config.write_text(yaml.safe_dump({"epochs": 5, "seed": 1, "model_overrides": {"inference.score_thresh": 0.001}}))
    res = run_cli(["train", "--config", str(config), "--data", str(tiny_data), "--epochs", str(TINY["epochs"]),
               "--batch", str(TINY["batch"]), "--imgsz", str(TINY["imgsz"]), "--workers", "0",
               "--project", str(base / "runs"), "--name", "tiny"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return base / "runs" / "train" / "tiny"
