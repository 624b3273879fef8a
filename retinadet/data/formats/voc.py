"""Pascal VOC: ``Annotations/*.xml``, ``JPEGImages/``, ``ImageSets/Main/<split>.txt``.

Coordinates are taken as pixel edges (xmin..xmax), the convention of labelImg,
Roboflow and Ultralytics, so VOC -> COCO -> VOC is exact. ``difficult`` objects are
kept as crowd (ignored in matching and evaluation, never counted as misses).
Class names, which VOC does not list, are the sorted names found in all XML files.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from retinadet.data.images import image_size
from retinadet.data.records import DatasetRecords, ImageRecord, Problem, check_unique_ids, default_category_ids, sanitize_boxes
from retinadet.errors import DataError


def is_voc_root(path: Path) -> bool:
    return (path / "Annotations").is_dir()


def list_voc_splits(root: Path) -> list[str]:
    main = root / "ImageSets" / "Main"
    if not main.is_dir():
        return []
    # Per-class files (e.g. "dog_train.txt") are not splits.
    return sorted(p.stem for p in main.glob("*.txt") if "_" not in p.stem)


def _text(node: ET.Element | None, default: str = "") -> str:
    return node.text.strip() if node is not None and node.text is not None else default


def _parse_xml(xml_path: Path, problems: list[Problem]):
    try:
        tree = ET.parse(xml_path)
    except ET.ParseError as exc:
        problems.append(Problem(str(xml_path), f"invalid XML: {exc}", "bad_annotation"))
        return None
    root = tree.getroot()
    filename = _text(root.find("filename")) or xml_path.stem + ".jpg"
    size = root.find("size")
    try:
        width = int(float(_text(size.find("width") if size is not None else None, "0")))
        height = int(float(_text(size.find("height") if size is not None else None, "0")))
    except ValueError:
        problems.append(Problem(str(xml_path), "size/width or size/height is not a number", "bad_annotation"))
        width = height = 0
    objects = []
    for k, obj in enumerate(root.findall("object")):
        name = _text(obj.find("name"))
        bnd = obj.find("bndbox")
        if not name or bnd is None:
            problems.append(Problem(str(xml_path), f"object {k}: needs <name> and <bndbox>", "bad_annotation"))
            continue
        coords = []
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            try:
                coords.append(float(_text(bnd.find(tag), "nan")))
            except ValueError:
                coords.append(math.nan)
        difficult = _text(obj.find("difficult"), "0") in ("1", "true", "True")
        objects.append((name, coords, difficult, k))
    return filename, width, height, objects


def read_voc(
    root: str | os.PathLike,
    split: str | None = None,
    class_names: Sequence[str] | None = None,
) -> DatasetRecords:
    """Read a VOC folder; ``split`` picks ``ImageSets/Main/<split>.txt`` (None: every XML)."""
    root = Path(root)
    ann_dir = root / "Annotations"
    if not ann_dir.is_dir():
        raise DataError(f"{root}: not a Pascal VOC folder (no Annotations/)")
    problems: list[Problem] = []
    if split is not None:
        split_file = root / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            raise DataError(f"{split_file}: split file not found (available: {', '.join(list_voc_splits(root)) or 'none'})")
        stems = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
    else:
        stems = sorted(p.stem for p in ann_dir.glob("*.xml"))

    parsed = []
    for stem in stems:
        xml_path = ann_dir / f"{stem}.xml"
        if not xml_path.is_file():
            problems.append(Problem(str(xml_path), "annotation file listed in the split is missing", "missing_file"))
            continue
        p = _parse_xml(xml_path, problems)
        if p is not None:
            parsed.append((xml_path, p))

    if class_names is None:
        # Every XML, not only this split's, so that all splits share one class list.
        names = set()
        for xml_path in ann_dir.glob("*.xml"):
            try:
                for obj in ET.parse(xml_path).getroot().findall("object"):
                    n = _text(obj.find("name"))
                    if n:
                        names.add(n)
            except ET.ParseError:
                pass
        class_names = sorted(names)
    class_names = list(class_names)
    label_of = {n: i for i, n in enumerate(class_names)}

    records = []
    for index, (xml_path, (filename, width, height, objects)) in enumerate(parsed):
        image_path = root / "JPEGImages" / filename
        if not image_path.exists():
            alt = root / "JPEGImages" / (xml_path.stem + Path(filename).suffix)
            image_path = alt if alt.exists() else image_path
        if width <= 0 or height <= 0:

            try:
                width, height = image_size(image_path)
            except DataError:
                width = height = 0
        boxes, labels, crowd, where = [], [], [], []
        for name, coords, difficult, k in objects:
            if name not in label_of:
                problems.append(Problem(str(xml_path), f"object {k}: unknown class '{name}'", "unknown_class"))
                continue
            boxes.append(coords)
            labels.append(label_of[name])
            crowd.append(difficult)
            where.append(f"object {k} ({name})")
        b, keep = sanitize_boxes(np.array(boxes, dtype=np.float64).reshape(-1, 4), width, height, str(xml_path), problems, where)
        records.append(ImageRecord(image_path, width, height, b[keep], np.array(labels, dtype=np.int64)[keep],
                                   np.array(crowd, dtype=bool)[keep], index + 1, source=str(xml_path)))
    check_unique_ids(records, problems)
    return DatasetRecords(records, class_names, default_category_ids(len(class_names)), problems, root=root, split=split, format="voc")


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.2f}"


def write_voc_xml(record: ImageRecord, class_names: Sequence[str], xml_path: Path, filename: str) -> None:
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = "JPEGImages"
    ET.SubElement(ann, "filename").text = filename
    size = ET.SubElement(ann, "size")
    ET.SubElement(size, "width").text = str(record.width)
    ET.SubElement(size, "height").text = str(record.height)
    ET.SubElement(size, "depth").text = "3"
    for box, label, crowd in zip(record.boxes.tolist(), record.labels.tolist(), record.crowd.tolist()):
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = class_names[label]
        ET.SubElement(obj, "difficult").text = "1" if crowd else "0"
        bnd = ET.SubElement(obj, "bndbox")
        for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(bnd, tag).text = _fmt(v)
    ET.indent(ann)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(ann).write(xml_path, encoding="utf-8")
