"""Label Studio (JSON, JSON-MIN) and CVAT for images 1.1 readers on files in the shapes the tools export, and
`data convert --to labelstudio|cvat` read back to the source records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from data_support import make_roboflow, write_image

from retinadet.data.discover import load_splits
from retinadet.data.formats.cvat import is_cvat_xml, read_cvat, read_cvat_splits
from retinadet.data.formats.labelstudio import is_labelstudio_export, read_labelstudio, read_labelstudio_splits
from retinadet.errors import DataError
from retinadet.utils.labelstudio import DOCUMENT_ROOT_ENV, label_config

# ----------------------------------------------------------------------------- Label Studio


def _region(x, y, w, h, label, width=200, height=100, rid="a1", rotation=0, kind="rectanglelabels"):
    """A region as Label Studio exports it: percent of the original size."""
    return {"id": rid, "type": kind, "from_name": "label", "to_name": "image", "original_width": width,
            "original_height": height, "image_rotation": 0, "origin": "manual",
            "value": {"x": x / width * 100, "y": y / height * 100, "width": w / width * 100, "height": h / height * 100,
                      "rotation": rotation, kind: [label]}}


def _annotation(result, aid=1, cancelled=False):
    return {"id": aid, "completed_by": 1, "result": result, "was_cancelled": cancelled, "ground_truth": False,
            "created_at": "2024-05-02T10:00:00.000000Z", "updated_at": "2024-05-02T10:00:00.000000Z", "draft_created_at": None,
            "lead_time": 12.5, "prediction": {}, "result_count": len(result), "unique_id": f"u{aid}", "import_id": None,
            "last_action": None, "task": 1, "project": 1, "updated_by": 1, "parent_prediction": None, "parent_annotation": None,
            "last_created_by": None}


def _task(tid, image, annotations, predictions=()):
    return {"id": tid, "annotations": annotations, "file_upload": Path(image).name, "drafts": [], "predictions": list(predictions),
            "data": {"image": image}, "meta": {}, "created_at": "2024-05-02T09:00:00.000000Z",
            "updated_at": "2024-05-02T10:00:00.000000Z", "inner_id": tid, "total_annotations": len(annotations),
            "cancelled_annotations": sum(a["was_cancelled"] for a in annotations), "total_predictions": len(predictions),
            "comment_count": 0, "unresolved_comment_count": 0, "last_comment_updated_at": None, "project": 1, "updated_by": 1,
            "comment_authors": []}


@pytest.fixture
def ls_export(tmp_path) -> Path:
    """A JSON export of an upload project: the images, as Label Studio names uploads, in an images/ folder beside it."""
    for name in ("a.png", "b.png", "c.png", "d.png"):
        write_image(tmp_path / "images" / name, 200, 100)
    polygon = {"id": "p1", "type": "polygonlabels", "from_name": "poly", "to_name": "image", "original_width": 200,
               "original_height": 100, "value": {"points": [[10, 20], [30, 80], [5, 60]], "polygonlabels": ["cell"]}}
    choice = {"id": "c1", "type": "choices", "from_name": "quality", "to_name": "image", "value": {"choices": ["blurred"]}}
    unlabelled = {"id": "bad", "type": "rectanglelabels", "from_name": "label", "to_name": "image", "original_width": 200,
                  "original_height": 100, "value": {"x": 1, "y": 1, "width": 2, "height": 2, "rectanglelabels": []}}
    first = [_region(20, 10, 50, 25, "cell")]
    corrected = [_region(22, 10, 50, 25, "cell"), _region(100, 50, 40, 30, "debris", rid="a2")]
    predicted = [{"model_version": "m", "score": 0.5, "result": [_region(1, 1, 5, 5, "cell")]}]
    tasks = [
        # Corrected once, then a second annotator skipped it: the last annotation that was not cancelled counts.
        _task(1, "/data/upload/1/0a1b2c3d-a.png", [_annotation(first, 1), _annotation(corrected, 2), _annotation([], 3, cancelled=True)]),
        _task(2, "/data/upload/1/9f8e7d6c-b.png", [_annotation([], 4)]),  # reviewed: nothing there
        _task(3, "/data/upload/1/11112222-c.png", [], predicted),
        _task(4, "/data/upload/1/33334444-d.png",
              [_annotation([_region(10, 10, 40, 20, "debris", rotation=90), polygon, choice, unlabelled], 5)]),
    ]
    path = tmp_path / "project-1-at-2024-05-02-10-00-0a1b2c3d.json"
    path.write_text(json.dumps(tasks))
    return path


def test_labelstudio_export_is_read_in_pixels_from_the_last_annotation(ls_export):
    ds = read_labelstudio(ls_export)
    assert ds.format == "labelstudio" and ds.class_names == ["cell", "debris"]  # no label_config.xml: sorted
    assert [r.path.name for r in ds.records] == ["a.png", "b.png", "d.png"]  # the upload prefix stripped; task 3 not reviewed
    assert [r.image_id for r in ds.records] == [1, 2, 4]
    a, b, d = ds.records
    assert (a.width, a.height) == (200, 100)
    np.testing.assert_allclose(a.boxes, [[22, 10, 72, 35], [100, 50, 140, 80]], atol=1e-4)
    assert a.labels.tolist() == [0, 1]
    assert b.num_boxes == 0  # a reviewed negative
    # 90 degrees clockwise about the top-left corner: the 40x20 box now spans x 10-30 left of it, y 10-50.
    np.testing.assert_allclose(d.boxes, [[0, 10, 10, 50], [10, 20, 60, 80]], atol=1e-4)
    assert d.labels.tolist() == [1, 0]
    messages = [str(p) for p in ds.problems]
    assert any("task 3: not annotated (only predictions, not reviewed); left out" in m for m in messages)
    assert any("task 4 region a1: rotated 90 degrees" in m and "[warning]" in m for m in messages)
    assert any("task 4: regions that are not boxes left out: choices (1)" in m for m in messages)
    errors = [str(p) for p in ds.errors]
    assert any(ls_export.name in m and "task 4 region bad: a rectanglelabels region without a label" in m for m in errors)
    # The rotated box overshoots the left edge by 10 px: clipped, and said so.
    assert any("box_outside_image" in m and "task 4 region a1" in m for m in errors)


def test_label_config_beside_the_export_fixes_the_class_order(ls_export):
    (ls_export.parent / "label_config.xml").write_text(label_config(["debris", "platelet", "cell"]))
    ds = read_labelstudio(ls_export)
    assert ds.class_names == ["debris", "platelet", "cell"]
    assert ds.records[0].labels.tolist() == [2, 0]


def test_cancelled_only_and_missing_images(tmp_path):
    tasks = [_task(7, "/data/upload/3/aaaabbbb-gone.png", [_annotation([_region(10, 10, 20, 20, "cell", width=640, height=480)])]),
             _task(8, "/data/upload/3/ccccdddd-x.png", [_annotation([], 1, cancelled=True)])]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks))
    ds = read_labelstudio(path)
    (gone,) = ds.records
    assert gone.path == tmp_path / "gone.png" and not gone.path.exists()  # data check reports the missing file
    assert (gone.width, gone.height) == (640, 480)  # from the regions' original size
    np.testing.assert_allclose(gone.boxes, [[10, 10, 30, 30]], atol=1e-4)
    assert any("task 8: every annotation was cancelled" in str(p) for p in ds.problems)


def test_images_resolve_by_path_local_files_and_name(tmp_path, monkeypatch):
    root = tmp_path / "served"
    write_image(root / "scans" / "one.png", 64, 48)
    write_image(tmp_path / "export" / "two.png", 64, 48)
    write_image(tmp_path / "elsewhere" / "three.png", 64, 48)
    write_image(tmp_path / "images" / "four.png", 64, 48)  # an images/ folder beside the export's folder
    tasks = [_task(1, "/data/local-files/?d=scans/one.png", [_annotation([])]),
             _task(2, "two.png", [_annotation([])]),  # relative to the export
             _task(3, str(tmp_path / "elsewhere" / "three.png"), [_annotation([])]),  # a local path as it is
             _task(4, "https://bucket.example.com/data/four.png?X-Amz-Signature=abc", [_annotation([])])]
    path = tmp_path / "export" / "export.json"
    path.write_text(json.dumps(tasks))
    monkeypatch.setenv(DOCUMENT_ROOT_ENV, str(root))
    found = [r.path for r in read_labelstudio(path).records]
    assert found == [root / "scans" / "one.png", tmp_path / "export" / "two.png", tmp_path / "elsewhere" / "three.png",
                     tmp_path / "images" / "four.png"]
    # Without the server's root, a local-files path is still found below the export's folder (its trailing parts).
    monkeypatch.delenv(DOCUMENT_ROOT_ENV)
    shutil.copytree(root / "scans", tmp_path / "export" / "scans")
    assert read_labelstudio(path).records[0].path == tmp_path / "export" / "scans" / "one.png"


def test_json_min_export(tmp_path):
    write_image(tmp_path / "a.png", 200, 100)
    region = {"x": 10.0, "y": 20.0, "width": 25.0, "height": 50.0, "rotation": 0, "rectanglelabels": ["cell"],
              "original_width": 200, "original_height": 100}
    items = [{"image": "/data/upload/1/0a1b2c3d-a.png", "id": 1, "label": [region], "annotator": 1, "annotation_id": 1,
              "created_at": "2024-05-02T10:00:00Z", "updated_at": "2024-05-02T10:00:00Z", "lead_time": 3.1},
             {"image": "/data/upload/1/0a1b2c3d-a.png", "id": 1, "label": [dict(region, x=20.0)], "annotator": 2,
              "annotation_id": 2, "created_at": "2024-05-02T11:00:00Z", "updated_at": "2024-05-02T11:00:00Z", "lead_time": 2.0}]
    assert is_labelstudio_export(items)
    path = tmp_path / "min.json"
    path.write_text(json.dumps(items))
    (record,) = read_labelstudio(path).records  # one task, its last annotation
    np.testing.assert_allclose(record.boxes, [[40, 20, 90, 70]], atol=1e-4)


def test_sniffing_and_bad_files(tmp_path, ls_export):
    assert is_labelstudio_export(json.loads(ls_export.read_text()))
    assert not is_labelstudio_export({"images": [], "annotations": [], "categories": []})  # COCO
    assert not is_labelstudio_export([]) and not is_labelstudio_export([{"file": "a.png", "boxes": [1, 2]}])
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": 1, "data": {"image": "a.png"},\n "annotations": [}]')
    with pytest.raises(DataError, match=r"bad.json: invalid JSON at line 2"):
        read_labelstudio(bad)
    coco = tmp_path / "coco.json"
    coco.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(DataError, match="coco.json: not a Label Studio export"):
        read_labelstudio(coco)


# ----------------------------------------------------------------------------- CVAT

CVAT_XML = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta>
    <task>
      <id>12</id>
      <name>smears</name>
      <size>3</size>
      <mode>annotation</mode>
      <overlap>0</overlap>
      <bugtracker></bugtracker>
      <created>2024-05-02 09:00:00.000000+00:00</created>
      <updated>2024-05-02 10:00:00.000000+00:00</updated>
      <subset>default</subset>
      <start_frame>0</start_frame>
      <stop_frame>2</stop_frame>
      <frame_filter></frame_filter>
      <segments>
        <segment><id>30</id><start>0</start><stop>2</stop><url>http://localhost:8080/api/jobs/30</url></segment>
      </segments>
      <owner><username>reviewer</username><email>r@example.com</email></owner>
      <assignee></assignee>
      <labels>
        <label><name>wbc</name><color>#33ddff</color><type>rectangle</type>
          <attributes><attribute><name>stain</name><mutable>False</mutable><input_type>select</input_type>
            <default_value>good</default_value><values>good\npoor</values></attribute></attributes></label>
        <label><name>rbc</name><color>#fa3253</color><type>any</type><attributes></attributes></label>
        <label><name>image-quality</name><color>#aaaaaa</color><type>tag</type><attributes></attributes></label>
      </labels>
    </task>
    <dumped>2024-05-02 10:05:00.000000+00:00</dumped>
  </meta>
  <image id="0" name="a.png" width="200" height="100" subset="Train">
    <box label="rbc" source="manual" occluded="0" xtl="10.50" ytl="20.00" xbr="40.25" ybr="60.00" z_order="0">
      <attribute name="stain">good</attribute>
    </box>
    <polygon label="wbc" source="manual" occluded="1" points="100.00,10.00;150.00,30.00;120.00,70.00" z_order="0"/>
    <points label="rbc" source="manual" occluded="0" points="5.00,5.00" z_order="0"/>
    <tag label="image-quality" source="manual"/>
  </image>
  <image id="1" name="sub/b.png" width="200" height="100" subset="validation">
    <box label="rbc" source="manual" occluded="0" xtl="50.00" ytl="40.00" xbr="70.00" ybr="60.00" rotation="90.0" z_order="0"/>
    <box label="platelet" source="semi-auto" occluded="0" xtl="0.00" ytl="0.00" xbr="8.00" ybr="6.00" z_order="0"/>
    <ellipse label="wbc" source="manual" occluded="0" cx="100.00" cy="50.00" rx="20.00" ry="10.00" z_order="0"/>
  </image>
  <image id="2" name="c.png" width="200" height="100" subset="Test">
    <box label="rbc" source="manual" occluded="0" xtl="10.00" ytl="abc" xbr="20.00" ybr="20.00" z_order="0"/>
    <box source="manual" occluded="0" xtl="1" ytl="1" xbr="2" ybr="2" z_order="0"/>
  </image>
</annotations>
"""


