"""Which dataset a folder holds, told by the files' content wherever they sit.

:func:`scan` walks the folder once (hidden folders skipped) and sorts the files by kind; :func:`sniff` then
reads only what tells formats apart: the first element of a few XML files per folder, a few JSON files per
folder (a large one only by its first megabyte), the first row of each CSV and the first lines of a few
``.txt`` per folder. It returns a :class:`Layout` (the format, the annotation files of each split) or raises
one :class:`DataError` saying what was found, which layout comes closest and what that layout is missing.

JSON: COCO (an object with ``images`` and ``annotations``), LabelMe (``shapes`` and ``imagePath``), CreateML
(a list of ``{image, annotations}``), Label Studio (tasks with ``data`` and ``annotations``/``predictions``).
XML: ``<annotation>`` is VOC, ``<annotations>`` holding ``<image>`` is CVAT. CSV: by the header. ``.txt``:
YOLO lines, in a ``labels/`` folder mirroring ``images/`` or beside the images.

Splits, first rule that applies: folders named train/valid/val/test/training/validation/testing (any case;
also darknet's ``obj_<split>_data``); VOC's ``ImageSets/Main``; split files (``train.txt``, ``val.txt``,
``test.txt`` listing images or stems); the name of the folder itself; otherwise one split ``all``. A file
that holds a whole split (COCO, CSV, CreateML, ...) is also named by its stem (``instances_val2017.json``).
"""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from retinadet.data.formats.createml import is_createml
from retinadet.data.formats.csv_format import CLASS_FILE_NAMES, csv_kind, find_class_file
from retinadet.data.formats.cvat import is_cvat_xml
from retinadet.data.formats.labelme import is_labelme
from retinadet.data.formats.labelstudio import is_labelstudio_export
from retinadet.data.formats.splits import SPLIT_ALIASES, SPLIT_ORDER, normalize_split
from retinadet.data.formats.voc import list_voc_splits, voc_split_files
from retinadet.data.formats.yolo import is_yolo_line, parse_names, read_names_file
from retinadet.data.images import is_image_file
from retinadet.data.records import Problem
from retinadet.errors import DataError

# A split named inside a file's stem: instances_val2017, train_annotations, labels-test (not "latest").
_STEM_SPLIT = re.compile(r"(?:^|[^a-z])(trainval|training|train|validation|valid|val|testing|test)(?:[^a-z]|$)")
_DARKNET_SPLIT_FOLDER = re.compile(r"^obj_([a-z]+)_data$")  # CVAT's "YOLO 1.1": obj_train_data/
ROBOFLOW_PREFIX = "_annotations"  # _annotations.coco.json, _annotations.csv, _annotations.createml.json

SKIP_FOLDERS = {"__MACOSX", "__pycache__"}
SUFFIX_KINDS = {".xml": "xml", ".json": "json", ".txt": "txt", ".csv": "csv", ".yaml": "yaml", ".yml": "yaml", ".names": "names"}
SAMPLE = 3  # files per folder whose content is read to tell its format
FULL_PARSE_BYTES = 32 << 20  # larger JSON files are sniffed by their first megabyte
HEAD_BYTES = 1 << 20
NOT_LABEL_TXT = {"classes.txt", "labels.txt", "notes.txt", "license.txt"}
PRECEDENCE = ("coco", "cvat", "labelstudio", "createml", "voc", "labelme", "yolo", "tf_csv", "csv")
PER_IMAGE_FORMATS = ("voc", "labelme", "createml", "tf_csv")
FORMAT_TITLES = {"coco": "COCO JSON", "cvat": "CVAT XML", "labelstudio": "Label Studio JSON", "createml": "CreateML JSON",
                 "voc": "Pascal VOC", "labelme": "LabelMe JSON", "yolo": "YOLO", "tf_csv": "TF Object Detection CSV",
                 "csv": "CSV (path,x1,y1,x2,y2,class_name)"}
NAMES_SOURCES = "classes.txt, obj.names or a yaml with names"


def folder_split(name: str) -> str | None:
    """The split a folder's name stands for (``Train``, ``VALID``, ``obj_test_data``), or None."""
    lowered = name.lower()
    if lowered in SPLIT_ALIASES:
        return SPLIT_ALIASES[lowered]
    m = _DARKNET_SPLIT_FOLDER.match(lowered)
    return SPLIT_ALIASES.get(m.group(1)) if m else None


