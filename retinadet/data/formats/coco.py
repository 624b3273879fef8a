"""COCO JSON: reader, writer and the ``to_coco_dict`` export that evaluation uses.

Category rule (documented for users): a category becomes a class when it has at
least one annotation, or when it is a *leaf* (no other category names it as its
``supercategory``). Roboflow exports declare their dataset name as an id-0
category that is only ever a supercategory and never annotated; this rule drops
it without dropping real classes that happen to have no boxes in a split.
Classes are ordered by category id; ``category_ids[label]`` maps back.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from retinadet.data.images import image_size
from retinadet.data.records import DatasetRecords, ImageRecord, Problem, check_unique_ids, sanitize_boxes
from retinadet.errors import DataError

ROBOFLOW_ANNOTATION_FILE = "_annotations.coco.json"


def load_coco_json(path: Path) -> dict:
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
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
        for ann in data.get("annotations", []):
            if isinstance(ann, dict) and "category_id" in ann:
                try:
                    used.add(int(ann["category_id"]))
                except (TypeError, ValueError):
                    pass
    supers = {sup for _, sup in declared.values() if sup}
    keep = sorted(cid for cid, (name, _) in declared.items() if cid in used or name not in supers)
    return keep, [declared[c][0] for c in keep]


def _find_image(root: Path, file_name: str) -> Path:
    # Roboflow keeps images beside the JSON; classic COCO keeps them in a sibling folder.
    candidate = root / file_name
    if candidate.exists():
        return candidate
    for alt in (root / "images" / file_name, root.parent / "images" / file_name, root / Path(file_name).name):
        if alt.exists():
            return alt
    return candidate


def read_coco(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    categories: tuple[list[int], list[str]] | None = None,
    split: str | None = None,
) -> DatasetRecords:
    """Read one COCO JSON file. ``categories`` (ids, names) forces a class list shared by splits."""
    path = Path(path)
    data = load_coco_json(path)
    cat_ids, names = categories if categories is not None else select_categories([data], path)
    label_of = {cid: i for i, cid in enumerate(cat_ids)}
    root = Path(image_root) if image_root is not None else path.parent
    problems: list[Problem] = []

    anns_by_image: dict[int, list[tuple[int, dict]]] = {}
    annotations = data.get("annotations", [])
    if len(annotations) == 0:
        problems.append(Problem(str(path), "annotation list is empty: every image is loaded as a negative", "empty_annotations", "warning"))
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict) or "image_id" not in ann:
            problems.append(Problem(str(path), f"annotations[{i}]: missing 'image_id'", "bad_annotation"))
            continue
        anns_by_image.setdefault(ann["image_id"], []).append((i, ann))

    records: list[ImageRecord] = []
    known_ids = set()
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            problems.append(Problem(str(path), f"images[{i}]: needs 'id' and 'file_name'", "bad_image_entry"))
            continue
        try:
            image_id = int(img["id"])
        except (TypeError, ValueError):
            problems.append(Problem(str(path), f"images[{i}].id is not an integer: {img['id']!r}", "bad_image_entry"))
            continue
        file = _find_image(root, str(img["file_name"]))
        width, height = int(img.get("width") or 0), int(img.get("height") or 0)
        if width <= 0 or height <= 0:

            try:
                width, height = image_size(file)
            except DataError:
                width = height = 0  # reported as a missing/unreadable image by check and the loader
        boxes, labels, crowd, where = [], [], [], []
        first_time = image_id not in known_ids
        known_ids.add(image_id)
        for j, ann in anns_by_image.get(img["id"], []) if first_time else []:
            cid = ann.get("category_id")
            try:
                cid = int(cid)
            except (TypeError, ValueError):
                problems.append(Problem(str(path), f"annotations[{j}] (id {ann.get('id')}): bad category_id {cid!r}", "unknown_class"))
                continue
            if cid not in label_of:
                problems.append(Problem(str(path), f"annotations[{j}] (id {ann.get('id')}): unknown category id {cid} for {file.name}",
                                        "unknown_class"))
                continue
            bbox = ann.get("bbox")
            if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
                problems.append(Problem(str(path), f"annotations[{j}] (id {ann.get('id')}): 'bbox' must be [x, y, w, h], got {bbox!r}",
                                        "bad_annotation"))
                continue
            try:
                x, y, w, h = (float("nan") if v is None else float(v) for v in bbox)
            except (TypeError, ValueError):
                x = y = w = h = math.nan
            boxes.append([x, y, x + w, y + h])
            labels.append(label_of[cid])
            crowd.append(bool(ann.get("iscrowd", 0)))
            where.append(f"annotations[{j}] (id {ann.get('id')}) of {file.name}")
        b, keep = sanitize_boxes(np.array(boxes, dtype=np.float64).reshape(-1, 4), width, height, str(path), problems, where)
        records.append(
            ImageRecord(file, width, height, b[keep], np.array(labels, dtype=np.int64).reshape(-1)[keep],
                        np.array(crowd, dtype=bool).reshape(-1)[keep], image_id, source=str(path))
        )
    valid_ids = {r.image_id for r in records}
    for img_id, anns in anns_by_image.items():
        try:
            ok = int(img_id) in valid_ids
        except (TypeError, ValueError):
            ok = False
        if not ok:
            problems.append(Problem(str(path), f"{len(anns)} annotation(s) refer to unknown image id {img_id!r}", "unknown_image"))
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
