"""CVAT for images 1.1 XML (``annotations.xml`` of a task, job or project export).

Shapes: ``<box>`` (``xtl``/``ytl``/``xbr``/``ybr`` pixels; a ``rotation``, degrees clockwise about the centre,
becomes the axis-aligned bounding box, with a warning), and ``<polygon>``, ``<ellipse>`` and ``<mask>`` as
their bounding boxes. Polylines, points, cuboids, skeletons and tags are not boxes: counted in one warning per
file and left out. A "CVAT for video" file (``<track>``) is refused: export the task as CVAT for images.

Classes: the ``<label>`` names of ``<meta>`` in order (except tag and skeleton labels and skeleton parts), then
any other names the shapes use, in the order met. Images: ``name`` relative to the XML's folder, or to an
``images/`` folder beside it (the layout of CVAT's zip) or beside its folder. ``id`` is the image id.

Splits: CVAT 2.x records an image's ``subset`` (``Train``/``Validation``/``Test``, any case, become
train/val/test); ``read_cvat(path, split)`` selects that subset, :func:`read_cvat_splits` reads them all.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np

from retinadet.data.formats.splits import SPLIT_ORDER, normalize_split
from retinadet.data.images import image_size
from retinadet.data.records import DatasetRecords, ImageRecord, Problem, check_unique_ids, default_category_ids, sanitize_boxes
from retinadet.errors import DataError

AREA_SHAPES = ("box", "polygon", "ellipse", "mask")
OTHER_SHAPES = ("polyline", "points", "cuboid", "skeleton", "tag")
NOT_CLASS_TYPES = ("tag", "skeleton")


def is_cvat_xml(root_element: ET.Element) -> bool:
    """Whether a parsed XML root is a CVAT export: ``<annotations>`` holding ``<version>``, ``<meta>``, ``<image>``
    or ``<track>`` (a VOC file's root is ``<annotation>``)."""
    return root_element.tag == "annotations" and any(root_element.find(t) is not None for t in ("version", "meta", "image", "track"))


def _parse(path: Path) -> ET.Element:
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError as exc:
        raise DataError(f"{path}: CVAT annotation file not found") from exc
    except ET.ParseError as exc:
        line, column = exc.position
        raise DataError(f"{path}: invalid XML at line {line} column {column + 1}") from exc
    if not is_cvat_xml(root):
        raise DataError(f"{path}: not a CVAT XML export (expected <annotations> with <version>, <meta> and <image>)")
    if root.find("track") is not None:
        raise DataError(f"{path}: a 'CVAT for video' export (it has <track>); export the task as 'CVAT for images 1.1'")
    return root


def declared_labels(root: ET.Element) -> list[str]:
    """The class names ``<meta>`` declares, in order."""
    meta = root.find("meta")
    names: list[str] = []
    if meta is None:
        return names
    for label in meta.iter("label"):
        name = (label.findtext("name") or "").strip()
        kind = (label.findtext("type") or "").strip().lower()
        if name and kind not in NOT_CLASS_TYPES and not (label.findtext("parent") or "").strip() and name not in names:
            names.append(name)
    return names


def _floats(shape: ET.Element, keys: tuple[str, ...]) -> list[float]:
    out = []
    for key in keys:
        value = shape.get(key)
        if value is None:
            raise ValueError(f"no '{key}'")
        out.append(float(value))
    return out


def _bounds(shape: ET.Element) -> tuple[list[float], float]:
    """(xyxy bounds, rotation in degrees) of an area shape; raises ValueError on a bad attribute."""
    if shape.tag == "box":
        x1, y1, x2, y2 = _floats(shape, ("xtl", "ytl", "xbr", "ybr"))
        rotation = float(shape.get("rotation") or 0.0)
        if math.isfinite(rotation) and abs(((rotation + 180) % 360) - 180) > 1e-6:
            cx, cy, hw, hh = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
            c, s = abs(math.cos(math.radians(rotation))), abs(math.sin(math.radians(rotation)))
            ex, ey = hw * c + hh * s, hw * s + hh * c
            return [cx - ex, cy - ey, cx + ex, cy + ey], rotation
        return [x1, y1, x2, y2], 0.0
    if shape.tag == "polygon":
        points = [tuple(float(v) for v in pair.split(",")) for pair in (shape.get("points") or "").split(";") if pair.strip()]
        if not points or any(len(p) != 2 for p in points):
            raise ValueError(f"points {shape.get('points')!r} are not 'x,y;x,y;...'")
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        return [min(xs), min(ys), max(xs), max(ys)], 0.0
    if shape.tag == "ellipse":
        cx, cy, rx, ry = _floats(shape, ("cx", "cy", "rx", "ry"))
        rotation = float(shape.get("rotation") or 0.0)
        c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
        ex, ey = math.hypot(rx * c, ry * s), math.hypot(rx * s, ry * c)  # a turned ellipse's extent along each axis
        return [cx - ex, cy - ey, cx + ex, cy + ey], 0.0
    left, top, width, height = _floats(shape, ("left", "top", "width", "height"))  # mask: its bounding rectangle
    return [left, top, left + width, top + height], 0.0


def _find_image(here: Path, name: str) -> Path:
    candidates = [here / name, here / "images" / name, here.parent / "images" / name, here / "images" / Path(name).name]
    return next((p for p in candidates if p.is_file()), candidates[0])


def _subset(image: ET.Element) -> str | None:

    value = (image.get("subset") or "").strip()
    return normalize_split(value) if value else None


def _records(path: Path, images: list[tuple[int, ET.Element]], names: list[str], problems: list[Problem],
             split: str | None) -> DatasetRecords:
    file = str(path)
    label_of = {n: i for i, n in enumerate(names)}
    others: Counter = Counter()
    records = []
    for index, image in images:
        name = image.get("name")
        where = f"image {image.get('id', index)}"
        if not name:
            problems.append(Problem(file, f"{where} (<image> #{index + 1}): no 'name'", "bad_image_entry"))
            continue
        where = f"{where} ({name})"
        path_of = _find_image(path.parent, name)
        try:
            width, height = int(float(image.get("width") or 0)), int(float(image.get("height") or 0))
        except ValueError:
            problems.append(Problem(file, f"{where}: width/height {image.get('width')!r}x{image.get('height')!r} are not numbers",
                                    "bad_image_entry"))
            width = height = 0
        if width <= 0 or height <= 0:
            try:
                width, height = image_size(path_of)
            except DataError:
                width = height = 0  # reported as a missing/unreadable image by check and the loader
        boxes, labels, places = [], [], []
        for k, shape in enumerate(image):
            if shape.tag in OTHER_SHAPES:
                others[shape.tag] += 1
                continue
            if shape.tag not in AREA_SHAPES:
                continue
            label = shape.get("label")
            place = f"{where} <{shape.tag}> {k + 1}"
            if not label:
                problems.append(Problem(file, f"{place}: no 'label'", "bad_annotation"))
                continue
            try:
                box, rotation = _bounds(shape)
            except ValueError as exc:
                problems.append(Problem(file, f"{place}: {exc}", "bad_annotation"))
                continue
            if rotation:
                problems.append(Problem(file, f"{place}: rotated {rotation:g} degrees; its axis-aligned bounding box taken",
                                        "rotated_box", "warning"))
            boxes.append(box)
            labels.append(label_of[label])
            places.append(f"{place} ({label})")
        b, keep = sanitize_boxes(np.array(boxes, dtype=np.float64).reshape(-1, 4), width, height, file, problems, places)
        try:
            image_id = int(image.get("id"))
        except (TypeError, ValueError):
            image_id = index
        records.append(ImageRecord(path_of, width, height, b[keep], np.array(labels, dtype=np.int64)[keep],
                                   np.zeros(int(keep.sum()), dtype=bool), image_id, source=file))
    if others:
        kinds = ", ".join(f"<{k}> ({n})" for k, n in sorted(others.items()))
        problems.append(Problem(file, f"shapes that are not boxes left out: {kinds}", "not_a_box", "warning"))
    check_unique_ids(records, problems)
    return DatasetRecords(records, names, default_category_ids(len(names)), problems, root=path.parent, split=split, format="cvat")


def _load(path: str | os.PathLike) -> tuple[Path, list[tuple[int, ET.Element]], list[str], list[Problem]]:
    path = Path(path)
    root = _parse(path)
    problems: list[Problem] = []
    version = (root.findtext("version") or "").strip()
    if version and not version.startswith("1."):
        problems.append(Problem(str(path), f"format version {version}; read as 1.1", "format_version", "warning"))
    images = list(enumerate(root.findall("image")))
    if not images:
        problems.append(Problem(str(path), "no <image> entries", "empty_annotations", "warning"))
    names = declared_labels(root)
    for _, image in images:
        for shape in image:
            label = shape.get("label")
            if shape.tag in AREA_SHAPES and label and label not in names:
                names.append(label)
    return path, images, names, problems


def read_cvat(path: str | os.PathLike, split: str | None = None) -> DatasetRecords:
    """Read a CVAT for images XML. ``split``: when images record a ``subset``, only that subset's images (an
    unknown one is an error); otherwise the name the records carry."""
    path, images, names, problems = _load(path)
    subsets = {i: _subset(im) for i, im in images}
    recorded = sorted({s for s in subsets.values() if s})
    if split is not None and recorded:

        key = normalize_split(split)
        if key not in recorded:
            raise DataError(f"{path}: no subset '{split}' among the images (available: {', '.join(recorded)})")
        return _records(path, [(i, im) for i, im in images if subsets[i] == key], names, problems, key)
    return _records(path, images, names, problems, split if split is not None else (recorded[0] if len(recorded) == 1 else None))


def read_cvat_splits(path: str | os.PathLike) -> dict[str, DatasetRecords]:
    """Every subset of the file (``{"all": ...}`` when none is recorded), sharing one class list; the file's
    problems are reported with the first. An image without a subset, in a file whose others have one, is an error."""
    path, images, names, problems = _load(path)
    subsets = {i: _subset(im) for i, im in images}
    recorded = {s for s in subsets.values() if s}
    if not recorded:
        return {"all": _records(path, images, names, problems, None)}

    for i, im in images:
        if not subsets[i]:
            problems.append(Problem(str(path), f"image {im.get('id', i)} ({im.get('name')}): no subset while other images have "
                                    "one; left out", "bad_image_entry"))
    order = sorted(recorded, key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER), s))
    return {s: _records(path, [(i, im) for i, im in images if subsets[i] == s], names, problems if k == 0 else [], s)
            for k, s in enumerate(order)}
