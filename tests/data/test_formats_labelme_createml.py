"""The LabelMe, CreateML and TF Object Detection CSV readers: every shape and field, and each bad input reported
with its file and place."""

from __future__ import annotations

import json

import numpy as np
import pytest
from data_support import write_image

from retinadet.data.discover import load_dataset
from retinadet.data.formats.createml import is_createml, read_createml
from retinadet.data.formats.csv_format import csv_kind, read_csv, read_tf_csv
from retinadet.data.formats.labelme import is_labelme, read_labelme
from retinadet.errors import DataError


def _labelme(shapes, image_path="a.jpg", width=64, height=48, **extra) -> dict:
    data = {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": image_path, "imageData": None,
            "imageHeight": height, "imageWidth": width}
    data.update(extra)
    return data


def _shape(label, points, shape_type="rectangle"):
    return {"label": label, "points": points, "group_id": None, "description": "", "shape_type": shape_type, "flags": {}}


def test_labelme_shapes_become_boxes(tmp_path):
    write_image(tmp_path / "a.jpg", 64, 48)
    shapes = [
        _shape("lesion", [[30, 20], [10, 5]]),  # rectangle drawn bottom-right to top-left
        _shape("cell", [[12, 30], [20, 25], [16, 40], [8, 33]], "polygon"),
        _shape("cell", [[40, 20], [43, 24]], "circle"),  # centre and a rim point: radius 5
        _shape("cell", [[2, 2], [9, 7]], "mask"),
        {"label": "lesion", "points": [[50, 10], [60, 10], [60, 14], [50, 14]]},  # LabelMe 3.x: no shape_type, a polygon
    ]
    (tmp_path / "a.json").write_text(json.dumps(_labelme(shapes)))
    ds = read_labelme(tmp_path / "a.json")
    assert ds.class_names == ["cell", "lesion"] and ds.format == "labelme"
    (r,) = ds.records
    assert r.path == tmp_path / "a.jpg" and (r.width, r.height) == (64, 48)
    np.testing.assert_allclose(r.boxes, [[10, 5, 30, 20], [8, 25, 20, 40], [35, 15, 45, 25], [2, 2, 9, 7], [50, 10, 60, 14]])
    assert r.labels.tolist() == [1, 0, 0, 0, 1] and not ds.problems


def test_labelme_shapes_without_a_box_and_bad_shapes_are_reported(tmp_path):
    write_image(tmp_path / "a.jpg", 64, 48)
    shapes = [
        _shape("dot", [[5, 5]], "point"),
        _shape("edge", [[1, 1], [9, 9]], "line"),
        _shape("cell", [[10, 10], [20, 20], [15, 25], [5, 15]], "rotation"),  # X-AnyLabeling's rotated box
        _shape("", [[1, 1], [2, 2]]),
        _shape("cell", "not points"),
        _shape("cell", [[1, 1]], "polygon"),
        _shape("cell", [[1, 1], [2, 2], [3, 3]], "circle"),
        "not a shape",
    ]
    (tmp_path / "a.json").write_text(json.dumps(_labelme(shapes)))
    ds = read_labelme(tmp_path / "a.json")
    np.testing.assert_allclose(ds.records[0].boxes, [[5, 10, 20, 25]])
    got = [(p.kind, p.severity, p.message.split(":")[0]) for p in ds.problems]
    assert got == [
        ("unsupported_shape", "warning", "shapes[0] (dot)"),
        ("unsupported_shape", "warning", "shapes[1] (edge)"),
        ("unknown_shape", "warning", "shapes[2] (cell)"),
        ("bad_annotation", "error", "shapes[3] (no label)"),
        ("bad_annotation", "error", "shapes[4] (cell)"),
        ("bad_annotation", "error", "shapes[5] (cell)"),
        ("bad_annotation", "error", "shapes[6] (cell)"),
        ("bad_annotation", "error", "shapes[7]"),
    ]
    assert all(p.file == str(tmp_path / "a.json") for p in ds.problems)
    assert "has no box; skipped" in ds.problems[0].message and "a circle needs 2 points" in ds.problems[6].message


def test_labelme_image_path_size_fallback_and_corrupt_files_in_a_folder(tmp_path):
    write_image(tmp_path / "images" / "b.png", 40, 30)
    write_image(tmp_path / "images" / "c.png", 40, 30)
    ann = tmp_path / "ann"
    ann.mkdir()
    # Windows path, and no size in the file: read from the image
    (ann / "b.json").write_text(json.dumps(_labelme([_shape("cell", [[1, 2], [11, 12]])], "..\\images\\b.png", None, None)))
    # a stale imagePath: found by the JSON's stem in the sibling images/ folder
    (ann / "c.json").write_text(json.dumps(_labelme([_shape("cell", [[0, 0], [45, 10]])], "D:/old/IMG_9.png", 40, 30)))
    (ann / "d.json").write_text('{"shapes": [')
    (ann / "e.json").write_text(json.dumps({"images": []}))
    ds = read_labelme(tmp_path)  # images are looked for within the folder given: its images/ beside ann/
    assert [r.path for r in ds.records] == [tmp_path / "images" / "b.png", tmp_path / "images" / "c.png"]
    assert (ds.records[0].width, ds.records[0].height) == (40, 30)
    np.testing.assert_allclose(ds.records[1].boxes, [[0, 0, 40, 10]])  # 5 px past the edge: clipped and reported
    got = sorted((p.file.rsplit("/", 1)[-1], p.kind) for p in ds.problems)
    assert got == [("c.json", "box_outside_image"), ("d.json", "bad_annotation"), ("e.json", "bad_annotation")]
    assert any("invalid JSON at line 1" in p.message for p in ds.problems)
    assert is_labelme(_labelme([])) and not is_labelme({"shapes": []})


