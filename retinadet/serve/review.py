"""The review page (``GET /``) and its JSON API under ``/api/review/``: look through a folder of images, or uploads,
with the model's detections drawn; accept or reject each, draw the boxes it missed, and export what was reviewed as a
COCO dataset that ``retinadet train --data`` reads.

- **Files**: an image is named by its path relative to ``--review-dir``; absolute paths, ``..`` and symlinks that lead
  outside it are refused with 403. Uploads are kept in a temporary folder for the server's life, named
  ``upload:N/NAME``. The queue is the folder's images, or the ones a ``.txt`` list inside it names (``?list=``;
  a ``ranking.txt`` from ``retinadet rank`` in the folder is the default queue).
- **Detections** come from the server's batcher at a low floor (:func:`retinadet.engine.rank.detection_floor`), so
  the page's per-class sliders (from the checkpoint's stored thresholds, else 0.25) can show boxes below them.
- **Sorting by uncertainty** uses ``retinadet rank``'s rule (:mod:`retinadet.engine.rank`): the sum over an image's
  detections of ``max(0, 1 - |score - threshold| / 0.15)``, most uncertain first.
- **Reviews** are kept in memory per image. The export holds every reviewed image (one with no box is a negative):
  a model box counts when accepted, or when it was shown (score at or above its class's threshold when the image
  was last saved) and not rejected; drawn boxes always count; rejected ones never.
"""

from __future__ import annotations

import asyncio
import io
import math
import os
import re
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Literal

import torch
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from PIL import Image
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask
from torchvision.ops import box_iou

from retinadet.data.convert import write_dataset
from retinadet.data.formats.coco import ROBOFLOW_ANNOTATION_FILE
from retinadet.data.records import DatasetRecords, ImageRecord
from retinadet.engine.rank import WINDOW, class_thresholds, detection_floor, detection_uncertainty
from retinadet.errors import ConfigError
from retinadet.explain import METHODS, NoDetectionsError
from retinadet.serve.state import ServeState, sniff_format
from retinadet.structures import Detections
from retinadet.utils.files import increment_run_dir
from retinadet.utils.sources import is_image_path

STATIC = Path(__file__).with_name("static")
ASSETS = {"review.js": "text/javascript; charset=utf-8", "review.css": "text/css; charset=utf-8"}
UPLOAD = "upload:"
DEFAULT_LIST = "ranking.txt"
# Exports go to runs/review/<name> under the server's working folder, beside runs/train and runs/predict.
EXPORT_PROJECT, EXPORT_TASK = "runs", "review"
_FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_SORTS = ("queue", "name", "uncertainty")


class DrawnBox(BaseModel):
    box: list[float] = Field(min_length=4, max_length=4, description="x1, y1, x2, y2 in the image's pixels")
    label: int | str = Field(description="class index or name")


class ReviewBody(BaseModel):
    statuses: dict[int, Literal["accepted", "rejected"]] = Field(default_factory=dict,
                                                                 description="detection index -> decision")
    drawn: list[DrawnBox] = Field(default_factory=list)
    thresholds: list[float] | None = Field(None, description="per-class thresholds the image was seen at")


class ExportBody(BaseModel):
    name: str = Field("exp", description=f"folder name under {EXPORT_PROJECT}/{EXPORT_TASK}/ (incremented when taken)")


@dataclass
class _Found:
    """An image's detections as the reviewer saw them, and what they were computed from."""

    file: Path
    stamp: tuple[int, int]
    dets: Detections
    width: int
    height: int


@dataclass
class _Review:
    found: _Found  # the detections the statuses' indices refer to
    statuses: dict[int, str]
    drawn: list[tuple[list[float], int]]
    thresholds: list[float]

    def kept(self) -> tuple[list[list[float]], list[int]]:
        """The boxes and labels this review exports (the module docstring's rule)."""
        boxes, labels = [], []
        d = self.found.dets
        for i, (box, score, label) in enumerate(zip(d.boxes.tolist(), d.scores.tolist(), d.labels.tolist())):
            status = self.statuses.get(i)
            if status == "accepted" or (status is None and score >= self.thresholds[label]):
                boxes.append(box)
                labels.append(label)
        for box, label in self.drawn:
            boxes.append(box)
            labels.append(label)
        return boxes, labels

    def to_dict(self) -> dict:
        return {"statuses": {str(k): v for k, v in sorted(self.statuses.items())},
                "drawn": [{"box": b, "label": lb} for b, lb in self.drawn], "thresholds": self.thresholds,
                "kept": len(self.kept()[0])}


