"""Label Studio exports: the "JSON" export (a list of tasks) and the "JSON-MIN" one (a flat item per annotation).

Boxes are ``rectanglelabels`` regions (also ``labels`` regions with a geometry, from a ``Rectangle`` plus
``Labels`` interface), in percent of the image (``x``/``y`` the top-left corner before rotation), turned into
pixels of the image file (or of ``original_width``/``original_height`` when the file is not found).
``polygonlabels`` regions become their bounding box. A rotated rectangle (``value.rotation``, degrees clockwise
about its top-left corner) becomes its axis-aligned bounding box, with a warning. Other region types (choices,
keypoints, brushes, text) are counted in one warning and left out.

Which annotation: a task with several annotations (several annotators, or one corrected twice) is read from
its **last annotation that was not cancelled** (``was_cancelled``: the annotator skipped the task), in the
order of the export. A task with no such annotation (only predictions, or every annotation cancelled) has not
been reviewed: it is left out, with a warning, rather than loaded as an image without findings. An annotation
with an empty result is a reviewed negative. In JSON-MIN the last item of a task id wins.

Images: the task's ``data.image`` (or the only image-like field of ``data``) is resolved, first found wins, as
a local path as it is, then relative to the JSON's folder; a ``/data/local-files/?d=REL`` URL under
``$LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` and under the JSON's folder (REL and its trailing parts); the
``data.source`` path retinadet's writers add; then by file name in the JSON's folder, an ``images/`` folder
beside the JSON and one beside its folder, each with and without the 8-character prefix Label Studio gives
uploads (``/data/upload/1/abc12345-a.jpg`` -> ``a.jpg``). A URL is looked up by its file name.

Classes: in the order of the ``label_config.xml`` beside the JSON (what retinadet writes; Label Studio's own
export does not carry the interface), then any other names found, sorted. Without the file, the sorted names.

Splits: a task's ``data.split`` (written by ``data convert --to labelstudio``) names its split;
``read_labelstudio(path, split)`` selects those tasks, :func:`read_labelstudio_splits` reads them all.
"""

from __future__ import annotations

import json
import math
import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np

from retinadet.data.formats.splits import SPLIT_ORDER, normalize_split
from retinadet.data.images import IMAGE_EXTENSIONS, image_size
from retinadet.data.records import DatasetRecords, ImageRecord, Problem, check_unique_ids, default_category_ids, sanitize_boxes
from retinadet.errors import DataError
from retinadet.utils.labelstudio import CONFIG_FILE, DATA_KEY, DOCUMENT_ROOT_ENV, SOURCE_FIELD, SPLIT_FIELD

# Label Studio prefixes an uploaded file's name with the first 8 hex digits of a uuid4 and '-'.
UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-(.+)$")
BOX_TYPES = ("rectanglelabels", "labels", "rectangle")
POLYGON_TYPES = ("polygonlabels", "polygon")


# ----------------------------------------------------------------------------- sniffing


def _is_full_task(item) -> bool:
    return isinstance(item, dict) and isinstance(item.get("data"), dict) and any(
        isinstance(item.get(k), list) for k in ("annotations", "predictions", "completions"))


def _is_region(value) -> bool:
    return isinstance(value, dict) and all(k in value for k in ("x", "y", "width", "height")) or (
        isinstance(value, dict) and "points" in value and ("polygonlabels" in value or "original_width" in value))


def _is_min_item(item) -> bool:
    if not isinstance(item, dict) or "data" in item:
        return False
    if "annotation_id" in item and ("annotator" in item or "lead_time" in item):
        return True
    return any(isinstance(v, list) and v and all(_is_region(r) for r in v) for v in item.values())


def is_labelstudio_export(obj) -> bool:
    """Whether parsed JSON is a Label Studio export: JSON (tasks with ``data`` and ``annotations``), a single
    such task, or JSON-MIN (flat items with regions in percent). A COCO file is an object with ``images``."""
    if _is_full_task(obj):
        return True
    if not isinstance(obj, list) or not obj:
        return False
    head = obj[:20]
    return all(_is_full_task(t) for t in head) or all(_is_min_item(t) for t in head)


