"""``retinadet predict``: images, folders, globs, path lists or videos -> annotated images and predictions.

An input that cannot be read is skipped with one line naming it and why, counted, and listed in
``skipped.txt`` (``strict`` makes it fatal). Detections stream to ``predictions.jsonl`` batch by batch, so
``resume`` continues an interrupted run with the inputs it had not finished.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from retinadet.data.images import decode_memory_note, read_image
from retinadet.data.regions import RegionImage, open_regions
from retinadet.engine.plots import draw_boxes, save_image
from retinadet.engine.video import VideoWriter, probe_video, read_video_frames
from retinadet.errors import DataError
from retinadet.model.inference import detect_images
from retinadet.utils.files import increment_run_dir, write_json
from retinadet.utils.prediction_writer import PredictionWriter, input_key
from retinadet.utils.sentinels import FROM_CONFIG, FromConfig
from retinadet.utils.sources import VIDEO_SUFFIXES
from retinadet.utils.sources import list_sources as _list_sources
from retinadet.utils.thresholds import resolve_thresholds
from retinadet.utils.tiling import TileOptions, TilingReport, tile_options


@dataclass
class Frame:
    name: str  # file name (or video stem + frame index)
    image: torch.Tensor | RegionImage  # uint8 [3, H, W], or a large tiled TIFF read by region
    source: str
    image_id: int  # the input's position: in the source listing, or the frame number of a video (from 1)
    frame_index: int | None = None  # set for video frames


def list_sources(source: str | os.PathLike) -> list[str]:
    """Image paths (or one video) from an image, a folder, a glob, or a text file of paths."""
    return _list_sources(source, video=probe_video)


def iter_frames(files: list[str], writer: PredictionWriter, strict: bool, log) -> Iterator[Frame]:
    """The inputs not done yet; an unreadable one is fatal with ``strict``, else reported and recorded."""
    bad_packets = 0

    def skip_packet(message: str) -> None:
        nonlocal bad_packets
        bad_packets += 1
        log(f"skipped: {message}")
        writer.skip(0, f"{message.split(': ', 1)[0]}@packet{bad_packets}", message)

    for index, f in enumerate(files, start=1):
        if Path(f).suffix.lower() in VIDEO_SUFFIXES:
            stem = Path(f).stem
            for i, frame in enumerate(read_video_frames(f, None if strict else skip_packet)):
                yield Frame(f"{stem}_{i:06d}.jpg", frame, f, i + 1, i)
            continue
        if writer.is_done(f):
            continue
        try:
            image = open_regions(f)  # a large tiled TIFF: read tile by tile, never whole
            if image is not None:
                log(f"{f}: {image.width}x{image.height} px tiled TIFF, read by region")
            else:
                if (note := decode_memory_note(f)) is not None:
                    log(note)
                image = read_image(f)
        except DataError as exc:
            if strict:
                raise
            log(f"skipped: {exc}")
            writer.skip(index, f, str(exc))
            continue
        yield Frame(Path(f).name, image, f, index)


def _batches(frames: Iterator[Frame], size: int) -> Iterator[list[Frame]]:
    buf: list[Frame] = []
    for fr in frames:
        buf.append(fr)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


def predict(detector: Any, source: str | os.PathLike, *, conf: float | None = None, iou: float | None = None,
            max_det: int | None | FromConfig = FROM_CONFIG, batch: int = 4, imgsz: int | None = None, amp: Any = False,
            save: bool = True, save_txt: bool = False, save_csv: bool = False, save_geojson: bool = False, project: str = "runs",
            name: str | None = None, exist_ok: bool = False, progress: bool = True, log=print, strict: bool = False,
            resume: str | os.PathLike | None = None, run_args: dict | None = None,
            tile: TileOptions | int | str | None = "auto", tile_overlap: float = 0.2, tile_merge: str = "nms",
            tile_match: str = "iou", tile_threshold: float | None = None, full_image: bool = False) -> dict[str, Any]:
    """Run ``detector`` (a :class:`retinadet.detector.Detector`: model, class names, category ids) on
    ``source``; returns counts and the output folder. ``conf`` None: the per-class thresholds stored in the
    checkpoint (``val --save-thresholds``), else 0.25. ``imgsz`` resizes to that size instead of the
    model's (the detector is left as it is). ``tile*``/``full_image``: sliced inference
    (:class:`retinadet.utils.tiling.TileOptions`; ``auto`` slices images the whole-image resize would shrink
    below the model's training scale). ``resume``: the folder of an interrupted run to finish;
    ``run_args`` (what the run was asked, for resuming it) go to its ``args.json``."""
    tiling = tile_options(tile, tile_overlap, tile_merge, tile_match, tile_threshold, full_image)  # fails before any work
    files = list_sources(source)
    conf, per_class, message = resolve_thresholds(detector.class_names,
                                                  (getattr(detector, "checkpoint", None) or {}).get("thresholds"), conf)
    if message:
        log(message)
    per_class = torch.tensor(per_class) if per_class is not None else None
    model = detector.model
    pre = model.cfg.preprocess.at_size(imgsz)
    out = Path(resume) if resume is not None else increment_run_dir(project, "predict", name, exist_ok)
    writer = PredictionWriter(out, detector.class_names, detector.category_ids, save_txt=save_txt, save_csv=save_csv,
                              save_geojson=save_geojson,
                              resume=resume is not None)
    if run_args is not None and resume is None:
        write_json(out / "args.json", run_args)
    if writer.done:
        log(f"resuming {out}: {len(writer.done)} input(s) already done")
    videos = any(Path(f).suffix.lower() in VIDEO_SUFFIXES for f in files)
    report = TilingReport(log)
    bar = tqdm(desc="predict", unit="img", disable=not progress, total=None if videos else len(files) - len(writer.done))
    drawn_videos: dict[str, VideoWriter] = {}  # one annotated video per video source
    try:
        for chunk in _batches(iter_frames(files, writer, strict, log), max(1, batch)):
            # A frame a resumed run already did is drawn from its recorded detections, so the video stays whole.
            todo = [fr for fr in chunk if not writer.is_done(fr.source, fr.frame_index)]
            results = detect_images(model, [fr.image for fr in todo], pre, tiling=tiling, scale=detector.scale,
                                    batch_size=batch, report=report, conf=conf, iou=iou, max_det=max_det, amp=amp,
                                    class_names=detector.class_names) if todo else []
            found = {id(fr): r.cpu() for fr, r in zip(todo, results)}
            if per_class is not None:
                found = {k: r[r.scores >= per_class[r.labels]] for k, r in found.items()}
            for fr in chunk:
                r = found.get(id(fr))
                if r is not None:
                    writer.add(fr.image_id, fr.name, fr.source, r.image_size, r.boxes.tolist(), r.scores.tolist(),
                               r.labels.tolist(), fr.frame_index)
                if save and isinstance(fr.image, RegionImage):
                    log(f"{fr.source}: read by region, so no annotated copy is drawn (the detections are in predictions.json)")
                elif save:
                    boxes, scores, labels = (r.boxes, r.scores, r.labels) if r is not None else _recorded(writer, fr, detector)
                    drawn = draw_boxes(fr.image, boxes, labels, detector.class_names, scores)
                    if fr.frame_index is None:
                        save_image(drawn, out / (Path(fr.name).stem + ".png"))
                    else:
                        if fr.source not in drawn_videos:
                            drawn_videos[fr.source] = VideoWriter(out / (Path(fr.source).stem + ".mp4"),
                                                                  probe_video(fr.source))
                        drawn_videos[fr.source].write(drawn)
            writer.flush()
            for fr in chunk:
                if isinstance(fr.image, RegionImage):
                    fr.image.close()
            bar.update(len(chunk))
    except BaseException:
        writer.flush()
        for v in drawn_videos.values():
            v.abort()
        raise
    finally:
        bar.close()
    for v in drawn_videos.values():
        v.close()
    return writer.finish(log, [report.summary()] if report.sliced else [])


def _recorded(writer: PredictionWriter, frame: Frame, detector: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The detections a resumed run recorded for ``frame``, as tensors to draw."""
    dets = writer.done[input_key(frame.source, frame.frame_index)]["detections"]
    index = {c: i for i, c in enumerate(writer.category_ids)}
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in dets)], dtype=torch.float32)
    return (boxes.reshape(-1, 4), torch.tensor([d["score"] for d in dets]),
            torch.tensor([index[d["category_id"]] for d in dets], dtype=torch.int64))