@pytest.fixture
def cvat_export(tmp_path) -> Path:
    """An unzipped 'CVAT for images 1.1' task export: annotations.xml and images/."""
    for name in ("a.png", "sub/b.png", "c.png"):
        write_image(tmp_path / "images" / name, 200, 100)
    path = tmp_path / "annotations.xml"
    path.write_text(CVAT_XML)
    return path


def test_cvat_xml_is_read_with_meta_classes_shapes_and_subsets(cvat_export):
    ds = read_cvat(cvat_export)
    assert ds.format == "cvat" and ds.class_names == ["wbc", "rbc", "platelet"]  # meta order, tag label out, then the extra
    assert [r.path for r in ds.records] == [cvat_export.parent / "images" / n for n in ("a.png", "sub/b.png", "c.png")]
    assert [r.image_id for r in ds.records] == [0, 1, 2]
    a, b, c = ds.records
    np.testing.assert_allclose(a.boxes, [[10.5, 20, 40.25, 60], [100, 10, 150, 70]])
    assert a.labels.tolist() == [1, 0]
    # The 20x20 box turned 90 degrees about its centre is itself; the ellipse's bounds.
    np.testing.assert_allclose(b.boxes, [[50, 40, 70, 60], [0, 0, 8, 6], [80, 40, 120, 60]], atol=1e-4)
    assert b.labels.tolist() == [1, 2, 0]
    assert c.num_boxes == 0
    messages = [str(p) for p in ds.problems]
    assert any("image 1 (sub/b.png) <box> 1: rotated 90 degrees" in m for m in messages)
    assert any("shapes that are not boxes left out: <points> (1), <tag> (1)" in m for m in messages)
    errors = [str(p) for p in ds.errors]
    assert len(errors) == 2
    assert any("annotations.xml: image 2 (c.png) <box> 1: could not convert string to float: 'abc'" in m for m in errors)
    assert any("image 2 (c.png) <box> 2: no 'label'" in m for m in errors)


