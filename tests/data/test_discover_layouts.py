"""Datasets found by their content: each tool's export, built here in the shape the tool publishes, loads with its
splits, reads to the same records as its COCO conversion, and an unreadable layout fails with one line that says
what was found and what is missing."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from data_support import write_coco, write_image

from retinadet.data.convert import convert
from retinadet.data.discover import load_dataset, load_splits
from retinadet.data.formats import sniff as sniff_module
from retinadet.errors import DataError

W, H = 64, 48
# One small dataset, as (split folder, image file, [(class, xmin, ymin, xmax, ymax), ...]); b.jpg is a negative.
CELLS = [
    ("train", "a.jpg", [("rbc", 10.5, 4, 30, 20), ("wbc", 33, 10, 60, 40)]),
    ("train", "b.jpg", []),
    ("valid", "c.jpg", [("platelet", 1, 1, 9, 9.5)]),
    ("test", "d.jpg", [("rbc", 5, 5, 25, 25), ("rbc", 40, 20, 63, 47)]),
]
NAMES = ["platelet", "rbc", "wbc"]


def _images(root: Path, where=lambda split: split) -> None:
    for seed, (split, name, _) in enumerate(CELLS):
        write_image(root / where(split) / name, W, H, seed=seed)


def voc_xml(filename: str, boxes, path: str | None = None, folder: str = "") -> str:
    """An XML as Roboflow and labelImg write it (folder, filename, path, source, size, segmented, objects)."""
    objects = "".join(textwrap.dedent(f"""
        <object>
            <name>{c}</name>
            <pose>Unspecified</pose>
            <truncated>0</truncated>
            <difficult>0</difficult>
            <occluded>0</occluded>
            <bndbox>
                <xmin>{x1}</xmin>
                <ymin>{y1}</ymin>
                <xmax>{x2}</xmax>
                <ymax>{y2}</ymax>
            </bndbox>
        </object>""") for c, x1, y1, x2, y2 in boxes)
    return (f"<annotation>\n<folder>{folder}</folder>\n<filename>{filename}</filename>\n<path>{path or filename}</path>\n"
            f"<source><database>roboflow.ai</database></source>\n<size><width>{W}</width><height>{H}</height><depth>3</depth></size>\n"
            f"<segmented>0</segmented>{objects}\n</annotation>\n")


def assert_same_as_coco(src: Path, tmp_path: Path) -> dict:
    """``src`` loads to the same splits, classes, files, boxes and labels as its COCO conversion."""
    splits = load_splits(src)
    convert(src, tmp_path / "as_coco", "coco")
    back = load_splits(tmp_path / "as_coco")
    assert list(back) == list(splits)
    for split, ds in splits.items():
        other = back[split]
        assert other.class_names == ds.class_names
        assert [r.path.name for r in other.records] == [r.path.name for r in ds.records]
        for a, b in zip(ds.records, other.records):
            assert (a.width, a.height) == (b.width, b.height)
            np.testing.assert_allclose(b.boxes, a.boxes, atol=2e-3)  # COCO keeps 3 decimals
            assert b.labels.tolist() == a.labels.tolist() and b.crowd.tolist() == a.crowd.tolist()
    return splits


def boxes_by_file(splits: dict) -> dict[str, list]:
    return {r.path.name: sorted((ds.class_names[lb], *np.round(b, 3).tolist()) for b, lb in zip(r.boxes, r.labels))
            for ds in splits.values() for r in ds.records}


EXPECTED = {name: sorted((c, *[float(v) for v in box]) for c, *box in boxes) for _, name, boxes in CELLS}


# ----------------------------------------------------------------------------- VOC


def test_roboflow_pascal_voc_export_xml_beside_images(tmp_path):
    root = tmp_path / "cells.voc"
    for seed, (split, name, boxes) in enumerate(CELLS):
        stem = name.replace(".jpg", "_jpg.rf.0a1b2c")  # Roboflow renames files and keeps XML and image stems equal
        write_image(root / split / f"{stem}.jpg", W, H, seed=seed)
        (root / split / f"{stem}.xml").write_text(voc_xml(f"{stem}.jpg", boxes))
    (root / "README.roboflow.txt").write_text("Exported via roboflow.com\n")
    (root / "README.dataset.txt").write_text("# cells > 2024\n")
    splits = assert_same_as_coco(root, tmp_path)
    assert list(splits) == ["train", "val", "test"] and [len(s) for s in splits.values()] == [2, 1, 1]
    assert all(s.class_names == NAMES and s.format == "voc" for s in splits.values())
    got = boxes_by_file(splits)
    assert got == {k.replace(".jpg", "_jpg.rf.0a1b2c.jpg"): v for k, v in EXPECTED.items()}
    assert not [p for s in splits.values() for p in s.problems]


def test_voc_xml_folder_beside_images_found_by_filename_path_or_stem(tmp_path):
    """labelImg: annotations/ beside images/; <path> written on another machine; one XML's <filename> is stale."""
    root = tmp_path / "scans"
    _images(root, lambda split: "images")
    for _, name, boxes in CELLS:
        stem = name[:-4]
        filename = "IMG_0042.JPG" if stem == "c" else name  # renamed after labelling: found by the XML's stem
        xml = voc_xml(filename, boxes, path=f"C:\\Users\\lab\\scans\\images\\{filename}", folder="images")
        (root / "annotations" / f"{stem}.xml").parent.mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"{stem}.xml").write_text(xml)
    splits = assert_same_as_coco(root, tmp_path)
    assert list(splits) == ["all"] and len(splits["all"]) == 4
    assert boxes_by_file(splits) == EXPECTED
    assert all(r.path.parent == root / "images" and r.path.is_file() for r in splits["all"].records)