def stem_split(stem: str) -> str | None:
    m = _STEM_SPLIT.search(stem.lower())
    return SPLIT_ALIASES[m.group(1)] if m else None


@dataclass
class Inventory:
    """Every file under ``root`` of a kind that matters, sorted, by kind (image, xml, json, txt, csv, yaml, names)."""

    root: Path
    files: dict[str, list[Path]]
    folders: set[Path]

    def of(self, kind: str) -> list[Path]:
        return self.files.get(kind, [])

    def by_folder(self, kind: str) -> dict[Path, list[Path]]:
        out: dict[Path, list[Path]] = {}
        for p in self.of(kind):
            out.setdefault(p.parent, []).append(p)
        return out

    def rel(self, path: Path) -> str:
        rel = path.relative_to(self.root).as_posix() if path != self.root else "."
        return rel + "/" if path in self.folders and rel != "." else rel

    def folders_text(self, files: list[Path], limit: int = 3) -> str:
        """``labels/train 150, labels/val 62, +2 more folders``."""
        counts = Counter(p.parent for p in files)
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
        text = ", ".join(f"{self.rel(d) if d != self.root else 'top folder'} {n}" for d, n in ranked[:limit])
        more = len(ranked) - limit
        return text + (f", +{more} more folder{'s' if more > 1 else ''}" if more > 0 else "")

    def describe(self) -> str:
        parts = []
        for kind, label in (("image", "images"), ("xml", ".xml"), ("json", ".json"), ("txt", ".txt"), ("csv", ".csv")):
            files = self.of(kind)
            parts.append(f"{len(files)} {label}" + (f" ({self.folders_text(files)})" if files else ""))
        return ", ".join(parts)

    def error(self, closest: str, missing: str) -> DataError:
        return DataError(f"{self.root}: could not detect the dataset format; found: {self.describe()}; "
                         f"closest: {closest}; missing: {missing}")


def scan(root: Path) -> Inventory:
    """One walk of ``root``: hidden files and folders (and macOS/Python clutter) skipped, symlink loops cut."""
    files: dict[str, list[Path]] = {}
    folders: set[Path] = set()
    seen: set[str] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        real = os.path.realpath(folder)
        if real in seen:
            continue
        seen.add(real)
        folders.add(folder)
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError:
            continue  # an unreadable folder holds nothing we can load
        for e in entries:
            if e.name.startswith(".") or e.name in SKIP_FOLDERS:
                continue
            try:
                if e.is_dir():
                    stack.append(Path(e.path))
                    continue
                if not e.is_file():
                    continue
            except OSError:
                continue
            if is_image_file(e.name):
                files.setdefault("image", []).append(Path(e.path))
            else:
                kind = SUFFIX_KINDS.get(os.path.splitext(e.name)[1].lower())
                if kind:
                    files.setdefault(kind, []).append(Path(e.path))
    return Inventory(root, {k: sorted(v) for k, v in files.items()}, folders)


@dataclass
class Layout:
    """What :func:`sniff` decided: a format and its annotation files per split (YOLO: its images)."""

    format: str
    title: str  # "YOLO (212 label .txt in labels/train 150, labels/val 62)", for messages
    splits: dict[str, list[Path]]
    label_files: dict[Path, Path] = field(default_factory=dict)  # YOLO: image -> its label file
    class_names: list[str] | None = None  # YOLO
    voc_root: Path | None = None  # VOC devkit: the folder holding Annotations/ and ImageSets/
    notes: list[Problem] = field(default_factory=list)  # warnings about the layout, reported with the first split
    units: list[Path] = field(default_factory=list)  # per-image formats: every file found, read or not

    def left_out(self) -> list[Path]:
        """Per-image files in no split (the notes already say so)."""
        kept = {p for files in self.splits.values() for p in files}
        return [p for p in self.units if p not in kept]


@dataclass
class Candidate:
    format: str
    title: str
    files: int  # annotation files it would read: the closest unreadable layout is the one with most
    missing: str | None = None
    layout: Layout | None = None