@dataclass
class _Store:
    """The page's server-side memory: detections per image (so Grad-CAM and the export use what was shown),
    reviews in the order they were first saved, and uploads."""

    found: dict[str, _Found] = field(default_factory=dict)
    reviews: dict[str, _Review] = field(default_factory=dict)
    uploads: dict[str, Path] = field(default_factory=dict)
    upload_dir: Path | None = None

    def upload_folder(self) -> Path:
        if self.upload_dir is None:
            self.upload_dir = Path(tempfile.mkdtemp(prefix="retinadet-review-"))
            weakref.finalize(self, shutil.rmtree, self.upload_dir, True)
        return self.upload_dir


def review_router(state: ServeState) -> APIRouter:
    """The page and its API for ``state``'s detector and review folder."""
    router = APIRouter(tags=["review"])
    store = _Store()
    det = state.detector
    names = list(det.class_names)
    stored = (getattr(det, "checkpoint", None) or {}).get("thresholds")
    defaults = class_thresholds(names, stored)
    floor = detection_floor(det.cfg.inference.score_thresh, defaults)

    def root() -> Path:
        if state.review_dir is None:
            raise HTTPException(404, "this server has no review folder (start it with --review-dir DIR); upload images instead")
        return Path(state.review_dir).resolve()

    def locate(key: str, what: str = "the image") -> Path:
        """The file ``key`` names: an upload, or a path relative to the review folder that stays inside it."""
        if key.startswith(UPLOAD):
            if key not in store.uploads:
                raise HTTPException(404, f"{what}: no upload {key} (uploads last as long as the server)")
            return store.uploads[key]
        base = root()
        if not key or PurePosixPath(key).is_absolute() or PureWindowsPath(key).is_absolute() or PureWindowsPath(key).drive:
            raise HTTPException(403, f"{what}: {key or '(empty)'} must be a path relative to the review folder")
        if ".." in PurePosixPath(key.replace("\\", "/")).parts:
            raise HTTPException(403, f"{what}: {key} leaves the review folder ('..' is refused)")
        return state.resolve(key, what, roots=[base])

    async def detections_of(key: str) -> _Found:
        file = locate(key)
        st = file.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        cached = store.found.get(key)
        if cached is not None and cached.stamp == stamp and cached.file == file:
            return cached
        image = await asyncio.to_thread(state.read_file, file, key)
        dets, _ = await state.detect(image, conf=floor)
        found = _Found(file, stamp, dets.cpu(), int(image.shape[-1]), int(image.shape[-2]))
        store.found[key] = found
        return found

    def uncertainty(found: _Found, thresholds: list[float]) -> float:
        d = found.dets
        return float(detection_uncertainty(d.scores, d.labels, thresholds).sum()) if len(d) else 0.0

    def parse_thresholds(text: str | None) -> list[float]:
        if not text:
            return list(defaults)
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            raise HTTPException(422, f"thresholds must be {len(names)} comma-separated numbers, got {text!r}") from None
        check_thresholds(values)
        return values

    def check_thresholds(values: list[float]) -> None:
        if len(values) != len(names) or not all(0.0 <= v <= 1.0 for v in values):
            raise HTTPException(422, f"thresholds must be {len(names)} numbers in [0, 1] (one per class: "
                                     f"{', '.join(names)}), got {values}")

    # -- the page ------------------------------------------------------------------------------------------------

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @router.get("/review/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in ASSETS:
            raise HTTPException(404, f"no asset {name}")
        return Response((STATIC / name).read_bytes(), media_type=ASSETS[name])

    # -- what to review ------------------------------------------------------------------------------------------

    @router.get("/api/review/config")
    async def config() -> dict:
        base = Path(state.review_dir).resolve() if state.review_dir is not None else None
        lists = sorted(p.name for p in base.glob("*.txt") if p.is_file()) if base is not None and base.is_dir() else []
        return {"classes": names, "thresholds": defaults, "thresholds_source": "checkpoint" if stored and stored.get("per_class")
                else "default", "floor": floor, "window": WINDOW, "review_dir": str(base) if base else None, "lists": lists,
                "default_list": DEFAULT_LIST if DEFAULT_LIST in lists else None, "methods": list(METHODS),
                "export_root": str(Path(EXPORT_PROJECT, EXPORT_TASK).resolve()), "reviewed": len(store.reviews)}

    @router.get("/api/review/images")
    async def images(sort: str = Query("queue", description=f"one of {', '.join(_SORTS)}"),
                     list_name: str | None = Query(None, alias="list", description="a .txt list of images in the review "
                                                   f"folder (default: {DEFAULT_LIST} when there; empty: every image)"),
                     thresholds: str | None = Query(None, description="per-class thresholds for the uncertainty sort")) -> dict:
        """The queue: the review folder's images (or a list's), then the uploads."""
        if sort not in _SORTS:
            raise HTTPException(422, f"sort must be one of {', '.join(_SORTS)}, got {sort!r}")
        t = parse_thresholds(thresholds)
        keys, used, skipped = ([], None, 0) if state.review_dir is None else await asyncio.to_thread(queue, list_name)
        keys += list(store.uploads)
        if sort == "name":
            keys.sort(key=lambda k: (k.startswith(UPLOAD), k.lower()))
        if sort == "uncertainty":
            gate = asyncio.Semaphore(16)  # bounded: each waiting image is held decoded

            async def one(key: str):
                async with gate:
                    try:
                        return await detections_of(key)
                    except HTTPException:
                        return None  # unreadable: listed last, and says why when opened

            found = await asyncio.gather(*(one(k) for k in keys))
            score = {k: (uncertainty(f, t) if f is not None else -1.0) for k, f in zip(keys, found)}
            keys.sort(key=lambda k: -score[k])  # stable: equal uncertainty keeps the queue's order
        rows = []
        for k in keys:
            f = store.found.get(k)
            review = store.reviews.get(k)
            rows.append({"path": k, "name": k.rsplit("/", 1)[-1], "reviewed": review is not None,
                         "kept": len(review.kept()[0]) if review else None, "detections": len(f.dets) if f else None,
                         "uncertainty": round(uncertainty(f, t), 6) if f else None})
        return {"images": rows, "list": used, "skipped": skipped, "sort": sort}

    def queue(list_name: str | None) -> tuple[list[str], str | None, int]:
        """(image keys, the list used or None, entries of the list skipped: missing, not images, or outside)."""
        base = root()
        if list_name is None and (base / DEFAULT_LIST).is_file():
            list_name = DEFAULT_LIST
        if not list_name:
            return folder_images(base), None, 0
        if not list_name.lower().endswith(".txt"):
            raise HTTPException(422, f"list: {list_name} is not a .txt list of image paths")
        listed = locate(list_name, "list")
        keys, skipped = [], 0
        for line in listed.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            real = (listed.parent / line).resolve()  # as `predict --source list.txt` reads it
            if real.is_relative_to(base) and real.is_file() and is_image_path(real):
                keys.append(real.relative_to(base).as_posix())
            else:
                skipped += 1
        return keys, list_name, skipped

    def folder_images(base: Path) -> list[str]:
        keys = []
        for top, dirs, files in os.walk(base):  # symlinked folders are not followed
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for f in sorted(files):
                p = Path(top) / f
                if f.startswith(".") or not is_image_path(f) or not p.resolve().is_relative_to(base):
                    continue
                keys.append(p.relative_to(base).as_posix())
        return keys

    @router.post("/api/review/upload")
    async def upload(request: Request) -> dict:
        """One or more images (multipart field ``files``), kept for the server's life and added to the queue."""
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise HTTPException(400, "send the images as multipart/form-data in a field named 'files'")
        form = await request.form(max_files=64, max_fields=8)
        files = [f for f in form.getlist("files") if not isinstance(f, str)]
        if not files:
            raise HTTPException(400, "no file in the multipart field 'files'")
        added = []
        for f in files:
            data = await f.read()
            await asyncio.to_thread(state.decode, data, f.filename or "the upload")  # an image, within the limits
            name = re.sub(r"[^\w.-]", "_", Path(f.filename or "image").name).lstrip(".") or "image"
            suffix = (sniff_format(data) or (".png",))[0]
            if not is_image_path(name):
                name += suffix
            n = len(store.uploads) + 1
            path = store.upload_folder() / str(n) / name
            path.parent.mkdir(parents=True)
            path.write_bytes(data)
            key = f"{UPLOAD}{n}/{name}"
            store.uploads[key] = path
            added.append(key)
        return {"added": added}

    @router.get("/api/review/image")
    async def image(path: str) -> FileResponse:
        file = locate(path)
        if not is_image_path(file):
            raise HTTPException(415, f"{path} is not an image file (by its extension)")
        return FileResponse(file)

    @router.get("/api/review/detections")
    async def detections(path: str) -> dict:
        """The image's detections (boxes xyxy in its pixels, best first; ``index`` is the rank Grad-CAM and the
        review refer to) and its review so far."""
        found = await detections_of(path)
        d = found.dets
        rows = [{"index": i, "box": box, "score": score, "label": label, "class_name": names[label]}
                for i, (box, score, label) in enumerate(zip(d.boxes.tolist(), d.scores.tolist(), d.labels.tolist()))]
        review = store.reviews.get(path)
        return {"path": path, "width": found.width, "height": found.height, "floor": floor, "detections": rows,
                "review": review.to_dict() if review and review.found is found else None}

    @router.get("/api/review/cam")
    async def cam(path: str, index: int = Query(..., ge=0, description="the detection's rank (its index)"),
                  method: str = Query("gradcam")) -> Response:
        """The heatmap of one detection blended on the image, with its box (PNG, the image's size)."""
        if method not in METHODS:
            raise HTTPException(422, f"method must be one of {', '.join(METHODS)}, got {method!r}")
        found = await detections_of(path)
        if index >= len(found.dets):
            raise HTTPException(404, f"{path} has {len(found.dets)} detection(s); no index {index}")
        image = await asyncio.to_thread(state.read_file, found.file, path)
        try:
            png = await _on_model_thread(state, lambda: _cam_png(det, image, found.dets, index, method, floor))
        except NoDetectionsError as exc:
            raise HTTPException(404, str(exc)) from None
        return Response(png, media_type="image/png")

    # -- reviews -------------------------------------------------------------------------------------------------

    @router.put("/api/review/review")
    async def put_review(path: str, body: ReviewBody) -> dict:
        """Save the image's review (it replaces the last one): decisions by detection index, drawn boxes, and the
        thresholds it was seen at (default: the server's)."""
        found = store.found.get(path)
        if found is None or found.file != locate(path):
            found = await detections_of(path)
        n = len(found.dets)
        if bad := [i for i in body.statuses if not 0 <= i < n]:
            raise HTTPException(422, f"{path} has {n} detection(s) (0..{n - 1}); no index {bad[0]}")
        t = list(defaults) if body.thresholds is None else body.thresholds
        check_thresholds(t)
        drawn = [_drawn(b, names, found.width, found.height) for b in body.drawn]
        review = _Review(found, dict(body.statuses), drawn, t)
        store.reviews[path] = review
        return {"path": path, "review": review.to_dict(), "reviewed": len(store.reviews)}

    @router.delete("/api/review/review")
    async def delete_review(path: str) -> dict:
        store.reviews.pop(path, None)
        return {"path": path, "reviewed": len(store.reviews)}

    @router.get("/api/review/reviews")
    async def reviews() -> dict:
        rows = [{"path": k, "boxes": len(r.kept()[0])} for k, r in store.reviews.items()]
        return {"reviewed": len(rows), "boxes": sum(r["boxes"] for r in rows), "images": rows}

    # -- export --------------------------------------------------------------------------------------------------

    def dataset() -> DatasetRecords:
        if not store.reviews:
            raise HTTPException(409, "nothing reviewed yet: open images and accept, reject or draw boxes first")
        records = []
        for i, review in enumerate(store.reviews.values()):
            boxes, labels = review.kept()
            f = review.found
            records.append(ImageRecord(f.file, f.width, f.height, boxes, labels, [False] * len(labels), i + 1, "review"))
        ids = list(det.category_ids) if getattr(det, "category_ids", None) else list(range(1, len(names) + 1))
        return DatasetRecords(records, names, ids, split="train", format="coco")

    def summary(ds: DatasetRecords, folder: Path) -> dict:
        return {"folder": str(folder), "images": len(ds), "boxes": sum(r.num_boxes for r in ds.records),
                "negatives": sum(1 for r in ds.records if r.num_boxes == 0),
                "annotations": f"train/{ROBOFLOW_ANNOTATION_FILE}"}

    @router.post("/api/review/export")
    async def export(body: ExportBody) -> dict:
        """Write the reviewed images as a Roboflow-style COCO folder (``train/_annotations.coco.json`` and the
        images, hard-linked or copied) under ``runs/review/NAME``, on the server."""
        if not _FOLDER_NAME.fullmatch(body.name):
            raise HTTPException(403, f"export name {body.name!r}: a plain folder name (letters, digits, . _ -) inside "
                                     f"{EXPORT_PROJECT}/{EXPORT_TASK}/")
        ds = dataset()
        base = Path(EXPORT_PROJECT, EXPORT_TASK).resolve()
        folder = increment_run_dir(EXPORT_PROJECT, EXPORT_TASK, body.name).resolve()
        if not folder.is_relative_to(base):
            raise HTTPException(403, f"export {body.name}: {folder} is outside {base}")
        await asyncio.to_thread(write_dataset, {"train": ds}, folder, "coco")
        return summary(ds, folder)

    @router.get("/api/review/export.zip")
    async def export_zip() -> FileResponse:
        """The same dataset as one zip download (``train/`` at its top)."""
        ds = dataset()
        tmp = Path(tempfile.mkdtemp(prefix="retinadet-export-"))
        try:
            await asyncio.to_thread(write_dataset, {"train": ds}, tmp / "reviewed", "coco")
            archive = await asyncio.to_thread(shutil.make_archive, str(tmp / "reviewed"), "zip", tmp / "reviewed")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return FileResponse(archive, media_type="application/zip", filename="reviewed.zip",
                            background=BackgroundTask(shutil.rmtree, tmp, True))

    return router


def _drawn(b: DrawnBox, names: list[str], width: int, height: int) -> tuple[list[float], int]:
    """A drawn box clipped to the image, its label as a class index; 422 for an unknown class or no area."""
    label = b.label
    if isinstance(label, str):
        if label not in names:
            raise HTTPException(422, f"unknown class {label!r} (the model's: {', '.join(names)})")
        label = names.index(label)
    if not 0 <= label < len(names):
        raise HTTPException(422, f"class index {label} out of range (0..{len(names) - 1})")
    if not all(math.isfinite(v) for v in b.box):
        raise HTTPException(422, f"box {b.box} is not finite")
    x1, y1, x2, y2 = b.box
    x1, x2 = sorted((min(max(x1, 0.0), width), min(max(x2, 0.0), width)))
    y1, y2 = sorted((min(max(y1, 0.0), height), min(max(y2, 0.0), height)))
    if x2 - x1 < 1 or y2 - y1 < 1:
        raise HTTPException(422, f"box {b.box} has no area inside the {width}x{height} image")
    return [x1, y1, x2, y2], label


async def _on_model_thread(state: ServeState, fn):
    """Grad-CAM hooks the model's modules, so it must never overlap a batch's forward pass."""
    return await state.batcher.run_on_model_thread(fn)


def _cam_png(detector, image: torch.Tensor, dets: Detections, index: int, method: str, conf: float) -> bytes:
    """Detector.explain of the detection at ``index`` of ``dets``, as PNG. Grad-CAM decodes its own forward pass;
    should it rank the detections differently, the detection with the same class and the most overlap is explained."""
    exp = _explain_one(detector, image, index, method, conf)
    want, label = dets.boxes[index], int(dets.labels[index])
    got = exp.detections
    if int(got.labels[0]) != label or not torch.allclose(got.boxes[0], want, atol=0.5):
        every = exp.all_detections
        overlap = box_iou(want[None], every.boxes)[0] * (every.labels == label)
        if len(every) and float(overlap.max()) > 0:
            exp = _explain_one(detector, image, int(overlap.argmax()), method, conf)
    buf = io.BytesIO()
    Image.fromarray(exp.overlays[0]).save(buf, format="PNG")
    return buf.getvalue()


def _explain_one(detector, image: torch.Tensor, index: int, method: str, conf: float):
    try:
        return detector.explain(image, method=method, box_index=index, topk=None, conf=conf)
    except ConfigError:  # its own pass found fewer detections: explain the best, whose all_detections _cam_png matches
        return detector.explain(image, method=method, box_index=0, topk=None, conf=conf)