def test_voc_split_folders_in_any_case_and_the_devkit_layout(tmp_path):
    root = tmp_path / "mixed_case"
    for seed, (split, name, boxes) in enumerate(CELLS):
        folder = {"train": "Train", "valid": "VALID", "test": "Testing"}[split]
        write_image(root / folder / name, W, H, seed=seed)
        (root / folder / name.replace(".jpg", ".xml")).write_text(voc_xml(name, boxes))
    assert list(load_splits(root)) == ["train", "val", "test"]

    devkit = tmp_path / "VOCdevkit" / "VOC2012"
    for seed, (_, name, boxes) in enumerate(CELLS):
        write_image(devkit / "JPEGImages" / name, W, H, seed=seed)
        (devkit / "Annotations").mkdir(parents=True, exist_ok=True)
        (devkit / "Annotations" / name.replace(".jpg", ".xml")).write_text(voc_xml(name, boxes))
    (devkit / "ImageSets" / "Main").mkdir(parents=True)
    (devkit / "ImageSets/Main/train.txt").write_text("a\nb\n")
    (devkit / "ImageSets/Main/val.txt").write_text("c\n")
    (devkit / "ImageSets/Main/rbc_train.txt").write_text("a  1\nb -1\n")  # per-class file: not a split
    splits = assert_same_as_coco(tmp_path / "VOCdevkit", tmp_path)  # the devkit found below the folder given
    assert {k: len(v) for k, v in splits.items()} == {"train": 2, "val": 1}
    notes = [p for p in splits["train"].problems if p.kind in ("outside_splits", "unused_image")]
    assert [p.kind for p in notes] == ["outside_splits"]  # d.xml (and so d.jpg) is in no split: said once
    assert "1 XML file(s)" in notes[0].message


def test_voc_split_files_list_the_images(tmp_path):
    """No split folders: train.txt / val.txt (paths or stems, as exporters write them) decide."""
    root = tmp_path / "labelled"
    _images(root, lambda split: "data")
    for _, name, boxes in CELLS:
        (root / "data" / name.replace(".jpg", ".xml")).write_text(voc_xml(name, boxes))
    (root / "train.txt").write_text("data/a.jpg\n./data/b.jpg\n")
    (root / "val.txt").write_text("c\n")
    (root / "test.txt").write_text("/elsewhere/on/the/labelling/machine/d.jpg\n")
    splits = assert_same_as_coco(root, tmp_path)
    assert {k: sorted(r.path.name for r in v.records) for k, v in splits.items()} == {
        "train": ["a.jpg", "b.jpg"], "val": ["c.jpg"], "test": ["d.jpg"]}


# ----------------------------------------------------------------------------- YOLO