# ----------------------------------------------------------------------------- reading a little of each file


def json_kind(path: Path) -> tuple[str, str]:
    """(coco | labelme | createml | labelstudio | unknown | invalid, detail for messages)."""
    try:
        size = path.stat().st_size
        if size > FULL_PARSE_BYTES:
            with open(path, "rb") as f:
                head = f.read(HEAD_BYTES).decode("utf-8", errors="ignore").lstrip("\ufeff \t\r\n")
            if head.startswith("{"):
                if '"images"' in head and '"file_name"' in head:
                    return "coco", ""
                if '"shapes"' in head and '"imagePath"' in head:
                    return "labelme", ""
                return "unknown", f"a {size >> 20} MB JSON object"
            if head.startswith("["):
                start = len(head) - len(head[1:].lstrip())
                try:
                    first, _ = json.JSONDecoder().raw_decode(head, start)
                except ValueError:
                    return "unknown", f"a {size >> 20} MB JSON list"
                return object_kind([first])
            return "invalid", "not JSON"
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except json.JSONDecodeError as exc:
        return "invalid", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
    except (OSError, UnicodeDecodeError) as exc:
        return "invalid", f"cannot read: {exc}"
    return object_kind(obj)


def object_kind(obj) -> tuple[str, str]:
    """The format of parsed JSON; an unreadable one is ``near:<format>`` when it has that format's main field."""
    if isinstance(obj, dict) and isinstance(obj.get("images"), list) and isinstance(obj.get("annotations"), list):
        return "coco", ""
    if is_labelme(obj):
        return "labelme", ""
    if is_createml(obj):
        return "createml", ""
    if is_labelstudio_export(obj):
        return "labelstudio", ""
    if isinstance(obj, dict):
        keys = ", ".join(repr(k) for k in list(obj)[:6])
        near = "coco" if "images" in obj else "labelme" if "shapes" in obj else None
        return (f"near:{near}" if near else "unknown"), f"an object with keys {keys}"
    if isinstance(obj, list):
        first = obj[0] if obj else None
        if isinstance(first, dict):
            keys = ", ".join(repr(k) for k in list(first)[:6])
            near = "createml" if "image" in first else "labelstudio" if "data" in first else None
            return (f"near:{near}" if near else "unknown"), f"a list of {len(obj)} objects with keys {keys}"
        return "unknown", f"a list of {len(obj)} items"
    return "unknown", f"a JSON {type(obj).__name__}"


def xml_kind(path: Path) -> tuple[str, str]:
    """(voc | cvat | unknown | invalid, detail): VOC by the root tag alone; CVAT parsed to confirm."""
    try:
        with open(path, "rb") as f:
            tag = next((elem.tag for _, elem in ET.iterparse(f, events=("start",))), None)
    except (ET.ParseError, OSError) as exc:
        return "invalid", f"invalid XML: {exc}"
    tag = (tag or "").rsplit("}", 1)[-1]
    if tag == "annotation":
        return "voc", ""
    if tag == "annotations":
        try:
            if is_cvat_xml(ET.parse(path).getroot()):
                return "cvat", ""
        except ET.ParseError as exc:
            return "invalid", f"invalid XML: {exc}"
    return "unknown", f"root element <{tag}>"


def _first_lines(path: Path, n: int = 5) -> list[str]:
    lines = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.strip():
                    lines.append(line.strip())
                    if len(lines) == n:
                        break
    except OSError:
        pass
    return lines


def _sample(files: list[Path], kind_of, bulk: str) -> list[tuple[Path, str, str]]:
    """(file, kind, detail) for each file of one folder: the first SAMPLE are read; when one of them is of the
    ``bulk`` kind (a folder of per-image files), the rest are taken to be so too (reported when read if not)."""
    out = [(p, *kind_of(p)) for p in files[:SAMPLE]]
    if any(k == bulk for _, k, _ in out):
        return out + [(p, bulk, "") for p in files[SAMPLE:]]
    return out + [(p, *kind_of(p)) for p in files[SAMPLE:]]


# ----------------------------------------------------------------------------- splits


def path_split(path: Path, root: Path) -> str | None:
    """The split of the innermost folder between ``root`` and ``path`` that names one."""
    for part in reversed(path.parent.relative_to(root).parts):
        split = folder_split(part)
        if split:
            return split
    return None


