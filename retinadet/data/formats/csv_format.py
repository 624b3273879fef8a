"""CSV (keras-retinanet style): ``path,x1,y1,x2,y2,class_name`` rows plus a ``class_name,id`` file.

A row with empty box fields (``img.jpg,,,,,``) declares an image without boxes.
Paths are relative to the CSV file. Labels follow the ids of the class file.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

from retinadet.data.images import image_size
from retinadet.data.records import DatasetRecords, ImageRecord, Problem, check_unique_ids, sanitize_boxes
from retinadet.errors import DataError

CLASS_FILE_NAMES = ("classes.csv", "class_names.csv", "class_map.csv", "classes.txt")


def find_class_file(csv_path: Path) -> Path | None:
    for name in CLASS_FILE_NAMES:
        p = csv_path.parent / name
        if p.is_file() and p != csv_path:
            return p
    return None


def read_class_file(path: Path) -> tuple[list[str], list[int]]:
    pairs = []
    with open(path, newline="", encoding="utf-8") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 2:
                raise DataError(f"{path}: line {lineno}: expected 'class_name,id', got {row}")
            try:
                pairs.append((int(row[1]), row[0].strip()))
            except ValueError as exc:
                if lineno == 1:
                    continue  # header row
                raise DataError(f"{path}: line {lineno}: id {row[1]!r} is not an integer") from exc
    if not pairs:
        raise DataError(f"{path}: no classes found")
    ids = [i for i, _ in pairs]
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: duplicate class ids")
    pairs.sort()
    return [n for _, n in pairs], [i for i, _ in pairs]


def read_csv(path: str | os.PathLike, class_file: str | os.PathLike | None = None, split: str | None = None) -> DatasetRecords:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: CSV annotation file not found")
    class_file = Path(class_file) if class_file is not None else find_class_file(path)
    if class_file is None:
        raise DataError(f"{path}: no class file found next to it (one of {', '.join(CLASS_FILE_NAMES)} with 'class_name,id' rows)")
    names, ids = read_class_file(class_file)
    label_of = {n: i for i, n in enumerate(names)}
    problems: list[Problem] = []
    per_image: dict[str, list] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 6:
                problems.append(Problem(str(path), f"line {lineno}: expected 6 fields 'path,x1,y1,x2,y2,class_name', got {len(row)}",
                                        "bad_annotation"))
                continue
            if lineno == 1 and row[1].strip().lower() == "x1":
                continue  # header row
            file = row[0].strip()
            entries = per_image.setdefault(file, [])
            if all(not v.strip() for v in row[1:]):
                continue
            name = row[5].strip()
            if name not in label_of:
                problems.append(Problem(str(path), f"line {lineno}: unknown class '{name}' for {file}", "unknown_class"))
                continue
            try:
                coords = [float(v) if v.strip() else math.nan for v in row[1:5]]
            except ValueError:
                problems.append(Problem(str(path), f"line {lineno}: non-numeric coordinate in {row[1:5]}", "bad_annotation"))
                continue
            entries.append((coords, label_of[name], f"line {lineno}"))


    records = []
    for index, (file, entries) in enumerate(per_image.items()):
        image_path = Path(file) if Path(file).is_absolute() else path.parent / file
        try:
            width, height = image_size(image_path)
        except DataError:
            width = height = 0  # reported by check / the loader as missing or unreadable
        boxes = np.array([e[0] for e in entries], dtype=np.float64).reshape(-1, 4)
        b, keep = sanitize_boxes(boxes, width, height, str(path), problems, [f"{e[2]} ({file})" for e in entries])
        labels = np.array([e[1] for e in entries], dtype=np.int64)
        records.append(ImageRecord(image_path, width, height, b[keep], labels[keep], np.zeros(int(keep.sum()), bool),
                                   index + 1, source=str(path)))
    check_unique_ids(records, problems)
    return DatasetRecords(records, names, ids, problems, root=path.parent, split=split, format="csv")


def write_csv(ds: DatasetRecords, csv_path: Path, class_path: Path, image_root: Path) -> None:
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        for r in ds.records:
            rel = os.path.relpath(r.path, image_root)
            if r.num_boxes == 0:
                w.writerow([rel, "", "", "", "", ""])
            for box, label in zip(r.boxes.tolist(), r.labels.tolist()):
                w.writerow([rel, *(round(v, 3) for v in box), ds.class_names[label]])
    with open(class_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        for name, cid in zip(ds.class_names, ds.category_ids):
            w.writerow([name, cid])
