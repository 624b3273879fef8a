"""scripts/make_cam_figure.py writes the BCCD Grad-CAM figure with any checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image

from retinadet.model import build_model
from retinadet.weights.checkpoint import make_checkpoint, save_checkpoint

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_cam_figure.py"


def test_bccd_figure_from_any_checkpoint(shared_dir, tmp_path):
    bccd = shared_dir / "datasets" / "bccd" / "JPEGImages"
    assert bccd.is_dir()
    torch.manual_seed(0)
    model = build_model("fast", num_classes=3, overrides={"fpn.channels": 32, "head.channels": 48,
                                                          "preprocess.min_size": 160, "preprocess.max_size": 224,
                                                          "preprocess.fixed_size": None})
    weights = tmp_path / "bccd_untrained.pt"
    save_checkpoint(weights, make_checkpoint(model, ["RBC", "WBC", "Platelets"]))
    out = tmp_path / "gradcam_bccd.png"
    run = subprocess.run([sys.executable, str(SCRIPT), "--weights", str(weights), "--out", str(out), "--conf", "0.005",
                          "--topk", "2"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "2 detection(s) explained" in run.stdout
    assert Image.open(out).size[0] > 400
    none = subprocess.run([sys.executable, str(SCRIPT), "--weights", str(weights), "--out", str(tmp_path / "x.png"),
                           "--conf", "0.99"], capture_output=True, text=True, timeout=300)
    assert none.returncode == 2 and "no detections above --conf 0.99" in none.stderr
    assert not (tmp_path / "x.png").exists()