def file_split(path: Path, root: Path) -> str | None:
    """The split of a file holding a whole split: its folders, its stem, a Roboflow export's folder."""
    split = path_split(path, root)
    if split is None:
        split = stem_split(path.name.split(".", 1)[0] if path.name.startswith(ROBOFLOW_PREFIX) else path.stem)
    if split is None and path.name.startswith(ROBOFLOW_PREFIX) and path.parent != root:
        split = normalize_split(path.parent.name)  # Roboflow names each split's folder; keep any name (data convert's)
    return split


@dataclass
class SplitList:
    path: Path
    split: str
    entries: list[str]


def find_split_lists(inv: Inventory) -> list[SplitList]:
    """``train.txt``/``val.txt``/``test.txt`` (any alias) listing images or stems, outside VOC's ImageSets."""
    lists = []
    for p in inv.of("txt"):
        split = SPLIT_ALIASES.get(p.stem.lower())
        if split is None or any(part.lower() == "imagesets" for part in p.relative_to(inv.root).parts):
            continue
        lines = [line.split()[0] for line in p.read_text(encoding="utf-8", errors="replace").splitlines()
                 if line.strip() and not line.startswith("#")]
        if lines and not is_yolo_line(lines[0]):
            lists.append(SplitList(p, split, lines))
    if any(s.split in ("train", "val") for s in lists):
        lists = [s for s in lists if s.split != "trainval"]  # trainval is train + val: the two are used
    return lists


def _match_lists(units: list[Path], lists: list[SplitList], inv: Inventory) -> tuple[dict[str, list[Path]], list[Problem]]:
    """Units per split by the split files, matched by file name or stem (an XML or LabelMe file shares its
    image's stem; a list may give paths of the labelling machine or stems, as VOC's do)."""
    by_name: dict[str, list[Path]] = {}
    by_stem: dict[str, list[Path]] = {}
    for u in units:
        by_name.setdefault(u.name.lower(), []).append(u)
        by_stem.setdefault(u.stem.lower(), []).append(u)
    order = {s: i for i, s in enumerate(SPLIT_ORDER)}
    assigned: dict[Path, str] = {}
    notes, conflicts = [], 0
    for lst in sorted(lists, key=lambda s: (order.get(s.split, 99), str(s.path))):
        unmatched = []
        for entry in lst.entries:
            entry = entry.replace("\\", "/")
            name = entry.rsplit("/", 1)[-1].lower()
            hits = by_name.get(name) or by_stem.get(name) or by_stem.get(name.rsplit(".", 1)[0]) or []
            if len(hits) > 1:  # the same name in several folders: the one whose path ends like the entry
                tail = [p.lower() for p in entry.split("/") if p not in ("", ".", "..")][:-1]
                hits = [h for h in hits if [p.lower() for p in h.parent.parts[len(h.parent.parts) - len(tail):]] == tail] or hits[:1]
            if not hits:
                unmatched.append(entry)
                continue
            if assigned.setdefault(hits[0], lst.split) != lst.split:
                conflicts += 1
        if unmatched:
            notes.append(Problem(str(lst.path), f"{len(unmatched)} listed image(s) not found (first: {unmatched[0]})",
                                 "missing_file", "warning"))
    if conflicts:
        notes.append(Problem(str(inv.root), f"{conflicts} image(s) listed in several split files: kept in the first "
                             f"(order {', '.join(SPLIT_ORDER)})", "duplicate_file", "warning"))
    splits: dict[str, list[Path]] = {}
    for u in units:
        if u in assigned:
            splits.setdefault(assigned[u], []).append(u)
    return splits, notes