# ----------------------------------------------------------------------------- images


def _image_ref(data: dict) -> str | None:
    value = data.get(DATA_KEY)
    if isinstance(value, str) and value:
        return value
    candidates = [v for k, v in data.items() if k not in (SPLIT_FIELD, SOURCE_FIELD) and isinstance(v, str)
                  and (urlparse(v).path.lower().endswith(IMAGE_EXTENSIONS) or v.startswith(("/data/upload/", "/data/local-files/")))]
    return candidates[0] if len(candidates) == 1 else None


def _name_variants(name: str) -> list[str]:
    names = [name]
    m = UPLOAD_PREFIX.match(name)
    if m:
        names.append(m.group(1))
    return names


def resolve_image(ref: str, json_path: Path, source: str | None = None) -> tuple[Path, bool]:
    """(path, found) of a task's image by the rule in the module docstring; the path is the best local guess
    when nothing is found (``data check`` then reports it missing)."""
    here = json_path.parent
    parsed = urlparse(ref)
    tried: list[Path] = []
    local_files = None
    if parsed.path.rstrip("/").endswith("/data/local-files") and "d" in parse_qs(parsed.query):
        local_files = Path(unquote(parse_qs(parsed.query)["d"][0]))
    is_url = parsed.scheme in ("http", "https", "s3", "gs", "azure-blob") or ref.startswith("/data/")
    if local_files is not None:
        if os.environ.get(DOCUMENT_ROOT_ENV):
            tried.append(Path(os.environ[DOCUMENT_ROOT_ENV]) / local_files)
        parts = local_files.parts
        tried += [here.joinpath(*parts[i:]) for i in range(len(parts))]  # any document root above the JSON's folder
    elif not is_url:
        tried += [Path(ref), here / ref]
    if source:
        tried.append(Path(source))
    name = Path(unquote(parsed.path)).name if (is_url or local_files is not None) else Path(ref).name
    for folder in (here, here / "images", here.parent / "images"):
        tried += [folder / n for n in _name_variants(name)]
    for path in tried:
        if path.is_file():
            return path, True
    guess = (here / local_files) if local_files is not None else (here / ref if not is_url else here / _name_variants(name)[-1])
    return guess, False


# ----------------------------------------------------------------------------- regions


def _rotated_bounds(x: float, y: float, w: float, h: float, degrees: float) -> list[float]:
    """Axis-aligned bounds of a w x h rectangle turned ``degrees`` clockwise (image axes: y down) about (x, y)."""
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    xs = [x, x + w * c, x + w * c - h * s, x - h * s]
    ys = [y, y + w * s, y + w * s + h * c, y + h * c]
    return [min(xs), min(ys), max(xs), max(ys)]


