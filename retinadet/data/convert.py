"""Write loaded splits in another format (``retinadet data convert``); images are copied
(hard-linked when possible) so the output folder is self-contained.

Layouts written (each readable by :func:`retinadet.data.discover.load_dataset`):
* coco: ``OUT/<train|valid|test>/_annotations.coco.json`` with images beside it (Roboflow)
* voc:  ``OUT/Annotations``, ``OUT/JPEGImages``, ``OUT/ImageSets/Main/<split>.txt``
* yolo: ``OUT/images/<split>``, ``OUT/labels/<split>``, ``OUT/data.yaml``
* csv:  ``OUT/<split>.csv``, ``OUT/classes.csv``, images in ``OUT/images/<split>``
* labelstudio: ``OUT/tasks.json`` (every split, each task's ``data.split`` naming its own), ``OUT/label_config.xml``
  (the labeling interface, classes in order), images in ``OUT/images/<split>``. A task's ``data.image`` is
  ``/data/local-files/?d=images/<split>/<name>``: Label Studio serves it when started with
  ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true`` and ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=OUT`` and given a
  *Local files* storage at ``OUT/images`` (a root above OUT works too: the reader finds the images either way).
* cvat: ``OUT/annotations.xml`` (CVAT for images 1.1, each image's ``subset`` its split) and images in
  ``OUT/images`` (CVAT's own zip layout); names are made unique across splits.

Label Studio and CVAT have no crowd/difficult flag: such boxes are written as ordinary ones, with a warning.
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
from retinadet.data.records import DatasetRecords, ImageRecord, Problem
from retinadet.errors import DataError
from retinadet.utils.cvat_xml import ANNOTATIONS_FILE, CvatImage, annotations_xml
from retinadet.utils.files import atomic_write_text, write_json
from retinadet.utils.labelstudio import CONFIG_FILE, SPLIT_FIELD, TASKS_FILE, label_config, labelstudio_task, local_files_url

FORMATS = ("coco", "voc", "yolo", "csv", "labelstudio", "cvat")
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
    elif fmt in ("labelstudio", "cvat"):
        _write_labelling_tool(splits, out, fmt, names)
    else:  # csv
        for split, ds in splits.items():
            files = _unique_names(ds.records, set())
            paths = [out / "images" / split / f for f in files]
            for r, p in zip(ds.records, paths):
                _place(r.path, p)
            write_csv(_with_paths(ds, paths), out / f"{split}.csv", out / "classes.csv", out)
    return out


def _write_labelling_tool(splits: dict[str, DatasetRecords], out: Path, fmt: str, names: list[str]) -> None:
    """Label Studio tasks or a CVAT XML for every split, images copied under ``OUT/images``."""
    tasks, images, taken = [], [], set()
    for split, ds in splits.items():
        files = _unique_names(ds.records, taken if fmt == "cvat" else set())
        crowd = 0
        for r, f in zip(ds.records, files):
            if not (r.width and r.height):
                raise DataError(f"{r.path}: image size unknown (missing or unreadable image); {fmt} needs it")
            dst = out / "images" / (f if fmt == "cvat" else f"{split}/{f}")
            _place(r.path, dst)
            crowd += int(r.crowd.sum())
            subset = None if split == "all" else split
            if fmt == "labelstudio":
                tasks.append(labelstudio_task(local_files_url(dst, out), r.width, r.height, r.boxes.tolist(), r.labels.tolist(),
                                              names, extra_data={SPLIT_FIELD: subset} if subset else None))
            else:
                images.append(CvatImage(f, r.width, r.height, r.boxes.tolist(), r.labels.tolist(), subset=subset))
        if crowd:
            ds.problems.append(Problem(str(out), f"{split}: {crowd} crowd/difficult box(es) written as ordinary boxes ({fmt} "
                                       "has no such flag)", "crowd_dropped", "warning"))
    if fmt == "labelstudio":
        write_json(out / TASKS_FILE, tasks)
        atomic_write_text(out / CONFIG_FILE, label_config(names))
    else:
        atomic_write_text(out / ANNOTATIONS_FILE, annotations_xml(images, names, task_name=out.name or "retinadet"))


def convert(src: str | os.PathLike, out: str | os.PathLike, fmt: str) -> dict[str, DatasetRecords]:
    """Load every split of ``src`` and write it to ``out`` in ``fmt``; returns the loaded splits."""

    splits = load_splits(src)
    write_dataset(splits, out, fmt)
    return splits
