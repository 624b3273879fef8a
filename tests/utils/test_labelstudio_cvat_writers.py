"""The pure Label Studio / CVAT writers: percent and pixel coordinates, the interface and meta they declare, the
local-files URLs, and the prediction writer's two outputs (written at the end from the lines, so a resumed run
ends with the files an uninterrupted one writes)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from retinadet.utils.cvat_xml import CvatImage, annotations_xml, task_names
from retinadet.utils.labelstudio import (
    DOCUMENT_ROOT_ENV,
    document_root_for,
    label_config,
    labelstudio_task,
    local_files_url,
    rectangle_results,
)
from retinadet.utils.prediction_writer import PredictionWriter

CLASSES = ["cell", "debris & dust"]


def test_rectangles_are_percent_of_the_image_with_the_original_size():
    results = rectangle_results([[20.0, 10.0, 70.0, 35.0]], [1], CLASSES, 200, 100, scores=[0.876543])
    (r,) = results
    assert r["type"] == "rectanglelabels" and r["from_name"] == "label" and r["to_name"] == "image"
    assert (r["original_width"], r["original_height"], r["image_rotation"]) == (200, 100, 0)
    assert r["value"] == {"x": 10.0, "y": 10.0, "width": 25.0, "height": 25.0, "rotation": 0, "rectanglelabels": ["debris & dust"]}
    assert r["score"] == 0.876543  # six significant digits (utils/scores)
    # Percent with 6 decimals is exact to far below a pixel, even on a 100000 px side.
    (far,) = rectangle_results([[12345.678, 0, 99999.5, 1]], [0], CLASSES, 100000, 10)
    assert far["value"]["x"] * 1000 == pytest.approx(12345.678, abs=1e-3)
    assert "score" not in far


def test_tasks_hold_annotations_or_scored_predictions():
    gt = labelstudio_task("/data/local-files/?d=a.png", 200, 100, [[0, 0, 10, 10]], [0], CLASSES, extra_data={"split": "val"})
    assert gt["data"] == {"image": "/data/local-files/?d=a.png", "split": "val"}
    assert "predictions" not in gt and len(gt["annotations"][0]["result"]) == 1
    pred = labelstudio_task("a.png", 200, 100, [[0, 0, 10, 10], [5, 5, 20, 20]], [0, 1], CLASSES, scores=[0.4, 0.9],
                            model_version="best.pt")
    (p,) = pred["predictions"]
    assert "annotations" not in pred and p["model_version"] == "best.pt" and p["score"] == 0.9
    assert [r["score"] for r in p["result"]] == [0.4, 0.9]
    assert len({r["id"] for r in p["result"]}) == 2  # region ids are unique within the task
    empty = labelstudio_task("b.png", 200, 100, [], [], CLASSES, scores=[])
    assert empty["predictions"][0] == {"model_version": "retinadet", "score": 0.0, "result": []}


def test_label_config_lists_the_classes_in_order_and_escapes_them():
    root = ET.fromstring(label_config(CLASSES))
    image = root.find("Image")
    labels = root.find("RectangleLabels")
    assert image.get("name") == "image" and image.get("value") == "$image"
    assert labels.get("name") == "label" and labels.get("toName") == "image"
    assert [lab.get("value") for lab in labels.findall("Label")] == CLASSES
    assert all(lab.get("background").startswith("#") and len(lab.get("background")) == 7 for lab in labels.findall("Label"))


def test_local_files_urls_are_relative_to_the_document_root(tmp_path, monkeypatch):
    image = tmp_path / "scans" / "batch 1" / "a.png"
    assert local_files_url(image, tmp_path) == "/data/local-files/?d=scans/batch%201/a.png"
    with pytest.raises(ValueError, match="not under the Label Studio document root"):
        local_files_url(image, tmp_path / "elsewhere")
    other = tmp_path / "scans" / "batch2" / "b.png"
    monkeypatch.delenv(DOCUMENT_ROOT_ENV, raising=False)
    assert document_root_for([image, other]) == tmp_path / "scans"  # their deepest common folder
    monkeypatch.setenv(DOCUMENT_ROOT_ENV, str(tmp_path))
    assert document_root_for([image, other]) == tmp_path  # the server's root when it holds them
    monkeypatch.setenv(DOCUMENT_ROOT_ENV, str(tmp_path / "scans" / "batch2"))
    assert document_root_for([image, other]) == tmp_path / "scans"  # a root that does not: ignored


def test_cvat_xml_declares_labels_subsets_and_scores():
    images = [CvatImage("a.png", 200, 100, [[1.234, 2.0, 30.5, 40.25]], [1], scores=[0.91], subset="train"),
              CvatImage("b.png", 64, 48, [], [], scores=[], subset="val")]
    root = ET.fromstring(annotations_xml(images, CLASSES, task_name="run"))
    assert root.tag == "annotations" and root.findtext("version") == "1.1"
    task = root.find("meta/task")
    assert task.findtext("name") == "run" and task.findtext("size") == "2" and task.findtext("mode") == "annotation"
    assert [lab.findtext("name") for lab in task.iter("label")] == CLASSES
    assert all(lab.find("attributes/attribute").findtext("name") == "score" for lab in task.iter("label"))
    assert task.findtext("subsets").split("\n") == ["Train", "Validation"]
    a, b = root.findall("image")
    assert (a.get("id"), a.get("name"), a.get("width"), a.get("height"), a.get("subset")) == ("0", "a.png", "200", "100", "Train")
    assert b.get("subset") == "Validation" and b.find("box") is None
    box = a.find("box")
    assert box.attrib == {"label": "debris & dust", "source": "auto", "occluded": "0", "xtl": "1.23", "ytl": "2.00",
                          "xbr": "30.50", "ybr": "40.25", "z_order": "0"}
    assert box.find("attribute").get("name") == "score" and box.find("attribute").text == "0.91"


def test_cvat_xml_without_scores_is_manual_and_without_subsets_has_none():
    root = ET.fromstring(annotations_xml([CvatImage("a.png", 10, 10, [[0, 0, 5, 5]], [0])], CLASSES))
    box = root.find("image/box")
    assert box.get("source") == "manual" and box.find("attribute") is None
    assert root.find("image").get("subset") is None and root.find("meta/task/subsets") is None
    assert root.find("meta/task/labels/label/attributes/attribute") is None


def test_task_names_are_paths_below_the_common_folder(tmp_path):
    assert task_names([tmp_path / "a.png", tmp_path / "b.png"]) == ["a.png", "b.png"]
    assert task_names([tmp_path / "x" / "a.png", tmp_path / "y" / "a.png"]) == ["x/a.png", "y/a.png"]
    assert task_names([]) == []


def _add(writer: PredictionWriter, k: int, folder) -> None:
    boxes = [[10.0 + k, 20.0, 50.0, 60.0], [5.0, 5.0, 15.0, 25.0]]
    writer.add(k, f"img{k}.png", str(folder / f"img{k}.png"), (100, 200), boxes, [0.9 - k / 10, 0.3], [k % 2, 1])


def test_prediction_writer_writes_both_tools_at_the_end_and_a_resumed_run_matches(tmp_path, monkeypatch):
    monkeypatch.delenv(DOCUMENT_ROOT_ENV, raising=False)
    images = tmp_path / "images"
    whole = PredictionWriter(tmp_path / "whole", CLASSES, [3, 7], save_labelstudio=True, save_cvat=True, model_version="m.pt")
    for k in range(1, 4):
        _add(whole, k, images)
    whole.skip(4, str(images / "broken.png"), "unreadable image")
    assert not (tmp_path / "whole" / "labelstudio").exists()  # written at the end, from the lines
    notes = []
    whole.finish(notes.append)
    tasks = json.loads((tmp_path / "whole" / "labelstudio" / "tasks.json").read_text())
    assert [t["data"]["image"] for t in tasks] == [f"/data/local-files/?d=img{k}.png" for k in range(1, 4)]
    assert tasks[0]["data"]["source"] == str(images / "img1.png")
    first = tasks[0]["predictions"][0]
    assert first["model_version"] == "m.pt" and first["score"] == 0.8
    assert first["result"][0]["value"]["x"] == pytest.approx(11 / 200 * 100) and first["result"][0]["original_height"] == 100
    assert [r["value"]["rectanglelabels"] for r in first["result"]] == [["debris & dust"], ["debris & dust"]]
    assert any(f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={images}" in n for n in notes)
    xml = ET.parse(tmp_path / "whole" / "cvat" / "annotations.xml").getroot()
    assert [im.get("name") for im in xml.findall("image")] == ["img1.png", "img2.png", "img3.png"]
    assert [b.get("label") for b in xml.find("image").findall("box")] == ["debris & dust", "debris & dust"]
    assert (tmp_path / "whole" / "labelstudio" / "label_config.xml").is_file()

    # Interrupted after two images (the process dies: no close), then resumed: the same files at the end.
    cut = PredictionWriter(tmp_path / "cut", CLASSES, [3, 7], save_labelstudio=True, save_cvat=True, model_version="m.pt")
    for k in range(1, 3):
        _add(cut, k, images)
    cut.flush()
    resumed = PredictionWriter(tmp_path / "cut", CLASSES, [3, 7], save_labelstudio=True, save_cvat=True, model_version="m.pt",
                               resume=True)
    assert resumed.is_done(str(images / "img2.png")) and not resumed.is_done(str(images / "img3.png"))
    _add(resumed, 3, images)
    resumed.skip(4, str(images / "broken.png"), "unreadable image")
    resumed.finish(lambda line: None)
    for rel in ("labelstudio/tasks.json", "labelstudio/label_config.xml", "cvat/annotations.xml"):
        cut_text = (tmp_path / "cut" / rel).read_text().replace("<name>cut</name>", "<name>whole</name>")
        assert cut_text == (tmp_path / "whole" / rel).read_text(), rel


def test_prediction_writer_leaves_video_frames_and_empty_boxes_out_of_the_tools(tmp_path):
    writer = PredictionWriter(tmp_path, CLASSES, save_labelstudio=True, save_cvat=True)
    writer.add(1, "clip_000000.jpg", str(tmp_path / "clip.mp4"), (48, 64), [[1, 2, 3, 4]], [0.5], [0], frame=0)
    _add(writer, 2, tmp_path)
    # A box clipped to zero width at the right edge: in predictions.json, but nothing a reviewer could see.
    writer.add(3, "edge.png", str(tmp_path / "edge.png"), (100, 200), [[200.0, 10.0, 200.0, 40.0], [1, 1, 9, 9]], [0.6, 0.4],
               [0, 0])
    notes = []
    writer.finish(notes.append)
    assert len(json.loads((tmp_path / "predictions.json").read_text())) == 5
    tasks = json.loads((tmp_path / "labelstudio" / "tasks.json").read_text())
    assert [t["data"]["source"] for t in tasks] == [str(tmp_path / "img2.png"), str(tmp_path / "edge.png")]
    assert [r["score"] for r in tasks[1]["predictions"][0]["result"]] == [0.4]
    images = ET.parse(tmp_path / "cvat" / "annotations.xml").getroot().findall("image")
    assert len(images) == 2 and len(images[1].findall("box")) == 1
    assert any("video frames are not written" in n for n in notes)
    assert any("1 zero-size detection(s) (clipped at an image edge) left out" in n for n in notes)
