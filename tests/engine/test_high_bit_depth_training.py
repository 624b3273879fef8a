"""16-bit datasets end to end: train records a windowing rule, reaches the AP of the 8-bit copy, predicts on both
kinds of 16-bit image (values within 8 bits, and the full range); an 8-bit model refuses them with one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.engine.conftest import run_cli

SETTINGS = ["--epochs", "10", "--batch", "8", "--imgsz", "96", "--workers", "0", "--seed", "0", "--no-plots",
            "--augment", "upright"]  # the augmentation its AP floors were measured with


def _recode(src: Path, dst: Path, kind: str) -> Path:
    """A gray copy of a shapes dataset: 8-bit PNGs, or 16-bit ones alternating between values that fit in 8 bits and
    the full range (the 8-bit value times 257 plus noise in the low byte)."""
    shutil.copytree(src, dst)
    rng = np.random.default_rng(0)
    for k, path in enumerate(sorted(dst.rglob("*.jpg"))):
        gray = np.asarray(Image.open(path).convert("L")).astype(np.uint16)
        if kind == "8bit":
            out = gray.astype(np.uint8)
        elif k % 2:
            out = gray  # 16-bit file, values 0..255
        else:
            out = gray * 257 + rng.integers(0, 257, gray.shape, dtype=np.uint16)
        Image.fromarray(out).save(path.with_suffix(".png"))
        path.unlink()
    for ann in dst.rglob("*.json"):
        data = json.loads(ann.read_text())
        for image in data["images"]:
            image["file_name"] = image["file_name"].rsplit(".", 1)[0] + ".png"
        ann.write_text(json.dumps(data))
    return dst


@pytest.fixture(scope="module")
def gray_sets(tmp_path_factory):
    from retinadet.data.synthetic import ShapesConfig, write_shapes_dataset

    base = tmp_path_factory.mktemp("bits")
    write_shapes_dataset(base / "rgb", ShapesConfig(num_train=160, num_val=24, num_test=4, size=128, seed=5, max_objects=4,
                                                    min_object=16), workers=1)
    return _recode(base / "rgb", base / "g8", "8bit"), _recode(base / "rgb", base / "g16", "16bit"), base


def _best_ap(run: Path) -> float:
    ckpt = torch.load(run / "weights" / "best.pt", weights_only=True, map_location="cpu")
    return float(ckpt["metrics"]["AP"]), ckpt


def test_16bit_training_matches_its_8bit_copy_and_predicts(gray_sets):
    g8, g16, base = gray_sets
    one = next((g16 / "train").glob("*.png"))
    assert np.asarray(Image.open(one)).dtype == np.uint16
    for name, data in (("g8", g8), ("g16", g16)):
        res = run_cli(["train", "--data", str(data), *SETTINGS, "--project", str(base / "runs"), "--name", name])
        assert res.exit_code == 0, res.output + repr(res.exception)
    assert "16-bit images: each image stretched between its 0.5th and 99.5th percentiles" in res.output
    ap8, ck8 = _best_ap(base / "runs" / "train" / "g8")
    ap16, ck16 = _best_ap(base / "runs" / "train" / "g16")
    assert ck8["model_config"]["preprocess"]["window"] is None
    assert ck16["model_config"]["preprocess"]["window"] == "p0.5,99.5"
    # Measured at 96 px, one thread: 8-bit 0.035, 16-bit 0.035 (val AP after 10 short epochs; at 128 px 0.033 and
    # 0.054, in half as long again): within noise of each other, and a model that saw black images (a 0..65535
    # window on the 8-bit-valued half) would not learn at all.
    assert ap8 > 0.015 and ap16 > 0.015
    assert ap16 >= ap8 - 0.03

    weights16 = base / "runs" / "train" / "g16" / "weights" / "best.pt"
    val = sorted((g16 / "valid").glob("*.png"))
    low = next(p for p in val if int(np.asarray(Image.open(p)).max()) <= 255)
    full = next(p for p in val if int(np.asarray(Image.open(p)).max()) > 255)
    res = run_cli(["predict", "--weights", str(weights16), "--source", str(g16 / "valid"), "--project", str(base / "p"),
                   "--name", "p16", "--conf", "0.05"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    lines = [json.loads(x) for x in (base / "p" / "predict" / "p16" / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 24 and all("detections" in e for e in lines)
    found = {Path(e["source"]).name: len(e["detections"]) for e in lines}
    assert found[low.name] > 0 and found[full.name] > 0  # both kinds of 16-bit image give detections

    res = run_cli(["val", "--weights", str(weights16), "--project", str(base / "v"), "--name", "v16", "--no-plots"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    res = run_cli(["cam", "--weights", str(weights16), "--source", str(full), "--conf", "0.05", "--topk", "1",
                   "--project", str(base / "c"), "--name", "c16"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert list((base / "c" / "cam" / "c16").glob("*_det0_*.png"))  # the 16-bit image explained

    # The 8-bit model, given a 16-bit image: one line naming the file and the way out.
    res = run_cli(["predict", "--weights", str(base / "runs" / "train" / "g8" / "weights" / "best.pt"), "--source", str(full),
                   "--project", str(base / "p"), "--name", "p8", "--strict"])
    assert res.exit_code != 0
    assert f"{full}: 16-bit image" in res.output and "no windowing rule" in res.output and "--window" in res.output
