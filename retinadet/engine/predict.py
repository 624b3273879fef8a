"""``retinadet predict``: images, folders, globs, path lists or videos -> annotated images and predictions.json."""

from __future__ import annotations

import glob
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from retinadet.errors import DataError

from retinadet.engine.sources import VIDEO_SUFFIXES, list_sources as _list_sources


@dataclass
class Frame:
    name: str  # file name (or video stem + frame index)
    image: torch.Tensor  # uint8 [3, H, W]
    source: str


def list_sources(source: str | os.PathLike) -> list[str]:
    """Image paths (or one video) from an image, a folder, a glob, or a text file of paths."""
    return _list_sources(source, video=video_backend)


def video_backend(path: str) -> str:
    """The installed video reader (torchcodec, av or imageio), or a :class:`DataError` naming the options."""
    import importlib.util

    for module, name in (("torchcodec", "torchcodec"), ("av", "av"), ("imageio", "imageio")):
        if importlib.util.find_spec(module) is not None:
            return name
    raise DataError(f"{path}: reading video needs torchcodec, PyAV (`pip install av`) or imageio[ffmpeg]; none is installed")


def read_video_frames(path: str) -> Iterator[torch.Tensor]:
    """uint8 [3, H, W] frames via torchcodec, PyAV or imageio, whichever is installed."""
    try:
        from torchcodec.decoders import VideoDecoder  # type: ignore
    except ImportError:
        VideoDecoder = None
    if VideoDecoder is not None:
        for frame in VideoDecoder(path):
            yield frame
        return
    try:
        import av  # type: ignore
    except ImportError:
        av = None
    if av is not None:
        with av.open(path) as container:
            for frame in container.decode(video=0):
                yield torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1).contiguous()
        return
    try:
        import imageio.v3 as iio  # type: ignore
    except ImportError:
        raise DataError(f"{path}: reading video needs torchcodec, PyAV (`pip install av`) or imageio[ffmpeg]; none is installed") from None
    for frame in iio.imiter(path):
        yield torch.from_numpy(frame[..., :3].copy()).permute(2, 0, 1).contiguous()


def iter_frames(files: list[str]) -> Iterator[Frame]:
    from retinadet.data.images import read_image

    for f in files:
        if Path(f).suffix.lower() in VIDEO_SUFFIXES:
            stem = Path(f).stem
            for i, frame in enumerate(read_video_frames(f)):
                yield Frame(f"{stem}_{i:06d}.jpg", frame, f)
        else:
            yield Frame(Path(f).name, read_image(f), f)


def _batches(frames: Iterator[Frame], size: int) -> Iterator[list[Frame]]:
    buf: list[Frame] = []
    for fr in frames:
        buf.append(fr)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


