"""Find the format of a path and load it: ``load_dataset(path_or_yaml, split=...)``, ``load_splits(path)``.

Accepted inputs:
* an annotation file, its format told by its content: COCO, LabelMe, CreateML or Label Studio ``.json``; VOC or
  CVAT ``.xml``; a ``.csv`` (TF Object Detection with its header, or ``path,x1,y1,x2,y2,class_name`` with a class
  file beside it);
* a ``.txt`` list of image paths (what ``predict --source`` reads and ``retinadet rank`` writes): unlabelled
  images, each a negative, with no classes (``data convert ranking.txt --to coco`` hands them to a labelling tool);
* a dataset YAML (``path``, ``train``/``val``/``test`` sources, ``names``) -- YOLO's ``data.yaml`` is one; a
  source may be a folder of images (YOLO) or any other supported path. Sources follow Ultralytics' rule
  (``../train/images`` that does not exist is ``train/images``: Roboflow's YOLO export);
* a folder, read by content wherever the files sit (:mod:`retinadet.data.formats.sniff`): a ``data.yaml`` at
  its top whose sources exist; else COCO JSON anywhere, CVAT XML, Label Studio JSON, CreateML JSON, VOC XML
  (the devkit's ``Annotations/`` + ``JPEGImages/`` + ``ImageSets/Main``, XML beside the images, or XML
  beside an image folder), LabelMe JSON, YOLO txt (``labels/`` mirroring ``images/``, or beside the images;
  names from ``classes.txt``, ``obj.names`` or any yaml with ``names``), TF Object Detection CSV, our CSV.
  When two are present the first is read and the other named in a warning. Nothing readable: one error saying
  what was found, the closest layout and what it is missing;
* ``shapes`` or ``shapes-large`` (the built-in synthetic datasets, generated and cached on first use).

Splits of a folder: train/valid/val/test/training/validation/testing folders (any case), then VOC
``ImageSets/Main``, then split files (``train.txt`` ...), then the folder's own name, else one split ``all``
(training carves its validation images out of it). Names are normalised: ``valid``/``validation`` -> ``val``.
Images of the folder that no loaded annotation names are counted in a warning.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import yaml

from retinadet.data.formats.coco import load_coco_json, read_coco, select_categories
from retinadet.data.formats.createml import parse_createml_file, read_createml
from retinadet.data.formats.csv_format import parse_tf_csv, read_csv
from retinadet.data.formats.cvat import read_cvat_splits
from retinadet.data.formats.labelme import parse_labelme_file, read_labelme
from retinadet.data.formats.labelstudio import read_labelstudio_splits
from retinadet.data.formats.named_boxes import ImageFinder, read_named_splits
from retinadet.data.formats.sniff import (
    PER_IMAGE_FORMATS,
    Inventory,
    Layout,
    file_split,
    folder_split,
    json_kind,
    sniff,
    xml_kind,
)
from retinadet.data.formats.splits import SPLIT_ALIASES, SPLIT_ORDER, normalize_split  # noqa: F401 - re-exported
from retinadet.data.formats.voc import is_voc_root, parse_voc_xml, read_voc_files
from retinadet.data.formats.yolo import parse_names, read_yolo, read_yolo_images
from retinadet.data.images import image_size
from retinadet.data.records import DatasetRecords, ImageRecord, Problem
from retinadet.data.shapes_large import ensure_large_shapes_dataset
from retinadet.data.synthetic import ensure_shapes_dataset
from retinadet.errors import DataError
from retinadet.utils.sources import list_sources

__all__ = ["SPLIT_ALIASES", "SPLIT_ORDER", "BUILTIN_DATASETS", "normalize_split", "load_splits", "load_dataset",
           "merge_datasets", "remap_classes", "read_image_list"]

# Names that stand for a generated dataset rather than a path (a folder of that name is shadowed).
BUILTIN_DATASETS = {"shapes": ensure_shapes_dataset, "shapes-large": ensure_large_shapes_dataset}
YAML_NAMES = ("data.yaml", "dataset.yaml", "data.yml", "dataset.yml")


def _load_coco_groups(groups: dict[str, list[Path]]) -> dict[str, DatasetRecords]:
    """COCO files per split (several files of one split are merged), with one class list for all."""
    files = [p for ps in groups.values() for p in ps]
    parsed = {p: load_coco_json(p) for p in files}  # each file parsed once (100k images: 1.5-2 s and a copy saved)
    cats = select_categories(list(parsed.values()), files[0])
    return {split: merge_datasets([read_coco(p, categories=cats, split=split, data=parsed[p]) for p in ps], split=split)
            for split, ps in groups.items()}


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


def _yaml_base(path: Path, data: dict) -> Path:
    base = Path(data["path"]) if data.get("path") else path.parent
    return base if base.is_absolute() else (path.parent / base).resolve()


def _yaml_source(base: Path, src) -> Path:
    """A yaml split source by Ultralytics' rule: relative to ``path``; a ``../x`` that does not exist is taken as
    ``x`` (Roboflow's YOLO export writes ``train: ../train/images`` in the data.yaml at its top)."""
    text = str(src)
    src_path = Path(text) if Path(text).is_absolute() else base / text
    if not src_path.exists() and text.startswith("../") and (base / text[3:]).exists():
        return base / text[3:]
    return src_path


def _yaml_splits(data: dict) -> dict[str, list]:
    return {key: value if isinstance(value, list) else [value] for key, value in data.items()
            if key in SPLIT_ALIASES and value not in (None, "")}


def _yaml_resolves(path: Path) -> bool:
    """Whether a dataset yaml has split entries that all exist (else the folder is read by content)."""
    data = _read_yaml(path)
    base = _yaml_base(path, data)
    sources = [src for srcs in _yaml_splits(data).values() for src in srcs]
    return bool(sources) and all(_yaml_source(base, src).exists() for src in sources)


def _load_yaml_splits(path: Path) -> dict[str, DatasetRecords]:
    data = _read_yaml(path)
    base = _yaml_base(path, data)
    names = parse_names(data["names"], f"{path}: field 'names'") if "names" in data else None
    out = {}
    for key, sources in _yaml_splits(data).items():
        parts = []
        for src in sources:
            src_path = _yaml_source(base, src)
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
    records = [r.replaced(labels=lut[r.labels]) for r in ds.records]  # sizes not read yet stay unread
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
        records = [r.replaced(image_id=i + 1) for i, r in enumerate(records)]
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
        return _sorted(_load_file(path))
    for name in YAML_NAMES:
        if (path / name).is_file() and _yaml_resolves(path / name):
            return _load_yaml_splits(path / name)
    layout, inventory = sniff(path)
    return _sorted(_load_layout(layout, inventory))


def _load_file(path: Path) -> dict[str, DatasetRecords]:
    """One annotation file, its format told by its content (COCO/LabelMe/CreateML/Label Studio JSON, VOC/CVAT XML,
    either CSV), a dataset YAML or a .txt list of images."""
    suffix = path.suffix.lower()
    split = file_split(path, path.parent) or folder_split(path.parent.name) or "all"
    if suffix in (".yaml", ".yml"):
        return _load_yaml_splits(path)
    if suffix == ".csv":
        return {split: read_csv(path, split=split)}
    if suffix == ".txt":
        return {"all": read_image_list(path)}
    if suffix == ".json":
        kind, detail = json_kind(path)
        if kind == "coco":
            return _load_coco_groups({split: [path]})
        if kind == "labelme":
            return {split: read_labelme(path, split=split)}
        if kind == "createml":
            return {split: read_createml(path, split=split)}
        if kind == "labelstudio":
            return _split_named(read_labelstudio_splits(path), split)
        if kind == "invalid":
            raise DataError(f"{path}: {detail}")
        raise DataError(f"{path}: not a known annotation JSON ({detail}); expected COCO ('images' and 'annotations'), "
                        "LabelMe ('shapes' and 'imagePath'), CreateML or Label Studio")
    if suffix == ".xml":
        kind, detail = xml_kind(path)
        if kind == "voc":
            return {split: read_voc_files([path], split=split)}
        if kind == "cvat":
            return _split_named(read_cvat_splits(path), split)
        raise DataError(f"{path}: not a VOC (<annotation>) or CVAT (<annotations>) XML file ({detail})")
    raise DataError(f"{path}: unknown annotation file type (expected .json, .xml, .yaml, .csv or a .txt list of images)")


def _split_named(splits: dict[str, DatasetRecords], split: str) -> dict[str, DatasetRecords]:
    """A file's own splits, or, when it records none (``all``), the split its path names."""
    if list(splits) == ["all"] and split != "all":
        ds = splits["all"]
        ds.split = split
        return {split: ds}
    return splits


def unify_classes(parts: list[DatasetRecords]) -> list[DatasetRecords]:
    """Parts read one by one (files of a format with its own class order), given one class list: the first
    part's order, then the names only later parts have."""
    names: list[str] = []
    for p in parts:
        names += [n for n in p.class_names if n not in names]
    return [p if p.class_names == names else remap_classes(p, names) for p in parts]


def _merge_per_split(parts: list[tuple[str, DatasetRecords]]) -> dict[str, DatasetRecords]:
    unified = unify_classes([ds for _, ds in parts])
    grouped: dict[str, list[DatasetRecords]] = {}
    for (split, _), ds in zip(parts, unified):
        grouped.setdefault(split, []).append(ds)
    return {split: merge_datasets(ds, split=split) for split, ds in grouped.items()}


def _load_layout(layout: Layout, inventory: Inventory) -> dict[str, DatasetRecords]:
    """Read what :func:`sniff` found, check that the images are there, and report the layout's notes."""
    fmt, root = layout.format, inventory.root
    finder = ImageFinder(inventory.of("image"), root=root)
    parsers = {"voc": parse_voc_xml, "labelme": parse_labelme_file, "createml": parse_createml_file, "tf_csv": parse_tf_csv}
    if fmt == "coco":
        splits = _load_coco_groups(layout.splits)
    elif fmt in parsers:
        splits = read_named_splits(layout.splits, parsers[fmt], fmt, layout.voc_root or root, finder)
    elif fmt == "yolo":
        splits = {split: read_yolo_images(images, [layout.label_files[im] for im in images], layout.class_names, split=split,
                                          root=root) for split, images in layout.splits.items()}
    elif fmt == "csv":
        splits = _merge_per_split([(split, read_csv(f, split=split)) for split, fs in layout.splits.items() for f in fs])
    else:  # cvat, labelstudio: each file may record its own splits
        reader = read_cvat_splits if fmt == "cvat" else read_labelstudio_splits
        parts = [(s, ds) for split, fs in layout.splits.items() for f in fs for s, ds in _split_named(reader(f), split).items()]
        splits = _merge_per_split(parts)
    records = [r for ds in splits.values() for r in ds.records]
    if fmt in PER_IMAGE_FORMATS and records and not any(os.path.isfile(r.path) for r in records):
        raise inventory.error(layout.title, f"the images: none of the {len(records)} the annotations name was found beside "
                                            f"them or in a sibling folder (e.g. {records[0].path})")
    notes = list(layout.notes)
    # Images of per-image files left out of the splits are in the notes already: YOLO's units are the images,
    # an XML or LabelMe file shares its image's stem.
    left_out = layout.left_out()
    accounted = {os.path.abspath(r.path) for r in records} | {os.path.abspath(p) for p in left_out}
    said_by_stem = {(os.path.abspath(p.parent.parent), p.stem) for p in left_out}
    unused = [p for p in inventory.of("image") if os.path.abspath(p) not in accounted
              and (os.path.abspath(p.parent.parent), p.stem) not in said_by_stem]
    if unused:
        notes.append(Problem(str(root), f"{len(unused)} image(s) not loaded: named by no annotation that was read "
                             f"(in {inventory.folders_text(unused)})", "unused_image", "warning"))
    if splits and notes:
        first = next(iter(_sorted(splits).values()))
        first.problems[:0] = notes
    return splits


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
