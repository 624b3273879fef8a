"""Find the format of a path and load it: ``load_dataset(path_or_yaml, split=...)``.

Accepted inputs:
* a COCO ``.json`` file, a CSV ``.csv`` file (class file beside it);
* a ``.txt`` list of image paths (what ``predict --source`` reads and ``retinadet rank`` writes): unlabelled
  images, each a negative, with no classes (``data convert ranking.txt --to coco`` hands them to a labelling tool);
* a dataset YAML (``path``, ``train``/``val``/``test`` sources, ``names``) -- YOLO's
  ``data.yaml`` is one; a source may be a folder of images (YOLO) or any other
  supported path (COCO json, VOC folder, CSV);
* a folder: VOC (``Annotations/``), Roboflow COCO (``train/ valid/ test/`` each with
  ``_annotations.coco.json``), COCO (``annotations/*.json``), YOLO (``data.yaml`` or
  ``images/`` + ``labels/`` + ``classes.txt``), or a folder holding one CSV;
* ``shapes`` or ``shapes-large`` (the built-in synthetic datasets, generated and cached on first use).
Split names are normalised: ``valid``/``validation`` -> ``val``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import yaml

from retinadet.data.formats.coco import ROBOFLOW_ANNOTATION_FILE, load_coco_json, read_coco, select_categories
from retinadet.data.formats.csv_format import read_csv
from retinadet.data.formats.voc import is_voc_root, list_voc_splits, read_voc
from retinadet.data.formats.yolo import parse_names, read_yolo
from retinadet.data.images import image_size
from retinadet.data.records import DatasetRecords, ImageRecord
from retinadet.data.shapes_large import ensure_large_shapes_dataset
from retinadet.data.synthetic import ensure_shapes_dataset
from retinadet.errors import DataError
from retinadet.utils.sources import list_sources

SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "test": "test",
                 "testing": "test", "trainval": "trainval"}
SPLIT_ORDER = ("train", "val", "test", "trainval")
# Names that stand for a generated dataset rather than a path (a folder of that name is shadowed).
BUILTIN_DATASETS = {"shapes": ensure_shapes_dataset, "shapes-large": ensure_large_shapes_dataset}


def normalize_split(name: str) -> str:
    return SPLIT_ALIASES.get(name.lower(), name)


def _coco_split_name(json_path: Path) -> str:
    # instances_train2017.json -> train; _annotations.coco.json in valid/ -> val
    if json_path.name == ROBOFLOW_ANNOTATION_FILE:
        return normalize_split(json_path.parent.name)
    stem = json_path.stem.lower().replace("instances_", "")
    for key in SPLIT_ALIASES:
        if stem.startswith(key):
            return SPLIT_ALIASES[key]
    return stem


def _load_coco_files(files: dict[str, Path]) -> dict[str, DatasetRecords]:
    """Several splits' COCO files with one shared class list."""
    datas = {split: load_coco_json(p) for split, p in files.items()}
    cats = select_categories(datas.values(), next(iter(files.values())))
    out = {}
    for split, p in files.items():
        out[split] = read_coco(p, categories=cats, split=split)
    return out


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"{path}: dataset YAML not found") from exc
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a mapping with train/val/test and names")
    return data


def _load_yaml_splits(path: Path) -> dict[str, DatasetRecords]:
    data = _read_yaml(path)
    base = Path(data["path"]) if data.get("path") else path.parent
    if not base.is_absolute():
        base = (path.parent / base).resolve()
    names = parse_names(data["names"], f"{path}: field 'names'") if "names" in data else None
    out = {}
    for key, value in data.items():
        if key not in SPLIT_ALIASES or value in (None, ""):
            continue
        sources = value if isinstance(value, list) else [value]
        parts = []
        for src in sources:
            src_path = Path(str(src))
            src_path = src_path if src_path.is_absolute() else base / src_path
            if not src_path.exists():
                raise DataError(f"{path}: field '{key}': {src_path} not found")
            if src_path.is_dir() and not is_voc_root(src_path) and not any(src_path.glob("*.json")) and not any(src_path.glob("*.csv")):
                if names is None:
                    raise DataError(f"{path}: field 'names' is required for YOLO image folders")
                parts.append(read_yolo(src_path, names, split=normalize_split(key)))
            elif src_path.suffix == ".txt":
                if names is None:
                    raise DataError(f"{path}: field 'names' is required for YOLO image lists")
                parts.append(read_yolo(src_path, names, split=normalize_split(key)))
            else:
                parts.append(load_dataset(src_path))
        ds = merge_datasets(parts, split=normalize_split(key))
        if names is not None and ds.class_names != names:
            if sorted(ds.class_names) != sorted(names) and not set(ds.class_names) <= set(names):
                raise DataError(f"{path}: field 'names' {names} does not match the classes of '{key}' {ds.class_names}")
            ds = remap_classes(ds, names)
        out[normalize_split(key)] = ds
    if not out:
        raise DataError(f"{path}: no train/val/test entries found")
    return out


def remap_classes(ds: DatasetRecords, names: list[str]) -> DatasetRecords:
    index = {n: i for i, n in enumerate(names)}
    lut = np.array([index[n] for n in ds.class_names], dtype=np.int64)
    records = [ImageRecord(r.path, r.width, r.height, r.boxes, lut[r.labels], r.crowd, r.image_id, r.source) for r in ds.records]
    return DatasetRecords(records, list(names), list(range(1, len(names) + 1)), ds.problems, ds.root, ds.split, ds.format)