def test_cvat_subsets_are_splits(cvat_export):
    splits = read_cvat_splits(cvat_export)
    assert list(splits) == ["train", "val", "test"]
    assert [len(s) for s in splits.values()] == [1, 1, 1]
    assert all(s.class_names == ["wbc", "rbc", "platelet"] for s in splits.values())
    val = read_cvat(cvat_export, split="valid")
    assert val.split == "val" and [r.path.name for r in val.records] == ["b.png"]
    with pytest.raises(DataError, match="no subset 'holdout'.*available: test, train, val"):
        read_cvat(cvat_export, split="holdout")


def test_cvat_bad_files(tmp_path):
    import xml.etree.ElementTree as ET

    broken = tmp_path / "broken.xml"
    broken.write_text("<annotations>\n<version>1.1</version>\n<image id='0' name='a.png'>\n</annotations>")
    with pytest.raises(DataError, match="broken.xml: invalid XML at line 4"):
        read_cvat(broken)
    video = tmp_path / "video.xml"
    video.write_text("<annotations><version>1.1</version><track id='0' label='rbc'><box frame='0' xtl='1' ytl='1' xbr='2' "
                     "ybr='2' outside='0' occluded='0' keyframe='1'/></track></annotations>")
    with pytest.raises(DataError, match="video.xml: a 'CVAT for video' export"):
        read_cvat(video)
    assert not is_cvat_xml(ET.fromstring("<annotation><filename>a.jpg</filename></annotation>"))  # VOC
    assert is_cvat_xml(ET.fromstring(CVAT_XML.split("\n", 1)[1]))


