"""Boxes keyed by class name, before a class list is fixed, and the image an annotation file names.

Formats that do not list their classes (VOC XML, LabelMe, CreateML, TF Object Detection CSV) are parsed into
:class:`NamedBoxes`, one per image. Their class list is the sorted names of every split together, so that
all splits of a dataset share one list; :func:`read_named_splits` parses each split's files once, fixes the
list and builds the records.

:class:`ImageFinder` resolves the image an annotation refers to (a file name, a path written on another
machine, or only the annotation's own stem) beside the annotation file or in a sibling folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retinadet.data.images import image_size, is_image_file
from retinadet.data.records import DatasetRecords, ImageRecord, Problem, check_unique_ids, default_category_ids, sanitize_boxes
from retinadet.errors import DataError

# Sibling folders that usually hold the images, tried before the others.
IMAGE_FOLDER_NAMES = ("jpegimages", "images", "imgs", "img", "image")


@dataclass
class NamedBoxes:
    """One image's boxes (absolute xyxy pixels) with their class names."""

    image: Path
    width: int
    height: int
    source: str  # the annotation file, for messages
    names: list[str] = field(default_factory=list)
    boxes: list[list[float]] = field(default_factory=list)
    crowd: list[bool] = field(default_factory=list)
    where: list[str] = field(default_factory=list)  # names each box in messages ("object 2 (dog)")

    def add(self, name: str, box: Sequence[float], where: str, crowd: bool = False) -> None:
        self.names.append(name)
        self.boxes.append([float(v) for v in box])
        self.crowd.append(bool(crowd))
        self.where.append(where)


def read_json_annotation(path: Path, problems: list[Problem]) -> Any | None:
    """A per-image annotation JSON (LabelMe, CreateML), or None with the reason recorded as a problem of ``path``."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        problems.append(Problem(str(path), f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", "bad_annotation"))
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem(str(path), f"cannot read: {exc}", "bad_annotation"))
    return None


def sorted_class_names(items: Iterable[NamedBoxes]) -> list[str]:
    return sorted({n for it in items for n in it.names})


def named_to_dataset(items: Sequence[NamedBoxes], class_names: Sequence[str], problems: list[Problem], root: Path | None,
                     split: str | None, fmt: str) -> DatasetRecords:
    """Records from parsed images: names become labels (an unknown name is a problem), boxes are sanitised."""
    class_names = list(class_names)
    label_of = {n: i for i, n in enumerate(class_names)}
    records = []
    for index, item in enumerate(items):
        width, height = item.width, item.height
        if width <= 0 or height <= 0:
            try:
                width, height = image_size(item.image)
            except DataError:
                width = height = 0  # reported as a missing/unreadable image by check and the loader
        labels = np.array([label_of.get(n, -1) for n in item.names], dtype=np.int64)
        for k in np.flatnonzero(labels < 0):
            problems.append(Problem(item.source, f"{item.where[k]}: unknown class '{item.names[k]}'", "unknown_class"))
        known = labels >= 0
        boxes = np.array(item.boxes, dtype=np.float64).reshape(-1, 4)[known]
        where = [w for w, ok in zip(item.where, known) if ok]
        b, keep = sanitize_boxes(boxes, width, height, item.source, problems, where)
        crowd = np.array(item.crowd, dtype=bool).reshape(-1)[known]
        records.append(ImageRecord(item.image, width, height, b[keep], labels[known][keep], crowd[keep], index + 1,
                                   source=item.source))
    check_unique_ids(records, problems)
    return DatasetRecords(records, class_names, default_category_ids(len(class_names)), problems, root=root, split=split,
                          format=fmt)


ParseFile = Callable[[Path, "ImageFinder", list[Problem]], list[NamedBoxes]]


def read_named_splits(groups: Mapping[str | None, Sequence[Path]], parse: ParseFile, fmt: str, root: Path | None,
                      finder: ImageFinder | None = None, class_names: Sequence[str] | None = None
                      ) -> dict[str | None, DatasetRecords]:
    """Parse every split's annotation files once; one class list for all (sorted names unless given)."""
    finder = finder if finder is not None else ImageFinder(root=root)
    parsed: dict[str | None, tuple[list[NamedBoxes], list[Problem]]] = {}
    for split, files in groups.items():
        problems: list[Problem] = []
        items = [item for f in files for item in parse(Path(f), finder, problems)]
        parsed[split] = (items, problems)
    names = list(class_names) if class_names is not None else sorted_class_names(it for items, _ in parsed.values() for it in items)
    return {split: named_to_dataset(items, names, problems, root, split, fmt) for split, (items, problems) in parsed.items()}


@dataclass
class _Folder:
    by_name: dict[str, Path] = field(default_factory=dict)
    by_lower: dict[str, Path] = field(default_factory=dict)
    by_stem: dict[str, Path] = field(default_factory=dict)  # lower-case stem -> first image with it

    def add(self, path: Path) -> None:
        self.by_name.setdefault(path.name, path)
        self.by_lower.setdefault(path.name.lower(), path)
        self.by_stem.setdefault(path.stem.lower(), path)

    def get(self, name: str) -> Path | None:
        return self.by_name.get(name) or self.by_lower.get(name.lower())


