"""COCO JSON: reader, writer and the ``to_coco_dict`` export that evaluation uses.

Category rule (documented for users): a category becomes a class when it has at
least one annotation, or when it is a *leaf* (no other category names it as its
``supercategory``). Roboflow exports declare their dataset name as an id-0
category that is only ever a supercategory and never annotated; this rule drops
it without dropping real classes that happen to have no boxes in a split.
Classes are ordered by category id; ``category_ids[label]`` maps back.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retinadet.data.records import DatasetRecords, ImageRecord, Problem, check_unique_ids, sanitize_boxes
from retinadet.errors import DataError

ROBOFLOW_ANNOTATION_FILE = "_annotations.coco.json"


@contextlib.contextmanager
def _no_cyclic_gc():
    """The cyclic garbage collector paused: a JSON tree holds no cycles, but a million annotation dicts make the
    collector walk the growing tree again and again (half of the parse time of a 100k-image file)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_coco_json(path: Path) -> dict:
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f, _no_cyclic_gc():
            data = json.load(f)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: COCO annotation file not found") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with 'images', 'annotations', 'categories'")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: field '{key}' is missing or not a list")
    if not isinstance(data.get("annotations", []), list):
        raise DataError(f"{path}: field 'annotations' is not a list")
    return data


def _int_column(values: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Integer ids from JSON values: (int64 array, mask of values that are not integers).

    One numpy conversion when every value is already an int (the usual file); otherwise each value goes through
    ``int()`` (numeric strings and floats are accepted, as before).
    """
    try:
        arr = np.asarray(values)
    except (ValueError, OverflowError):  # ragged nested values
        arr = np.zeros(0, dtype=object)
    if arr.dtype.kind in "iu" and arr.shape == (len(values),):
        return arr.astype(np.int64, copy=False), np.zeros(len(values), dtype=bool)
    out = np.zeros(len(values), dtype=np.int64)
    bad = np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values):
        try:
            if v is None or isinstance(v, (bool, list, dict)):
                raise TypeError
            out[i] = int(v)
        except (TypeError, ValueError, OverflowError):
            bad[i] = True
    return out, bad


def _bbox_column(values: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """COCO [x, y, w, h] lists as float64 [N, 4], and the mask of entries that are not a list of 4.

    A None or non-numeric coordinate becomes NaN (reported as a non-finite box by ``sanitize_boxes``).
    """
    try:
        arr = np.asarray(values, dtype=np.float64)
        if arr.shape == (len(values), 4):
            return arr, np.zeros(len(values), dtype=bool)
    except (TypeError, ValueError):
        pass  # some entry is not 4 numbers: sorted out one by one below
    out = np.full((len(values), 4), np.nan)
    bad = np.zeros(len(values), dtype=bool)
    for i, bbox in enumerate(values):
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            bad[i] = True
            continue
        try:
            out[i] = [np.nan if v is None else float(v) for v in bbox]
        except (TypeError, ValueError):
            pass  # stays NaN
    return out, bad


def _dicts(entries: list) -> list[dict]:
    """The entries as dicts; anything else becomes {} (reported by the caller as lacking its fields)."""
    if all(isinstance(e, dict) for e in entries):
        return entries
    return [e if isinstance(e, dict) else {} for e in entries]


def select_categories(datas: Iterable[dict], path: Path) -> tuple[list[int], list[str]]:
    """The (ids, names) that become classes, by the rule in the module docstring.

    Takes several splits' JSON at once so that every split gets the same classes.
    """
    declared: dict[int, tuple[str, str]] = {}
    used: set[int] = set()
    for data in datas:
        for i, cat in enumerate(data["categories"]):
            if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
                raise DataError(f"{path}: categories[{i}] needs 'id' and 'name'")
            try:
                cid = int(cat["id"])
            except (TypeError, ValueError) as exc:
                raise DataError(f"{path}: categories[{i}].id is not an integer: {cat['id']!r}") from exc
            declared.setdefault(cid, (str(cat["name"]), str(cat.get("supercategory", "") or "")))
        anns = _dicts(data.get("annotations", []))
        ids, bad = _int_column([a.get("category_id") for a in anns])
        used.update(np.unique(ids[~bad]).tolist())  # bad ids are reported by read_coco
    supers = {sup for _, sup in declared.values() if sup}
    keep = sorted(cid for cid, (name, _) in declared.items() if cid in used or name not in supers)
    return keep, [declared[c][0] for c in keep]


class ImageFinder:
    """Where a COCO ``file_name`` lies on disk, looked up in one directory listing per folder (not a stat per image:
    100k images resolve in a fraction of a second).

    Tried in order: the name under the image root, under ``images/`` beside it and ``../images/`` (classic COCO),
    then its base name in those folders and in the JSON's own folder: exports often keep a nested or absolute
    ``file_name`` (``images/sub/a.jpg``, ``/data/a.jpg``) with the image beside the JSON.
    """

    def __init__(self, root: Path, json_dir: Path):
        self.bases = list(dict.fromkeys([Path(root), Path(json_dir)]))
        self._listings: dict[str, frozenset[str]] = {}

    def _listed(self, path: str | Path) -> bool:
        folder, name = os.path.split(path)
        names = self._listings.get(folder)
        if names is None:
            try:
                names = frozenset(os.listdir(folder or "."))
            except OSError:
                names = frozenset()
            self._listings[folder] = names
        return name in names

    def candidates(self, file_name: str) -> list[Path]:
        name = Path(file_name)
        first: list[Path] = []
        if name.is_absolute():
            first.append(name)
        else:
            for base in self.bases:
                first += [base / name, base / "images" / name, base.parent / "images" / name]
        by_base = [folder / name.name for base in self.bases for folder in (base, base / "images", base.parent / "images")]
        return list(dict.fromkeys(first + by_base))

    def find(self, file_name: str) -> Path | None:
        # The usual case first, on strings: a Path per candidate would cost more than the look-up itself.
        if os.path.isabs(file_name):
            if self._listed(file_name):
                return Path(file_name)
        elif self._listed(os.path.join(self.bases[0], file_name)):
            return self.bases[0] / file_name
        return next((c for c in self.candidates(file_name) if self._listed(c)), None)


def _not_found(index: int, file_name: str, finder: ImageFinder) -> str:
    folders = list(dict.fromkeys(str(c.parent) for c in finder.candidates(file_name)))
    return f"images[{index}]: file_name {file_name!r} not found (looked in {', '.join(folders)})"


@dataclass
class _ImageIndex:
    """The usable entries of ``images``, in file order."""

    files: list[Path] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    widths: list[int | None] = field(default_factory=list)  # None: not in the JSON, read from the header when needed
    heights: list[int | None] = field(default_factory=list)


def _index_images(entries: list, finder: ImageFinder, src: str, problems: list[Problem]) -> _ImageIndex:
    """One pass over ``images`` (a path per image is Python work whatever we do); no image is opened."""
    out = _ImageIndex()
    unsized: list[int] = []
    for i, img in enumerate(entries):
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            problems.append(Problem(src, f"images[{i}]: needs 'id' and 'file_name'", "bad_image_entry"))
            continue
        try:
            image_id = int(img["id"])
        except (TypeError, ValueError):
            problems.append(Problem(src, f"images[{i}].id is not an integer: {img['id']!r}", "bad_image_entry"))
            continue
        file_name = str(img["file_name"])
        file = finder.find(file_name)
        if file is None:
            file = finder.candidates(file_name)[0]
            problems.append(Problem(src, _not_found(i, file_name, finder), "missing_file", image=str(file)))
        try:
            width, height = int(img.get("width") or 0), int(img.get("height") or 0)
        except (TypeError, ValueError):
            problems.append(Problem(src, f"images[{i}] ({file_name}): width/height not numbers: {img.get('width')!r}x"
                                    f"{img.get('height')!r}; read from the image instead", "bad_image_entry", "warning"))
            width = height = 0
        sized = width > 0 and height > 0
        if not sized:
            unsized.append(i)
        out.files.append(file)
        out.ids.append(image_id)
        out.widths.append(width if sized else None)
        out.heights.append(height if sized else None)
    if unsized:
        problems.append(Problem(src, f"{len(unsized)} image(s) without width/height (first: images[{unsized[0]}]): their "
                                "sizes are read from the image headers when first needed, and `data check` checks their "
                                "boxes against the image bounds", "missing_size", "warning"))
    return out


def read_coco(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    categories: tuple[list[int], list[str]] | None = None,
    split: str | None = None,
    data: dict | None = None,
) -> DatasetRecords:
    """Read one COCO JSON file. ``categories`` (ids, names) forces a class list shared by splits; ``data`` is the
    file's already parsed JSON (a caller that parsed it to select categories need not parse it twice).

    Opens no image: sizes come from the JSON (a missing one is read from the image header when first used), files
    are found through directory listings, and annotations are grouped per image with one stable argsort.
    """
    path = Path(path)
    if data is None:
        data = load_coco_json(path)
    with _no_cyclic_gc():  # 100k records and paths: as for the parse
        return _read_coco(path, data, image_root, categories, split)


def _read_coco(path: Path, data: dict, image_root, categories, split) -> DatasetRecords:
    cat_ids, names = categories if categories is not None else select_categories([data], path)
    root = Path(image_root) if image_root is not None else path.parent
    finder = ImageFinder(root, path.parent)
    problems: list[Problem] = []
    src = str(path)

    images = _index_images(data["images"], finder, src, problems)
    files, widths, heights, image_ids = images.files, images.widths, images.heights, images.ids
    n_images = len(files)
    ids = np.asarray(image_ids, dtype=np.int64)
    # Annotations go to the first image of their id (a duplicate id is reported by check_unique_ids).
    by_id = np.argsort(ids, kind="stable")
    sorted_ids = ids[by_id]
    w_known = np.array([w or 0 for w in widths], dtype=np.int64)
    h_known = np.array([h or 0 for h in heights], dtype=np.int64)

    # Annotations: the fields pulled out in one pass each, then checked and grouped with numpy.
    raw = data.get("annotations", [])
    if len(raw) == 0:
        problems.append(Problem(src, "annotation list is empty: every image is loaded as a negative", "empty_annotations",
                                "warning"))
    anns = _dicts(raw)
    ann_image, bad_image = _int_column([a.get("image_id") for a in anns])
    pos = np.minimum(np.searchsorted(sorted_ids, ann_image), max(n_images - 1, 0))
    on_image = ~bad_image & (n_images > 0) & (sorted_ids[pos] == ann_image if n_images else False)
    image_of = by_id[pos] if n_images else np.zeros(len(anns), dtype=np.int64)

    def ann_name(j: int) -> str:
        return f"annotations[{j}] (id {anns[j].get('id')})"

    missing_id = np.flatnonzero(bad_image)
    if len(missing_id):
        absent = [j for j in missing_id.tolist() if anns[j].get("image_id") is None]
        for j in absent:
            problems.append(Problem(src, f"annotations[{j}]: missing 'image_id'", "bad_annotation"))
        for j in sorted(set(missing_id.tolist()) - set(absent)):
            problems.append(Problem(src, f"{ann_name(j)}: image_id is not an integer: {anns[j]['image_id']!r}",
                                    "bad_annotation"))
    unknown_ids, unknown_counts = np.unique(ann_image[~bad_image & ~on_image], return_counts=True)
    for img_id, count in zip(unknown_ids.tolist(), unknown_counts.tolist()):
        problems.append(Problem(src, f"{count} annotation(s) refer to unknown image id {img_id!r}", "unknown_image"))

    cat, bad_cat = _int_column([a.get("category_id") for a in anns])
    cat_order = np.argsort(np.asarray(cat_ids, dtype=np.int64), kind="stable")
    cat_sorted = np.asarray(cat_ids, dtype=np.int64)[cat_order]
    cat_pos = np.minimum(np.searchsorted(cat_sorted, cat), max(len(cat_sorted) - 1, 0))
    known_cat = ~bad_cat & (len(cat_sorted) > 0) & (cat_sorted[cat_pos] == cat if len(cat_sorted) else False)
    label = cat_order[cat_pos] if len(cat_sorted) else np.zeros(len(anns), dtype=np.int64)
    for j in np.flatnonzero(on_image & bad_cat).tolist():
        problems.append(Problem(src, f"{ann_name(j)}: bad category_id {anns[j].get('category_id')!r}", "unknown_class"))
    for j in np.flatnonzero(on_image & ~bad_cat & ~known_cat).tolist():
        problems.append(Problem(src, f"{ann_name(j)}: unknown category id {cat[j]} for {files[image_of[j]].name}",
                                "unknown_class"))

    xywh, bad_bbox = _bbox_column([a.get("bbox") for a in anns])
    for j in np.flatnonzero(on_image & known_cat & bad_bbox).tolist():
        problems.append(Problem(src, f"{ann_name(j)}: 'bbox' must be [x, y, w, h], got {anns[j].get('bbox')!r}",
                                "bad_annotation"))
    use = np.flatnonzero(on_image & known_cat & ~bad_bbox)
    xyxy = np.concatenate([xywh[use, :2], xywh[use, :2] + xywh[use, 2:]], axis=1)
    box_image = image_of[use]
    boxes, keep = sanitize_boxes(xyxy, w_known[box_image], h_known[box_image], src, problems,
                                 lambda k: f"{ann_name(int(use[k]))} of {files[box_image[k]].name}")
    crowd = np.fromiter((bool(anns[j].get("iscrowd", 0)) for j in use.tolist()), dtype=bool, count=len(use))

    # Group per image: a stable sort keeps each image's annotations in file order.
    kept_image = box_image[keep]
    order = np.argsort(kept_image, kind="stable")
    boxes, labels, crowd = boxes[keep][order], label[use][keep][order], crowd[keep][order]
    ends = np.cumsum(np.bincount(kept_image, minlength=n_images)).tolist()
    starts = [0, *ends[:-1]]
    records = [
        ImageRecord(files[k], widths[k], heights[k], boxes[a:b], labels[a:b], crowd[a:b], image_ids[k], source=src)
        for k, (a, b) in enumerate(zip(starts, ends))
    ]
    check_unique_ids(records, problems)
    return DatasetRecords(records, list(names), list(cat_ids), problems, root=path.parent, split=split, format="coco")


def to_coco_dict(
    records: Sequence[ImageRecord],
    class_names: Sequence[str],
    category_ids: Sequence[int] | None = None,
    image_root: str | os.PathLike | None = None,
    include_crowd: bool = True,
) -> dict:
    """Records -> a COCO dict that ``pycocotools.coco.COCO`` accepts (via ``COCO.dataset``).

    Labels are mapped back to ``category_ids`` (default 1..K). ``file_name`` is
    relative to ``image_root`` when given, else the file name. Areas are box areas.
    """
    if category_ids is None:
        category_ids = list(range(1, len(class_names) + 1))
    category_ids = [int(c) for c in category_ids]
    images, annotations = [], []
    ann_id = 1
    for r in records:
        if image_root is not None:
            try:
                file_name = str(Path(r.path).relative_to(image_root).as_posix())
            except ValueError:
                file_name = Path(r.path).name
        else:
            file_name = Path(r.path).name
        images.append({"id": int(r.image_id), "file_name": file_name, "width": int(r.width), "height": int(r.height)})
        for box, label, crowd in zip(r.boxes.tolist(), r.labels.tolist(), r.crowd.tolist()):
            if crowd and not include_crowd:
                continue
            x1, y1, x2, y2 = box
            w, h = x2 - x1, y2 - y1
            annotations.append({
                "id": ann_id, "image_id": int(r.image_id), "category_id": category_ids[int(label)],
                "bbox": [round(x1, 3), round(y1, 3), round(w, 3), round(h, 3)], "area": round(w * h, 3),
                "iscrowd": int(bool(crowd)),
            })
            ann_id += 1
    categories = [{"id": cid, "name": name, "supercategory": ""} for cid, name in zip(category_ids, class_names)]
    return {"info": {"description": "exported by retinadet"}, "images": images, "annotations": annotations, "categories": categories}


def coco_api(records: Sequence[ImageRecord], class_names: Sequence[str], category_ids: Sequence[int] | None = None):
    """A ready ``pycocotools.coco.COCO`` ground-truth object (quietly built in memory)."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = to_coco_dict(records, class_names, category_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def write_coco(ds: DatasetRecords, json_path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> Path:
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    data = to_coco_dict(ds.records, ds.class_names, ds.category_ids, image_root=image_root)
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return json_path