# ----------------------------------------------------------------------------- data convert, read back


def _assert_same(source: dict, back: dict) -> None:
    assert list(back) == list(source)
    for split, ds in source.items():
        got = back[split]
        assert got.class_names == ds.class_names
        assert [r.path.name for r in got.records] == [r.path.name for r in ds.records]
        for a, b in zip(ds.records, got.records):
            assert (b.width, b.height) == (a.width, a.height)
            assert b.labels.tolist() == a.labels.tolist()
            assert b.num_boxes == a.num_boxes and np.abs(b.boxes - a.boxes).max(initial=0) <= 0.5


@pytest.mark.parametrize("fmt,reader,file", [("labelstudio", read_labelstudio_splits, "tasks.json"),
                                             ("cvat", read_cvat_splits, "annotations.xml")])
def test_convert_reads_back_to_the_source(tmp_path, fmt, reader, file):
    from retinadet.data.convert import convert

    source = convert(make_roboflow(tmp_path / "rf"), tmp_path / fmt, fmt)
    back = reader(tmp_path / fmt / file)
    _assert_same(source, back)
    assert not [p for s in back.values() for p in s.problems]
    # Roboflow's crowd boxes (train) become ordinary ones: said, and read back as such.
    assert any(p.kind == "crowd_dropped" for p in source["train"].problems)
    assert not any(r.crowd.any() for s in back.values() for r in s.records)
    images = sorted(p.relative_to(tmp_path / fmt).as_posix() for p in (tmp_path / fmt / "images").rglob("*.jpg"))
    assert len(images) == 6 and all(Path(tmp_path / fmt / p).is_file() for p in images)
    for path in (tmp_path / fmt, tmp_path / fmt / file):  # through discovery: the output folder, or its file
        found = load_splits(path)
        assert {ds.format for ds in found.values()} == {fmt}
        _assert_same(source, found)


def test_convert_to_labelstudio_through_the_cli(tmp_path):
    from retinadet.cli import main

    out = tmp_path / "ls"
    res = CliRunner().invoke(main, ["data", "convert", str(make_roboflow(tmp_path / "rf")), "--to", "labelstudio", "-o", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "wrote labelstudio dataset" in res.output
    tasks = json.loads((out / "tasks.json").read_text())
    assert {t["data"]["split"] for t in tasks} == {"train", "val", "test"}
    assert tasks[0]["data"]["image"] == "/data/local-files/?d=images/train/train_0.jpg"
    _assert_same(load_splits(tmp_path / "rf"), read_labelstudio_splits(out / "tasks.json"))
    val = read_labelstudio(out / "tasks.json", split="val")
    assert val.split == "val" and len(val) == 2
    with pytest.raises(DataError, match="no split 'holdout'"):
        read_labelstudio(out / "tasks.json", split="holdout")
