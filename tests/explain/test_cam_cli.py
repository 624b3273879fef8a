"""``retinadet cam`` end to end on a saved checkpoint (an untrained ``fast`` model: its
detections at a very low --conf are plentiful, which is all the plumbing needs)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from retinadet.cli import main
from retinadet.model import build_model
from retinadet.weights.checkpoint import make_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("fast", num_classes=2, overrides={"fpn.channels": 32, "head.channels": 48,
                                                          "preprocess.min_size": 96, "preprocess.max_size": 128,
                                                          "preprocess.fixed_size": None})
    path = tmp_path_factory.mktemp("cam_weights") / "untrained.pt"
    save_checkpoint(path, make_checkpoint(model, ["red cell", "platelet"]))
    return path


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "images"
    src.mkdir()
    for name, (h, w) in {"a.png": (90, 120), "b.jpg": (100, 80)}.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(src / name)
    return src


def test_cam_writes_one_overlay_per_detection_and_a_grid(weights, folder, tmp_path):
    args = ["cam", "--weights", str(weights), "--source", str(folder), "--conf", "0.005", "--topk", "3",
            "--project", str(tmp_path / "runs"), "--name", "t", "--save-npy"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    out = tmp_path / "runs" / "cam" / "t"
    assert f"results saved to {out}" in result.output and "per detection" in result.output
    for stem, (h, w) in {"a": (90, 120), "b": (100, 80)}.items():
        overlays = sorted(out.glob(f"{stem}_det*_*.png"))
        assert [p.name.split("_")[1] for p in overlays] == ["det0", "det1", "det2"]
        assert Image.open(overlays[0]).size == (w, h)
        assert (out / f"{stem}_grid.png").is_file()
        heat = np.load(out / f"{stem}_det0.npy")
        assert heat.shape == (h, w) and heat.dtype == np.float32 and heat.min() >= 0
    summary = json.loads((out / "cam.json").read_text())
    assert len(summary["detections"]) == 6 and summary["method"] == "gradcam"
    assert {d["level"] for d in summary["detections"]} <= {"P3", "P4", "P5", "P6", "P7"}
    # runs auto-increment; one detection by rank, box target, Grad-CAM++ on C4
    again = CliRunner().invoke(main, args[:-3] + ["--name", "t", "--box-index", "1", "--target", "box",
                                                  "--method", "gradcam++", "--layer", "c4"])
    assert again.exit_code == 0, again.output
    out2 = tmp_path / "runs" / "cam" / "t2"
    names = sorted(p.name for p in out2.glob("*.png"))
    assert len(names) == 4 and names[1] == "a_grid.png" and names[3] == "b_grid.png"
    assert names[0].startswith("a_det1_") and names[2].startswith("b_det1_")
    assert json.loads((out2 / "cam.json").read_text())["target"] == "box"


def test_cam_without_detections_exits_with_a_clear_message(weights, folder, tmp_path):
    runs = tmp_path / "runs"
    result = CliRunner().invoke(main, ["cam", "--weights", str(weights), "--source", str(folder / "a.png"),
                                       "--conf", "0.9", "--project", str(runs)])
    assert result.exit_code == 2
    assert "no detections above --conf 0.9" in result.output and "Traceback" not in result.output
    assert not (runs / "cam").exists()


def test_cam_rejects_bad_options(weights, folder, tmp_path):
    bad_class = CliRunner().invoke(main, ["cam", "--weights", str(weights), "--source", str(folder), "--conf", "0.005",
                                          "--class", "dog", "--project", str(tmp_path)])
    assert bad_class.exit_code == 2 and "unknown class 'dog'" in bad_class.output
    bad_method = CliRunner().invoke(main, ["cam", "--weights", str(weights), "--source", str(folder), "--method", "xcam"])
    assert bad_method.exit_code == 2 and "xcam" in bad_method.output
    missing = CliRunner().invoke(main, ["cam", "--weights", str(weights), "--source", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "source not found" in missing.output
