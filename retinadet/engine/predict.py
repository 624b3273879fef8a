"""``retinadet predict``: images, folders, globs, path lists or videos -> annotated images and predictions.json."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from retinadet.data.images import read_image
from retinadet.engine.plots import draw_boxes, save_image
from retinadet.engine.video import VideoWriter, probe_video, read_video_frames
from retinadet.model.inference import detect_images
from retinadet.utils.files import increment_run_dir
from retinadet.utils.prediction_writer import PredictionWriter
from retinadet.utils.sentinels import FROM_CONFIG, FromConfig
from retinadet.utils.sources import VIDEO_SUFFIXES
from retinadet.utils.sources import list_sources as _list_sources


@dataclass
class Frame:
    name: str  # file name (or video stem + frame index)
    image: torch.Tensor  # uint8 [3, H, W]
    source: str
    frame_index: int | None = None  # set for video frames


def list_sources(source: str | os.PathLike) -> list[str]:
    """Image paths (or one video) from an image, a folder, a glob, or a text file of paths."""
    return _list_sources(source, video=probe_video)


def iter_frames(files: list[str]) -> Iterator[Frame]:
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


def predict(detector: Any, source: str | os.PathLike, *, conf: float | None = 0.25, iou: float | None = None,
            max_det: int | None | FromConfig = FROM_CONFIG, batch: int = 4, imgsz: int | None = None, amp: Any = False,
            save: bool = True, save_txt: bool = False, save_csv: bool = False, project: str = "runs",
            name: str | None = None, exist_ok: bool = False, progress: bool = True, log=print) -> dict[str, Any]:
    """Run ``detector`` (a :class:`retinadet.detector.Detector`: model, class names, category ids) on
    ``source``; returns counts and the output folder. ``imgsz`` resizes to that size instead of the
    model's (the detector is left as it is)."""
    files = list_sources(source)
    model = detector.model
    pre = model.cfg.preprocess
    if imgsz:
        sizes = pre.size_overrides(imgsz)
        pre = dataclasses.replace(pre, **{k.split(".", 1)[1]: v for k, v in sizes.items()})
    out = increment_run_dir(project, "predict", name, exist_ok)
    writer = PredictionWriter(out, detector.class_names, detector.category_ids, save_txt=save_txt, save_csv=save_csv)
    videos = any(Path(f).suffix.lower() in VIDEO_SUFFIXES for f in files)
    bar = tqdm(desc="predict", unit="img", disable=not progress, total=None if videos else len(files))
    drawn_videos: dict[str, VideoWriter] = {}  # one annotated video per video source
    try:
        for chunk in _batches(iter_frames(files), max(1, batch)):
            results = detect_images(model, [fr.image for fr in chunk], conf=conf, iou=iou, max_det=max_det, amp=amp,
                                    class_names=detector.class_names, preprocess=pre)
            for fr, r in zip(chunk, results):
                r = r.cpu()
                writer.add(fr.name, fr.source, r.image_size, r.boxes.tolist(), r.scores.tolist(), r.labels.tolist(),
                           fr.frame_index)
                if not save:
                    continue
                drawn = draw_boxes(fr.image, r.boxes, r.labels, detector.class_names, r.scores)
                if fr.frame_index is None:
                    save_image(drawn, out / (Path(fr.name).stem + ".png"))
                else:
                    if fr.source not in drawn_videos:
                        drawn_videos[fr.source] = VideoWriter(out / (Path(fr.source).stem + ".mp4"), probe_video(fr.source))
                    drawn_videos[fr.source].write(drawn)
            bar.update(len(chunk))
    except BaseException:
        for v in drawn_videos.values():
            v.abort()
        raise
    finally:
        bar.close()
    for v in drawn_videos.values():
        v.close()
    result = writer.close()
    log(writer.summary())
    log(f"results saved to {out}")
    return result
