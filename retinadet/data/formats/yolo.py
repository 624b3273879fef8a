"""YOLO txt: one ``class cx cy w h`` line per box (normalised), one file per image.

Labels sit in a ``labels/`` folder mirroring ``images/`` (Ultralytics, Roboflow, Label Studio: the label
file of ``.../images/x/a.jpg`` is ``.../labels/x/a.txt``) or beside their images (darknet, CVAT's
"YOLO 1.1": ``obj_train_data/a.jpg`` + ``a.txt``). Class names come from a yaml's ``names`` (a list or
{id: name}; Ultralytics' ``data.yaml``), a ``classes.txt`` or a darknet ``obj.names`` (one name per line).
A polygon line (``class x1 y1 x2 y2 ...``) becomes its bounding box; an image without a label file is a
negative.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from retinadet.data.images import image_size, is_image_file
from retinadet.data.records import DatasetRecords, ImageRecord, Problem, check_unique_ids, default_category_ids, sanitize_boxes
from retinadet.errors import DataError


def parse_names(names, where: str) -> list[str]:
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{where}: 'names' keys must be integers") from exc
        if keys != list(range(len(keys))):
            raise DataError(f"{where}: 'names' ids must be 0..K-1, got {keys}")
        return [str(names[k] if k in names else names[str(k)]) for k in keys]
    if isinstance(names, (list, tuple)):
        return [str(n) for n in names]
    raise DataError(f"{where}: 'names' must be a list or a mapping of id to name")


def label_path_for(image_path: Path) -> Path:
    parts = list(image_path.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image_path.with_suffix(".txt")


def list_images(source: Path) -> list[Path]:
    """Images of a split: a folder (recursive) or a .txt list of paths."""
    if source.is_dir():
        return sorted(p for p in source.rglob("*") if p.is_file() and is_image_file(p))
    if source.is_file() and source.suffix == ".txt":
        base = source.parent
        out = []
        for line in source.read_text().splitlines():
            line = line.strip()
            if line:
                p = Path(line)
                out.append(p if p.is_absolute() else base / p)
        return out
    raise DataError(f"{source}: YOLO image source not found (expected a folder of images or a .txt list)")


def read_names_file(path: Path) -> list[str]:
    """Class names of a ``classes.txt`` / ``obj.names`` (one per line, line k is class k).

    A ``class_name,id`` file (the CSV format's class file, also found as ``classes.txt``) gives its names
    in id order.
    """
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    pairs = [line.rsplit(",", 1) for line in lines]
    if lines and all(len(p) == 2 and p[1].strip().isdigit() for p in pairs):
        return [name.strip() for name, _ in sorted(pairs, key=lambda p: int(p[1]))]
    return lines


def is_yolo_line(line: str) -> bool:
    """``class cx cy w h`` or ``class x1 y1 x2 y2 ...`` with an integer class (what the sniffer accepts)."""
    fields = line.split()
    if len(fields) < 5 or (len(fields) > 5 and len(fields) % 2 == 0):
        return False
    try:
        values = [float(v) for v in fields]
    except ValueError:
        return False
    return values[0].is_integer() and values[0] >= 0


def read_yolo(source: str | os.PathLike, class_names: Sequence[str], split: str | None = None) -> DatasetRecords:
    """Images of a folder (recursive) or a .txt list, each with its label file by the Ultralytics rule."""
    source = Path(source)
    images = list_images(source)
    return read_yolo_images(images, [label_path_for(p) for p in images], class_names, split=split, root=source)


def read_yolo_images(images: Sequence[Path], label_files: Sequence[Path], class_names: Sequence[str],
                     split: str | None = None, root: Path | None = None) -> DatasetRecords:
    """Images with their label files (``label_files[i]`` of ``images[i]``; a missing one: a negative)."""
    class_names = list(class_names)
    problems: list[Problem] = []
    records = []
    for index, (image_path, label_file) in enumerate(zip(images, label_files)):
        try:
            width, height = image_size(image_path)
        except DataError as exc:
            problems.append(Problem(str(image_path), str(exc).split(": ", 1)[-1], "unreadable_image"))
            width = height = 0
        boxes, labels, where = [], [], []
        if label_file.is_file():
            for lineno, line in enumerate(label_file.read_text().splitlines(), start=1):
                fields = line.split()
                if not fields:
                    continue
                loc = f"line {lineno}"
                if len(fields) < 5 or (len(fields) > 5 and len(fields) % 2 == 0):
                    problems.append(Problem(str(label_file), f"{loc}: expected 'class cx cy w h' or a polygon, got {len(fields)} fields",
                                            "bad_annotation"))
                    continue
                try:
                    cls = int(float(fields[0]))
                    values = [float(v) for v in fields[1:]]
                except ValueError:
                    problems.append(Problem(str(label_file), f"{loc}: non-numeric field in {line.strip()!r}", "bad_annotation"))
                    continue
                if not 0 <= cls < len(class_names):
                    problems.append(Problem(str(label_file), f"{loc}: unknown class id {cls} (names has {len(class_names)})",
                                            "unknown_class"))
                    continue
                if len(values) == 4:
                    cx, cy, w, h = values
                    box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
                else:
                    xs, ys = values[0::2], values[1::2]
                    box = [min(xs), min(ys), max(xs), max(ys)]
                boxes.append([box[0] * width, box[1] * height, box[2] * width, box[3] * height])
                labels.append(cls)
                where.append(loc)
        b, keep = sanitize_boxes(np.array(boxes, dtype=np.float64).reshape(-1, 4), width, height, str(label_file), problems, where)
        records.append(ImageRecord(image_path, width, height, b[keep], np.array(labels, dtype=np.int64)[keep],
                                   np.zeros(int(keep.sum()), dtype=bool), index + 1, source=str(label_file)))
    check_unique_ids(records, problems)
    return DatasetRecords(records, class_names, default_category_ids(len(class_names)), problems,
                          root=root, split=split, format="yolo")


def yolo_lines(record: ImageRecord) -> list[str]:
    lines = []
    w, h = float(record.width), float(record.height)
    for (x1, y1, x2, y2), label in zip(record.boxes.tolist(), record.labels.tolist()):
        lines.append(f"{label} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}")
    return lines