def assign_splits(units: list[Path], inv: Inventory, lists: list[SplitList] | None = None,
                  what: str = "annotation file") -> tuple[dict[str, list[Path]], list[Problem]]:
    """Per-image units by folder names, else split files, else the folder's own name, else ``all``."""
    by_folder = {u: path_split(u, inv.root) for u in units}
    if any(by_folder.values()):
        splits: dict[str, list[Path]] = {}
        for u, s in by_folder.items():
            if s:
                splits.setdefault(s, []).append(u)
        left = [u for u, s in by_folder.items() if not s]
        notes = []
        if left:
            notes.append(Problem(str(inv.root), f"{len(left)} {what}(s) outside the split folders ({', '.join(splits)}) "
                                 f"not read (in {inv.folders_text(left)})", "outside_splits", "warning"))
        return splits, notes
    lists = find_split_lists(inv) if lists is None else lists
    notes = []
    if lists:
        splits, notes = _match_lists(units, lists, inv)
        if splits:
            kept = {u for us in splits.values() for u in us}
            left = [u for u in units if u not in kept]
            if left:
                notes.append(Problem(str(inv.root), f"{len(left)} {what}(s) in no split file "
                                     f"({', '.join(inv.rel(s.path) for s in lists)}) not read (in {inv.folders_text(left)})",
                                     "outside_splits", "warning"))
            return splits, notes
    return {folder_split(inv.root.name) or "all": list(units)}, notes  # split files that match nothing: said, and unused


def whole_file_splits(files: list[Path], inv: Inventory) -> dict[str, list[Path]]:
    """Files that each hold a split (or part of one), by :func:`file_split`; those whose path names no split are
    read together as ``all`` (or as the split the folder's own name is)."""
    splits: dict[str, list[Path]] = {}
    for f in files:
        splits.setdefault(file_split(f, inv.root) or folder_split(inv.root.name) or "all", []).append(f)
    return splits


# ----------------------------------------------------------------------------- one candidate per format


def _classified(inv: Inventory, kind: str, kind_of, bulk: str) -> list[tuple[Path, str, str]]:
    return [entry for files in inv.by_folder(kind).values() for entry in _sample(files, kind_of, bulk)]


def _count(files: list[Path], inv: Inventory, what: str) -> str:
    return f"{len(files)} {what} in {inv.folders_text(files)}"


# What an unreadable JSON of each near-format lacks.
_JSON_MISSING = {
    "coco": ("COCO JSON", "an 'annotations' list"),
    "labelme": ("LabelMe JSON", "'imagePath' (and a 'shapes' list)"),
    "createml": ("CreateML JSON", "an 'annotations' list in each {'image': ...} entry"),
    "labelstudio": ("Label Studio JSON", "'annotations' or 'predictions' in each task"),
}


def _closest_json(inv: Inventory, entries: list[tuple[Path, str, str]]) -> list[Candidate]:
    """One candidate per way JSON files fell short: invalid, near a format, or of no known shape."""
    groups: dict[str, list[tuple[Path, str]]] = {}
    for path, kind, detail in entries:
        groups.setdefault(kind, []).append((path, detail))
    out = []
    for kind, found in groups.items():
        files = [p for p, _ in found]
        first, detail = inv.rel(found[0][0]), found[0][1]
        if kind == "invalid":
            out.append(Candidate("json", f"JSON annotations ({_count(files, inv, '.json')})", len(files),
                                 f"valid JSON ({first}: {detail})"))
        elif kind.startswith("near:"):
            title, lacks = _JSON_MISSING[kind[5:]]
            out.append(Candidate(kind[5:], f"{title} ({_count(files, inv, '.json')})", len(files), f"{lacks} ({first}: {detail})"))
        else:
            out.append(Candidate("json", f"JSON of no known format ({_count(files, inv, '.json')})", 0,
                                 f"the fields of a known format: COCO 'images'+'annotations', LabelMe 'shapes'+'imagePath', "
                                 f"CreateML [{{'image', 'annotations'}}], Label Studio [{{'data', 'annotations'}}] "
                                 f"({first}: {detail})"))
    return out


