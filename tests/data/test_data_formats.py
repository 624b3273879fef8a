"""Readers, writers, auto-detection and the COCO export, on BCCD and on tiny datasets made here."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml
from data_support import make_roboflow, write_coco, write_image

from retinadet.data.convert import write_dataset
from retinadet.data.discover import load_dataset, load_splits
from retinadet.data.formats.coco import coco_api, to_coco_dict
from retinadet.errors import DataError


def test_bccd_counts_and_zero_size_boxes(bccd):
    splits = load_splits(bccd)
    assert {k: len(v) for k, v in splits.items()} == {"train": 205, "val": 87, "test": 72}
    ds = load_dataset(bccd)
    assert len(ds) == 364
    assert ds.class_names == ["Platelets", "RBC", "WBC"]
    # 4155 RBC annotations minus the two zero-size ones, which are dropped and reported.
    assert ds.boxes_per_class() == {"RBC": 4153, "WBC": 372, "Platelets": 361}
    dropped = [p for p in ds.problems if p.kind == "zero_size_box"]
    assert sorted(p.file.rsplit("/", 1)[-1] for p in dropped) == ["BloodImage_00338.xml", "BloodImage_00343.xml"]
    assert all(p.severity == "warning" for p in dropped) and not ds.errors
    assert len({r.image_id for r in ds.records}) == 364
    r = ds.records[0]
    assert (r.width, r.height) == (640, 480) and r.boxes.dtype == np.float32
    assert np.all(r.boxes[:, 2:] > r.boxes[:, :2])


def test_bccd_voc_coco_yolo_coco_round_trip(bccd, tmp_path):
    # A small copy keeps the test fast: 6 images over two splits.
    src = tmp_path / "voc"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (src / sub).mkdir(parents=True)
    stems = [line.strip() for line in (bccd / "ImageSets/Main/train.txt").read_text().split()][:4]
    stems += [line.strip() for line in (bccd / "ImageSets/Main/val.txt").read_text().split()][:2]
    for s in stems:
        shutil.copy(bccd / "Annotations" / f"{s}.xml", src / "Annotations")
        shutil.copy(bccd / "JPEGImages" / f"{s}.jpg", src / "JPEGImages")
    (src / "ImageSets/Main/train.txt").write_text("\n".join(stems[:4]) + "\n")
    (src / "ImageSets/Main/val.txt").write_text("\n".join(stems[4:]) + "\n")

    voc = load_splits(src)
    write_dataset(voc, tmp_path / "coco", "coco")
    coco = load_splits(tmp_path / "coco")
    write_dataset(coco, tmp_path / "yolo", "yolo")
    yolo = load_splits(tmp_path / "yolo")
    write_dataset(yolo, tmp_path / "coco2", "coco")
    back = load_splits(tmp_path / "coco2")

    assert list(back) == ["train", "val"]
    for split in ("train", "val"):
        a, b = voc[split], back[split]
        assert b.class_names == a.class_names
        assert [r.path.name for r in b.records] == [r.path.name for r in a.records]
        for ra, rb in zip(a.records, b.records):
            assert np.array_equal(ra.labels, rb.labels)
            # YOLO stores 6 decimals of a normalised coordinate: < 0.001 px at 640 px.
            np.testing.assert_allclose(rb.boxes, ra.boxes, atol=0.01)
    # and the COCO hop is exact
    for ra, rb in zip(voc["train"].records, coco["train"].records):
        np.testing.assert_array_equal(ra.boxes, rb.boxes)


def test_roboflow_export_splits_and_category_mapping(tmp_path):
    root = make_roboflow(tmp_path / "rf")
    splits = load_splits(root)
    assert list(splits) == ["train", "val", "test"]
    assert [len(s) for s in splits.values()] == [3, 2, 1]
    for s in splits.values():
        # id 0 is only a supercategory and has no boxes: dropped; 9 is a leaf: kept everywhere.
        assert s.class_names == ["rbc", "wbc", "platelet"]
        assert s.category_ids == [3, 7, 9]
    train = splits["train"]
    assert train.num_negatives() == 1
    r = train.records[0]
    np.testing.assert_allclose(r.boxes, [[2, 3, 12, 15], [20.5, 10, 50.5, 30], [40, 30, 45, 35]])
    assert r.labels.tolist() == [0, 1, 2] and r.crowd.tolist() == [False, False, True]

    exported = to_coco_dict(train.records, train.class_names, train.category_ids)
    assert sorted({a["category_id"] for a in exported["annotations"]}) == [3, 7, 9]
    assert [a["bbox"] for a in exported["annotations"][:2]] == [[2, 3, 10, 12], [20.5, 10, 30, 20]]
    gt = coco_api(train.records, train.class_names, train.category_ids)
    assert len(gt.getAnnIds(catIds=[7])) == 2 and len(gt.getImgIds()) == 3

    with pytest.raises(DataError, match="no split 'bogus'"):
        load_dataset(root, split="bogus")
    assert len(load_dataset(root, split="valid")) == 2


def test_coco_unknown_category_and_duplicate_ids_are_reported(tmp_path):
    write_image(tmp_path / "a.jpg", 32, 32)
    path = write_coco(tmp_path / "ann.json",
                      [{"id": 1, "file_name": "a.jpg", "width": 32, "height": 32},
                       {"id": 1, "file_name": "a.jpg", "width": 32, "height": 32}],
                      [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [0, 0, 4, 4]},
                       {"id": 2, "image_id": 1, "category_id": 1, "bbox": [1, 1, None, 4]}],
                      [{"id": 1, "name": "thing"}])
    ds = load_dataset(path)
    kinds = {p.kind for p in ds.problems}
    assert {"unknown_class", "duplicate_id", "duplicate_file", "nan_box"} <= kinds
    assert all(p.file == str(path) for p in ds.problems)


def test_invalid_json_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [\n  {"id": 1,,}\n]}')
    with pytest.raises(DataError, match=r"bad.json: invalid JSON at line 2"):
        load_dataset(bad)


def test_yolo_yaml_splits_polygons_and_bad_lines(tmp_path):
    root = tmp_path / "y"
    for split in ("train", "val"):
        write_image(root / "images" / split / "a.png", 100, 50)
        (root / "labels" / split).mkdir(parents=True)
    (root / "labels/train/a.txt").write_text("1 0.5 0.5 0.2 0.4\n0 0.1 0.1 0.3 0.1 0.3 0.3\n7 0.5 0.5 0.1 0.1\n1 0.5 x 0.1 0.1\n")
    write_image(root / "images/train/neg.png", 100, 50)  # no label file: a negative
    (root / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": "images/train", "val": "images/val",
                                                     "names": {0: "cat", 1: "dog"}}))
    splits = load_splits(root)
    train = splits["train"]
    assert train.class_names == ["cat", "dog"] and len(train) == 2 and len(splits["val"]) == 1
    rec = next(r for r in train.records if r.path.name == "a.png")
    np.testing.assert_allclose(rec.boxes, [[40, 15, 60, 35], [10, 5, 30, 15]], atol=1e-4)
    assert rec.labels.tolist() == [1, 0]
    msgs = [str(p) for p in train.problems]
    assert any("a.txt: line 3: unknown class id 7" in m for m in msgs)
    assert any("a.txt: line 4: non-numeric" in m for m in msgs)
    assert train.num_negatives() == 1


def test_csv_with_negatives_and_class_file(tmp_path):
    write_image(tmp_path / "img" / "a.jpg", 40, 30)
    write_image(tmp_path / "img" / "b.jpg", 40, 30)
    (tmp_path / "train.csv").write_text("img/a.jpg,1,2,11,12,bird\nimg/a.jpg,5,5,20,25,plane\nimg/b.jpg,,,,,\nimg/a.jpg,1,1,2,2,ufo\n")
    (tmp_path / "classes.csv").write_text("plane,4\nbird,2\n")
    ds = load_dataset(tmp_path / "train.csv")
    assert ds.class_names == ["bird", "plane"] and ds.category_ids == [2, 4]
    assert len(ds) == 2 and ds.num_negatives() == 1
    assert ds.records[0].labels.tolist() == [0, 1]
    assert [p.kind for p in ds.problems] == ["unknown_class"] and "line 4" in ds.problems[0].message
    # detection from the folder, and CSV export re-reads the same
    out = write_dataset({"train": ds}, tmp_path / "out", "csv")
    again = load_dataset(out / "train.csv")
    np.testing.assert_allclose(again.records[0].boxes, ds.records[0].boxes)
    assert again.category_ids == [2, 4]


def test_dataset_yaml_pointing_at_other_formats(tmp_path):
    root = make_roboflow(tmp_path / "rf")
    cfg = tmp_path / "data.yaml"
    cfg.write_text(yaml.safe_dump({"train": str(root / "train" / "_annotations.coco.json"),
                                   "val": str(root / "valid" / "_annotations.coco.json")}))
    splits = load_splits(cfg)
    assert list(splits) == ["train", "val"] and len(splits["val"]) == 2
    with pytest.raises(DataError, match="field 'test'"):
        cfg.write_text(yaml.safe_dump({"test": "missing/folder", "names": ["a"]}))
        load_splits(cfg)


def test_unknown_layout_and_missing_path_raise(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="could not detect"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(DataError, match="not found"):
        load_dataset(tmp_path / "nope")


def test_voc_difficult_is_crowd_and_convert_cli(tmp_path):
    from click.testing import CliRunner

    from retinadet.cli.data import command

    src = tmp_path / "voc"
    write_image(src / "JPEGImages" / "im1.jpg", 50, 40)
    write_image(src / "JPEGImages" / "im2.jpg", 50, 40)
    (src / "Annotations").mkdir()
    obj = ("<object><name>{n}</name><difficult>{d}</difficult>"
           "<bndbox><xmin>{a}</xmin><ymin>2</ymin><xmax>{b}</xmax><ymax>20</ymax></bndbox></object>")
    (src / "Annotations" / "im1.xml").write_text(
        "<annotation><filename>im1.jpg</filename><size><width>50</width><height>40</height></size>"
        + obj.format(n="dog", d=0, a=1, b=10) + obj.format(n="cat", d=1, a=5, b=30) + "</annotation>")
    (src / "Annotations" / "im2.xml").write_text(
        "<annotation><filename>im2.jpg</filename><size><width>50</width><height>40</height></size></annotation>")
    ds = load_dataset(src)
    assert ds.class_names == ["cat", "dog"] and ds.num_negatives() == 1
    assert ds.records[0].crowd.tolist() == [False, True] and ds.records[0].labels.tolist() == [1, 0]

    result = CliRunner().invoke(command, ["convert", str(src), "--to", "coco", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "out" / "all" / "_annotations.coco.json").read_text())
    assert [a["iscrowd"] for a in data["annotations"]] == [0, 1]
    assert [a["bbox"] for a in data["annotations"]] == [[1, 2, 9, 18], [5, 2, 25, 18]]
    assert len(data["images"]) == 2
    back = load_dataset(tmp_path / "out")
    assert back.class_names == ["cat", "dog"] and back.records[0].crowd.tolist() == [False, True]

    result = CliRunner().invoke(command, ["convert", str(src), "--to", "voc", "-o", str(tmp_path / "voc2")])
    assert result.exit_code == 0, result.output
    again = load_dataset(tmp_path / "voc2")
    np.testing.assert_array_equal(again.records[0].boxes, ds.records[0].boxes)
    assert again.records[0].crowd.tolist() == [False, True]


def test_boxes_over_the_edge_are_clipped_and_reported(tmp_path):
    write_image(tmp_path / "a.jpg", 32, 32)
    path = write_coco(tmp_path / "ann.json", [{"id": 1, "file_name": "a.jpg", "width": 32, "height": 32}],
                      [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [20, 20, 12.5, 12]},  # 0.5 px over
                       {"id": 2, "image_id": 1, "category_id": 1, "bbox": [-10, 0, 20, 10]}],  # 10 px over
                      [{"id": 1, "name": "thing"}])
    ds = load_dataset(path)
    np.testing.assert_allclose(ds.records[0].boxes, [[20, 20, 32, 32], [0, 0, 10, 10]])
    assert [(p.kind, p.severity) for p in ds.problems] == [("box_clipped", "warning"), ("box_outside_image", "error")]


def test_a_box_ending_on_the_edge_after_float_rounding_is_not_a_problem(tmp_path):
    """YOLO's normalised coordinates times the image size give 640.0000001 for a box on a 640 px edge."""
    from retinadet.data.records import sanitize_boxes

    problems = []
    boxes, keep = sanitize_boxes(np.array([[600, 10, 640 + 1e-7, 50], [0 - 1e-9, 0, 10, 480.0000004],
                                           [600, 10, 640.2, 50]]), 640, 480, "a.txt", problems)
    assert keep.all() and boxes[:, 2].max() == 640 and boxes[1, 0] == 0 and boxes[1, 3] == 480
    assert [(p.kind, "640.2" in p.message) for p in problems] == [("box_clipped", True)]  # only the real overshoot