def merge_datasets(parts: list[DatasetRecords], split: str | None = None) -> DatasetRecords:
    """Concatenate datasets with the same classes; image ids are renumbered if they collide."""
    if len(parts) == 1:
        parts[0].split = split if split is not None else parts[0].split
        return parts[0]
    names = parts[0].class_names
    for p in parts[1:]:
        if p.class_names != names:
            raise DataError(f"cannot merge datasets with different classes: {names} vs {p.class_names} ({p.root})")
    records = [r for p in parts for r in p.records]
    ids = [r.image_id for r in records]
    if len(set(ids)) != len(ids):
        # Within one part duplicates are real errors (already reported); across parts they are expected.
        records = [ImageRecord(r.path, r.width, r.height, r.boxes, r.labels, r.crowd, i + 1, r.source) for i, r in enumerate(records)]
    problems = [pr for p in parts for pr in p.problems]
    return DatasetRecords(records, list(names), list(parts[0].category_ids), problems, parts[0].root, split, parts[0].format)


def load_splits(path: str | os.PathLike) -> dict[str, DatasetRecords]:
    """Every split a path holds, as {split: DatasetRecords} ("all" when it has no splits)."""
    if str(path) in BUILTIN_DATASETS:
        path = BUILTIN_DATASETS[str(path)]()
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: dataset path not found")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".json":
            return _load_coco_files({_coco_split_name(path): path})
        if suffix in (".yaml", ".yml"):
            return _load_yaml_splits(path)
        if suffix == ".csv":
            return {"all": read_csv(path)}
        if suffix == ".txt":
            return {"all": read_image_list(path)}
        raise DataError(f"{path}: unknown annotation file type (expected .json, .yaml, .csv or a .txt list of images)")

    if is_voc_root(path):
        splits = [s for s in list_voc_splits(path) if s != "trainval"]
        if not splits:
            return {"all": read_voc(path)}
        names = read_voc(path, split=None).class_names if len(splits) > 1 else None
        return _sorted({normalize_split(s): read_voc(path, split=s, class_names=names) for s in splits})
    for name in ("data.yaml", "dataset.yaml", "data.yml", "dataset.yml"):
        if (path / name).is_file():
            return _load_yaml_splits(path / name)
    if (path / ROBOFLOW_ANNOTATION_FILE).is_file():
        return _load_coco_files({normalize_split(path.name): path / ROBOFLOW_ANNOTATION_FILE})
    roboflow = {normalize_split(d.name): d / ROBOFLOW_ANNOTATION_FILE for d in sorted(path.iterdir())
                if d.is_dir() and (d / ROBOFLOW_ANNOTATION_FILE).is_file()}
    if roboflow:
        return _sorted(_load_coco_files(roboflow))
    if (path / "annotations").is_dir():
        files = {_coco_split_name(p): p for p in sorted((path / "annotations").glob("*.json"))}
        if files:
            return _sorted(_load_coco_files(files))
    if (path / "images").is_dir() and (path / "labels").is_dir():
        classes = path / "classes.txt"
        if not classes.is_file():
            raise DataError(f"{path}: YOLO folder without data.yaml or classes.txt: class names unknown")
        names = [line.strip() for line in classes.read_text().splitlines() if line.strip()]
        subdirs = [d for d in sorted((path / "images").iterdir()) if d.is_dir()]
        if subdirs:
            return _sorted({normalize_split(d.name): read_yolo(d, names, split=normalize_split(d.name)) for d in subdirs})
        return {"all": read_yolo(path / "images", names)}
    csvs = [p for p in sorted(path.glob("*.csv")) if p.name not in ("classes.csv", "class_names.csv", "class_map.csv")]
    if csvs:
        return _sorted({normalize_split(p.stem): read_csv(p, split=normalize_split(p.stem)) for p in csvs})
    raise DataError(f"{path}: could not detect the dataset format (looked for VOC Annotations/, COCO json, "
                    f"Roboflow {ROBOFLOW_ANNOTATION_FILE}, YOLO data.yaml, CSV)")


def read_image_list(path: Path) -> DatasetRecords:
    """Unlabelled images from a .txt list of paths (relative ones to the list's folder): no boxes, no classes."""
    records = []
    for i, file in enumerate(list_sources(path)):
        try:
            width, height = image_size(file)
        except DataError:
            width = height = 0  # reported as a missing/unreadable image by check and the loader
        records.append(ImageRecord(Path(file), width, height, np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, bool), i + 1,
                                   source=str(path)))
    return DatasetRecords(records, [], [], root=path.parent, split="all", format="list")


def _sorted(splits: dict[str, DatasetRecords]) -> dict[str, DatasetRecords]:
    order = {s: i for i, s in enumerate(SPLIT_ORDER)}
    return dict(sorted(splits.items(), key=lambda kv: (order.get(kv[0], 99), kv[0])))


def load_dataset(path_or_yaml: str | os.PathLike, split: str | None = None) -> DatasetRecords:
    """Load one split (``train``/``val``/``test``; aliases accepted) or, with ``split=None``,
    all splits merged (image ids renumbered if they collide across splits)."""
    splits = load_splits(path_or_yaml)
    if split is None:
        return merge_datasets(list(splits.values()), split=None if len(splits) > 1 else next(iter(splits)))
    key = normalize_split(split)
    if key not in splits:
        if len(splits) == 1 and "all" in splits:
            raise DataError(f"{path_or_yaml}: has no splits; cannot select split '{split}' (use split=None)")
        raise DataError(f"{path_or_yaml}: no split '{split}' (available: {', '.join(splits)})")
    return splits[key]
