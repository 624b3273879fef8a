"""`predict --save-labelstudio --save-cvat` end to end: the pre-annotations a reviewer corrects in the tool (one box
deleted, one moved a few pixels, one added), exported as the tool exports, read back as exactly the corrected
boxes; the ONNX runner writes the same two files."""

from __future__ import annotations

import copy
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from retinadet.cli import main
from retinadet.data.discover import load_splits
from retinadet.data.formats.cvat import read_cvat
from retinadet.data.formats.labelstudio import read_labelstudio
from retinadet.detector import Detector
from retinadet.model import resolve_model_config
from retinadet.utils.labelstudio import DOCUMENT_ROOT_ENV
from retinadet.weights.checkpoint import make_checkpoint, save_checkpoint

CLASSES = ["lesion", "artefact"]
SIZES = {"scan0.png": (96, 128), "scan1.png": (120, 90), "scan2.png": (80, 80)}  # (h, w)
MOVE = 3.0  # px the reviewer drags a box right
ADDED = [10.0, 12.0, 40.0, 30.0]  # the box the reviewer draws, as 'artefact'


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    # Untrained, with a threshold below its prior so every image has a few detections.
    cfg = resolve_model_config("fast").replace({"num_classes": 2, "inference.score_thresh": 0.001, "inference.max_det": 4})
    return Detector.from_config(cfg, CLASSES, device="cpu").model


@pytest.fixture(scope="module")
def run(model, tmp_path_factory):
    """One predict run with both outputs: (run folder, scans folder, weights)."""
    root = tmp_path_factory.mktemp("labelling")
    scans = root / "scans"
    scans.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in SIZES.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(scans / name)
    weights = root / "w.pt"
    save_checkpoint(weights, make_checkpoint(model, CLASSES))
    res = CliRunner().invoke(main, ["predict", "--weights", str(weights), "--source", str(scans), "--conf", "0.001", "--nosave",
                                    "--save-labelstudio", "--save-cvat", "--project", str(root), "--name", "p"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert f"{DOCUMENT_ROOT_ENV}={scans}" in res.output  # how to serve the images, said at the end
    return root / "predict" / "p", scans, weights


def _predicted(out: Path) -> dict[str, tuple[np.ndarray, list[str], list[float]]]:
    """predictions.json per file: xyxy boxes, class names, scores (of the boxes with an area: the tools get no others)."""
    rows = [r for r in json.loads((out / "predictions.json").read_text()) if r["bbox"][2] > 0 and r["bbox"][3] > 0]
    found = {}
    for name in SIZES:
        mine = [r for r in rows if r["file_name"] == name]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in mine)]).reshape(-1, 4)
        found[name] = (boxes, [r["class_name"] for r in mine], [r["score"] for r in mine])
    return found


def _corrected(predicted):
    """What the reviewer leaves on scan0: the first box deleted, the second moved MOVE px right, ADDED drawn."""
    boxes, names, _ = predicted["scan0.png"]
    assert len(boxes) >= 3, "the fixture model should find at least three boxes on scan0"
    moved = boxes[1] + [MOVE, 0, MOVE, 0]
    return {**{n: (b, c) for n, (b, c, _) in predicted.items()},
            "scan0.png": (np.vstack([moved, boxes[2:], [ADDED]]), names[1:] + ["artefact"])}


def _assert_reads_back(ds, expected) -> None:
    assert sorted(r.path.name for r in ds.records) == sorted(expected)
    for r in ds.records:
        boxes, names = expected[r.path.name]
        assert r.num_boxes == len(boxes), r.path.name  # none lost, none extra
        assert [ds.class_names[k] for k in r.labels.tolist()] == names
        assert np.abs(r.boxes - boxes).max(initial=0) <= 0.5, r.path.name


