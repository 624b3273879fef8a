"""What the torch-free runners of exported models share: onnxruntime (:mod:`retinadet.export.onnx_runtime`) and
OpenVINO (:mod:`retinadet.export.openvino_runtime`) differ only in how a padded batch runs through their engine.

Preprocessing is the torch path's (:mod:`retinadet.model.preprocess`): the sizes come from the same
rule (:mod:`retinadet.utils.resize`), the resampler is the same antialiased bilinear kernel on uint8,
reimplemented in integer numpy so that its pixels are bit-exact with torch's, zero padding
bottom-right, one padded size per batch. Boxes are mapped back to original pixels per axis, and
``predictions.json`` is written by the writer ``retinadet predict`` uses.

Sliced inference is the torch path's (:func:`retinadet.model.inference.detect_images`): the same
decisions, grid, seam filter and merge from :mod:`retinadet.utils.tiling`, the training scale read
from the export's metadata, and the regions (tiles and whole images) of one call batched alike.
"""

from __future__ import annotations

import copy
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from retinadet.errors import ConfigError, DataError, RetinadetError
from retinadet.export.errors import ExportError
from retinadet.utils import resize as rule
from retinadet.utils.colors import class_colors
from retinadet.utils.files import increment_run_dir, write_json
from retinadet.utils.prediction_writer import PredictionWriter
from retinadet.utils.samples import DEEP_PIL_MODES, is_tiff, read_tiff_samples, to_rgb
from retinadet.utils.sentinels import FROM_CONFIG, FromConfig
from retinadet.utils.sources import list_sources
from retinadet.utils.thresholds import resolve_thresholds
from retinadet.utils.tiling import (
    TileOptions,
    TilePlan,
    TilingReport,
    TrainingScale,
    full_image_keep,
    merge_tiles,
    plan_images,
    plan_regions,
    tile_options,
)

META_PREFIX = "retinadet."


@dataclass
class NumpyDetections:
    """The numpy twin of :class:`retinadet.structures.Detections` (same field names) for one image,
    in its original pixels. The exported graph does not report which anchor produced a detection
    (only Grad-CAM needs it, and that needs torch), so ``anchor_index`` and ``level`` are empty
    arrays unless a caller fills them."""

    boxes: np.ndarray  # [D, 4] float32 xyxy
    scores: np.ndarray  # [D] float32
    labels: np.ndarray  # [D] int64
    image_size: tuple[int, int]  # (h, w) of the original image
    class_names: list[str] = field(default_factory=list)
    source: str | None = None
    anchor_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    level: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # [D, 4] int64 xyxy: the region of the image the network saw for each detection (sliced inference);
    # None when it saw the whole image.
    tiles: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def names(self) -> list[str]:
        return [self.class_names[i] for i in self.labels.tolist()]

    def to_records(self) -> list[dict]:
        """One dict per detection: box as COCO [x, y, w, h], score, label and class name."""
        return [{"bbox": [x1, y1, x2 - x1, y2 - y1], "score": s, "label": lb, "class_name": self.class_names[lb]}
                for (x1, y1, x2, y2), s, lb in zip(self.boxes.tolist(), self.scores.tolist(), self.labels.tolist())]


# ----------------------------------------------------------------------------- preprocessing


def resized_size(height: int, width: int, pre: dict) -> tuple[int, int]:
    """The torch path's size rule, from the ``preprocess`` section of the exported model config."""
    return rule.resized_size(height, width, pre["min_size"], pre["max_size"], pre.get("fixed_size"))


