"""Pascal VOC XML: one ``<annotation>`` file per image, in any folder.

Two layouts: the devkit's ``Annotations/*.xml`` + ``JPEGImages/`` + ``ImageSets/Main/<split>.txt``
(:func:`read_voc`), and XML files anywhere, beside their images or beside an image folder
(Roboflow's "Pascal VOC" export: ``train/ valid/ test/`` each holding ``a.jpg`` + ``a.xml``;
:func:`read_voc_files`). The image of an XML is found through ``<filename>``, then ``<path>``, then the
XML's own stem, beside the XML or in a sibling folder (``JPEGImages/`` and ``images/`` first).

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

from retinadet.data.formats.named_boxes import ImageFinder, NamedBoxes, read_named_splits
from retinadet.data.records import DatasetRecords, ImageRecord, Problem
from retinadet.errors import DataError

VOC_ROOT_TAG = "annotation"


def is_voc_root(path: Path) -> bool:
    return (path / "Annotations").is_dir()


def list_voc_splits(root: Path) -> list[str]:
    main = root / "ImageSets" / "Main"
    if not main.is_dir():
        return []
    # Per-class files (e.g. "dog_train.txt") are not splits.
    return sorted(p.stem for p in main.glob("*.txt") if "_" not in p.stem)


def voc_split_files(root: Path, split: str) -> list[Path]:
    """The XML files ``ImageSets/Main/<split>.txt`` lists (first column: the image stem)."""
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        raise DataError(f"{split_file}: split file not found (available: {', '.join(list_voc_splits(root)) or 'none'})")
    stems = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
    return [root / "Annotations" / f"{stem}.xml" for stem in stems]


def _text(node: ET.Element | None, default: str = "") -> str:
    return node.text.strip() if node is not None and node.text is not None else default


def _tag(element: ET.Element) -> str:
    return element.tag.rsplit("}", 1)[-1]  # without an XML namespace


def parse_voc_xml(xml_path: Path, finder: ImageFinder, problems: list[Problem]) -> list[NamedBoxes]:
    """One VOC XML file as the boxes of its image (nothing, and a problem, when it cannot be read)."""
    if not xml_path.is_file():
        problems.append(Problem(str(xml_path), "annotation file listed in the split is missing", "missing_file"))
        return []
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        problems.append(Problem(str(xml_path), f"invalid XML: {exc}", "bad_annotation"))
        return []
    if _tag(root) != VOC_ROOT_TAG:
        problems.append(Problem(str(xml_path), f"not a VOC annotation: root element <{_tag(root)}>, expected <{VOC_ROOT_TAG}>",
                                "bad_annotation"))
        return []
    size = root.find("size")
    try:
        width = int(float(_text(size.find("width") if size is not None else None, "0")))
        height = int(float(_text(size.find("height") if size is not None else None, "0")))
    except ValueError:
        problems.append(Problem(str(xml_path), "size/width or size/height is not a number", "bad_annotation"))
        width = height = 0
    image = finder.find_or_default(xml_path, [_text(root.find("filename")), _text(root.find("path"))])
    item = NamedBoxes(image, width, height, str(xml_path))
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
                coords.append(math.nan)  # reported as a non-finite coordinate by sanitize_boxes
        difficult = _text(obj.find("difficult"), "0").lower() in ("1", "true")
        item.add(name, coords, f"object {k} ({name})", crowd=difficult)
    return [item]


def read_voc_files(
    xml_files: Sequence[str | os.PathLike],
    split: str | None = None,
    class_names: Sequence[str] | None = None,
    root: str | os.PathLike | None = None,
    finder: ImageFinder | None = None,
) -> DatasetRecords:
    """VOC XML files from any folders (class names: the sorted names of these files unless given). Images are
    looked for within ``root``, by default the folder above the first file's (so its sibling folders count)."""
    files = [Path(f) for f in xml_files]
    base = Path(root) if root is not None else (files[0].parent.parent if files else None)
    return read_named_splits({split: files}, parse_voc_xml, "voc", base, finder, class_names)[split]


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
    every = sorted(ann_dir.glob("*.xml"))
    files = voc_split_files(root, split) if split is not None else every
    if class_names is None and split is not None:
        # Every XML, not only this split's, so that all splits share one class list.
        class_names = voc_class_names(every)
    return read_voc_files(files, split=split, class_names=class_names, root=root)


def voc_class_names(xml_files: Sequence[Path]) -> list[str]:
    """The sorted object names of VOC files (unreadable files are skipped here and reported when read)."""
    names = set()
    for xml_path in xml_files:
        try:
            for obj in ET.parse(xml_path).getroot().findall("object"):
                n = _text(obj.find("name"))
                if n:
                    names.add(n)
        except (ET.ParseError, OSError):
            pass
    return sorted(names)


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
