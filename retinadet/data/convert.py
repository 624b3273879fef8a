"""Write loaded splits in another format (``retinadet data convert``); images are copied
(hard-linked when possible) so the output folder is self-contained.

Layouts written (each readable by :func:`retinadet.data.discover.load_dataset`):
* coco: ``OUT/<train|valid|test>/_annotations.coco.json`` with images beside it (Roboflow)
* voc:  ``OUT/Annotations``, ``OUT/JPEGImages``, ``OUT/ImageSets/Main/<split>.txt``
* yolo: ``OUT/images/<split>``, ``OUT/labels/<split>``, ``OUT/data.yaml``
* csv:  ``OUT/<split>.csv``, ``OUT/classes.csv``, images in ``OUT/images/<split>``
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

from retinadet.data.discover import load_splits
from retinadet.data.formats.coco import ROBOFLOW_ANNOTATION_FILE, write_coco
from retinadet.data.formats.csv_format import write_csv
from retinadet.data.formats.voc import write_voc_xml
from retinadet.data.formats.yolo import yolo_lines
from retinadet.data.records import DatasetRecords, ImageRecord
from retinadet.errors import DataError

FORMATS = ("coco", "voc", "yolo", "csv")
ROBOFLOW_SPLIT_DIRS = {"val": "valid"}


def _place(src: Path, dst: Path) -> None:
    if not src.is_file():
        raise DataError(f"{src}: image file not found (cannot copy it to {dst.parent})")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _unique_names(records: list[ImageRecord], taken: set[str]) -> list[str]:
    """Output file names: the original name, made unique with a numeric prefix on collision."""
    names = []
    for r in records:
        name = r.path.name
        k = 1
        while name.lower() in taken:
            name = f"{k}_{r.path.name}"
            k += 1
        taken.add(name.lower())
        names.append(name)
    return names


def _with_paths(ds: DatasetRecords, paths: list[Path]) -> DatasetRecords:
    records = [ImageRecord(p, r.width, r.height, r.boxes, r.labels, r.crowd, r.image_id, r.source) for r, p in zip(ds.records, paths)]
    return DatasetRecords(records, ds.class_names, ds.category_ids, ds.problems, ds.root, ds.split, ds.format)


def write_dataset(splits: dict[str, DatasetRecords], out: str | os.PathLike, fmt: str) -> Path:
    if fmt not in FORMATS:
        raise DataError(f"unknown output format '{fmt}' (choose from {', '.join(FORMATS)})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = next(iter(splits.values())).class_names
    taken: set[str] = set()
    if fmt == "coco":
        for split, ds in splits.items():
            folder = out / ROBOFLOW_SPLIT_DIRS.get(split, split)
            files = _unique_names(ds.records, set())
            paths = [folder / f for f in files]
            for r, p in zip(ds.records, paths):
                _place(r.path, p)
            write_coco(_with_paths(ds, paths), folder / ROBOFLOW_ANNOTATION_FILE, image_root=folder)
    elif fmt == "voc":
        main = out / "ImageSets" / "Main"
        main.mkdir(parents=True, exist_ok=True)
        for split, ds in splits.items():
            files = _unique_names(ds.records, taken)
            for r, f in zip(ds.records, files):
                _place(r.path, out / "JPEGImages" / f)
                write_voc_xml(r, names, out / "Annotations" / (Path(f).stem + ".xml"), f)
            (main / f"{split}.txt").write_text("".join(Path(f).stem + "\n" for f in files))
    elif fmt == "yolo":
        data = {"path": ".", "names": {i: n for i, n in enumerate(names)}}
        for split, ds in splits.items():
            files = _unique_names(ds.records, set())
            for r, f in zip(ds.records, files):
                _place(r.path, out / "images" / split / f)
                label = out / "labels" / split / (Path(f).stem + ".txt")
                label.parent.mkdir(parents=True, exist_ok=True)
                label.write_text("".join(line + "\n" for line in yolo_lines(r)))
            data["train" if split == "all" else split] = f"images/{split}"  # data.yaml needs split keys
        (out / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    else:  # csv
        for split, ds in splits.items():
            files = _unique_names(ds.records, set())
            paths = [out / "images" / split / f for f in files]
            for r, p in zip(ds.records, paths):
                _place(r.path, p)
            write_csv(_with_paths(ds, paths), out / f"{split}.csv", out / "classes.csv", out)
    return out


def convert(src: str | os.PathLike, out: str | os.PathLike, fmt: str) -> dict[str, DatasetRecords]:
    """Load every split of ``src`` and write it to ``out`` in ``fmt``; returns the loaded splits."""

    splits = load_splits(src)
    write_dataset(splits, out, fmt)
    return splits