class _Regions:
    """The boxes of one image, read from its regions; problems go to the file's list."""

    def __init__(self, file: str, where: str, width: int, height: int, problems: list[Problem]):
        self.file, self.where, self.width, self.height, self.problems = file, where, width, height, problems
        self.boxes: list[list[float]] = []
        self.names: list[str] = []
        self.places: list[str] = []
        self.unsupported: Counter = Counter()
        self.size_noted = self.turn_noted = False  # one warning per image for each

    def _size(self, value: dict, region: dict) -> tuple[float, float]:
        """The pixel size the percentages are of: the image file's, else the result's original size."""
        ow, oh = region.get("original_width", value.get("original_width")), region.get("original_height", value.get("original_height"))
        try:
            ow, oh = float(ow), float(oh)
        except (TypeError, ValueError):
            ow = oh = 0.0
        if self.width > 0 and self.height > 0:
            if ow > 0 and oh > 0 and (round(ow), round(oh)) != (self.width, self.height) and not self.size_noted:
                self.size_noted = True
                self.problems.append(Problem(self.file, f"{self.where}: regions drawn on a {ow:g}x{oh:g} image but the file is "
                                             f"{self.width}x{self.height}; percentages taken of the file's size", "size_mismatch",
                                             "warning"))
            return float(self.width), float(self.height)
        return ow, oh

    def add(self, region: dict, kind: str, value: dict, index: int) -> None:
        place = f"{self.where} region {region.get('id', index)!s}"
        if kind not in BOX_TYPES + POLYGON_TYPES:
            self.unsupported[kind] += 1
            return
        names = _labels(value)
        if not names:
            self.problems.append(Problem(self.file, f"{place}: a {kind} region without a label", "bad_annotation"))
            return
        if len(names) > 1:
            self.problems.append(Problem(self.file, f"{place}: several labels {names}; the first, '{names[0]}', taken",
                                         "several_labels", "warning"))
        turned = region.get("image_rotation")
        if isinstance(turned, (int, float)) and turned % 360 and not self.turn_noted:
            self.turn_noted = True
            self.problems.append(Problem(self.file, f"{place}: the image was turned {turned:g} degrees in the editor; the region "
                                         "is taken in the unturned image's pixels", "image_rotation", "warning"))
        width, height = self._size(value, region)
        if width <= 0 or height <= 0:
            self.problems.append(Problem(self.file, f"{place}: image size unknown (no image file, no original_width/height)",
                                         "bad_annotation"))
            return
        try:
            if kind in POLYGON_TYPES:
                points = [(float(px) * width / 100, float(py) * height / 100) for px, py in value["points"]]
                if not points:
                    raise ValueError("no points")
                box = [min(p[0] for p in points), min(p[1] for p in points), max(p[0] for p in points), max(p[1] for p in points)]
            else:
                x, y = float(value["x"]) * width / 100, float(value["y"]) * height / 100
                w, h = float(value["width"]) * width / 100, float(value["height"]) * height / 100
                rotation = float(value.get("rotation") or 0.0)
                if math.isfinite(rotation) and abs(((rotation + 180) % 360) - 180) > 1e-6:
                    box = _rotated_bounds(x, y, w, h, rotation)
                    self.problems.append(Problem(self.file, f"{place}: rotated {rotation:g} degrees; its axis-aligned bounding box "
                                                 "taken", "rotated_box", "warning"))
                else:
                    box = [x, y, x + w, y + h]
        except (KeyError, TypeError, ValueError) as exc:
            self.problems.append(Problem(self.file, f"{place}: bad {kind} value {value!r} ({exc})", "bad_annotation"))
            return
        self.boxes.append(box)
        self.names.append(str(names[0]))
        self.places.append(place)


# ----------------------------------------------------------------------------- reading


def _load_json(path: Path):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: Label Studio export not found") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc


def read_label_config(path: Path) -> list[str]:
    """The label names, in order, of a labeling interface XML (``RectangleLabels``/``Labels``/``PolygonLabels``)."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise DataError(f"{path}: invalid XML ({exc})") from exc
    names: list[str] = []
    for control in root.iter():
        if control.tag in ("RectangleLabels", "Labels", "PolygonLabels"):
            for label in control.iter("Label"):
                value = label.get("value")
                if value and value not in names:
                    names.append(value)
    return names


def _split_of(data: dict) -> str | None:

    value = data.get(SPLIT_FIELD)
    return normalize_split(str(value)) if isinstance(value, str) and value else None


def _chosen_annotation(task: dict, where: str, file: str, problems: list[Problem]) -> list | None:
    """The result list of the task's last annotation that was not cancelled (None: the task is left out)."""
    annotations = task.get("annotations")
    if annotations is None:
        annotations = task.get("completions") or []  # exports before Label Studio 1.0
    if not isinstance(annotations, list):
        problems.append(Problem(file, f"{where}: 'annotations' is not a list", "bad_annotation"))
        return None
    kept = [a for a in annotations if isinstance(a, dict) and not a.get("was_cancelled")]
    if not kept:
        if annotations:
            why = "every annotation was cancelled (skipped by the annotator)"
        elif task.get("predictions"):
            why = "not annotated (only predictions, not reviewed)"
        else:
            why = "not annotated"
        problems.append(Problem(file, f"{where}: {why}; left out", "unlabelled_task", "warning"))
        return None
    result = kept[-1].get("result", [])
    if not isinstance(result, list):
        problems.append(Problem(file, f"{where}: annotation 'result' is not a list", "bad_annotation"))
        return None
    return result


