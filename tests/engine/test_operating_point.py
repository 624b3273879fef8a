"""Operating points: thresholds per class chosen on one split, stored in the checkpoint, used by predict and
carried by the ONNX export; FROC in val's outputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from retinadet.engine.froc import LesionMatch
from retinadet.engine.operating_point import OperatingPoint, at_thresholds, choose_thresholds
from retinadet.errors import ConfigError


def _match() -> LesionMatch:
    """One class, 4 images, 4 lesions (found at 0.9, 0.7, 0.4; one missed); false positives at 0.8, 0.6, 0.5, 0.3."""
    return LesionMatch(fp_scores=np.array([0.8, 0.6, 0.5, 0.3]), fp_image=np.array([0, 1, 2, 3]),
                       fp_label=np.zeros(4, np.int64), tp_scores=np.array([0.9, 0.7, 0.4, 0.0]),
                       lesion_image=np.array([0, 0, 1, 2]), lesion_label=np.zeros(4, np.int64), num_images=4)


def test_each_rule_picks_the_point_it_names():
    m = _match()
    # fppi <= 0.5: thresholds 0.9 (0 FP), 0.8 (1), 0.7 (1), 0.6 (2) -> 0.6 finds 2 of 4 lesions
    assert choose_thresholds(m, ["a"], OperatingPoint.parse("fppi=0.5"))["a"] == {
        "threshold": 0.6, "sensitivity": 0.5, "fppi": 0.5}
    # the fewest false positives that find 3 of 4: threshold 0.4
    got = choose_thresholds(m, ["a"], OperatingPoint.parse("sensitivity=0.75"))["a"]
    assert got["threshold"] == 0.4 and got["fppi"] == 0.75
    # F1 = 2TP / (2TP + FP + FN): 0.4 at 0.9, 0.571 at 0.7, 0.6 at 0.4 (the best), 0.545 at 0.3
    assert choose_thresholds(m, ["a"], OperatingPoint.parse("f1"))["a"]["threshold"] == 0.4
    # a chosen set of thresholds, measured on the same split, reports what was chosen
    chosen = choose_thresholds(m, ["a"], OperatingPoint.parse("fppi=0.5"))
    assert at_thresholds(m, ["a"], {"a": chosen["a"]["threshold"]}) == chosen


def test_unreachable_points_and_bad_specs_are_one_line_errors():
    m = _match()
    with pytest.raises(ConfigError, match="no threshold reaches sensitivity 1"):
        choose_thresholds(m, ["a"], OperatingPoint.parse("sensitivity=1"))
    m.fp_scores = np.array([0.95, 0.8, 0.6, 0.3])  # the best-scored detection is a false positive
    with pytest.raises(ConfigError, match="no threshold keeps false positives per image at or below 0.1"):
        choose_thresholds(m, ["a"], OperatingPoint.parse("fppi=0.1"))
    for bad in ("fppi=0", "fppi=x", "sensitivity=1.5", "recall=0.9", "f1=2", ""):
        with pytest.raises(ConfigError, match="--operating-point"):
            OperatingPoint.parse(bad)


def test_val_chooses_stores_and_predict_and_export_use_the_thresholds(trained_run, tiny_data, tmp_path, cli):
    weights = tmp_path / "best.pt"
    shutil.copy(trained_run / "weights" / "best.pt", weights)
    res = cli(["val", "--weights", str(weights), "--data", str(tiny_data), "--operating-point", "f1", "--save-thresholds",
               "--project", str(tmp_path), "--name", "v"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "operating point f1 chosen on val" in res.output and "FROC (hit iou:0.5" in res.output
    metrics = json.loads((tmp_path / "val" / "v" / "metrics.json").read_text())
    froc = metrics["froc"]
    assert froc["hit"] == "iou:0.5" and len(froc["sensitivity"]) == 7 and froc["ci95"][0] <= froc["score"] <= froc["ci95"][1]
    assert (tmp_path / "val" / "v" / "FROC.png").is_file() and (tmp_path / "val" / "v" / "ROC.png").is_file()
    assert "at_thresholds" in metrics["screening"] and "image-level screening" in res.output
    stored = torch.load(weights, weights_only=True)["thresholds"]
    assert stored["spec"] == "f1" and stored["split"] == "val"
    assert stored["per_class"] == {k: v["threshold"] for k, v in metrics["operating_point"]["per_class"].items()}

    res = cli(["val", "--weights", str(weights), "--data", str(tiny_data), "--split", "test", "--no-plots",
               "--project", str(tmp_path), "--name", "t"])
    assert res.exit_code == 0 and "at the checkpoint's thresholds (f1 on val), on test" in res.output
    assert "at_stored_thresholds" in json.loads((tmp_path / "val" / "t" / "metrics.json").read_text())

    res = cli(["predict", "--weights", str(weights), "--source", str(tiny_data / "test"), "--nosave", "--project",
               str(tmp_path), "--name", "p"])
    assert res.exit_code == 0 and "using the stored per-class thresholds (f1 on val)" in res.output
    records = json.loads((tmp_path / "predict" / "p" / "predictions.json").read_text())
    assert records and all(r["score"] >= stored["per_class"][r["class_name"]] - 1e-5 for r in records)
    res = cli(["predict", "--weights", str(weights), "--source", str(tiny_data / "test"), "--nosave", "--conf", "0.001",
               "--project", str(tmp_path), "--name", "p2"])
    assert res.exit_code == 0 and "stored per-class thresholds" not in res.output
    assert len(json.loads((tmp_path / "predict" / "p2" / "predictions.json").read_text())) > len(records)

    pytest.importorskip("onnxruntime", reason="the ONNX half needs onnxruntime (a dev dependency)")
    from retinadet.export.exporter import export
    from retinadet.export.onnx_runtime import OnnxDetector, predict_onnx

    onnx_path = export(str(weights), "onnx", tmp_path / "m.onnx", bench=False, log=lambda *_: None)["path"]
    assert OnnxDetector(onnx_path).meta["thresholds"] == stored
    lines = []
    out = predict_onnx(onnx_path, tiny_data / "test", save=False, project=str(tmp_path), name="o", progress=False,
                       log=lines.append)
    assert any("using the stored per-class thresholds" in line for line in lines)
    onnx_records = json.loads((tmp_path / "predict" / "o" / "predictions.json").read_text())
    assert out["detections"] == len(onnx_records) == len(records)


def test_bad_val_options_fail_in_one_line(trained_run, tiny_data, tmp_path, cli):
    best = str(trained_run / "weights" / "best.pt")
    for args, message in [(["--froc-hit", "iou:2"], "--froc-hit 'iou:2'"),
                          (["--operating-point", "fppi=-1"], "--operating-point 'fppi=-1'"),
                          (["--save-thresholds"], "--save-thresholds needs --operating-point")]:
        res = cli(["val", "--weights", best, "--data", str(tiny_data), "--project", str(tmp_path), *args])
        assert res.exit_code == 2 and message in res.output, res.output


def test_classes_a_split_cannot_calibrate_are_named_and_left_out():
    m = _match()
    m.lesion_label = np.array([0, 0, 0, 1])  # class b: one lesion, never found
    m.tp_scores = np.array([0.9, 0.7, 0.4, 0.0])
    chosen = choose_thresholds(m, ["a", "b", "c"], OperatingPoint.parse("fppi=1"))
    assert set(chosen) == {"a"}
    from retinadet.engine.operating_point import uncalibrated

    assert uncalibrated(m, ["a", "b", "c"]) == {"b": "no detection finds any of its boxes", "c": "no boxes on this split"}
    m.tp_scores = np.zeros(4)  # now nothing is found at all
    with pytest.raises(ConfigError, match="no class can be calibrated"):
        choose_thresholds(m, ["a", "b"], OperatingPoint.parse("fppi=1"))


def test_val_on_a_split_without_ground_truth_is_one_line(trained_run, tiny_data, tmp_path, cli):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    ann = data / "valid" / "_annotations.coco.json"
    coco = json.loads(ann.read_text())
    coco["annotations"] = []
    ann.write_text(json.dumps(coco))
    res = cli(["val", "--weights", str(trained_run / "weights" / "best.pt"), "--data", str(data), "--project",
               str(tmp_path)])
    assert res.exit_code == 2 and "has no ground-truth boxes" in res.output
