"""Run an exported ONNX RetinaNet with onnxruntime, numpy and Pillow only (never torch).

Preprocessing reproduces the torch path (:func:`retinadet.model.preprocess.preprocess_batch`):
resize by ``min(min_size / short side, max_size / long side)`` with bilinear interpolation
computed exactly as ``torch.nn.functional.interpolate(align_corners=False, antialias=False)``
(Pillow's bilinear resize antialiases when shrinking, so it is not used), zero padding
bottom-right to a multiple of ``size_divisible``, one padded size per batch. Boxes are mapped
back to original pixels as :func:`retinadet.model.preprocess.boxes_to_original` does, and
``predictions.json`` and the annotated images are written as ``retinadet predict`` writes them.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from retinadet.utils.files import atomic_write_text, increment_run_dir
from retinadet.utils.sources import list_sources
from retinadet.errors import DataError
from retinadet.export.errors import ExportError

META_PREFIX = "retinadet."


@dataclass
class OnnxDetections:
    """Detections for one image in its original pixel coordinates (numpy)."""

    boxes: np.ndarray  # [D, 4] float32 xyxy
    scores: np.ndarray  # [D] float32
    labels: np.ndarray  # [D] int64
    class_names: list
    image_size: tuple  # (h, w) of the original image
    source: Optional[str] = None

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def names(self) -> list[str]:
        return [self.class_names[i] for i in self.labels.tolist()]

    def to_records(self) -> list[dict]:
        out = []
        for (x1, y1, x2, y2), s, lb in zip(self.boxes.tolist(), self.scores.tolist(), self.labels.tolist()):
            out.append({"bbox": [x1, y1, x2 - x1, y2 - y1], "score": s, "label": lb, "class_name": self.class_names[lb]})
        return out


# ----------------------------------------------------------------------------- preprocessing


def resize_scale(height: int, width: int, pre: dict) -> float:
    if pre.get("fixed_size") is not None:
        return pre["fixed_size"] / max(height, width)
    return min(pre["min_size"] / min(height, width), pre["max_size"] / max(height, width))


def _linear_indices(in_size: int, out_size: int):
    """Source indices and weights of torch's bilinear kernel (align_corners=False), in float32."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = src.astype(np.int64)
    i1 = np.where(i0 < in_size - 1, i0 + 1, i0)
    l1 = np.clip(src - i0.astype(np.float32), 0.0, 1.0).astype(np.float32)
    return i0, i1, (np.float32(1.0) - l1).astype(np.float32), l1


def resize_bilinear(image: np.ndarray, scale: float) -> np.ndarray:
    """float32 [3, H, W] resized by ``scale`` (output size floor(H * scale)), as torch does it."""
    _, h, w = image.shape
    oh, ow = int(math.floor(float(h * scale))), int(math.floor(float(w * scale)))
    y0, y1, wy0, wy1 = _linear_indices(h, oh)
    x0, x1, wx0, wx1 = _linear_indices(w, ow)
    top, bottom = image[:, y0, :], image[:, y1, :]
    rows = top * wy0[None, :, None] + bottom * wy1[None, :, None]
    return (rows[:, :, x0] * wx0 + rows[:, :, x1] * wx1).astype(np.float32)


def padded_size(sizes: Sequence[Sequence[int]], pre: dict) -> tuple[int, int]:
    d = pre.get("size_divisible", 32)
    if pre.get("fixed_size") is not None:
        side = int(math.ceil(pre["fixed_size"] / d) * d)
        return side, side
    h = max(s[0] for s in sizes)
    w = max(s[1] for s in sizes)
    return int(math.ceil(h / d) * d), int(math.ceil(w / d) * d)