def _parse(path: Path, items: list) -> tuple[list[dict], list[Problem]]:
    """Per task to read: where (for messages), id, image reference, source path, split and regions ((region, type, value))."""
    problems: list[Problem] = []
    file = str(path)
    minimal = not any(_is_full_task(t) for t in items[:20])
    parsed: dict = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            problems.append(Problem(file, f"tasks[{i}]: not an object", "bad_annotation"))
            continue
        task_id = item.get("id")
        where = f"task {task_id}" if task_id is not None else f"tasks[{i}]"
        if minimal:
            data = item
            regions = [(r, r.get("type") or _min_type(r), r) for k, v in item.items() if isinstance(v, list)
                       for r in v if _is_region(r)]
            for k, v in item.items():  # lists of other regions (keypoints, brushes) are counted as unsupported
                if isinstance(v, list) and v and all(isinstance(r, dict) for r in v) and not any(_is_region(r) for r in v):
                    regions += [({}, k, {})] * len(v)
        else:
            data = item.get("data")
            if not isinstance(data, dict):
                problems.append(Problem(file, f"{where}: needs a 'data' object", "bad_annotation"))
                continue
            result = _chosen_annotation(item, where, file, problems)
            if result is None:
                continue
            regions = []
            for j, r in enumerate(result):
                if not isinstance(r, dict):
                    problems.append(Problem(file, f"{where}: result[{j}] is not an object", "bad_annotation"))
                    continue
                value = r.get("value") if isinstance(r.get("value"), dict) else {}
                regions.append((r, str(r.get("type", "")), value))
        ref = _image_ref(data)
        if ref is None:
            problems.append(Problem(file, f"{where}: no image in 'data' (expected data.{DATA_KEY})", "bad_annotation"))
            continue
        # JSON-MIN has an item per annotation: the last one of a task wins, in its first place. Tasks of the full
        # export are kept apart even when ids repeat, so that check_unique_ids reports the duplicates.
        key = task_id if minimal and task_id is not None else f"#{i}"
        parsed[key] = {"where": where, "id": task_id, "ref": ref, "source": data.get(SOURCE_FIELD), "split": _split_of(data),
                       "regions": regions}
    return list(parsed.values()), problems


def _min_type(region: dict) -> str:
    if "rectanglelabels" in region:
        return "rectanglelabels"
    if "polygonlabels" in region or "points" in region:
        return "polygonlabels"
    return "labels" if "labels" in region else "rectangle"


def _original_size(regions: list) -> tuple[int, int]:
    for region, _, value in regions:
        try:
            w = float(region.get("original_width", value.get("original_width")))
            h = float(region.get("original_height", value.get("original_height")))
        except (TypeError, ValueError):
            continue
        if w > 0 and h > 0:
            return int(round(w)), int(round(h))
    return 0, 0


def _class_names(path: Path, found: list[str]) -> list[str]:
    config = path.parent / CONFIG_FILE
    declared = read_label_config(config) if config.is_file() else []
    return declared + sorted(set(found) - set(declared))


def _class_names_of(path: Path, tasks: list[dict]) -> list[str]:
    """The file's classes (every split's): the label config's, then the other names its box regions use."""
    found = [_label(v) for t in tasks for _, kind, v in t["regions"] if kind in BOX_TYPES + POLYGON_TYPES]
    return _class_names(path, [n for n in found if n is not None])


