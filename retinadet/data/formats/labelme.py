"""LabelMe JSON: one file per image, ``{"shapes": [...], "imagePath": ..., "imageWidth": ..., "imageHeight": ...}``.

Each shape has a ``label``, a ``shape_type`` and ``points`` (``[[x, y], ...]`` in pixels). A shape becomes its
bounding box: ``rectangle`` (two opposite corners, in either order), ``polygon`` and ``mask`` (the box around
their points; a mask's two points are its box), ``circle`` (centre and a point on the rim). Old LabelMe
files without ``shape_type`` hold polygons. Shapes with no area to detect (``point``, ``points``, ``line``,
``linestrip``) are skipped with a warning; an unknown type with two or more points becomes the box around
them, with a warning. ``imagePath`` is relative to the JSON file (often ``../images/a.jpg``, written with
backslashes on Windows); the image is looked up beside the JSON or in a sibling folder when the path does
not resolve. Class names are the sorted labels of all files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from retinadet.data.formats.named_boxes import ImageFinder, NamedBoxes, read_json_annotation, read_named_splits
from retinadet.data.records import DatasetRecords, Problem
from retinadet.errors import DataError

BOX_SHAPES = ("rectangle", "polygon", "mask")
SKIPPED_SHAPES = ("point", "points", "line", "linestrip")


def is_labelme(obj) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("shapes"), list) and "imagePath" in obj


def _size(value) -> int:
    try:
        return max(int(value), 0)
    except (TypeError, ValueError):
        return 0  # read from the image file instead


def shape_box(shape: dict) -> tuple[list[float] | None, tuple[str, str, str] | None]:
    """(xyxy box or None, None or the (kind, message, severity) of a problem to report)."""
    kind = shape.get("shape_type") or "polygon"
    try:
        points = np.asarray(shape.get("points"), dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        return None, ("bad_annotation", f"'points' must be a list of [x, y] pairs, got {shape.get('points')!r}", "error")
    if kind in SKIPPED_SHAPES:
        return None, ("unsupported_shape", f"shape_type '{kind}' has no box; skipped", "warning")
    if kind == "circle":
        if len(points) != 2:
            return None, ("bad_annotation", f"a circle needs 2 points (centre, rim), got {len(points)}", "error")
        radius = float(np.hypot(*(points[1] - points[0])))
        cx, cy = points[0]
        return [cx - radius, cy - radius, cx + radius, cy + radius], None
    if len(points) < 2:
        return None, ("bad_annotation", f"shape_type '{kind}' needs at least 2 points, got {len(points)}", "error")
    box = [*points.min(axis=0).tolist(), *points.max(axis=0).tolist()]
    if kind not in BOX_SHAPES:
        return box, ("unknown_shape", f"unknown shape_type '{kind}': read as the box around its points", "warning")
    return box, None


def parse_labelme_file(path: Path, finder: ImageFinder, problems: list[Problem]) -> list[NamedBoxes]:
    data = read_json_annotation(path, problems)
    if data is None:
        return []
    if not is_labelme(data):
        problems.append(Problem(str(path), "not a LabelMe file (needs a 'shapes' list and 'imagePath')", "bad_annotation"))
        return []
    image = finder.find_or_default(path, [data.get("imagePath")])
    item = NamedBoxes(image, _size(data.get("imageWidth")), _size(data.get("imageHeight")), str(path))
    for k, shape in enumerate(data["shapes"]):
        if not isinstance(shape, dict):
            problems.append(Problem(str(path), f"shapes[{k}]: expected an object, got {shape!r}", "bad_annotation"))
            continue
        label = str(shape.get("label") or "").strip()
        where = f"shapes[{k}] ({label or 'no label'})"
        if not label:
            problems.append(Problem(str(path), f"{where}: empty label", "bad_annotation"))
            continue
        box, problem = shape_box(shape)
        if problem is not None:
            kind, message, severity = problem
            problems.append(Problem(str(path), f"{where}: {message}", kind, severity))
        if box is not None:
            item.add(label, box, where)
    return [item]


def labelme_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*.json") if not any(part.startswith(".") for part in p.relative_to(path).parts))
    return [path]


def read_labelme(path: str | os.PathLike, split: str | None = None, class_names: Sequence[str] | None = None,
                 finder: ImageFinder | None = None) -> DatasetRecords:
    """A LabelMe JSON file, or every ``.json`` under a folder. Images are looked for within that folder (for a
    file: within the folder above its own, so that a sibling ``images/`` counts)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: LabelMe annotation path not found")
    root = path if path.is_dir() else path.parent.parent
    return read_named_splits({split: labelme_files(path)}, parse_labelme_file, "labelme", root, finder, class_names)[split]
