"""Apple CreateML JSON: ``[{"image": "a.jpg", "annotations": [{"label": ..., "coordinates": {...}}]}, ...]``.

``coordinates`` are ``x``, ``y`` (the box centre), ``width`` and ``height``, in pixels of the image. The file
has no image sizes, so they are read from the images (found beside the JSON or in a sibling folder; Roboflow
exports ``train/_annotations.createml.json`` with the images beside it). An entry with an empty
``annotations`` list is an image without boxes. Class names are the sorted labels of all files.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from retinadet.data.formats.named_boxes import ImageFinder, NamedBoxes, read_json_annotation, read_named_splits
from retinadet.data.records import DatasetRecords, Problem
from retinadet.errors import DataError

# How many entries the sniffer looks at: a CreateML file is a list of such entries throughout.
SNIFF_ENTRIES = 5


def is_createml(obj) -> bool:
    """A non-empty list whose first entries are ``{"image": ..., "annotations": [...]}``."""
    if not isinstance(obj, list) or not obj:
        return False
    return all(isinstance(e, dict) and "image" in e and isinstance(e.get("annotations"), list) for e in obj[:SNIFF_ENTRIES])


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan  # reported as a non-finite coordinate by sanitize_boxes


def parse_createml_file(path: Path, finder: ImageFinder, problems: list[Problem]) -> list[NamedBoxes]:
    data = read_json_annotation(path, problems)
    if data is None:
        return []
    if not isinstance(data, list):
        problems.append(Problem(str(path), "not a CreateML file (expected a list of {image, annotations})", "bad_annotation"))
        return []
    items = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or not entry.get("image") or not isinstance(entry.get("annotations", []), list):
            problems.append(Problem(str(path), f"[{i}]: expected {{\"image\": name, \"annotations\": [...]}}", "bad_annotation"))
            continue
        name = str(entry["image"])
        item = NamedBoxes(finder.find_or_default(path, [name], stem=False), 0, 0, str(path))
        labels, centres, wheres = [], [], []
        for j, ann in enumerate(entry.get("annotations", [])):
            where = f"[{i}].annotations[{j}] ({name})"
            coords = ann.get("coordinates") if isinstance(ann, dict) else None
            label = str(ann.get("label") or "").strip() if isinstance(ann, dict) else ""
            if not label or not isinstance(coords, dict):
                problems.append(Problem(str(path), f"{where}: needs 'label' and 'coordinates' {{x, y, width, height}}",
                                        "bad_annotation"))
                continue
            labels.append(label)
            centres.append([_number(coords.get(k)) for k in ("x", "y", "width", "height")])
            wheres.append(where)
        if centres:
            c = np.array(centres, dtype=np.float64)
            half = c[:, 2:] / 2
            boxes = np.concatenate([c[:, :2] - half, c[:, :2] + half], axis=1)
            for label, box, where in zip(labels, boxes.tolist(), wheres):
                item.add(label, box, where)
        items.append(item)
    return items


def read_createml(path: str | os.PathLike, split: str | None = None, class_names: Sequence[str] | None = None,
                  finder: ImageFinder | None = None) -> DatasetRecords:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: CreateML annotation file not found")
    return read_named_splits({split: [path]}, parse_createml_file, "createml", path.parent, finder, class_names)[split]
