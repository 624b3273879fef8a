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
from retinadet.engine import distributed as D
from retinadet.engine.plots import draw_boxes, save_image
from retinadet.engine.video import VideoWriter, probe_video, read_video_frames
from retinadet.errors import DataError
from retinadet.model.inference import detect_images
from retinadet.utils.device import resolve_amp
from retinadet.utils.files import increment_run_dir, write_json
from retinadet.utils.prediction_writer import PredictionWriter, input_key
from retinadet.utils.sentinels import FROM_CONFIG, FromConfig
from retinadet.utils.sources import VIDEO_SUFFIXES
from retinadet.utils.sources import list_sources as _list_sources
from retinadet.utils.thresholds import resolve_thresholds
from retinadet.utils.tiling import TileOptions, TilingReport, tile_options
from retinadet.utils.tissue import tissue_fraction, tissue_mask


@dataclass
class Frame:
    name: str  # file name (or video stem + frame index)
    image: torch.Tensor | RegionImage  # uint8 [3, H, W], or a large tiled TIFF read by region
    source: str
    image_id: int  # the input's position: in the source listing, or the frame number of a video (from 1)
    frame_index: int | None = None  # set for video frames
    overview: tuple[Any, float] | None = None  # a slide's thumbnail (uint8 HxWx3) and its level-0 pixels per pixel


def list_sources(source: str | os.PathLike) -> list[str]:
    """Image paths (or one video) from an image, a folder, a glob, or a text file of paths."""
    return _list_sources(source, video=probe_video)