def _json_candidates(inv: Inventory, lists: list[SplitList]) -> list[Candidate]:
    entries = _classified(inv, "json", json_kind, "labelme")
    out = []
    coco = [p for p, k, _ in entries if k == "coco"]
    if coco:
        # COCO's annotations/ also holds captions_* and person_keypoints_*: where instances_* is, only it is read.
        keep, notes = [], []
        for folder, files in _group(coco).items():
            instances = [f for f in files if f.stem.lower().startswith("instances")]
            if instances and len(instances) < len(files):
                skipped = [f.name for f in files if f not in instances]
                notes.append(Problem(str(folder), f"read the instances_* files only; left out {', '.join(skipped)}",
                                     "other_annotations", "warning"))
            keep += instances or files
        title = f"COCO JSON ({_count(keep, inv, 'file(s)')})"
        out.append(Candidate("coco", title, len(keep), layout=Layout("coco", title, whole_file_splits(keep, inv), notes=notes)))
    for fmt in ("labelstudio", "createml", "labelme"):
        files = [p for p, k, _ in entries if k == fmt]
        if not files:
            continue
        title = f"{FORMAT_TITLES[fmt]} ({_count(files, inv, 'file(s)')})"
        if fmt == "labelme":
            splits, notes = assign_splits(files, inv, lists=lists)
        else:
            splits, notes = whole_file_splits(files, inv), []
        units = files if fmt == "labelme" else []
        out.append(Candidate(fmt, title, len(files), layout=Layout(fmt, title, splits, notes=notes, units=units)))
    out += _closest_json(inv, [e for e in entries if e[1] in ("unknown", "invalid") or e[1].startswith("near:")])
    return out


def _group(files: list[Path]) -> dict[Path, list[Path]]:
    out: dict[Path, list[Path]] = {}
    for f in files:
        out.setdefault(f.parent, []).append(f)
    return out


def _xml_candidates(inv: Inventory, lists: list[SplitList]) -> list[Candidate]:
    entries = _classified(inv, "xml", xml_kind, "voc")
    out = []
    cvat = [p for p, k, _ in entries if k == "cvat"]
    if cvat:
        title = f"CVAT XML ({_count(cvat, inv, 'file(s)')})"
        out.append(Candidate("cvat", title, len(cvat), layout=Layout("cvat", title, whole_file_splits(cvat, inv))))
    voc = [p for p, k, _ in entries if k == "voc"]
    if voc:
        out.append(_voc_candidate(voc, inv, lists))
    other = [(p, d) for p, k, d in entries if k in ("unknown", "invalid")]
    if other and not voc and not cvat:
        p, detail = other[0]
        out.append(Candidate("voc", f"Pascal VOC ({_count([q for q, _ in other], inv, '.xml')})", len(other),
                             f"an <annotation> root element ({inv.rel(p)}: {detail})"))
    return out


def _voc_candidate(xmls: list[Path], inv: Inventory, lists: list[SplitList]) -> Candidate:
    title = f"Pascal VOC ({_count(xmls, inv, '.xml')})"
    folders = {p.parent for p in xmls}
    devkit = next(iter(folders)).parent if len(folders) == 1 and next(iter(folders)).name.lower() == "annotations" else None
    if devkit is not None and not any(path_split(p, inv.root) for p in xmls):
        names = [s for s in list_voc_splits(devkit) if s != "trainval"]
        if names:
            splits = {normalize_split(s): voc_split_files(devkit, s) for s in names}
            listed = {p for files in splits.values() for p in files}
            left = [p for p in xmls if p not in listed]
            notes = [Problem(str(devkit / "ImageSets" / "Main"), f"{len(left)} XML file(s) of Annotations/ are in no split "
                             f"({', '.join(names)}); not read", "outside_splits", "warning")] if left else []
            return Candidate("voc", title, len(xmls), layout=Layout("voc", title, splits, voc_root=devkit, notes=notes, units=xmls))
    splits, notes = assign_splits(xmls, inv, lists=lists)
    return Candidate("voc", title, len(xmls), layout=Layout("voc", title, splits, notes=notes, units=xmls))


def _mirror(inv: Inventory, folder: Path, src: str, dst: str, index: dict[tuple[Path, str], Path]) -> Path | None:
    """``folder`` with its innermost ``src`` component (under root, any case) swapped for an existing ``dst`` sibling."""
    parts = folder.relative_to(inv.root).parts
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].lower() == src:
            base = inv.root.joinpath(*parts[:i])
            sibling = index.get((base, dst))
            return sibling.joinpath(*parts[i + 1:]) if sibling is not None else None
    return None


