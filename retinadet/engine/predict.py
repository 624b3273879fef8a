"""``retinadet predict``: images, folders, globs, path lists or videos -> annotated images and predictions.json."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from retinadet.utils.sources import VIDEO_SUFFIXES, list_sources as _list_sources


@dataclass
class Frame:
    name: str  # file name (or video stem + frame index)
    image: torch.Tensor  # uint8 [3, H, W]
    source: str
    frame_index: Optional[int] = None  # set for video frames


def list_sources(source: str | os.PathLike) -> list[str]:
    """Image paths (or one video) from an image, a folder, a glob, or a text file of paths."""
    from retinadet.engine.video import probe_video

    return _list_sources(source, video=probe_video)


def iter_frames(files: list[str]) -> Iterator[Frame]:
    from retinadet.data.images import read_image
    from retinadet.engine.video import read_video_frames

    for f in files:
        if Path(f).suffix.lower() in VIDEO_SUFFIXES:
            stem = Path(f).stem
            for i, frame in enumerate(read_video_frames(f)):
                yield Frame(f"{stem}_{i:06d}.jpg", frame, f, i)
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

    from retinadet.detector import Detector
    from retinadet.utils.device import resolve_device
    from retinadet.engine.plots import draw_boxes, save_image
    from retinadet.utils.files import increment_run_dir, write_csv, write_json
    from retinadet.engine.video import VideoWriter, probe_video

    files = list_sources(source)
    det = weights if isinstance(weights, Detector) else _load(weights, device)
    if device is not None and isinstance(weights, Detector):
        det.device = resolve_device(device)
        det.model.to(det.device)
    if imgsz:
        pre = det.model.cfg.preprocess
        pre.min_size, pre.max_size = int(imgsz), int(imgsz)
        if pre.fixed_size:
            pre.fixed_size = int(imgsz)
    out = increment_run_dir(project, "predict", name, exist_ok)
    if save_txt:
        (out / "labels").mkdir(exist_ok=True)
    records: list[dict] = []
    counts: Counter = Counter()
    images = 0
    cat_ids = det.category_ids or list(range(1, len(det.class_names) + 1))
    bar = tqdm(desc="predict", unit="img", disable=not progress, total=len(files) if all(
        Path(f).suffix.lower() not in VIDEO_SUFFIXES for f in files) else None)
    writers: dict[str, Any] = {}  # one annotated video per video source
    try:
        for chunk in _batches(iter_frames(files), max(1, batch)):
            results = det.predict([fr.image for fr in chunk], conf=conf, iou=iou, max_det=max_det,
                                  batch_size=len(chunk), amp=amp)
            for image_id, (fr, r) in enumerate(zip(chunk, results), start=images + 1):
                counts.update(r.names)
                for rec in r.to_records():
                    row = {"image_id": image_id, "file_name": fr.name, "source": fr.source,
                           "category_id": int(cat_ids[rec["label"]]), "class_name": rec["class_name"],
                           "bbox": [round(v, 3) for v in rec["bbox"]], "score": round(rec["score"], 5)}
                    if fr.frame_index is not None:
                        row["frame"] = fr.frame_index
                    records.append(row)
                if save:
                    drawn = draw_boxes(fr.image, r.boxes, r.labels, det.class_names, r.scores)
                    if fr.frame_index is None:
                        save_image(drawn, out / (Path(fr.name).stem + ".png"))
                    else:
                        if fr.source not in writers:
                            writers[fr.source] = VideoWriter(out / (Path(fr.source).stem + ".mp4"), probe_video(fr.source))
                        writers[fr.source].write(drawn)
                if save_txt:
                    h, w = r.image_size
                    lines = [f"{lab} {((x1 + x2) / 2) / w:.6f} {((y1 + y2) / 2) / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f} {s:.5f}"
                             for (x1, y1, x2, y2), s, lab in zip(r.boxes.tolist(), r.scores.tolist(), r.labels.tolist())]
                    (out / "labels" / (Path(fr.name).stem + ".txt")).write_text("\n".join(lines) + ("\n" if lines else ""))
            images += len(chunk)
            bar.update(len(chunk))
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    for w in writers.values():
        w.close()
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
    from retinadet.detector import load

    return load(weights)


def _load(weights: Any, device: Optional[str]):
    det = load_detector(weights)
    if device is not None:
        from retinadet.utils.device import resolve_device

        det.device = resolve_device(device)
        det.model.to(det.device)
    return det