def predict(weights: Any, source: str | os.PathLike, *, conf: Optional[float] = 0.25, iou: Optional[float] = None,
            max_det: Optional[int] = -1, batch: int = 4, imgsz: Optional[int] = None, device: Optional[str] = None,
            amp: Any = False, save: bool = True, save_txt: bool = False, save_csv: bool = False, project: str = "runs",
            name: Optional[str] = None, exist_ok: bool = False, progress: bool = True, log=print) -> dict[str, Any]:
    """Run a detector (a weights spec or a :class:`Detector`) on ``source``; returns counts and the output folder."""
    if isinstance(weights, (str, os.PathLike)) and os.fspath(weights).lower().endswith(".onnx"):
        from retinadet.export.onnx_runtime import predict_onnx

        return predict_onnx(weights, source, conf=conf, iou=iou, max_det=max_det, batch=batch, imgsz=imgsz, save=save,
                            save_txt=save_txt, save_csv=save_csv, project=project, name=name, exist_ok=exist_ok,
                            progress=progress, log=log)
    from tqdm import tqdm

    from retinadet.detector import Detector, resolve_device
    from retinadet.engine.plots import draw_boxes, save_image
    from retinadet.engine.run_dir import increment_run_dir, write_csv, write_json

    files = list_sources(source)
    det = weights if isinstance(weights, Detector) else _load(weights, device)
    if device is not None and isinstance(weights, Detector):
        det.device = resolve_device(device)
        det.model.to(det.device)
    if imgsz:
        pre = det.model.cfg.preprocess
        pre.min_size, pre.max_size = int(imgsz), int(imgsz)
    out = increment_run_dir(project, "predict", name, exist_ok)
    if save_txt:
        (out / "labels").mkdir(exist_ok=True)
    records: list[dict] = []
    counts: Counter = Counter()
    images = 0
    cat_ids = det.category_ids or list(range(1, len(det.class_names) + 1))
    bar = tqdm(desc="predict", unit="img", disable=not progress, total=len(files) if all(
        Path(f).suffix.lower() not in VIDEO_SUFFIXES for f in files) else None)
    for chunk in _batches(iter_frames(files), max(1, batch)):
        results = det.predict([fr.image for fr in chunk], conf=conf, iou=iou, max_det=max_det, batch_size=len(chunk), amp=amp)
        for image_id, (fr, r) in enumerate(zip(chunk, results), start=images + 1):
            counts.update(r.names)
            for rec in r.to_records():
                records.append({"image_id": image_id, "file_name": fr.name, "source": fr.source,
                                "category_id": int(cat_ids[rec["label"]]), "class_name": rec["class_name"],
                                "bbox": [round(v, 3) for v in rec["bbox"]], "score": round(rec["score"], 5)})
            if save:
                drawn = draw_boxes(fr.image if fr.image.dtype == torch.uint8 else (fr.image * 255).byte(),
                                   r.boxes, r.labels, det.class_names, r.scores)
                save_image(drawn, out / (Path(fr.name).stem + ".png"))
            if save_txt:
                h, w = r.image_size
                lines = [f"{lab} {((x1 + x2) / 2) / w:.6f} {((y1 + y2) / 2) / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f} {s:.5f}"
                         for (x1, y1, x2, y2), s, lab in zip(r.boxes.tolist(), r.scores.tolist(), r.labels.tolist())]
                (out / "labels" / (Path(fr.name).stem + ".txt")).write_text("\n".join(lines) + ("\n" if lines else ""))
        images += len(chunk)
        bar.update(len(chunk))
    bar.close()
    write_json(out / "predictions.json", records)
    if save_csv:
        write_csv(out / "predictions.csv", ["file_name", "class_name", "category_id", "score", "x1", "y1", "x2", "y2"],
                  [[r["file_name"], r["class_name"], r["category_id"], r["score"], r["bbox"][0], r["bbox"][1],
                    round(r["bbox"][0] + r["bbox"][2], 3), round(r["bbox"][1] + r["bbox"][3], 3)] for r in records])
    summary = ", ".join(f"{n} {c}" for c, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "no detections"
    log(f"{images} image(s): {summary}")
    log(f"results saved to {out}")
    return {"save_dir": str(out), "images": images, "counts": dict(counts), "detections": len(records)}


def load_detector(weights: Any):
    """``retinadet.load`` with a pointer to ``retinadet weights import`` when the file is not ours."""
    import retinadet
    from retinadet.errors import CheckpointError

    try:
        return retinadet.load(weights)
    except CheckpointError as exc:
        msg = str(exc)
        if "weights import" in msg or not os.path.isfile(os.fspath(weights)):
            raise
        raise CheckpointError(f"{msg}; not a retinadet checkpoint: if it comes from another tool, convert it with "
                              f"`retinadet weights import {os.fspath(weights)} -o OUT.pt` (see `retinadet weights info`)") from None


def _load(weights: Any, device: Optional[str]):
    det = load_detector(weights)
    if device is not None:
        from retinadet.detector import resolve_device

        det.device = resolve_device(device)
        det.model.to(det.device)
    return det
