"""``retinadet cam``: explain detections on images and write overlays under runs/cam/<name>/."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from retinadet.errors import DataError, RetinadetError
from retinadet.explain.api import NoDetectionsError, explain
from retinadet.explain.cam import check_options
from retinadet.explain.render import save_png
from retinadet.utils.files import atomic_write_text, increment_run_dir, write_json
from retinadet.utils.sentinels import FROM_CONFIG, FromConfig
from retinadet.utils.sources import VIDEO_SUFFIXES, list_sources
from retinadet.utils.tiling import tile_options


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def run_cam(detector: Any, source: str | os.PathLike, *, method: str = "gradcam", layer: str = "fpn",
            topk: int | None = 5, class_name: str | None = None, box_index: int | None = None, target: str = "cls",
            conf: float | None = 0.25, iou: float | None = None, max_det: int | None | FromConfig = FROM_CONFIG,
            norm_stats: str = "detach", save_npy: bool = False, project: str | os.PathLike = "runs",
            name: str | None = None, exist_ok: bool = False, log: Callable[[str], None] = print,
            strict: bool = False, imgsz: int | None = None, **tiling: Any) -> dict:
    """Explain ``detector``'s (a :class:`retinadet.detector.Detector`) detections on ``source``. Per image with
    detections: ``<stem>_det<i>_<class>.png`` per explained detection, ``<stem>_grid.png``, optionally
    ``<stem>_det<i>.npy`` (raw heatmap, original pixels), and ``cam.json`` for the run. ``tiling``: the sliced-inference
    keywords of ``predict`` (``tile``, ``tile_overlap``, ...; ``tile="auto"`` by default).

    Images without detections are reported and skipped; when no image has any, raises
    :class:`NoDetectionsError` (the CLI exits non-zero) and writes no run folder. An unreadable image is
    reported, skipped and listed in ``skipped.txt`` (``strict``: the first one is fatal).
    """
    check_options(method, layer, target, norm_stats)
    tile_options(**tiling)  # bad options fail before any work
    files = list_sources(source)
    if len(files) == 1 and Path(files[0]).suffix.lower() in VIDEO_SUFFIXES:
        raise RetinadetError(f"{files[0]}: retinadet cam explains images, not videos")
    out: Path | None = None
    records, skipped, unreadable = [], [], []
    n_det, fwd_ms, bwd_ms = 0, [], []
    for path in files:
        try:
            exp = explain(detector, path, method=method, layer=layer, topk=topk, class_name=class_name,
                          box_index=box_index, target=target, conf=conf, iou=iou, max_det=max_det,
                          norm_stats=norm_stats, imgsz=imgsz, log=log, **tiling)
        except NoDetectionsError as exc:
            skipped.append(path)
            log(f"skipped: {exc}")
            continue
        except DataError as exc:  # the file itself: missing, empty, truncated, not an image
            if strict:
                raise
            unreadable.append((path, str(exc)))
            log(f"skipped: {exc}")
            continue
        if out is None:
            out = increment_run_dir(project, "cam", name, exist_ok)
        stem = _slug(Path(path).stem)
        for j, (ov, heat) in enumerate(zip(exp.overlays, exp.heatmaps)):
            rank = int(exp.detection_index[j])
            cls = _slug(exp.detections.names[j])
            save_png(ov, out / f"{stem}_det{rank}_{cls}.png")
            if save_npy:
                np.save(out / f"{stem}_det{rank}.npy", heat.numpy().astype(np.float32))
            box = exp.detections.boxes[j].tolist()
            records.append({"file_name": str(path), "detection": rank, "class_name": exp.detections.names[j],
                            "score": float(exp.detections.scores[j]), "box_xyxy": box,
                            "anchor_index": int(exp.detections.anchor_index[j]),
                            "level": f"P{int(exp.detections.level[j]) + 3}",
                            **({"tile_xyxy": exp.detections.tiles[j].tolist()} if exp.detections.tiles is not None else {}),
                            "overlay": f"{stem}_det{rank}_{cls}.png"})
        save_png(exp.grid(), out / f"{stem}_grid.png")
        n_det += len(exp)
        fwd_ms.append(exp.timing["forward_ms"])
        bwd_ms.extend(exp.timing["backward_ms"])
    if out is None and unreadable and len(unreadable) == len(files):
        raise DataError(f"none of the {len(files)} image(s) at {source} could be read (first: {unreadable[0][1]})")
    if out is None:
        what = "the image" if len(files) == 1 else f"any of the {len(files)} images"
        thresh = "the model's threshold" if conf is None else f"--conf {conf:g}"
        raise NoDetectionsError(f"no detections above {thresh} in {what} at {source}; nothing to explain (try a lower --conf)")
    summary = {"method": method, "layer": layer, "target": target, "norm_stats": norm_stats, "conf": conf,
               "images": len(files) - len(skipped) - len(unreadable), "skipped": skipped,
               "unreadable": [{"file_name": p, "reason": r} for p, r in unreadable], "detections": records,
               "forward_ms_mean": float(np.mean(fwd_ms)),
               "backward_ms_per_detection": float(np.mean(bwd_ms)) if bwd_ms else None}
    write_json(out / "cam.json", summary)
    if unreadable:
        atomic_write_text(out / "skipped.txt", "".join(f"{p}\t{r}\n" for p, r in unreadable))
    per_det = f", {summary['backward_ms_per_detection']:.1f} ms backward per detection" if bwd_ms else ""
    log(f"{method} ({layer}, target {target}): {n_det} detection(s) in {summary['images']} image(s); "
        f"forward {summary['forward_ms_mean']:.1f} ms per image{per_det}")
    if unreadable:
        log(f"{len(unreadable)} unreadable image(s) skipped (skipped.txt)")
    log(f"results saved to {out}")
    return {"save_dir": str(out), "detections": n_det, "skipped": skipped, "unreadable": len(unreadable)}