class ImageFinder:
    """The image an annotation names: beside the annotation file, in a subfolder of its folder, in a sibling
    folder (``JPEGImages/``, ``images/`` first), in the parent folder; never outside ``root``.

    Built from a folder walk that listed every image (``images``), lookups never touch the disk and a file
    name unique in the whole walk is found wherever it sits; without one, folders are listed on first use.
    """

    def __init__(self, images: Iterable[Path] | None = None, root: Path | None = None):
        self._complete = images is not None
        self.root = Path(root) if root is not None else None
        self._folders: dict[Path, _Folder] = {}
        self._children: dict[Path, list[Path]] = {}
        self._anywhere: dict[str, list[Path]] = {}
        for p in images or ():
            p = Path(p)
            self._folders.setdefault(p.parent, _Folder()).add(p)
            self._anywhere.setdefault(p.name.lower(), []).append(p)
        if self._complete:
            for folder in self._folders:
                for child, parent in zip([folder, *folder.parents], folder.parents):
                    self._children.setdefault(parent, [])
                    if child not in self._children[parent]:
                        self._children[parent].append(child)

    def _within(self, folder: Path) -> bool:
        return self.root is None or folder == self.root or self.root in folder.parents

    def _folder(self, folder: Path) -> _Folder:
        if folder not in self._folders:
            index = _Folder()
            if not self._complete and self._within(folder):
                try:
                    with os.scandir(folder) as entries:
                        for e in sorted(entries, key=lambda e: e.name):
                            if e.is_file() and is_image_file(e.name):
                                index.add(Path(e.path))
                except OSError:
                    pass  # a folder that cannot be listed holds no image we can use
            self._folders[folder] = index
        return self._folders[folder]

    def _subfolders(self, folder: Path) -> list[Path]:
        """Child folders, the usual image folder names first."""
        if folder not in self._children:
            found = []
            if not self._complete and self._within(folder):
                try:
                    with os.scandir(folder) as entries:
                        found = [Path(e.path) for e in entries if e.is_dir() and not e.name.startswith(".")]
                except OSError:
                    pass
            self._children[folder] = found
        rank = {n: i for i, n in enumerate(IMAGE_FOLDER_NAMES)}
        return sorted(self._children[folder], key=lambda d: (rank.get(d.name.lower(), len(rank)), d.name))

    def search_folders(self, annotation: Path) -> list[Path]:
        folder = annotation.parent
        order = [folder, *self._subfolders(folder), *(d for d in self._subfolders(folder.parent) if d != folder), folder.parent]
        return [d for d in order if self._within(d)]

    def default_folder(self, annotation: Path) -> Path:
        """Where a missing image is reported to be: a usual image folder beside or below the annotation if one exists."""
        for d in self.search_folders(annotation)[1:]:
            if d.name.lower() in IMAGE_FOLDER_NAMES:
                return d
        return annotation.parent

    def find(self, annotation: Path, references: Sequence[str | None], stem: bool = True) -> Path | None:
        """The first image found for ``references`` (paths or names, in order), then (``stem``) for the
        annotation's own stem: a per-image file such as ``a.xml`` names ``a.jpg`` even when its fields are wrong."""
        folders = self.search_folders(annotation)
        names = []
        for ref in references:
            if not ref:
                continue
            ref = str(ref).strip().replace("\\", "/")
            if os.path.isabs(ref) and os.path.isfile(ref):
                return Path(ref)
            # A relative path is taken as written from the annotation's folder (LabelMe's "../images/a.jpg"),
            # then from its parent (a CSV's "images/a.jpg" one level up), within the root.
            for base in (annotation.parent, annotation.parent.parent):
                candidate = Path(os.path.normpath(base / ref))
                if base == annotation.parent or self._within(candidate.parent):
                    hit = self._folder(candidate.parent).get(candidate.name)
                    if hit is not None:
                        return hit
            names.append(ref.rsplit("/", 1)[-1])
        for name in names:
            for d in folders:
                hit = self._folder(d).get(name)
                if hit is not None:
                    return hit
        for d in folders if stem else ():
            hit = self._folder(d).by_stem.get(annotation.stem.lower())
            if hit is not None:
                return hit
        for name in names:  # a name that only one image in the whole walk has
            same = self._anywhere.get(name.lower(), [])
            if len(same) == 1:
                return same[0]
        return None

    def find_or_default(self, annotation: Path, references: Sequence[str | None], stem: bool = True) -> Path:
        found = self.find(annotation, references, stem)
        if found is not None:
            return found
        name = next((str(r).replace("\\", "/").rsplit("/", 1)[-1] for r in references if r), annotation.stem + ".jpg")
        return self.default_folder(annotation) / name