def _records(path: Path, tasks: list[dict], problems: list[Problem], split: str | None, names: list[str]) -> DatasetRecords:
    file = str(path)
    read = []
    for t in tasks:
        image, found = resolve_image(t["ref"], path, t["source"] if isinstance(t["source"], str) else None)
        width, height = 0, 0
        if found:
            try:
                width, height = image_size(image)
            except DataError:
                pass  # an unreadable file: reported by data check and the loader; sizes from the regions
        if width <= 0 or height <= 0:
            width, height = _original_size(t["regions"])
        regions = _Regions(file, t["where"], width, height, problems)
        # A Rectangle + Labels interface exports each box twice, a bare "rectangle" and its "labels" twin (same id).
        labelled = {r.get("id") for r, kind, v in t["regions"] if kind != "rectangle" and _labels(v) and r.get("id") is not None}
        for k, (region, kind, value) in enumerate(t["regions"]):
            if not (kind == "rectangle" and region.get("id") in labelled):
                regions.add(region, kind, value, k)
        if regions.unsupported:
            kinds = ", ".join(f"{k} ({n})" for k, n in sorted(regions.unsupported.items()))
            problems.append(Problem(file, f"{t['where']}: regions that are not boxes left out: {kinds}", "not_a_box", "warning"))
        read.append((t, image, width, height, regions))
    label_of = {n: i for i, n in enumerate(names)}
    ids = [t["id"] for t, *_ in read]
    use_ids = all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
    records = []
    for index, (t, image, width, height, regions) in enumerate(read):
        b, keep = sanitize_boxes(np.array(regions.boxes, dtype=np.float64).reshape(-1, 4), width, height, file, problems,
                                 regions.places)
        labels = np.array([label_of[n] for n in regions.names], dtype=np.int64).reshape(-1)
        records.append(ImageRecord(image, width, height, b[keep], labels[keep], np.zeros(int(keep.sum()), dtype=bool),
                                   int(t["id"]) if use_ids else index + 1, source=file))
    check_unique_ids(records, problems)
    return DatasetRecords(records, names, default_category_ids(len(names)), problems, root=path.parent, split=split,
                          format="labelstudio")


def _load(path: str | os.PathLike) -> tuple[Path, list[dict], list[Problem]]:
    path = Path(path)
    obj = _load_json(path)
    if _is_full_task(obj):
        obj = [obj]
    if not isinstance(obj, list):
        raise DataError(f"{path}: not a Label Studio export (expected a list of tasks)")
    if obj and not is_labelstudio_export(obj):
        raise DataError(f"{path}: not a Label Studio JSON or JSON-MIN export (tasks need 'data' and 'annotations')")
    tasks, problems = _parse(path, obj)
    if not obj:
        problems.append(Problem(str(path), "the export holds no tasks", "empty_annotations", "warning"))
    return path, tasks, problems


def read_labelstudio(path: str | os.PathLike, split: str | None = None) -> DatasetRecords:
    """Read a Label Studio JSON or JSON-MIN export. ``split``: when the tasks record their split (``data.split``),
    only that split's tasks (an unknown split is an error); otherwise the name the records carry."""
    path, tasks, problems = _load(path)
    recorded = sorted({t["split"] for t in tasks if t["split"]})
    if split is not None and recorded:

        key = normalize_split(split)
        if key not in recorded:
            raise DataError(f"{path}: no split '{split}' among the tasks' data.split (available: {', '.join(recorded)})")
        return _records(path, [t for t in tasks if t["split"] == key], problems, key, _class_names_of(path, tasks))
    return _records(path, tasks, problems, split if split is not None else (recorded[0] if len(recorded) == 1 else None),
                    _class_names_of(path, tasks))


def _labels(value: dict) -> list:
    names = value.get("rectanglelabels", value.get("polygonlabels", value.get("labels")))
    return names if isinstance(names, list) else []


def _label(value: dict) -> str | None:
    names = _labels(value)
    return str(names[0]) if names else None


def read_labelstudio_splits(path: str | os.PathLike) -> dict[str, DatasetRecords]:
    """Every split of an export by the tasks' ``data.split`` (``{"all": ...}`` when none is recorded), sharing one
    class list; the file's problems are reported with the first split. A task without a split, in a file whose
    other tasks have one, is an error."""
    path, tasks, problems = _load(path)
    recorded = sorted({t["split"] for t in tasks if t["split"]})
    if not recorded:
        return {"all": _records(path, tasks, problems, None, _class_names_of(path, tasks))}

    for t in tasks:
        if not t["split"]:
            problems.append(Problem(str(path), f"{t['where']}: no data.split while other tasks have one; left out", "bad_annotation"))
    names = _class_names_of(path, tasks)
    order = sorted(recorded, key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER), s))
    return {s: _records(path, [t for t in tasks if t["split"] == s], problems if k == 0 else [], s, names)
            for k, s in enumerate(order)}