def _labelstudio_export(tasks: list[dict]) -> list[dict]:
    """The tasks as Label Studio exports them once reviewed: ids, each task's corrected result as its annotation
    (the untouched ones submitted as predicted), the predictions kept."""
    exported = []
    for tid, task in enumerate(tasks, start=1):
        task = copy.deepcopy(task)
        (pred,) = task["predictions"]
        result = copy.deepcopy(pred["result"])
        for region in result:
            region.pop("score")
            region["origin"] = "prediction"
        if task["data"]["source"].endswith("scan0.png"):
            w, h = result[0]["original_width"], result[0]["original_height"]
            result[1]["value"]["x"] += MOVE / w * 100
            result[1]["origin"] = "prediction-changed"
            del result[0]
            x1, y1, x2, y2 = ADDED
            result.append({"id": "Xy12AbCd34", "type": "rectanglelabels", "from_name": "label", "to_name": "image",
                           "original_width": w, "original_height": h, "image_rotation": 0, "origin": "manual",
                           "value": {"x": x1 / w * 100, "y": y1 / h * 100, "width": (x2 - x1) / w * 100,
                                     "height": (y2 - y1) / h * 100, "rotation": 0, "rectanglelabels": ["artefact"]}})
        task.update({"id": tid, "inner_id": tid, "project": 3, "total_annotations": 1, "cancelled_annotations": 0,
                     "total_predictions": 1, "created_at": "2024-05-02T09:00:00Z", "updated_at": "2024-05-02T10:00:00Z",
                     "drafts": [], "meta": {}, "comment_count": 0, "unresolved_comment_count": 0})
        pred.update({"id": tid, "created_ago": "1 hour", "task": tid, "project": 3, "cluster": None, "neighbors": None,
                     "mislabeling": 0.0, "created_at": "2024-05-02T09:00:00Z", "updated_at": "2024-05-02T09:00:00Z"})
        task["annotations"] = [{"id": 100 + tid, "completed_by": 1, "result": result, "was_cancelled": False,
                                "ground_truth": False, "created_at": "2024-05-02T10:00:00Z", "updated_at": "2024-05-02T10:00:00Z",
                                "lead_time": 20.5, "prediction": pred, "result_count": len(result), "task": tid,
                                "parent_prediction": pred["id"], "parent_annotation": None}]
        exported.append(task)
    return exported


def test_labelstudio_predictions_reviewed_and_read_back(run, tmp_path, monkeypatch):
    out, scans, _ = run
    predicted = _predicted(out)
    tasks = json.loads((out / "labelstudio" / "tasks.json").read_text())
    assert [t["data"]["image"] for t in tasks] == [f"/data/local-files/?d={n}" for n in SIZES]
    for task, (name, (h, w)) in zip(tasks, SIZES.items()):
        (pred,) = task["predictions"]
        boxes, names, scores = predicted[name]
        assert pred["model_version"] == "w.pt" and pred["score"] == max(scores)
        assert [r["score"] for r in pred["result"]] == scores
        assert all((r["original_width"], r["original_height"]) == (w, h) for r in pred["result"])
        values = np.array([[r["value"][k] for k in ("x", "y", "width", "height")] for r in pred["result"]])
        np.testing.assert_allclose(values[:, :2] / 100 * [w, h], boxes[:, :2], atol=1e-3)
        np.testing.assert_allclose((values[:, :2] + values[:, 2:]) / 100 * [w, h], boxes[:, 2:], atol=1e-3)
    assert "RectangleLabels" in (out / "labelstudio" / "label_config.xml").read_text()

    expected = _corrected(predicted)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    export = downloads / "project-3-at-2024-05-02-10-05-5f2b1a9c.json"
    export.write_text(json.dumps(_labelstudio_export(tasks)))
    monkeypatch.delenv(DOCUMENT_ROOT_ENV, raising=False)
    ds = read_labelstudio(export)  # the images found through data.source, the path they were predicted from
    assert not ds.problems and ds.class_names == sorted(CLASSES)  # Label Studio's export does not carry the interface
    _assert_reads_back(ds, expected)
    assert all(r.path.parent == scans for r in ds.records)
    shutil.copy(out / "labelstudio" / "label_config.xml", downloads)  # beside the export, it gives the model's order
    assert read_labelstudio(export).class_names == CLASSES
    splits = load_splits(export)  # any dataset path: told by its content
    assert list(splits) == ["all"] and splits["all"].format == "labelstudio"
    _assert_reads_back(splits["all"], expected)

    # Without data.source: through the local-files URL and the server's document root.
    bare = _labelstudio_export(tasks)
    for task in bare:
        del task["data"]["source"]
    export.write_text(json.dumps(bare))
    monkeypatch.setenv(DOCUMENT_ROOT_ENV, str(scans))
    _assert_reads_back(read_labelstudio(export), expected)