def test_createml_centre_coordinates_negatives_and_bad_entries(tmp_path):
    write_image(tmp_path / "a.jpg", 64, 48)
    write_image(tmp_path / "b.jpg", 64, 48)
    entries = [
        {"image": "a.jpg", "annotations": [
            {"label": "cell", "coordinates": {"x": 20, "y": 12, "width": 10, "height": 8}},
            {"label": "lesion", "coordinates": {"x": 50.5, "y": 30, "width": 11, "height": 20}},
            {"label": "cell", "coordinates": {"x": 5, "y": 5, "width": "wide", "height": 2}},
            {"label": "cell"},
        ]},
        {"image": "b.jpg", "annotations": []},
        {"annotations": []},
    ]
    (tmp_path / "_annotations.createml.json").write_text(json.dumps(entries))
    ds = read_createml(tmp_path / "_annotations.createml.json")
    assert ds.class_names == ["cell", "lesion"] and len(ds) == 2 and ds.num_negatives() == 1
    a = ds.records[0]
    assert (a.width, a.height) == (64, 48)  # CreateML has no sizes: read from the image
    np.testing.assert_allclose(a.boxes, [[15, 8, 25, 16], [45, 20, 56, 40]])
    assert a.labels.tolist() == [0, 1]
    got = [(p.kind, p.message.split(":")[0]) for p in ds.problems]
    # entries are checked as the file is read, coordinates when the records are built
    assert got == [("bad_annotation", "[0].annotations[3] (a.jpg)"), ("bad_annotation", "[2]"),
                   ("nan_box", "[0].annotations[2] (a.jpg)")]
    assert is_createml(entries[:2]) and not is_createml([]) and not is_createml({"image": "a.jpg"})


def test_createml_file_must_be_a_list(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"image": "a.jpg"}))
    ds = read_createml(tmp_path / "x.json")
    assert len(ds) == 0 and [p.kind for p in ds.problems] == ["bad_annotation"]
    with pytest.raises(DataError, match="x2.json: CreateML annotation file not found"):
        read_createml(tmp_path / "x2.json")


def test_tf_csv_header_in_any_order_negatives_sizes_and_bad_rows(tmp_path):
    write_image(tmp_path / "a.jpg", 64, 48)
    write_image(tmp_path / "b.jpg", 64, 48)
    (tmp_path / "_annotations.csv").write_text(
        "class,filename,xmin,ymin,xmax,ymax,width,height\n"
        "rbc,a.jpg,1,2,11,12,64,48\n"
        "wbc,a.jpg,20,20,40.5,30,64,48\n"
        ",b.jpg,,,,,64,48\n"          # an image without boxes
        "rbc,a.jpg,5,5,9,x,64,48\n"   # bad coordinate
        "rbc,a.jpg,5,5,9,9,60,40\n"   # size differs from a.jpg's earlier rows
        "rbc,a.jpg,5\n")              # short row
    assert csv_kind(tmp_path / "_annotations.csv") == "tf"
    ds = read_csv(tmp_path / "_annotations.csv")  # the CSV reader tells the TF format by its header
    assert ds.format == "tf_csv" and ds.class_names == ["rbc", "wbc"] and len(ds) == 2 and ds.num_negatives() == 1
    np.testing.assert_allclose(ds.records[0].boxes, [[1, 2, 11, 12], [20, 20, 40.5, 30], [5, 5, 9, 9]])
    got = [(p.kind, p.message.split(":")[0]) for p in ds.problems]
    assert got == [("bad_annotation", "line 5"), ("bad_annotation", "line 6"), ("bad_annotation", "line 7")]


def test_tf_csv_normalised_coordinates_are_scaled_with_a_warning(tmp_path):
    write_image(tmp_path / "img" / "a.jpg", 64, 48)
    (tmp_path / "boxes.csv").write_text("filename,width,height,class,xmin,ymin,xmax,ymax\n"
                                        "a.jpg,64,48,rbc,0.25,0.5,0.5,1.0\n")
    ds = read_tf_csv(tmp_path / "boxes.csv")
    assert ds.records[0].path == tmp_path / "img" / "a.jpg"  # found in a folder below the CSV's
    np.testing.assert_allclose(ds.records[0].boxes, [[16, 24, 32, 48]])
    assert [(p.kind, p.severity) for p in ds.problems] == [("normalized_coordinates", "warning")]
    # and found by content from the folder
    assert load_dataset(tmp_path).format == "tf_csv"


def test_images_are_never_taken_from_outside_the_dataset(tmp_path):
    """A name the annotations give is not looked up in a neighbouring dataset's folders."""
    write_image(tmp_path / "other_dataset" / "a.jpg", 64, 48)
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "boxes.csv").write_text("filename,width,height,class,xmin,ymin,xmax,ymax\na.jpg,64,48,rbc,1,1,5,5\n")
    (tmp_path / "ds" / "a.json").write_text(json.dumps(_labelme([_shape("rbc", [[1, 1], [5, 5]])])))
    assert read_tf_csv(tmp_path / "ds" / "boxes.csv").records[0].path == tmp_path / "ds" / "a.jpg"  # missing, reported by check
    assert read_labelme(tmp_path / "ds").records[0].path == tmp_path / "ds" / "a.jpg"