def _yolo_verdict(files: list[Path]) -> bool | None:
    """Whether a folder's .txt files hold YOLO lines: a majority of the first non-empty ones (None: all empty)."""
    good = bad = 0
    for p in files[:20]:
        lines = _first_lines(p)
        if not lines:
            continue
        if all(is_yolo_line(line) for line in lines):
            good += 1
        else:
            bad += 1
        if good + bad == SAMPLE:
            break
    return None if good + bad == 0 else good > bad


def _names_files(inv: Inventory) -> dict[Path, list[Path]]:
    """Per folder, the files that may hold class names, the likeliest first (a yaml, data.yaml before others)."""
    out: dict[Path, list[Path]] = {}
    for p in inv.of("yaml") + inv.of("names") + [t for t in inv.of("txt") if t.name.lower() == "classes.txt"]:
        out.setdefault(p.parent, []).append(p)
    for files in out.values():
        files.sort(key=lambda p: (p.suffix.lower() not in (".yaml", ".yml"), p.name.lower() != "data.yaml", p.name))
    return out


def _names_near(folder: Path, inv: Inventory, files: dict[Path, list[Path]],
                cache: dict[Path, tuple[Path, list[str]] | None]) -> tuple[Path, list[str]] | None:
    """Class names from the nearest folder, ``folder`` up to the root, holding a yaml with ``names``, a
    ``classes.txt`` or a ``*.names`` file."""
    d = folder
    while True:
        if d not in cache:
            cache[d] = next(((p, n) for p in files.get(d, []) if (n := _names_from(p))), None)
        if cache[d] is not None or d == inv.root or inv.root not in d.parents:
            return cache[d]
        d = d.parent


def _names_from(path: Path) -> list[str] | None:
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, OSError, UnicodeDecodeError):
            return None  # a broken yaml is one without names; the message lists what was looked for
        if isinstance(data, dict) and data.get("names"):
            return parse_names(data["names"], f"{path}: field 'names'")
        return None
    names = read_names_file(path)
    return names or None


def _yolo_candidate(inv: Inventory, lists: list[SplitList]) -> Candidate | None:
    images_by_folder = inv.by_folder("image")
    listed = {s.path for s in lists}
    index = {(f.parent, f.name.lower()): f for f in inv.folders}
    label_folders: dict[Path, list[Path]] = {}
    for folder, files in inv.by_folder("txt").items():
        labels = [f for f in files if f not in listed and f.name.lower() not in NOT_LABEL_TXT and not f.name.lower().startswith("readme")]
        if not labels:
            continue
        under_labels = any(part.lower() == "labels" for part in folder.relative_to(inv.root).parts)
        stems = {p.stem for p in images_by_folder.get(folder, [])}
        verdict = _yolo_verdict(labels)
        if verdict or (verdict is None and (under_labels or any(f.stem in stems for f in labels))):
            label_folders[folder] = labels
    pairs: dict[Path, Path] = {}  # image folder -> label folder
    lonely = []
    for lf in label_folders:
        mirror = _mirror(inv, lf, "labels", "images", index)
        if mirror is not None and mirror in images_by_folder:
            pairs[mirror] = lf
        elif lf in images_by_folder:
            pairs[lf] = lf
        else:
            lonely.append(lf)
    for imf in images_by_folder:  # images/<split> whose labels/<split> exists but is empty: all negatives
        mirror = _mirror(inv, imf, "images", "labels", index)
        if imf not in pairs and mirror is not None and mirror in inv.folders:
            pairs[imf] = mirror
    all_labels = [f for files in label_folders.values() for f in files]
    if not all_labels and not pairs:
        return None
    title = f"YOLO ({_count(all_labels, inv, 'label .txt')})" if all_labels else "YOLO (empty labels/ folders)"
    if not pairs:
        return Candidate("yolo", title, len(all_labels),
                         "the images (no image files beside the .txt files, nor in an images/ folder mirroring labels/)")
    cache: dict[Path, tuple[Path, list[str]] | None] = {}
    names_files = _names_files(inv)
    found = {}
    for imf, lf in pairs.items():
        hit = _names_near(lf, inv, names_files, cache) or _names_near(imf, inv, names_files, cache)
        if hit is not None:
            found[hit[0]] = hit[1]
    if not found:
        return Candidate("yolo", title, len(all_labels), f"class names ({NAMES_SOURCES}, beside labels/ or above it)")
    if len({tuple(n) for n in found.values()}) > 1:
        (a, na), (b, nb) = list(found.items())[:2]
        raise DataError(f"{inv.root}: YOLO class names differ: {inv.rel(a)} {na} vs {inv.rel(b)} {nb}")
    names_file, names = next(iter(found.items()))
    images, label_of, notes = [], {}, []
    orphans = []
    for imf, lf in sorted(pairs.items()):
        ims = images_by_folder[imf]
        for im in ims:
            label_of[im] = lf / (im.stem + ".txt")
        images += ims
        stems = {im.stem for im in ims}
        orphans += [f for f in label_folders.get(lf, []) if f.stem not in stems]
    if orphans:
        notes.append(Problem(str(orphans[0]), f"{len(orphans)} label file(s) without an image, not read "
                             f"(in {inv.folders_text(orphans)})", "orphan_label", "warning"))
    splits, split_notes = assign_splits(images, inv, lists=lists, what="image")
    title = f"{title}, names from {inv.rel(names_file)}"
    return Candidate("yolo", title, len(all_labels),
                     layout=Layout("yolo", title, splits, label_files=label_of, class_names=names, notes=notes + split_notes,
                                   units=images))


