"""CVAT for images 1.1 XML from boxes: the one writer behind ``data convert --to cvat`` (annotations) and
``predict --save-cvat`` (pre-annotations). Torch-free and free of data/ imports, for the ONNX runner.

One ``<image id name width height [subset]>`` per image, one ``<box>`` per box in pixels (``xtl``/``ytl`` the
top-left corner, ``xbr``/``ybr`` the bottom-right, two decimals as CVAT writes them). Predictions are
``source="auto"`` boxes with their score as ``<attribute name="score">``; CVAT keeps the attribute when the
task's label declares it (a ``score`` attribute, as in the ``<meta>`` written here), and ignores it otherwise.
CVAT matches ``<image name>`` to the task's files by name, so images are named as they were uploaded.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from retinadet.utils.colors import class_colors
from retinadet.utils.scores import round_score

ANNOTATIONS_FILE = "annotations.xml"
SCORE_ATTRIBUTE = "score"


@dataclass
class CvatImage:
    """One image: its name in the task, size, xyxy pixel boxes, labels, optional scores and subset (split)."""

    name: str
    width: int
    height: int
    boxes: Sequence[Sequence[float]]
    labels: Sequence[int]
    scores: Sequence[float] | None = None
    subset: str | None = None


# CVAT 2.x names the usual splits so in its subset selector.
SUBSET_NAMES = {"train": "Train", "val": "Validation", "test": "Test"}


def task_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """The ``<image name>`` of each file: its path below the files' deepest common folder (the bare file name when
    they share one folder), which is how CVAT names the files of a task made from them."""
    absolute = [os.path.abspath(p) for p in paths]
    if not absolute:
        return []
    root = os.path.commonpath([os.path.dirname(p) for p in absolute])
    return [Path(os.path.relpath(p, root)).as_posix() for p in absolute]


def _coord(v: float) -> str:
    return f"{float(v):.2f}"


def annotations_xml(images: Sequence[CvatImage], class_names: Sequence[str], task_name: str = "retinadet") -> str:
    """The XML text (``annotations.xml``). Images with scores give ``source="auto"`` boxes with a score
    attribute; without, ``source="manual"`` ones."""
    scored = any(im.scores is not None for im in images)
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    task = ET.SubElement(ET.SubElement(root, "meta"), "task")
    ET.SubElement(task, "name").text = task_name
    ET.SubElement(task, "size").text = str(len(images))
    ET.SubElement(task, "mode").text = "annotation"
    labels = ET.SubElement(task, "labels")
    for name, (r, g, b) in zip(class_names, class_colors(len(class_names))):
        label = ET.SubElement(labels, "label")
        ET.SubElement(label, "name").text = str(name)
        ET.SubElement(label, "color").text = f"#{r:02x}{g:02x}{b:02x}"
        ET.SubElement(label, "type").text = "rectangle"
        attributes = ET.SubElement(label, "attributes")
        if scored:
            attr = ET.SubElement(attributes, "attribute")
            ET.SubElement(attr, "name").text = SCORE_ATTRIBUTE
            ET.SubElement(attr, "mutable").text = "False"
            ET.SubElement(attr, "input_type").text = "text"
            ET.SubElement(attr, "default_value").text = ""
            ET.SubElement(attr, "values").text = ""
    subsets = [s for s in dict.fromkeys(SUBSET_NAMES.get(im.subset, im.subset) for im in images) if s]
    if subsets:
        ET.SubElement(task, "subsets").text = "\n".join(subsets)
    for index, im in enumerate(images):
        attrs = {"id": str(index), "name": im.name, "width": str(int(im.width)), "height": str(int(im.height))}
        if im.subset:
            attrs["subset"] = SUBSET_NAMES.get(im.subset, im.subset)
        node = ET.SubElement(root, "image", attrs)
        for k, ((x1, y1, x2, y2), label) in enumerate(zip(im.boxes, im.labels)):
            box = ET.SubElement(node, "box", {"label": str(class_names[int(label)]),
                                              "source": "auto" if im.scores is not None else "manual", "occluded": "0",
                                              "xtl": _coord(x1), "ytl": _coord(y1), "xbr": _coord(x2), "ybr": _coord(y2),
                                              "z_order": "0"})
            if im.scores is not None:
                ET.SubElement(box, "attribute", {"name": SCORE_ATTRIBUTE}).text = f"{round_score(im.scores[k]):g}"
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