def _aa_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Source indices [out, K], integer weights [out, K] and their precision (bits) of the antialiased bilinear
    kernel, computed as torch's uint8 resize computes them: the float weights rounded to int16 at the largest
    precision that keeps them in range."""
    index, w = _aa_float_weights(in_size, out_size)
    w_max = float(w.max())
    precision = 0
    while precision < 22 and int(0.5 + w_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    v = w * (1 << precision)
    weights = np.where(v < 0, np.trunc(v - 0.5), np.trunc(v + 0.5)).astype(np.int32)
    return index, weights, precision


def _resize_axis(image: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    """One separable pass over ``axis`` (0: rows, 1: columns) of a uint8 HxWxC image, in integers."""
    index, weights, precision = _aa_weights(image.shape[axis], out_size)
    shape = [1, 1, 1]
    shape[axis] = out_size
    acc = np.full(1, 1 << (precision - 1), dtype=np.int32)
    for k in range(index.shape[1]):  # taps of the filter (a handful), each over the whole image at once
        acc = acc + np.take(image, index[:, k], axis=axis).astype(np.int32) * weights[:, k].reshape(shape)
    return np.clip(acc >> precision, 0, 255).astype(np.uint8)


def _resize_axis_float(image: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    """The same pass over a float32 image (a windowed one of more than 8 bits), in float as torch's float resize."""
    index, exact = _aa_float_weights(image.shape[axis], out_size)
    shape = [1, 1, 1]
    shape[axis] = out_size
    acc = np.zeros(1, dtype=np.float32)
    for k in range(index.shape[1]):
        acc = acc + np.take(image, index[:, k], axis=axis) * exact[:, k].reshape(shape).astype(np.float32)
    return acc.astype(np.float32)


def _aa_float_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices [out, K] and float64 weights [out, K] of the antialiased bilinear kernel (Pillow's algorithm:
    a triangle filter widened by the scale, weights normalised), as torch's float resize uses them."""
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    center = scale * (np.arange(out_size) + 0.5)
    xmin = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)
    xsize = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin
    k = np.arange(int(xsize.max()))
    x = np.abs((k[None, :] + xmin[:, None] - center[:, None] + 0.5) * invscale)
    w = np.where((k[None, :] < xsize[:, None]) & (x < 1.0), 1.0 - x, 0.0)
    return np.minimum(xmin[:, None] + k[None, :], in_size - 1), w / w.sum(axis=1, keepdims=True)


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (bit-exact, :func:`resize_uint8`) or float32 HxWxC resized as torch resizes it."""
    if image.dtype == np.uint8:
        return resize_uint8(image, height, width)
    if image.shape[1] != width:
        image = _resize_axis_float(image, width, 1)
    if image.shape[0] != height:
        image = _resize_axis_float(image, height, 0)
    return image


def resize_uint8(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 HxWxC resized with antialiased bilinear, bit-exact with torch's (and so with the training
    loader's and ``retinadet predict``'s) uint8 resize: the horizontal pass first, then the vertical."""
    if image.shape[1] != width:
        image = _resize_axis(image, width, 1)
    if image.shape[0] != height:
        image = _resize_axis(image, height, 0)
    return image