def preprocess(images: Sequence[np.ndarray], pre: dict, input_dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    """uint8 HxWx3 images -> (padded batch [B, 3, H, W], resized sizes [B, 2] int64)."""
    resized = []
    for img in images:
        if img.ndim != 3 or img.shape[2] != 3:
            raise DataError(f"images must be HxWx3 RGB arrays, got shape {img.shape}")
        x = np.ascontiguousarray(img.transpose(2, 0, 1)).astype(np.float32)
        x = x / np.float32(255.0) if img.dtype == np.uint8 else x
        resized.append(resize_bilinear(x, resize_scale(img.shape[0], img.shape[1], pre)))
    sizes = [r.shape[-2:] for r in resized]
    h, w = padded_size(sizes, pre)
    batch = np.zeros((len(resized), 3, h, w), dtype=np.float32)
    for i, r in enumerate(resized):
        batch[i, :, : r.shape[1], : r.shape[2]] = r
    if input_dtype == "uint8":
        batch = np.clip(np.rint(batch * 255.0), 0, 255).astype(np.uint8)
    return batch, np.asarray(sizes, dtype=np.int64)


def boxes_to_original(boxes: np.ndarray, resized_hw: Sequence[int], original_hw: Sequence[int]) -> np.ndarray:
    ratio_h = np.float32(original_hw[0]) / np.float32(resized_hw[0])
    ratio_w = np.float32(original_hw[1]) / np.float32(resized_hw[1])
    return (boxes.astype(np.float32) * np.array([ratio_w, ratio_h, ratio_w, ratio_h], dtype=np.float32)).astype(np.float32)


# ----------------------------------------------------------------------------- the detector


def read_metadata(path: str | os.PathLike, session=None) -> dict[str, Any]:
    """The ``retinadet.*`` metadata_props of an exported model, JSON-decoded."""
    if session is None:
        session = _session(path)
    props = session.get_modelmeta().custom_metadata_map
    meta = {}
    for key, value in props.items():
        if key.startswith(META_PREFIX):
            try:
                meta[key[len(META_PREFIX):]] = json.loads(value)
            except ValueError:
                meta[key[len(META_PREFIX):]] = value
    if "class_names" not in meta or "model_config" not in meta:
        raise ExportError(f"{path}: not a retinadet ONNX export (no retinadet.class_names / retinadet.model_config "
                          "metadata); export one with `retinadet export --weights W.pt --format onnx`")
    return meta


def _session(path, providers=None):
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ExportError("running .onnx models needs onnxruntime: pip install 'retinadet[onnx]' "
                          "(or pip install onnxruntime)") from exc
    if not Path(path).is_file():
        raise ExportError(f"{path}: ONNX file not found")
    try:
        return ort.InferenceSession(os.fspath(path), providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ExportError(f"{path}: onnxruntime cannot load it ({str(exc).splitlines()[0][:200]})") from exc


class OnnxDetector:
    """An exported model with its class names and preprocessing; ``predict`` mirrors
    :meth:`retinadet.detector.Detector.predict` and returns :class:`OnnxDetections`."""

    def __init__(self, path: str | os.PathLike, providers: Optional[Sequence[str]] = None):
        self.path = os.fspath(path)
        self.session = _session(self.path, providers)
        self.meta = read_metadata(self.path, self.session)
        self.class_names = list(self.meta["class_names"])
        self.category_ids = self.meta.get("category_ids")
        self.preprocess_cfg = dict(self.meta["model_config"]["preprocess"])
        self.input_dtype = self.meta.get("input_dtype", "float32")
        self.score_thresh = float(self.meta["score_thresh"])
        self.nms_iou = float(self.meta["nms_iou"])
        self.max_det = int(self.meta["max_det"])

    def __repr__(self) -> str:
        return f"OnnxDetector({self.path}, classes={self.class_names})"

    def run(self, batch: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
        """The raw graph: padded boxes [B, max_det, 4], scores, labels, num_dets [B]."""
        return self.session.run(None, {"images": batch, "image_sizes": sizes})

    def _check_overrides(self, conf, iou, max_det) -> tuple[float, int]:
        if conf is not None and conf < self.score_thresh - 1e-12:
            raise ExportError(f"--conf {conf} is below the score threshold {self.score_thresh} this model was exported "
                              f"with; re-export with `retinadet export ... --conf {conf}`")
        if iou is not None and abs(iou - self.nms_iou) > 1e-9:
            raise ExportError(f"the NMS IoU is fixed at export ({self.nms_iou}); re-export with `retinadet export ... --iou {iou}`")
        if max_det is not None and max_det != -1 and max_det > self.max_det:
            raise ExportError(f"--max-det {max_det} exceeds the {self.max_det} detections this model was exported with; "
                              f"re-export with `retinadet export ... --max-det {max_det}`")
        limit = self.max_det if max_det is None or max_det == -1 else int(max_det)
        return (self.score_thresh if conf is None else float(conf)), limit

    def predict(self, images: Sequence[np.ndarray], conf: Optional[float] = None, iou: Optional[float] = None,
                max_det: Optional[int] = -1, batch_size: int = 4, sources: Optional[Sequence[Optional[str]]] = None) -> list[OnnxDetections]:
        """Detections per uint8 HxWx3 RGB image, boxes in original coordinates.

        ``conf`` at or above the exported threshold filters after the graph (the same result as
        thresholding first: NMS only lets a box suppress lower-scored ones)."""
        thresh, limit = self._check_overrides(conf, iou, max_det)
        sources = list(sources) if sources is not None else [None] * len(images)
        out: list[OnnxDetections] = []
        for start in range(0, len(images), max(1, batch_size)):
            chunk = images[start:start + batch_size]
            batch, sizes = preprocess(chunk, self.preprocess_cfg, self.input_dtype)
            boxes, scores, labels, num = self.run(batch, sizes)
            for i, img in enumerate(chunk):
                n = int(num[i])
                keep = np.nonzero(scores[i, :n] > thresh)[0][:limit]
                orig = (int(img.shape[0]), int(img.shape[1]))
                bx = boxes_to_original(boxes[i, keep], sizes[i].tolist(), orig)
                out.append(OnnxDetections(bx, scores[i, keep].astype(np.float32), labels[i, keep].astype(np.int64),
                                          self.class_names, orig, sources[start + i]))
        return out


# ----------------------------------------------------------------------------- images, drawing


def read_image(path: str | os.PathLike) -> np.ndarray:
    """uint8 HxWx3 RGB with EXIF orientation applied (as :func:`retinadet.data.images.read_image`)."""
    from PIL import Image, ImageOps

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: image file not found")
    try:
        with Image.open(p) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.uint32) >> 8
                return np.repeat(arr.astype(np.uint8)[..., None], 3, axis=2)
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except OSError as exc:
        raise DataError(f"{p}: cannot decode image ({exc})") from exc


def class_colors(num_classes: int) -> list[tuple[int, int, int]]:
    """The class colours of :func:`retinadet.engine.plots.class_colors`."""
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.85, 0.95)) for i in range(max(1, num_classes))]