def iter_frames(files: list[str], writer: PredictionWriter, strict: bool, log, window: str | None = None,
                slide: SlideOptions | None = None, shard: tuple[int, int] = (0, 1)) -> Iterator[Frame]:
    """The inputs not done yet (of this process's share, ``shard`` = (rank, world size): inputs rank, rank + world,
    ...); an unreadable one is fatal with ``strict``, else reported and recorded."""
    bad_packets = 0

    def skip_packet(message: str) -> None:
        nonlocal bad_packets
        bad_packets += 1
        log(f"skipped: {message}")
        writer.skip(0, f"{message.split(': ', 1)[0]}@packet{bad_packets}", message)

    slide = slide or SlideOptions()
    rank, world = shard
    for index, f in enumerate(files, start=1):
        if (index - 1) % world != rank:
            continue
        if Path(f).suffix.lower() in VIDEO_SUFFIXES:
            stem = Path(f).stem
            for i, frame in enumerate(read_video_frames(f, None if strict else skip_packet)):
                yield Frame(f"{stem}_{i:06d}.jpg", frame, f, i + 1, i)
            continue
        if writer.is_done(f):
            continue
        try:
            # A slide, or a large tiled TIFF: read tile by tile, never whole.
            image = open_regions(f, window=window, level=slide.level, mpp=slide.mpp)
            if image is not None:
                log(f"{f}: {describe_region_image(image)}, read by region")
            else:
                if (note := decode_memory_note(f)) is not None:
                    log(note)
                image = read_image(f, window)
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
            tile_match: str = "iou", tile_threshold: float | None = None, full_image: bool = False,
            window: str | None = None, save_labelstudio: bool = False, save_cvat: bool = False, level: int | None = None,
            mpp: float | None = None, tissue: bool = True, dist_info: D.DistInfo | None = None) -> dict[str, Any]:
    """Run ``detector`` (a :class:`retinadet.detector.Detector`: model, class names, category ids) on
    ``source``; returns counts and the output folder. ``conf`` None: the per-class thresholds stored in the
    checkpoint (``val --save-thresholds``), else 0.25. ``imgsz`` resizes to that size instead of the
    model's (the detector is left as it is). ``tile*``/``full_image``: sliced inference
    (:class:`retinadet.utils.tiling.TileOptions`; ``auto`` slices images the whole-image resize would shrink
    below the model's training scale). ``resume``: the folder of an interrupted run to finish;
    ``run_args`` (what the run was asked, for resuming it) go to its ``args.json``. ``window``: another rule for
    images of more than 8 bits than the model's (:mod:`retinadet.utils.window`). ``save_labelstudio``/``save_cvat``:
    the detections as Label Studio / CVAT pre-annotations (:mod:`retinadet.utils.prediction_writer`).

    Slides (SVS, NDPI, MRXS, pyramidal TIFF: :mod:`retinadet.data.regions`) are read by region at ``level`` or
    ``mpp`` (microns per pixel; default level 0), sliced, with the tiles that hold no tissue skipped (``tissue``, a
    mask of the thumbnail); their boxes come back in level-0 pixels (and µm in the CSV), and ``save`` draws an
    overview (the thumbnail with the detections). ``dist_info``: a sharded run under torchrun (each process a share
    of the inputs, its own lines, the first merging them into one result)."""
    tiling = tile_options(tile, tile_overlap, tile_merge, tile_match, tile_threshold, full_image)  # fails before any work
    files = list_sources(source)
    info = dist_info or D.DistInfo()
    if info.rank != 0:
        log = _silent
    slide = SlideOptions(level, mpp, tissue)
    conf, per_class, message = resolve_thresholds(detector.class_names,
                                                  (getattr(detector, "checkpoint", None) or {}).get("thresholds"), conf)
    if message:
        log(message)
    per_class = torch.tensor(per_class) if per_class is not None else None
    model = detector.model
    amp = resolve_amp(amp, detector.device, log)  # "auto": the precision this device runs fast, said in one line
    pre = model.cfg.preprocess.at_size(imgsz).with_window(window)
    out = Path(resume) if resume is not None else None
    if out is None:  # one folder for every process of a sharded run, named by the first
        out = D.broadcast_object(increment_run_dir(project, "predict", name, exist_ok) if info.rank == 0 else None, info)
    writer = PredictionWriter(out, detector.class_names, detector.category_ids, save_txt=save_txt, save_csv=save_csv,
                              save_geojson=save_geojson, save_labelstudio=save_labelstudio, save_cvat=save_cvat,
                              model_version=Path(getattr(detector, "path", None) or "retinadet").name,
                              resume=resume is not None, rank=info.rank, world_size=info.world_size)
    if run_args is not None and resume is None and info.rank == 0:
        write_json(out / "args.json", run_args)
    if writer.done:
        log(f"resuming {out}: {len(writer.done)} input(s) already done")
    videos = any(Path(f).suffix.lower() in VIDEO_SUFFIXES for f in files)
    report = TilingReport(log)
    mine = sum(1 for k in range(len(files)) if k % info.world_size == info.rank)
    total = None if videos else max(0, mine - sum(1 for k, f in enumerate(files) if k % info.world_size == info.rank
                                                 and writer.is_done(f)))
    bar = tqdm(desc="predict" if info.world_size == 1 else f"predict (rank {info.rank})", unit="img",
               disable=not progress, total=total, position=info.rank)
    drawn_videos: dict[str, VideoWriter] = {}  # one annotated video per video source
    try:
        frames = iter_frames(files, writer, strict, log, pre.window, slide, (info.rank, info.world_size))
        for chunk in _batches(frames, max(1, batch)):
            # A frame a resumed run already did is drawn from its recorded detections, so the video stays whole.
            todo = [fr for fr in chunk if not writer.is_done(fr.source, fr.frame_index)]
            common = dict(tiling=tiling, scale=detector.scale, batch_size=batch, report=report, conf=conf, iou=iou,
                          max_det=max_det, amp=amp, class_names=detector.class_names)
            found = _detect(model, todo, pre, common, writer, slide, strict, log, progress)
            if per_class is not None:
                found = {k: r[r.scores >= per_class[r.labels]] for k, r in found.items()}
            for fr in chunk:
                r = found.get(id(fr))
                if r is not None and isinstance(fr.image, RegionImage):
                    level0 = r.boxes * fr.image.downsample  # a slide's boxes in level-0 pixels
                    w0, h0 = fr.image.level0_size
                    writer.add(fr.image_id, fr.name, fr.source, (h0, w0), level0.tolist(), r.scores.tolist(),
                               r.labels.tolist(), mpp=fr.image.mpp0)
                elif r is not None:
                    writer.add(fr.image_id, fr.name, fr.source, r.image_size, r.boxes.tolist(), r.scores.tolist(),
                               r.labels.tolist(), fr.frame_index)
                if save and isinstance(fr.image, RegionImage):
                    if r is not None and fr.overview is not None:
                        thumb, per_px = fr.overview
                        drawn = draw_boxes(torch.from_numpy(thumb).permute(2, 0, 1), level0 / per_px, r.labels,
                                           detector.class_names, width=1)
                        save_image(drawn, out / (Path(fr.name).stem + "_overview.png"))
                elif save and (r is not None or "detections" in writer.done.get(input_key(fr.source, fr.frame_index), {})):
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
    if info.world_size > 1:
        if info.rank != 0:
            writer.close_shard()
        D.barrier(info)  # every process's lines are complete before the first merges them
        if info.rank != 0:
            return {"save_dir": str(out), "rank": info.rank}
    return writer.finish(log, [report.summary()] if report.sliced else [])