def _csv_candidates(inv: Inventory) -> list[Candidate]:
    kinds = {p: csv_kind(p) for p in inv.of("csv") if p.name.lower() not in CLASS_FILE_NAMES}
    out = []
    tf = [p for p, k in kinds.items() if k == "tf"]
    if tf:
        title = f"{FORMAT_TITLES['tf_csv']} ({_count(tf, inv, 'file(s)')})"
        out.append(Candidate("tf_csv", title, len(tf), layout=Layout("tf_csv", title, whole_file_splits(tf, inv))))
    ours = [p for p, k in kinds.items() if k == "retinanet"]
    if ours:
        title = f"{FORMAT_TITLES['csv']} ({_count(ours, inv, 'file(s)')})"
        without = [p for p in ours if find_class_file(p) is None]
        if without:
            out.append(Candidate("csv", title, len(ours), f"a class file beside {inv.rel(without[0])} "
                                 f"(one of {', '.join(CLASS_FILE_NAMES)} with 'class_name,id' rows)"))
        else:
            out.append(Candidate("csv", title, len(ours), layout=Layout("csv", title, whole_file_splits(ours, inv))))
    other = [p for p, k in kinds.items() if k is None]
    if other and not out:
        out.append(Candidate("csv", f"CSV ({_count(other, inv, 'file(s)')})", len(other),
                             f"a header '{'filename,width,height,class,xmin,ymin,xmax,ymax'}' (TF Object Detection) or rows "
                             f"'path,x1,y1,x2,y2,class_name' ({inv.rel(other[0])} starts with something else)"))
    return out


def sniff(root: Path, inv: Inventory | None = None) -> tuple[Layout, Inventory]:
    """The layout under ``root`` (see the module docstring), or the one-line error of what is missing."""
    inv = inv or scan(root)
    lists = find_split_lists(inv)
    candidates = _json_candidates(inv, lists) + _xml_candidates(inv, lists) + _csv_candidates(inv)
    yolo = _yolo_candidate(inv, lists)
    if yolo is not None:
        candidates.append(yolo)
    rank = {f: i for i, f in enumerate(PRECEDENCE)}
    readable = sorted((c for c in candidates if c.layout is not None), key=lambda c: rank[c.format])
    if readable:
        chosen = readable[0].layout
        for other in readable[1:]:
            chosen.notes.append(Problem(str(inv.root), f"also found {other.title}; read {chosen.title} "
                                        "(point at a subfolder or file to choose)", "other_format", "warning"))
        return chosen, inv
    if candidates:
        closest = max(candidates, key=lambda c: c.files)
        raise inv.error(closest.title, closest.missing or "")
    images = inv.of("image")
    if images:
        raise inv.error(f"unlabelled images ({inv.folders_text(images)})",
                        "annotations: VOC .xml, COCO/LabelMe/CreateML/Label Studio .json, CVAT .xml, YOLO .txt "
                        "(in labels/ or beside the images) or a .csv")
    raise inv.error("nothing", "images and annotations (the folder holds no image, XML, JSON, txt or CSV file)")