def yolo_line(c: str, x1, y1, x2, y2, names=NAMES) -> str:
    return f"{names.index(c)} {(x1 + x2) / 2 / W:.6f} {(y1 + y2) / 2 / H:.6f} {(x2 - x1) / W:.6f} {(y2 - y1) / H:.6f}"


def _yolo_labels(root: Path, folder, names=NAMES) -> None:
    for split, name, boxes in CELLS:
        label = root / folder(split) / name.replace(".jpg", ".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(yolo_line(*b, names=names) + "\n" for b in boxes))


def assert_boxes_close(splits: dict, expected: dict = EXPECTED) -> None:
    got = boxes_by_file(splits)
    assert got.keys() == expected.keys()
    for name, boxes in expected.items():
        assert [b[0] for b in got[name]] == [b[0] for b in boxes]
        np.testing.assert_allclose([b[1:] for b in got[name]] or np.zeros((0, 4)), [b[1:] for b in boxes] or np.zeros((0, 4)),
                                   atol=1e-3)


def test_roboflow_yolo_export_data_yaml_with_parent_relative_paths(tmp_path):
    root = tmp_path / "cells.yolov8"
    _images(root, lambda split: f"{split}/images")
    _yolo_labels(root, lambda split: f"{split}/labels")
    (root / "data.yaml").write_text(textwrap.dedent("""\
        train: ../train/images
        val: ../valid/images
        test: ../test/images

        nc: 3
        names: ['platelet', 'rbc', 'wbc']

        roboflow:
          workspace: lab
          project: cells
          version: 1
          license: CC BY 4.0
          url: https://universe.roboflow.com/lab/cells/dataset/1
        """))
    splits = assert_same_as_coco(root, tmp_path)
    assert list(splits) == ["train", "val", "test"] and splits["train"].num_negatives() == 1
    assert splits["val"].root == root / "valid" / "images"  # read through data.yaml, "../valid/images" taken as "valid/images"
    assert_boxes_close(splits)


def test_yolo_without_yaml_names_from_classes_txt_obj_names_or_any_yaml(tmp_path):
    # labelImg's YOLO mode: classes.txt inside labels/, images/ beside.
    a = tmp_path / "labelimg"
    _images(a, lambda split: "images")
    _yolo_labels(a, lambda split: "labels")
    (a / "labels" / "classes.txt").write_text("\n".join(NAMES) + "\n")
    splits = assert_same_as_coco(a, tmp_path / "a")
    assert list(splits) == ["all"] and splits["all"].class_names == NAMES
    assert_boxes_close(splits)

    # Ultralytics folders, the names in a yaml of any name beside them (its paths do not apply here).
    b = tmp_path / "ultra"
    _images(b, lambda split: f"images/{split}")
    _yolo_labels(b, lambda split: f"labels/{split}")
    (b / "labels" / "test").mkdir(exist_ok=True)
    (b / "cells.yaml").write_text(yaml.safe_dump({"path": "/content/datasets/cells", "names": {0: "platelet", 1: "rbc", 2: "wbc"}}))
    splits = assert_same_as_coco(b, tmp_path / "b")
    assert list(splits) == ["train", "val", "test"]

    # A data.yaml whose sources point at the labeller's machine: the folder is read by content, the names kept.
    (b / "cells.yaml").rename(b / "data.yaml")
    (b / "data.yaml").write_text(yaml.safe_dump({"train": "/content/cells/images/train", "val": "/content/cells/images/valid",
                                                 "names": NAMES}))
    assert list(load_splits(b)) == ["train", "val", "test"]


def test_darknet_export_obj_names_and_split_files(tmp_path):
    """AlexeyAB darknet: data/obj/ holds images and labels together, data/train.txt and data/valid.txt list them."""
    root = tmp_path / "darknet"
    _images(root, lambda split: "data/obj")
    _yolo_labels(root, lambda split: "data/obj")
    (root / "data" / "obj.names").write_text("\n".join(NAMES) + "\n")
    (root / "data" / "obj.data").write_text("classes = 3\ntrain = data/train.txt\nvalid = data/valid.txt\nnames = data/obj.names\n")
    (root / "data" / "train.txt").write_text("data/obj/a.jpg\ndata/obj/b.jpg\ndata/obj/d.jpg\n")
    (root / "data" / "valid.txt").write_text("data/obj/c.jpg\n")
    splits = assert_same_as_coco(root, tmp_path)
    assert {k: len(v) for k, v in splits.items()} == {"train": 3, "val": 1}
    assert_boxes_close(splits)


def test_cvat_yolo_1_1_export(tmp_path):
    """CVAT's "YOLO 1.1": obj.data, obj.names, train.txt and obj_train_data/ (images with their .txt)."""
    root = tmp_path / "task_12-yolo"
    _images(root, lambda split: "obj_train_data")
    _yolo_labels(root, lambda split: "obj_train_data")
    (root / "obj.names").write_text("\n".join(NAMES) + "\n")
    (root / "obj.data").write_text("classes = 3\ntrain = data/train.txt\nnames = data/obj.names\nbackup = backup/\n")
    (root / "train.txt").write_text("".join(f"data/obj_train_data/{name}\n" for _, name, _ in CELLS))
    splits = assert_same_as_coco(root, tmp_path)
    assert list(splits) == ["train"] and len(splits["train"]) == 4


# ----------------------------------------------------------------------------- CSV, LabelMe, CreateML, COCO


def test_roboflow_tensorflow_csv_export(tmp_path):
    root = tmp_path / "cells.tensorflow"
    _images(root)
    for split in ("train", "valid", "test"):
        rows = ["filename,width,height,class,xmin,ymin,xmax,ymax"]
        rows += [f"{name},{W},{H},{c},{x1},{y1},{x2},{y2}" for s, name, boxes in CELLS if s == split for c, x1, y1, x2, y2 in boxes]
        (root / split / "_annotations.csv").write_text("\n".join(rows) + "\n")
    splits = assert_same_as_coco(root, tmp_path)
    assert list(splits) == ["train", "val", "test"] and splits["train"].class_names == NAMES
    assert boxes_by_file(splits) == {k: v for k, v in EXPECTED.items() if v}
    # b.jpg has no box, so no row: not loaded, and said so
    notes = [p.message for p in splits["train"].problems if p.kind == "unused_image"]
    assert len(notes) == 1 and "1 image(s)" in notes[0] and "train/" in notes[0]


def test_files_that_name_no_split_are_read_together(tmp_path):
    """Two TF CSV batches from a labelling round: one split 'all', one class list (sorted names of both)."""
    _images(tmp_path / "round", lambda split: "images")
    header = "filename,width,height,class,xmin,ymin,xmax,ymax\n"
    (tmp_path / "round" / "batch1.csv").write_text(header + f"images/a.jpg,{W},{H},wbc,33,10,60,40\n")
    (tmp_path / "round" / "batch2.csv").write_text(header + f"images/c.jpg,{W},{H},platelet,1,1,9,9.5\n")
    splits = assert_same_as_coco(tmp_path / "round", tmp_path)
    assert list(splits) == ["all"] and splits["all"].class_names == ["platelet", "wbc"]
    assert [(r.path.name, r.labels.tolist()) for r in splits["all"].records] == [("a.jpg", [1]), ("c.jpg", [0])]


def test_our_csv_in_a_folder_and_with_a_header_still_reads(tmp_path):
    _images(tmp_path / "ds", lambda split: "img")
    rows = ["path,x1,y1,x2,y2,class_name"]
    rows += [f"img/{name},{x1},{y1},{x2},{y2},{c}" if boxes else f"img/{name},,,,," for _, name, boxes in CELLS
             for c, x1, y1, x2, y2 in (boxes or [("", "", "", "", "")])]
    (tmp_path / "ds" / "annotations.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "ds" / "classes.csv").write_text("platelet,0\nrbc,1\nwbc,2\n")
    splits = assert_same_as_coco(tmp_path / "ds", tmp_path)
    assert list(splits) == ["all"] and splits["all"].format == "csv" and boxes_by_file(splits) == EXPECTED


def labelme_json(image_path: str, boxes) -> dict:
    shapes = [{"label": c, "points": [[x2, y2], [x1, y1]], "group_id": None, "description": "", "shape_type": "rectangle",
               "flags": {}, "mask": None} for c, x1, y1, x2, y2 in boxes]
    return {"version": "5.5.0", "flags": {}, "shapes": shapes, "imagePath": image_path, "imageData": None,
            "imageHeight": H, "imageWidth": W}


def test_labelme_beside_images_and_in_a_sibling_folder(tmp_path):
    root = tmp_path / "labelme"
    for seed, (split, name, boxes) in enumerate(CELLS):
        write_image(root / split / name, W, H, seed=seed)
        (root / split / name.replace(".jpg", ".json")).write_text(json.dumps(labelme_json(name, boxes)))
    splits = assert_same_as_coco(root, tmp_path / "a")
    assert list(splits) == ["train", "val", "test"] and splits["train"].format == "labelme"
    assert boxes_by_file(splits) == EXPECTED

    # JSON in json/, images in images/, imagePath written by LabelMe on Windows
    other = tmp_path / "labelme2"
    _images(other, lambda split: "images")
    for _, name, boxes in CELLS:
        path = other / "json" / name.replace(".jpg", ".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(labelme_json(f"..\\images\\{name}", boxes)))
    splits = assert_same_as_coco(other, tmp_path / "b")
    assert list(splits) == ["all"] and all(r.path.parent == other / "images" for r in splits["all"].records)


def test_roboflow_createml_export(tmp_path):
    root = tmp_path / "cells.createml"
    _images(root)
    for split in ("train", "valid", "test"):
        entries = [{"image": name, "annotations": [
            {"label": c, "coordinates": {"x": (x1 + x2) / 2, "y": (y1 + y2) / 2, "width": x2 - x1, "height": y2 - y1}}
            for c, x1, y1, x2, y2 in boxes]} for s, name, boxes in CELLS if s == split]
        (root / split / "_annotations.createml.json").write_text(json.dumps(entries))
    splits = assert_same_as_coco(root, tmp_path)
    assert list(splits) == ["train", "val", "test"] and splits["train"].format == "createml"
    assert boxes_by_file(splits) == EXPECTED and splits["train"].num_negatives() == 1


def test_coco_json_anywhere_and_only_instances_beside_captions(tmp_path):
    root = tmp_path / "export"
    _images(root, lambda split: "images")
    images, anns = [], []
    for i, (_, name, boxes) in enumerate(CELLS):
        images.append({"id": i + 1, "file_name": name, "width": W, "height": H})
        anns += [{"id": len(anns) + 1, "image_id": i + 1, "category_id": NAMES.index(c) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                  "area": (x2 - x1) * (y2 - y1), "iscrowd": 0} for c, x1, y1, x2, y2 in boxes]
    write_coco(root / "labels" / "result.json", images, anns, [{"id": i + 1, "name": n} for i, n in enumerate(NAMES)])
    splits = load_splits(root)
    assert list(splits) == ["all"] and splits["all"].format == "coco" and boxes_by_file(splits) == EXPECTED

    coco = tmp_path / "coco2017"
    (coco / "annotations").mkdir(parents=True)
    (root / "labels" / "result.json").rename(coco / "annotations" / "instances_val2017.json")
    (coco / "annotations" / "captions_val2017.json").write_text(json.dumps({"images": images, "annotations": []}))
    (root / "images").rename(coco / "images")
    splits = load_splits(coco)
    assert list(splits) == ["val"] and len(splits["val"]) == 4
    assert any(p.kind == "other_annotations" and "captions_val2017.json" in p.message for p in splits["val"].problems)


# ----------------------------------------------------------------------------- Label Studio and CVAT (routed)


def test_label_studio_json_export_is_routed(tmp_path):
    root = tmp_path / "project-3"
    _images(root, lambda split: "images")
    tasks = []
    for i, (_, name, boxes) in enumerate(CELLS):
        result = [{"id": f"r{i}{k}", "type": "rectanglelabels", "from_name": "label", "to_name": "image", "original_width": W,
                   "original_height": H, "image_rotation": 0,
                   "value": {"x": x1 / W * 100, "y": y1 / H * 100, "width": (x2 - x1) / W * 100, "height": (y2 - y1) / H * 100,
                             "rotation": 0, "rectanglelabels": [c]}} for k, (c, x1, y1, x2, y2) in enumerate(boxes)]
        tasks.append({"id": i + 1, "data": {"image": f"/data/upload/3/0f3a9c1{i}-{name}"}, "annotations": [
            {"id": i + 1, "completed_by": 1, "result": result, "was_cancelled": False, "ground_truth": False}], "predictions": []})
    (root / "project-3-at-2024-05-01-10-00-0f3a9c12.json").write_text(json.dumps(tasks))
    splits = assert_same_as_coco(root, tmp_path)
    assert list(splits) == ["all"] and splits["all"].format == "labelstudio"
    assert_boxes_close(splits)
    # an export that records no split takes the one its folder names
    (root / "valid").mkdir()
    (root / "project-3-at-2024-05-01-10-00-0f3a9c12.json").rename(root / "valid" / "export.json")
    assert list(load_splits(root)) == ["val"]


def test_cvat_for_images_xml_is_routed(tmp_path):
    root = tmp_path / "task_7-cvat"
    _images(root, lambda split: "images")
    labels = "".join(f"<label><name>{n}</name><color>#ff0000</color><type>rectangle</type><attributes/></label>" for n in NAMES)
    images = "".join(
        f'<image id="{i}" name="{name}" width="{W}" height="{H}">'
        + "".join(f'<box label="{c}" source="manual" occluded="0" xtl="{x1}" ytl="{y1}" xbr="{x2}" ybr="{y2}" z_order="0"/>'
                  for c, x1, y1, x2, y2 in boxes) + "</image>"
        for i, (_, name, boxes) in enumerate(CELLS))
    (root / "annotations.xml").write_text(
        f'<?xml version="1.0" encoding="utf-8"?>\n<annotations><version>1.1</version><meta><task><id>7</id><name>cells</name>'
        f"<size>4</size><mode>annotation</mode><labels>{labels}</labels></task></meta>{images}</annotations>")
    splits = assert_same_as_coco(root, tmp_path)
    assert list(splits) == ["all"] and splits["all"].format == "cvat" and splits["all"].class_names == NAMES
    assert boxes_by_file(splits) == EXPECTED


# ----------------------------------------------------------------------------- choosing, and what is reported


def test_hidden_folders_are_skipped_and_a_second_format_is_reported(tmp_path):
    root = tmp_path / "both"
    _images(root)
    for split, name, boxes in CELLS:
        (root / split / name.replace(".jpg", ".xml")).write_text(voc_xml(name, boxes))
    _yolo_labels(root, lambda split: f"{split}")
    (root / "classes.txt").write_text("\n".join(NAMES) + "\n")
    (root / ".cache").mkdir()
    (root / ".cache" / "x.json").write_text("not json")  # never read
    splits = load_splits(root)
    assert splits["train"].format == "voc"
    other = [p.message for p in splits["train"].problems if p.kind == "other_format"]
    assert len(other) == 1 and "also found YOLO" in other[0] and "read Pascal VOC" in other[0]


def test_a_few_files_per_folder_are_read_to_sniff(tmp_path, monkeypatch):
    root = tmp_path / "many"
    for i in range(30):
        write_image(root / "imgs" / f"{i}.png", 16, 16, seed=i)
        (root / "xml").mkdir(exist_ok=True)
        (root / "xml" / f"{i}.xml").write_text(voc_xml(f"{i}.png", [("rbc", 1, 1, 8, 8)]))
    calls = []
    real = sniff_module.xml_kind
    monkeypatch.setattr(sniff_module, "xml_kind", lambda p: calls.append(p) or real(p))
    ds = load_dataset(root)
    assert len(ds) == 30 and all(r.path.parent == root / "imgs" for r in ds.records)
    assert len(calls) == sniff_module.SAMPLE


def _error(path: Path) -> str:
    with pytest.raises(DataError) as info:
        load_splits(path)
    message = str(info.value)
    assert "\n" not in message and "could not detect the dataset format" in message
    return message


def test_unreadable_layouts_say_what_was_found_and_what_is_missing(tmp_path):
    # YOLO labels without class names
    a = tmp_path / "a"
    _images(a, lambda split: f"images/{split}")
    _yolo_labels(a, lambda split: f"labels/{split}")
    m = _error(a)
    assert "found: 4 images (images/train/ 2, images/test/ 1, images/valid/ 1), 0 .xml, 0 .json, 4 .txt (labels/train/ 2" in m
    assert "closest: YOLO (4 label .txt in labels/train/ 2" in m
    assert "missing: class names (classes.txt, obj.names or a yaml with names" in m

    # YOLO labels without their images (CVAT's export without images)
    b = tmp_path / "b"
    _yolo_labels(b, lambda split: "obj_train_data")
    (b / "obj.names").write_text("\n".join(NAMES) + "\n")
    m = _error(b)
    assert "found: 0 images, 0 .xml, 0 .json, 4 .txt (obj_train_data/ 4), 0 .csv" in m
    assert "closest: YOLO" in m and "missing: the images" in m

    # VOC XML whose images are nowhere
    c = tmp_path / "c"
    for _, name, boxes in CELLS:
        (c / "Annotations").mkdir(parents=True, exist_ok=True)
        (c / "Annotations" / name.replace(".jpg", ".xml")).write_text(voc_xml(name, boxes))
    m = _error(c)
    assert "4 .xml (Annotations/ 4)" in m and "closest: Pascal VOC (4 .xml in Annotations/ 4)" in m
    assert "missing: the images: none of the 4 the annotations name was found" in m

    # XML of another kind
    d = tmp_path / "d"
    _images(d, lambda split: "images")
    (d / "meta").mkdir()
    (d / "meta" / "scan.xml").write_text("<scan><device>X</device></scan>")
    m = _error(d)
    assert "closest: Pascal VOC (1 .xml in meta/ 1)" in m
    assert "missing: an <annotation> root element (meta/scan.xml: root element <scan>)" in m


def test_unreadable_json_and_csv_say_what_is_missing(tmp_path):
    a = tmp_path / "a"
    _images(a, lambda split: "images")
    (a / "image_info_test.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "categories": []}))
    m = _error(a)
    assert "1 .json (top folder 1)" in m and "closest: COCO JSON (1 .json in top folder 1)" in m and "missing: an 'annotations' list" in m

    b = tmp_path / "b"
    (b / "ann").mkdir(parents=True)
    (b / "ann" / "broken.json").write_text('{"shapes": [\n  {"label": "rbc",,}\n]}')
    m = _error(b)
    assert "missing: valid JSON (ann/broken.json: invalid JSON at line 2" in m

    c = tmp_path / "c"
    _images(c, lambda split: "images")
    (c / "boxes.csv").write_text("image_id,label,x,y,w,h\na,rbc,1,2,3,4\n")
    m = _error(c)
    assert "1 .csv (top folder 1)" in m and "closest: CSV" in m and "missing: a header 'filename,width,height,class,xmin" in m

    d = tmp_path / "d"
    _images(d, lambda split: "images")
    (d / "train.csv").write_text("images/a.jpg,1,2,11,12,rbc\n")
    m = _error(d)
    assert "missing: a class file beside train.csv (one of classes.csv" in m


def test_images_only_or_nothing(tmp_path):
    _images(tmp_path / "pics", lambda split: "raw")
    m = _error(tmp_path / "pics")
    assert "found: 4 images (raw/ 4)" in m and "closest: unlabelled images (raw/ 4)" in m and "missing: annotations:" in m
    (tmp_path / "empty").mkdir()
    m = _error(tmp_path / "empty")
    assert "found: 0 images, 0 .xml, 0 .json, 0 .txt, 0 .csv; closest: nothing" in m


def test_corrupt_files_in_a_readable_layout_are_problems_not_failures(tmp_path):
    root = tmp_path / "lm"
    for seed, (_, name, boxes) in enumerate(CELLS):
        write_image(root / "train" / name, W, H, seed=seed)
        (root / "train" / name.replace(".jpg", ".json")).write_text(json.dumps(labelme_json(name, boxes)))
    (root / "train" / "z_broken.json").write_text("{")  # sorted last: not among the sniffed ones
    (root / "extra").mkdir()
    write_image(root / "extra" / "e.jpg", W, H)
    (root / "extra" / "e.json").write_text(json.dumps(labelme_json("e.jpg", [("rbc", 1, 1, 5, 5)])))
    splits = load_splits(root)
    assert list(splits) == ["train"] and len(splits["train"]) == 4
    problems = {p.kind: p for p in splits["train"].problems}
    assert "z_broken.json" in problems["bad_annotation"].file and "invalid JSON at line 1" in problems["bad_annotation"].message
    assert "1 annotation file(s) outside the split folders (train) not read (in extra/ 1)" in problems["outside_splits"].message
