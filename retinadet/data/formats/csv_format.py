"""Two CSV formats, told apart by their first row (:func:`csv_kind`).

* keras-retinanet style: ``path,x1,y1,x2,y2,class_name`` rows plus a ``class_name,id`` file. A row with
  empty box fields (``img.jpg,,,,,``) declares an image without boxes. Paths are relative to the CSV
  file. Labels follow the ids of the class file.
* TensorFlow Object Detection CSV (Roboflow's export: ``train/_annotations.csv`` with the images beside
  it): a header ``filename,width,height,class,xmin,ymin,xmax,ymax`` (columns in any order), pixel
  coordinates. Class names are the sorted names found. A file whose coordinates all lie within 0..1 was
  written normalised (some converters do): it is scaled by each row's size, with a warning.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from retinadet.data.formats.named_boxes import ImageFinder, NamedBoxes, read_named_splits
from retinadet.data.images import image_size
from retinadet.data.records import DatasetRecords, ImageRecord, Problem, check_unique_ids, sanitize_boxes
from retinadet.errors import DataError

CLASS_FILE_NAMES = ("classes.csv", "class_names.csv", "class_map.csv", "classes.txt")
TF_CSV_HEADER = "filename,width,height,class,xmin,ymin,xmax,ymax"
# Header names each TF CSV column is known by.
TF_CSV_COLUMNS = {"filename": ("filename", "file_name", "image"), "class": ("class", "label"),
                  "xmin": ("xmin",), "ymin": ("ymin",), "xmax": ("xmax",), "ymax": ("ymax",),
                  "width": ("width",), "height": ("height",)}
TF_CSV_OPTIONAL = ("width", "height")


def _first_row(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        for row in csv.reader(f):
            if row and "".join(row).strip():
                return [v.strip() for v in row]
    return []


def tf_csv_columns(header: Sequence[str]) -> dict[str, int] | None:
    """Column index of each TF CSV field, or None when ``header`` is not a TF CSV header."""
    lowered = [h.strip().lower() for h in header]
    columns = {}
    for field, aliases in TF_CSV_COLUMNS.items():
        index = next((lowered.index(a) for a in aliases if a in lowered), None)
        if index is None and field not in TF_CSV_OPTIONAL:
            return None
        if index is not None:
            columns[field] = index
    return columns


def _is_number_or_empty(v: str) -> bool:
    try:
        float(v) if v.strip() else None
        return True
    except ValueError:
        return False


def csv_kind(path: Path) -> str | None:
    """``"tf"`` (TF Object Detection header), ``"retinanet"`` (``path,x1,y1,x2,y2,class_name`` rows) or None."""
    row = _first_row(path)
    if tf_csv_columns(row) is not None:
        return "tf"
    if len(row) == 6 and (row[1].lower() == "x1" or all(_is_number_or_empty(v) for v in row[1:5])):
        return "retinanet"
    return None


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
    """Either CSV format, by its first row (a class file only applies to the keras-retinanet one)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: CSV annotation file not found")
    if csv_kind(path) == "tf":
        return read_tf_csv(path, split=split)
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


def parse_tf_csv(path: Path, finder: ImageFinder, problems: list[Problem]) -> list[NamedBoxes]:
    """A TF Object Detection CSV as one :class:`NamedBoxes` per file name, in order of first appearance."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [(lineno, [v.strip() for v in row]) for lineno, row in enumerate(csv.reader(f), start=1)
                if row and "".join(row).strip()]
    if not rows:
        problems.append(Problem(str(path), "empty CSV file", "bad_annotation"))
        return []
    columns = tf_csv_columns(rows[0][1])
    if columns is None:
        problems.append(Problem(str(path), f"line {rows[0][0]}: expected the header {TF_CSV_HEADER!r}, got {','.join(rows[0][1])!r}",
                                "bad_annotation"))
        return []
    need = max(columns.values()) + 1
    items: dict[str, NamedBoxes] = {}
    entries = []  # (item, name, [xmin, ymin, xmax, ymax], line), scaled once the whole file is read
    for lineno, row in rows[1:]:
        loc = f"line {lineno}"
        if len(row) < need:
            problems.append(Problem(str(path), f"{loc}: expected {len(rows[0][1])} fields, got {len(row)}", "bad_annotation"))
            continue
        file = row[columns["filename"]]
        if not file:
            problems.append(Problem(str(path), f"{loc}: empty filename", "bad_annotation"))
            continue
        size = []
        for key in ("width", "height"):
            value = row[columns[key]] if key in columns else ""
            try:
                size.append(int(float(value)) if value else 0)
            except ValueError:
                problems.append(Problem(str(path), f"{loc}: {key} {value!r} is not a number", "bad_annotation"))
                size.append(0)
        item = items.get(file)
        if item is None:
            item = items[file] = NamedBoxes(finder.find_or_default(path, [file], stem=False), size[0], size[1], str(path))
        elif size[0] and size[1] and (item.width, item.height) != tuple(size) and item.width and item.height:
            problems.append(Problem(str(path), f"{loc}: size {size[0]}x{size[1]} of {file} differs from "
                                    f"{item.width}x{item.height} on an earlier line", "bad_annotation"))
        elif not (item.width and item.height):
            item.width, item.height = size
        name = row[columns["class"]]
        raw = [row[columns[k]] for k in ("xmin", "ymin", "xmax", "ymax")]
        if not name and not any(raw):
            continue  # a row that declares an image without boxes
        if not name:
            problems.append(Problem(str(path), f"{loc}: empty class for {file}", "bad_annotation"))
            continue
        try:
            coords = [float(v) if v else math.nan for v in raw]
        except ValueError:
            problems.append(Problem(str(path), f"{loc}: non-numeric coordinate in {raw}", "bad_annotation"))
            continue
        entries.append((item, name, coords, loc))
    if entries:
        coords = np.array([e[2] for e in entries], dtype=np.float64)
        finite = coords[np.isfinite(coords)]
        sizes = np.array([(e[0].width, e[0].height) for e in entries], dtype=np.float64)
        if finite.size and finite.min() >= 0 and finite.max() <= 1 and np.all(sizes > 1):
            problems.append(Problem(str(path), "every coordinate lies within 0..1: read as fractions of the image size",
                                    "normalized_coordinates", "warning"))
            coords = coords * np.tile(sizes, 2)
        for (item, name, _, loc), box in zip(entries, coords.tolist()):
            item.add(name, box, f"{loc} ({Path(item.image).name})")
    return list(items.values())


def read_tf_csv(path: str | os.PathLike, split: str | None = None, class_names: Sequence[str] | None = None,
                finder: ImageFinder | None = None) -> DatasetRecords:
    """A TF Object Detection CSV (images found beside it or in a sibling folder)."""
    path = Path(path)
    return read_named_splits({split: [path]}, parse_tf_csv, "tf_csv", path.parent, finder, class_names)[split]


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