@dataclass(frozen=True)
class SlideOptions:
    """How slides are read: a pyramid level, or a resolution in microns per pixel; and whether glass is skipped."""

    level: int | None = None
    mpp: float | None = None
    tissue: bool = True


def _silent(*_args, **_kwargs) -> None:
    """The log of the processes after the first in a sharded run: one voice is enough."""


def describe_region_image(image: RegionImage) -> str:
    w0, h0 = image.level0_size
    at = f"level {image.level} ({image.width}x{image.height} px" + (
        f", resampled 1/{image.resample:.3g}" if image.resample != 1 else "") + ")"
    mpp = f", {image.mpp[0]:.3g} µm/px" if image.mpp is not None else ", no µm/px recorded"
    return f"{w0}x{h0} px slide at {at}{mpp}"


def _detect(model, todo: list[Frame], pre, common: dict, writer: PredictionWriter, slide: SlideOptions, strict: bool,
            log, progress: bool) -> dict[int, Any]:
    """Detections of the frames (by id): ordinary images batched together, each slide on its own with its tissue
    mask and a bar over its tiles. A file that fails while its tiles are read is skipped as an unreadable input
    (``strict``: fatal), and the rest of the run goes on."""
    found: dict[int, Any] = {}
    plain = [fr for fr in todo if not isinstance(fr.image, RegionImage)]
    groups = ([plain] if plain else []) + [[fr] for fr in todo if isinstance(fr.image, RegionImage)]
    for group in groups:
        try:
            options = dict(common)
            bar = None
            if isinstance(group[0].image, RegionImage):
                image = group[0].image
                group[0].overview, keep = _tissue(image, slide, log)
                options["keep_tiles"] = [keep]
                bar = tqdm(desc=Path(group[0].source).name, unit="tile", disable=not progress, leave=False)

                def step(done: int, total: int, bar=bar) -> None:
                    bar.total = total
                    bar.update(done - bar.n)

                options["progress"] = step
            try:
                results = detect_images(model, [fr.image for fr in group], pre, **options)
            finally:
                if bar is not None:
                    bar.close()
            found.update({id(fr): r.cpu() for fr, r in zip(group, results)})
        except DataError as exc:
            if strict or len(group) > 1 and not isinstance(group[0].image, RegionImage):
                if strict:
                    raise
                # Which image of the batch failed: each on its own.
                for fr in group:
                    found.update(_detect(model, [fr], pre, common, writer, slide, strict, log, progress))
                continue
            fr = group[0]
            log(f"skipped: {exc}")
            writer.skip(fr.image_id, fr.source, str(exc))
    return found


def _tissue(image: RegionImage, slide: SlideOptions, log) -> tuple[tuple[Any, float] | None, Any]:
    """The slide's thumbnail (for the overview) and which of its tiles to run (None: all)."""
    try:
        thumb, per_px = image.thumbnail()
    except DataError as exc:
        log(f"{image.path}: no overview or tissue mask ({str(exc).split(': ', 1)[-1]})")
        return None, None
    if not slide.tissue:
        return (thumb, per_px), None
    mask = tissue_mask(thumb)
    scale = per_px / image.downsample  # pixels of the image read per thumbnail pixel

    def keep(grid):
        held = tissue_fraction(mask, grid, scale) > 0
        log(f"{image.path}: tissue covers {mask.mean():.0%} of the slide; {int(held.sum())} of {len(grid)} tiles hold "
            "some and run, the others (glass) are skipped (--no-tissue runs all)")
        return held

    return (thumb, per_px), keep


def _recorded(writer: PredictionWriter, frame: Frame, detector: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The detections a resumed run recorded for ``frame``, as tensors to draw."""
    dets = writer.done[input_key(frame.source, frame.frame_index)]["detections"]
    index = {c: i for i, c in enumerate(writer.category_ids)}
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in dets)], dtype=torch.float32)
    return (boxes.reshape(-1, 4), torch.tensor([d["score"] for d in dets]),
            torch.tensor([index[d["category_id"]] for d in dets], dtype=torch.int64))