def test_cvat_predictions_reviewed_and_read_back(run, tmp_path):
    out, scans, _ = run
    predicted = _predicted(out)
    root = ET.parse(out / "cvat" / "annotations.xml").getroot()
    assert root.findtext("version") == "1.1"
    images = root.findall("image")
    assert [(im.get("name"), im.get("width"), im.get("height")) for im in images] == [
        (n, str(w), str(h)) for n, (h, w) in SIZES.items()]
    for im in images:
        boxes, names, scores = predicted[im.get("name")]
        got = np.array([[float(b.get(k)) for k in ("xtl", "ytl", "xbr", "ybr")] for b in im.findall("box")]).reshape(-1, 4)
        np.testing.assert_allclose(got, boxes, atol=5e-3)
        assert all(b.get("source") == "auto" for b in im.findall("box"))
        assert [float(b.find("attribute[@name='score']").text) for b in im.findall("box")] == pytest.approx(scores, abs=1e-5)

    # The reviewer's corrections, then CVAT's export: a zip of annotations.xml and images/.
    first = images[0]
    boxes = first.findall("box")
    first.remove(boxes[0])
    for key in ("xtl", "xbr"):
        boxes[1].set(key, f"{float(boxes[1].get(key)) + MOVE:.2f}")
    boxes[1].set("source", "manual")
    x1, y1, x2, y2 = ADDED
    ET.SubElement(first, "box", {"label": "artefact", "source": "manual", "occluded": "0", "xtl": f"{x1:.2f}", "ytl": f"{y1:.2f}",
                                 "xbr": f"{x2:.2f}", "ybr": f"{y2:.2f}", "z_order": "0"})
    ET.SubElement(root.find("meta"), "dumped").text = "2024-05-02 10:05:00.000000+00:00"
    export = tmp_path / "task_3_annotations_2024_05_02"
    shutil.copytree(scans, export / "images")
    ET.ElementTree(root).write(export / "annotations.xml", encoding="utf-8", xml_declaration=True)
    ds = read_cvat(export / "annotations.xml")
    assert not ds.problems and ds.class_names == CLASSES
    _assert_reads_back(ds, _corrected(predicted))
    for path in (export / "annotations.xml", export):  # the file, or the unzipped export's folder
        splits = load_splits(path)
        assert list(splits) == ["all"] and splits["all"].format == "cvat" and splits["all"].class_names == CLASSES
        _assert_reads_back(splits["all"], _corrected(predicted))


def test_onnx_runner_writes_the_same_pre_annotations(run, model, tmp_path):
    pytest.importorskip("onnxruntime", reason="the ONNX runner needs onnxruntime (the onnx extra)")
    from retinadet.export.exporter import export_onnx
    from retinadet.export.onnx_runtime import main as onnx_main

    out, scans, _ = run
    onnx = export_onnx(model, tmp_path / "m.onnx", CLASSES, imgsz=96, verify=False)
    assert onnx_main(["--weights", str(onnx), "--source", str(scans), "--conf", "0.001", "--nosave", "--save-labelstudio",
                      "--save-cvat", "--project", str(tmp_path), "--name", "o"]) == 0
    onnx_out = tmp_path / "predict" / "o"
    torch_tasks = json.loads((out / "labelstudio" / "tasks.json").read_text())
    onnx_tasks = json.loads((onnx_out / "labelstudio" / "tasks.json").read_text())
    assert [t["data"] for t in onnx_tasks] == [t["data"] for t in torch_tasks]
    assert all(t["predictions"][0]["model_version"] == "m.onnx" for t in onnx_tasks)
    for a, b in zip(torch_tasks, onnx_tasks):  # the same detections, through the same writer
        va = [[r["value"][k] for k in ("x", "y", "width", "height")] for r in a["predictions"][0]["result"]]
        vb = [[r["value"][k] for k in ("x", "y", "width", "height")] for r in b["predictions"][0]["result"]]
        np.testing.assert_allclose(vb, va, atol=0.05)
    names = [im.get("name") for im in ET.parse(onnx_out / "cvat" / "annotations.xml").getroot().findall("image")]
    assert names == list(SIZES)