def draw_boxes(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
               scores: Optional[np.ndarray] = None, width: int = 2) -> np.ndarray:
    """The drawing of :func:`retinadet.engine.plots.draw_boxes` (torchvision's draw_bounding_boxes) in Pillow."""
    from PIL import Image, ImageDraw, ImageFont

    if boxes.shape[0] == 0:
        return image
    colors = class_colors(len(class_names))
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
    from PIL import Image

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    Image.fromarray(image).save(tmp)
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------- predict


def predict_onnx(weights: Any, source: str | os.PathLike, *, conf: Optional[float] = 0.25, iou: Optional[float] = None,
                 max_det: Optional[int] = -1, batch: int = 4, imgsz: Optional[int] = None, save: bool = True,
                 save_txt: bool = False, save_csv: bool = False, project: str = "runs", name: Optional[str] = None,
                 exist_ok: bool = False, progress: bool = True, log=print, **_ignored) -> dict[str, Any]:
    """``retinadet predict`` for ``.onnx`` weights: same folder layout, predictions.json records and drawing."""
    files = list_sources(source)
    det = weights if isinstance(weights, OnnxDetector) else OnnxDetector(weights)
    if imgsz:
        det.preprocess_cfg["min_size"] = det.preprocess_cfg["max_size"] = int(imgsz)
        if det.preprocess_cfg.get("fixed_size") is not None:
            det.preprocess_cfg["fixed_size"] = int(imgsz)
    out = increment_run_dir(project, "predict", name, exist_ok)
    if save_txt:
        (out / "labels").mkdir(exist_ok=True)
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional for the light runner
        tqdm = None
    bar = tqdm(desc="predict", unit="img", total=len(files), disable=not progress) if tqdm else None
    cat_ids = det.category_ids or list(range(1, len(det.class_names) + 1))
    records: list[dict] = []
    counts: Counter = Counter()
    images = 0
    csv_rows = []
    for start in range(0, len(files), max(1, batch)):
        chunk = files[start:start + max(1, batch)]
        arrays = [read_image(f) for f in chunk]
        results = det.predict(arrays, conf=conf, iou=iou, max_det=max_det, batch_size=len(chunk), sources=chunk)
        for image_id, (f, img, r) in enumerate(zip(chunk, arrays, results), start=images + 1):
            fname = Path(f).name
            counts.update(r.names)
            for rec in r.to_records():
                records.append({"image_id": image_id, "file_name": fname, "source": f,
                                "category_id": int(cat_ids[rec["label"]]), "class_name": rec["class_name"],
                                "bbox": [round(v, 3) for v in rec["bbox"]], "score": round(rec["score"], 5)})
                b = records[-1]["bbox"]
                csv_rows.append([fname, rec["class_name"], records[-1]["category_id"], records[-1]["score"], b[0], b[1],
                                 round(b[0] + b[2], 3), round(b[1] + b[3], 3)])
            if save:
                save_image(draw_boxes(img, r.boxes, r.labels, det.class_names, r.scores), out / (Path(fname).stem + ".png"))
            if save_txt:
                h, w = r.image_size
                lines = [f"{lab} {((x1 + x2) / 2) / w:.6f} {((y1 + y2) / 2) / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f} {s:.5f}"
                         for (x1, y1, x2, y2), s, lab in zip(r.boxes.tolist(), r.scores.tolist(), r.labels.tolist())]
                atomic_write_text(out / "labels" / (Path(fname).stem + ".txt"), "\n".join(lines) + ("\n" if lines else ""))
        images += len(chunk)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    atomic_write_text(out / "predictions.json", json.dumps(records, indent=2) + "\n")
    if save_csv:
        import csv
        import io

        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["file_name", "class_name", "category_id", "score", "x1", "y1", "x2", "y2"])
        writer.writerows(csv_rows)
        atomic_write_text(out / "predictions.csv", buf.getvalue())
    summary = ", ".join(f"{n} {c}" for c, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "no detections"
    log(f"{images} image(s): {summary}")
    log(f"results saved to {out}")
    return {"save_dir": str(out), "images": images, "counts": dict(counts), "detections": len(records)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m retinadet.export.onnx_runtime --weights M.onnx --source S``: the predict command
    for machines with onnxruntime but no torch (the options of ``retinadet predict``)."""
    import argparse
    import sys

    from retinadet.errors import RetinadetError

    ap = argparse.ArgumentParser(prog="python -m retinadet.export.onnx_runtime", description=main.__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True, help="an exported .onnx model")
    ap.add_argument("--source", required=True, help="an image, a folder, a glob or a .txt list of paths")
    ap.add_argument("--conf", type=float, default=0.25)
    ap.add_argument("--iou", type=float, default=None)
    ap.add_argument("--max-det", type=int, default=None)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--imgsz", type=int, default=None)
    ap.add_argument("--save-txt", action="store_true")
    ap.add_argument("--save-csv", action="store_true")
    ap.add_argument("--nosave", action="store_true")
    ap.add_argument("--project", default="runs")
    ap.add_argument("--name", default=None)
    ap.add_argument("--exist-ok", action="store_true")
    args = ap.parse_args(argv)
    try:
        predict_onnx(args.weights, args.source, conf=args.conf, iou=args.iou,
                     max_det=-1 if args.max_det is None else args.max_det, batch=args.batch, imgsz=args.imgsz,
                     save=not args.nosave, save_txt=args.save_txt, save_csv=args.save_csv, project=args.project,
                     name=args.name, exist_ok=args.exist_ok, progress=False)
    except RetinadetError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
