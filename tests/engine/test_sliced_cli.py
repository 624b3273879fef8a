"""Sliced inference from the command line: predict, val and cam on images larger than the training inputs, the
run saying what it did, COCO's cap following the model's, and bad tiling flags failing with one line each."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from retinadet.data.discover import load_splits
from retinadet.data.formats.coco import write_coco
from retinadet.data.images import read_image
from retinadet.data.records import DatasetRecords, ImageRecord
from retinadet.engine.evaluate import coco_eval, coco_max_dets
from retinadet.engine.plots import save_image
from retinadet.structures import Detections


@pytest.fixture(scope="module")
def mosaics(tiny_data, tmp_path_factory) -> Path:
    """3x3 mosaics of the tiny test images (96 px each -> 288 px), as a COCO dataset."""
    test = load_splits(tiny_data)["test"]
    root = tmp_path_factory.mktemp("mosaics") / "valid"
    root.mkdir()
    records = []
    for m in range(2):
        canvas = torch.zeros(3, 288, 288, dtype=torch.uint8)
        boxes, labels, crowd = [], [], []
        for k in range(9):
            r = test.records[(m * 9 + k) % len(test.records)]
            y, x = (k // 3) * 96, (k % 3) * 96
            canvas[:, y:y + 96, x:x + 96] = read_image(r.path)
            boxes.append(r.boxes + np.array([x, y, x, y], dtype=np.float32))
            labels.append(r.labels)
            crowd.append(r.crowd)
        path = root / f"mosaic{m}.png"
        save_image(canvas, path)
        records.append(ImageRecord(path, 288, 288, np.concatenate(boxes), np.concatenate(labels), np.concatenate(crowd), m + 1))
    write_coco(DatasetRecords(records, test.class_names, test.category_ids), root / "_annotations.coco.json", root)
    return root


def test_predict_slices_large_images_at_the_training_scale(cli, trained_run, mosaics, tmp_path):
    best = trained_run / "weights" / "best.pt"
    scale = torch.load(best, weights_only=True)["scale"]
    assert scale["resize_scale"] == pytest.approx(64 / 96) and scale["image_size"] == [96, 96]
    res = cli(["predict", "--weights", str(best), "--source", str(mosaics), "--project", str(tmp_path), "--name", "p",
               "--conf", "0.001", "--nosave"])
    assert res.exit_code == 0, res.output
    assert "sliced inference: 288x288 sliced into" in res.output and "below the 0.667x the model was trained at" in res.output
    assert "2 of 2 image(s) in" in res.output
    rows = json.loads((tmp_path / "predict" / "p" / "predictions.json").read_text())
    assert rows and all(0 <= r["bbox"][0] and r["bbox"][0] + r["bbox"][2] <= 288.01 for r in rows)
    assert any(r["bbox"][0] > 96 for r in rows)  # boxes in the mosaic's pixels, not a tile's
    whole = cli(["predict", "--weights", str(best), "--source", str(mosaics), "--project", str(tmp_path), "--name", "w",
                 "--tile", "off", "--nosave"])
    assert whole.exit_code == 0 and "smaller than the model was trained at" in whole.output and "sliced" not in whole.output


def test_val_slices_and_takes_the_inference_flags(cli, trained_run, mosaics, tmp_path):
    best = trained_run / "weights" / "best.pt"
    res = cli(["val", "--weights", str(best), "--data", str(mosaics.parent), "--project", str(tmp_path),
               "--name", "v", "--no-plots", "--max-det", "300", "--tile-merge", "greedy-nmm", "--tile-match", "ios",
               "--conf", "0.001", "--iou", "0.6"])
    assert res.exit_code == 0, res.output
    assert "sliced inference: 288x288 sliced into" in res.output and "maxDets=300" in res.output
    metrics = json.loads((tmp_path / "val" / "v" / "metrics.json").read_text())
    assert metrics["max_dets"] == 300 and metrics["num_detections"] > 0


def test_cam_explains_a_sliced_image_on_its_tile(cli, trained_run, mosaics, tmp_path):
    best = trained_run / "weights" / "best.pt"
    res = cli(["cam", "--weights", str(best), "--source", str(mosaics / "mosaic0.png"), "--conf", "0.001", "--topk", "2",
               "--project", str(tmp_path), "--name", "c", "--save-npy"])
    assert res.exit_code == 0, res.output
    assert "sliced inference" in res.output
    summary = json.loads((tmp_path / "cam" / "c" / "cam.json").read_text())
    for det in summary["detections"]:
        x1, y1, x2, y2 = det["tile_xyxy"]
        heat = np.load(tmp_path / "cam" / "c" / f"mosaic0_det{det['detection']}.npy")
        assert heat.shape == (288, 288)
        outside = heat.copy()
        outside[y1:y2, x1:x2] = 0
        assert outside.max() == 0  # the heatmap lies on the tile that found the detection


@pytest.mark.parametrize("command", ["predict", "val", "cam"])
@pytest.mark.parametrize("flags, message", [(["--tile", "huge"], "--tile must be a size"),
                                            (["--tile", "16"], "--tile must be at least 32"),
                                            (["--tile-overlap", "1.5"], "--tile-overlap is a fraction"),
                                            (["--tile-threshold", "2"], "--tile-threshold must be in")])
def test_bad_tiling_flags_fail_with_one_line(cli, trained_run, mosaics, tmp_path, command, flags, message):
    best = trained_run / "weights" / "best.pt"
    args = [command, "--weights", str(best), "--project", str(tmp_path)]
    args += ["--data", str(mosaics.parent)] if command == "val" else ["--source", str(mosaics)]
    res = cli(args + flags)
    assert res.exit_code == 2
    errors = [line for line in res.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and message in errors[0], res.output


def test_coco_cap_follows_the_model():
    # One crowded field: 150 cells, all found. COCO's usual 100 would cut the recall to two thirds.
    xy = np.stack(np.meshgrid(np.arange(15) * 20.0, np.arange(10) * 20.0), -1).reshape(-1, 2)
    boxes = np.concatenate([xy, xy + 15], 1).astype(np.float32)
    data = DatasetRecords([ImageRecord("f.png", 400, 300, boxes, np.zeros(150, int), np.zeros(150, bool), 1)], ["cell"], [1])
    b = torch.from_numpy(boxes)
    dets = {1: Detections(b, torch.linspace(1, 0.5, 150), torch.zeros(150, dtype=torch.long),
                          torch.zeros(150, dtype=torch.long), torch.zeros(150, dtype=torch.long), (300, 400))}
    assert coco_eval(data, dets)[0]["AR100"] == pytest.approx(100 / 150, abs=1e-3)
    assert coco_max_dets(dets, None) == 150 and coco_max_dets(dets, 300) == 300
    stats = coco_eval(data, dets, coco_max_dets(dets, 300))[0]
    assert stats["AP50"] == pytest.approx(1.0) and stats["AR100"] == pytest.approx(1.0)


def test_predict_writes_geojson_for_qupath(cli, trained_run, mosaics, tmp_path):
    from retinadet.utils.geojson import read_feature_collection

    best = trained_run / "weights" / "best.pt"
    res = cli(["predict", "--weights", str(best), "--source", str(mosaics), "--project", str(tmp_path), "--name", "g",
               "--conf", "0.001", "--nosave", "--save-geojson"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "predict" / "g"
    rows = json.loads((out / "predictions.json").read_text())
    for stem in ("mosaic0", "mosaic1"):
        features = read_feature_collection(out / "geojson" / f"{stem}.geojson")
        mine = [r for r in rows if r["file_name"] == f"{stem}.png"]
        assert len(features) == len(mine) > 0
        for f, r in zip(features, mine):  # boxes in the image's pixels (QuPath's frame), the same as predictions.json
            x, y, w, h = r["bbox"]
            assert f["box"] == pytest.approx([x, y, x + w, y + h], abs=2e-3) and f["class_name"] == r["class_name"]