def preprocess(images: Sequence[np.ndarray], pre: dict, input_dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    """uint8 HxWx3 images (or float32 in [0, 1]: windowed ones of more than 8 bits) -> (padded batch [B, 3, H, W],
    resized sizes [B, 2] int64)."""
    resized = []
    floating = any(img.dtype == np.float32 for img in images)
    if floating and input_dtype != "float32":
        raise DataError("an image of more than 8 bits needs a model exported with float32 input (this one takes uint8): "
                        "export it again with the default input type")
    for img in images:
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype not in (np.uint8, np.float32):
            raise DataError(f"images must be HxWx3 uint8 (or [0, 1] float32) RGB arrays, got shape {img.shape} {img.dtype}")
        h, w = resized_size(img.shape[0], img.shape[1], pre)
        r = resize_image(img, h, w).transpose(2, 0, 1)
        resized.append(r.astype(np.float32) / np.float32(255.0) if floating and r.dtype == np.uint8 else r)
    sizes = [r.shape[-2:] for r in resized]
    h, w = rule.padded_size(sizes, pre["size_divisible"], pre.get("fixed_size"))
    batch = np.zeros((len(resized), 3, h, w), dtype=np.float32 if floating else np.uint8)
    for i, r in enumerate(resized):
        batch[i, :, : r.shape[1], : r.shape[2]] = r
    if input_dtype == "float32" and not floating:
        batch = batch.astype(np.float32) / np.float32(255.0)
    return batch, np.asarray(sizes, dtype=np.int64)


def boxes_to_original(boxes: np.ndarray, resized_hw: Sequence[int], original_hw: Sequence[int]) -> np.ndarray:
    """Boxes from resized-image pixels to the original image's, per axis (as the torch path)."""
    ratio = np.array([original_hw[1] / resized_hw[1], original_hw[0] / resized_hw[0]] * 2, dtype=np.float32)
    return (boxes.astype(np.float32) * ratio).astype(np.float32)



def decode_metadata(props: Mapping[str, str], path: str | os.PathLike, fmt: str) -> dict[str, Any]:
    """The ``retinadet.*`` entries of an export's metadata (``props``: key -> JSON text), JSON-decoded, without the
    prefix; refused when they do not describe a retinadet model."""
    meta: dict[str, Any] = {}
    for key, value in props.items():
        if key.startswith(META_PREFIX):
            try:
                meta[key[len(META_PREFIX):]] = json.loads(value)
            except ValueError:
                meta[key[len(META_PREFIX):]] = value
    if "class_names" not in meta or "model_config" not in meta:
        raise ExportError(f"{path}: not a retinadet {fmt} export (no retinadet.class_names / retinadet.model_config "
                          f"metadata); export one with `retinadet export --weights W.pt --format {fmt.lower()}`")
    return meta


# ----------------------------------------------------------------------------- the detector


class ExportedDetector(ABC):
    """An exported model with its class names and preprocessing; ``predict`` mirrors
    :meth:`retinadet.detector.Detector.predict` and returns :class:`NumpyDetections`. A runner subclasses it with
    :meth:`run`, the one thing that differs between engines."""

    def __init__(self, path: str | os.PathLike, meta: dict[str, Any]):
        self.path = os.fspath(path)
        self.meta = meta
        self.class_names = list(self.meta["class_names"])
        self.category_ids = self.meta.get("category_ids")
        self.preprocess_cfg = dict(self.meta["model_config"]["preprocess"])
        self.input_dtype = self.meta.get("input_dtype", "float32")
        self.score_thresh = float(self.meta["score_thresh"])
        self.nms_iou = float(self.meta["nms_iou"])
        self.max_det = int(self.meta["max_det"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path}, classes={self.class_names})"

    def at_size(self, imgsz: int | None) -> ExportedDetector:
        """This model resizing to ``imgsz`` (as ``--imgsz``: min and max side, and the fixed size of a letterbox
        model) instead of its own sizes; the same engine, not a copy of it. None: itself."""
        if not imgsz:
            return self
        other = copy.copy(self)
        other.preprocess_cfg = dict(self.preprocess_cfg, min_size=int(imgsz), max_size=int(imgsz))
        if other.preprocess_cfg.get("fixed_size") is not None:
            other.preprocess_cfg["fixed_size"] = int(imgsz)
        return other

    @abstractmethod
    def run(self, batch: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
        """The raw graph on a padded batch (:func:`preprocess`): boxes [B, max_det, 4], scores, labels, num_dets [B]."""

    def _check_overrides(self, conf, iou, max_det, sliced: bool = False) -> tuple[float, int]:
        """(score threshold, whole-image cap). ``sliced``: every image is sliced (an explicit tile size), so ``max_det``
        caps merged tiles and may exceed the graph's per-run cap."""
        if conf is not None and conf < self.score_thresh - 1e-12:
            raise ExportError(f"--conf {conf} is below the score threshold {self.score_thresh} this model was exported "
                              f"with; re-export with `retinadet export ... --conf {conf}`")
        if iou is not None and abs(iou - self.nms_iou) > 1e-9:
            raise ExportError(f"the NMS IoU is fixed at export ({self.nms_iou}); re-export with `retinadet export ... --iou {iou}`")
        if max_det is not FROM_CONFIG and max_det is not None and max_det > self.max_det and not sliced:
            raise ExportError(f"--max-det {max_det} exceeds the {self.max_det} detections this model was exported with; "
                              f"re-export with `retinadet export ... --max-det {max_det}`")
        limit = self.max_det if max_det is FROM_CONFIG or max_det is None else int(max_det)
        return (self.score_thresh if conf is None else float(conf)), limit

    @property
    def scale(self) -> TrainingScale | None:
        """The scale the model was trained at, from the export's metadata (None: not recorded)."""
        return TrainingScale.from_dict(self.meta.get("scale"))

    def predict(self, images: Sequence[np.ndarray], conf: float | None = None, iou: float | None = None,
                max_det: int | None | FromConfig = FROM_CONFIG, batch_size: int = 4,
                sources: Sequence[str | None] | None = None, tile: TileOptions | int | str | None = "auto",
                tile_overlap: float = 0.2, tile_merge: str = "nms", tile_match: str = "iou",
                tile_threshold: float | None = None, full_image: bool = False, log: Callable[[str], None] | None = None,
                report: TilingReport | None = None) -> list[NumpyDetections]:
        """Detections per uint8 HxWx3 RGB image, boxes in original coordinates.

        ``conf`` at or above the exported threshold filters after the graph (the same result as
        thresholding first: NMS only lets a box suppress lower-scored ones). ``tile*``/``full_image``:
        sliced inference as :meth:`retinadet.detector.Detector.predict` does it (``auto`` slices an image
        the whole-image resize would shrink below the training scale in the metadata). The tiles and
        whole images of the call go through the session ``batch_size`` at a time. Each tile keeps the
        graph's ``max_det``; a sliced image's ``max_det`` (default: no cap) applies after the merge, and may exceed
        the graph's when a tile size is given (every image sliced).
        ``report`` (one across calls, for a run) or ``log`` hears what slicing did."""
        tiling = tile_options(tile, tile_overlap, tile_merge, tile_match, tile_threshold, full_image)
        thresh, limit = self._check_overrides(conf, iou, max_det, sliced=tiling.tile not in (None, "auto"))
        report = report if report is not None else TilingReport(log)
        sources = list(sources) if sources is not None else [None] * len(images)
        pre = self.preprocess_cfg
        plans = plan_images([img.shape[:2] for img in images], pre, tiling, self.scale, report)
        # Regions: (image, tile index or -1 for the whole image, x1, y1, pixels), in detect_images' order.
        boxes, grids = plan_regions([img.shape[:2] for img in images], plans, tiling.full_image)
        regions = [(i, t, x1, y1, images[i][y1:y2, x1:x2]) for i, t, (x1, y1, x2, y2) in boxes]
        # Whole images only: batched in the order given, as the torch path batches them.
        found = self._run_regions([r[4] for r in regions], thresh, batch_size, by_size=any(p is not None for p in plans))
        per_image: list[list[tuple[int, int, int, tuple]]] = [[] for _ in images]
        for (i, t, x1, y1, _), d in zip(regions, found):
            per_image[i].append((t, x1, y1, d))
        cap = None if max_det is FROM_CONFIG or max_det is None else int(max_det)
        out: list[NumpyDetections] = []
        for img, plan, grid, parts, source in zip(images, plans, grids, per_image, sources):
            h, w = int(img.shape[0]), int(img.shape[1])
            if plan is None:
                boxes, scores, labels = (v[:limit] for v in parts[0][3])
                out.append(NumpyDetections(boxes, scores, labels, (h, w), self.class_names, source))
                continue
            th, tw = min(plan.tile[0], h), min(plan.tile[1], w)
            net_scale = rule.resize_scale(th, tw, pre["min_size"], pre["max_size"], pre.get("fixed_size"))
            out.append(self._merge_image(parts, plan, grid, (h, w), tiling, net_scale, cap, source))
        return out

    def network_inputs(self, images: Sequence[np.ndarray], tile: TileOptions | int | str | None = "auto"
                       ) -> list[tuple[np.ndarray, np.ndarray]]:
        """What :meth:`predict` feeds the graph for ``images``, one region (a whole image, or a tile of an image it
        slices) per (batch [1, 3, H, W], sizes [1, 2]) pair: the inputs INT8 calibration measures ranges on."""
        tiling = tile_options(tile)
        shapes = [img.shape[:2] for img in images]
        boxes, _ = plan_regions(shapes, plan_images(shapes, self.preprocess_cfg, tiling, self.scale), tiling.full_image)
        return [preprocess([images[i][y1:y2, x1:x2]], self.preprocess_cfg, self.input_dtype)
                for i, _, (x1, y1, x2, y2) in boxes]

    def _run_regions(self, regions: list[np.ndarray], thresh: float, batch_size: int | None, by_size: bool = True) -> list[tuple]:
        """(boxes in each region's pixels, scores, labels) per region, above ``thresh``; the graph's cap only. Regions
        are batched in the order given or (``by_size``) with others of their own size, as the torch path does."""
        step = max(1, int(batch_size)) if batch_size else max(1, len(regions))
        groups: dict[tuple[int, int], list[int]] = {}
        for k, r in enumerate(regions):
            groups.setdefault((int(r.shape[0]), int(r.shape[1])) if by_size else (0, 0), []).append(k)
        out: list = [None] * len(regions)
        for members in groups.values():
            for start in range(0, len(members), step):
                chunk = members[start:start + step]
                batch, sizes = preprocess([regions[k] for k in chunk], self.preprocess_cfg, self.input_dtype)
                boxes, scores, labels, num = self.run(batch, sizes)
                for i, k in enumerate(chunk):
                    keep = np.nonzero(scores[i, :int(num[i])] > thresh)[0]
                    shape = (int(regions[k].shape[0]), int(regions[k].shape[1]))
                    bx = boxes_to_original(boxes[i, keep], sizes[i].tolist(), shape)
                    out[k] = (bx, scores[i, keep].astype(np.float32), labels[i, keep].astype(np.int64))
        return out

    def _merge_image(self, parts: list[tuple[int, int, int, tuple]], plan: TilePlan, grid: np.ndarray, size: tuple[int, int],
                     tiling: TileOptions, net_scale: float, cap: int | None, source: str | None) -> NumpyDetections:
        """One sliced image's detections: tile boxes moved into image pixels, seams filtered, tiles merged."""
        h, w = size
        boxes, scores, labels, tile_index, regions = [], [], [], [], []
        for t, x1, y1, (bx, sc, lb) in parts:
            if t < 0:  # the whole-image pass adds only what no tile can hold whole
                keep = full_image_keep(bx, plan)
                bx, sc, lb = bx[keep], sc[keep], lb[keep]
                region = [0, 0, w, h]
            else:
                region = grid[t].tolist()
            boxes.append(bx + np.array([x1, y1, x1, y1], dtype=np.float32))
            scores.append(sc)
            labels.append(lb)
            tile_index.append(np.full(len(lb), t, dtype=np.int64))
            regions.append(np.tile(np.array(region, dtype=np.int64), (len(lb), 1)))
        boxes, scores, labels, tile_index, regions = (np.concatenate(x) for x in (boxes, scores, labels, tile_index, regions))
        keep, merged = merge_tiles(boxes, scores, labels, tile_index, grid, h, w, tiling, self.nms_iou, net_scale, cap)
        return NumpyDetections(merged.astype(np.float32), scores[keep], labels[keep], (h, w), self.class_names, source,
                               tiles=regions[keep])


# ----------------------------------------------------------------------------- images, drawing


def read_image(path: str | os.PathLike, window: str | None = None) -> np.ndarray:
    """uint8 HxWx3 RGB with EXIF orientation applied (as :func:`retinadet.data.images.read_image`); an image of more
    than 8 bits (PNG, TIFF; multi-channel TIFF) as float32 in [0, 1] by the model's windowing rule ``window``,
    refused without one."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: image file not found")
    if is_tiff(p) and (samples := read_tiff_samples(p)) is not None:  # deep or multi-channel TIFF, as torch's path
        return to_rgb(samples, str(p), window)
    try:
        with Image.open(p) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in DEEP_PIL_MODES:
                return to_rgb(np.asarray(im), str(p), window)
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except OSError as exc:
        raise DataError(f"{p}: cannot decode image ({exc})") from exc


def draw_boxes(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
               scores: np.ndarray | None = None, width: int = 2) -> np.ndarray:
    """The drawing of :func:`retinadet.engine.plots.draw_boxes` (torchvision's draw_bounding_boxes) in Pillow."""
    if boxes.shape[0] == 0:
        return image
    colors = class_colors(len(class_names))
    if image.dtype != np.uint8:  # a windowed image of more than 8 bits, drawn as the network saw it
        image = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    pil = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(pil)
    font = ImageFont.load_default()
    lab = labels.tolist()
    sc = scores.tolist() if scores is not None else [None] * len(lab)
    margin = width + 1
    for box, c, s in zip(boxes.astype(np.float32).astype(np.int64).tolist(), lab, sc):
        color = colors[c]
        draw.rectangle(box, width=width, outline=color)
        text = class_names[c] if s is None else f"{class_names[c]} {s:.2f}"
        draw.text((box[0] + margin, box[1] + margin), text, fill=color, font=font)
    return np.asarray(pil)


def save_image(image: np.ndarray, path: str | os.PathLike) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    Image.fromarray(image).save(tmp)
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------- predict


def predict_exported(weights: Any, source: str | os.PathLike, opener: Callable[[Any], ExportedDetector], *,
                     conf: float | None = None, iou: float | None = None,
                     max_det: int | None | FromConfig = FROM_CONFIG, batch: int = 4, imgsz: int | None = None,
                     save: bool = True, save_txt: bool = False, save_csv: bool = False, save_geojson: bool = False,
                     project: str = "runs",
                     name: str | None = None, exist_ok: bool = False, progress: bool = True, log=print,
                     amp: Any = False, strict: bool = False, resume: str | os.PathLike | None = None,
                     run_args: dict | None = None, tile: TileOptions | int | str | None = "auto", tile_overlap: float = 0.2,
                     tile_merge: str = "nms", tile_match: str = "iou", tile_threshold: float | None = None,
                     full_image: bool = False, save_labelstudio: bool = False, save_cvat: bool = False,
                     window: str | None = None, level: int | None = None, mpp: float | None = None,
                     tissue: bool = True) -> dict[str, Any]:
    """``retinadet predict`` for exported weights (``opener`` makes the runner's detector of ``weights``, after the
    options and sources are checked): the same folder layout, files, skipping of unreadable
    inputs, resumption and sliced inference (``tile*``/``full_image``, as
    :func:`retinadet.engine.predict.predict`). ``amp`` is accepted for the same signature as the torch path;
    the exported graph runs in its own precision. Images of more than 8 bits are windowed by the rule in the
    metadata (or ``window``). Slides (``level``, ``mpp``, ``tissue``) are read by region by the torch path only:
    asking for them here fails with the way to do it."""
    if level is not None or mpp is not None:
        raise ConfigError("--level/--mpp read whole-slide images by region, which the exported-model runners do not do: "
                          "predict slides with the .pt weights")
    tiling = tile_options(tile, tile_overlap, tile_merge, tile_match, tile_threshold, full_image)  # fails before any work
    files = list_sources(source)
    det = opener(weights)
    conf, per_class, message = resolve_thresholds(det.class_names, det.meta.get("thresholds"), conf,
                                                  floor=det.score_thresh)
    if message:
        log(message)
    det = det.at_size(imgsz)
    out = Path(resume) if resume is not None else increment_run_dir(project, "predict", name, exist_ok)
    writer = PredictionWriter(out, det.class_names, det.category_ids, save_txt=save_txt, save_csv=save_csv,
                              save_geojson=save_geojson, save_labelstudio=save_labelstudio, save_cvat=save_cvat,
                              model_version=Path(det.path).name, resume=resume is not None)
    if run_args is not None and resume is None:
        write_json(out / "args.json", run_args)
    todo = [(i, f) for i, f in enumerate(files, start=1) if not writer.is_done(f)]
    report = TilingReport(log)
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional for the light runner
        tqdm = None
    bar = tqdm(desc="predict", unit="img", total=len(todo), disable=not progress) if tqdm else None
    try:
        for start in range(0, len(todo), max(1, batch)):
            chunk, arrays = [], []
            for index, f in todo[start:start + max(1, batch)]:
                try:
                    arrays.append(read_image(f, window or det.preprocess_cfg.get("window")))
                    chunk.append((index, f))
                except DataError as exc:
                    if strict:
                        raise
                    log(f"skipped: {exc}")
                    writer.skip(index, f, str(exc))
            results = det.predict(arrays, conf=conf, iou=iou, max_det=max_det, batch_size=max(1, batch),
                                  sources=[f for _, f in chunk], tile=tiling, report=report) if chunk else []
            for (index, f), img, r in zip(chunk, arrays, results):
                if per_class is not None:
                    keep = r.scores >= np.asarray(per_class, dtype=np.float32)[r.labels]
                    r = NumpyDetections(r.boxes[keep], r.scores[keep], r.labels[keep], r.image_size, r.class_names,
                                        r.source, tiles=None if r.tiles is None else r.tiles[keep])
                writer.add(index, Path(f).name, f, r.image_size, r.boxes.tolist(), r.scores.tolist(), r.labels.tolist())
                if save:
                    save_image(draw_boxes(img, r.boxes, r.labels, det.class_names, r.scores), out / (Path(f).stem + ".png"))
            writer.flush()
            if bar is not None:
                bar.update(len(todo[start:start + max(1, batch)]))
    finally:
        writer.flush()
        if bar is not None:
            bar.close()
    return writer.finish(log, [report.summary()] if report.sliced else [])


def runner_main(argv: Sequence[str] | None, prog: str, description: str, weights_help: str,
                predict: Callable[..., dict[str, Any]]) -> int:
    """A runner's command line (the options of ``retinadet predict``), for machines without torch; ``predict`` is
    the runner's predict function (weights, source, options)."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--weights", required=True, help=weights_help)
    ap.add_argument("--source", required=True, help="an image, a folder, a glob or a .txt list of paths")
    ap.add_argument("--conf", type=float, default=None, help="score threshold [default: the exported model's "
                    "per-class thresholds, else 0.25]")
    ap.add_argument("--iou", type=float, default=None)
    ap.add_argument("--max-det", type=int, default=None)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--imgsz", type=int, default=None)
    ap.add_argument("--save-txt", action="store_true")
    ap.add_argument("--save-csv", action="store_true")
    ap.add_argument("--save-geojson", action="store_true", help="also write geojson/<stem>.geojson per image (QuPath)")
    ap.add_argument("--save-labelstudio", action="store_true", help="also write labelstudio/tasks.json (Label Studio pre-annotations)")
    ap.add_argument("--save-cvat", action="store_true", help="also write cvat/annotations.xml (CVAT for images 1.1 pre-annotations)")
    ap.add_argument("--nosave", action="store_true")
    ap.add_argument("--project", default="runs")
    ap.add_argument("--name", default=None)
    ap.add_argument("--exist-ok", action="store_true")
    ap.add_argument("--strict", action="store_true", help="stop at the first unreadable image instead of skipping it")
    # Taken as text and checked by TileOptions.parse, so that a bad value fails with one line (as `retinadet predict`).
    ap.add_argument("--tile", default="auto", help="sliced inference: tiles of SIZE px (640, or WxH such as 640x480); auto "
                    "slices an image the whole-image resize would shrink below the scale the model was trained at; off never "
                    "slices [default: auto]")
    ap.add_argument("--tile-overlap", default="0.2", help="overlap of neighbouring tiles, a fraction of the tile [default: 0.2]")
    ap.add_argument("--tile-merge", default="nms", help="nms keeps the best of overlapping tiles' detections, greedy-nmm "
                    "unites their boxes [default: nms]")
    ap.add_argument("--tile-match", default="iou", help="iou, or ios (intersection over the smaller box) [default: iou]")
    ap.add_argument("--tile-threshold", default=None, help="match threshold of the merge [default: the model's NMS IoU]")
    ap.add_argument("--full-image", action=argparse.BooleanOptionalAction, default=False,
                    help="also run the whole image, for objects too large for a tile to hold whole")
    args = ap.parse_args(argv)
    try:
        tiling = TileOptions.parse(args.tile, _number("--tile-overlap", args.tile_overlap), args.tile_merge,
                                   args.tile_match, _number("--tile-threshold", args.tile_threshold), args.full_image)
        predict(args.weights, args.source, conf=args.conf, iou=args.iou,
                max_det=FROM_CONFIG if args.max_det is None else args.max_det, batch=args.batch, imgsz=args.imgsz,
                save=not args.nosave, save_txt=args.save_txt, save_csv=args.save_csv, save_geojson=args.save_geojson,
                save_labelstudio=args.save_labelstudio, save_cvat=args.save_cvat, project=args.project, name=args.name,
                exist_ok=args.exist_ok, progress=False, strict=args.strict, tile=tiling)
    except RetinadetError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    return 0


def _number(flag: str, text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{flag} must be a number, got '{text}'") from None
