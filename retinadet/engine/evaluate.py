"""COCO evaluation (pycocotools): the one function used by training's validation and ``retinadet val``."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_iou
from tqdm import tqdm

from retinadet.data.formats.coco import coco_api
from retinadet.data.images import read_image
from retinadet.data.records import DatasetRecords
from retinadet.data.regions import RegionImage, open_regions
from retinadet.engine.datasets import eval_split
from retinadet.engine.distributed import DistInfo, all_gather_objects
from retinadet.engine.error_analysis import draw_worst, error_analysis, format_errors
from retinadet.engine.froc import HitRule, froc_of_match, match_lesions
from retinadet.engine.loaders import eval_loader
from retinadet.engine.operating_point import (
    OperatingPoint,
    at_thresholds,
    choose_thresholds,
    format_operating_point,
    overall,
    uncalibrated,
)
from retinadet.engine.plots import plot_confusion, plot_froc, plot_pr_curves, plot_roc
from retinadet.engine.report import write_report
from retinadet.engine.screening import format_screening, screening
from retinadet.errors import ConfigError, DataError
from retinadet.model.config import PreprocessConfig
from retinadet.model.inference import detect_batch, detect_images
from retinadet.model.preprocess import InputBatch
from retinadet.structures import Detections
from retinadet.utils.device import resolve_amp
from retinadet.utils.files import atomic_write_text, increment_run_dir, write_json
from retinadet.utils.scores import round_score
from retinadet.utils.sentinels import FROM_CONFIG, FromConfig
from retinadet.utils.tiling import TileOptions, TilingReport, TrainingScale, plan_tiles, shrink_warning, tile_options

STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
_STAT_TEXT = [
    "AP @[IoU=0.50:0.95 | area=all | maxDets={M}]", "AP @[IoU=0.50 | area=all | maxDets={M}]",
    "AP @[IoU=0.75 | area=all | maxDets={M}]", "AP @[IoU=0.50:0.95 | area=small | maxDets={M}]",
    "AP @[IoU=0.50:0.95 | area=medium | maxDets={M}]", "AP @[IoU=0.50:0.95 | area=large | maxDets={M}]",
    "AR @[IoU=0.50:0.95 | area=all | maxDets=1]", "AR @[IoU=0.50:0.95 | area=all | maxDets=10]",
    "AR @[IoU=0.50:0.95 | area=all | maxDets={M}]", "AR @[IoU=0.50:0.95 | area=small | maxDets={M}]",
    "AR @[IoU=0.50:0.95 | area=medium | maxDets={M}]", "AR @[IoU=0.50:0.95 | area=large | maxDets={M}]",
]
# COCO's usual cap; the stats keep their usual names (AR100 is recall at the cap) whatever the cap is.
COCO_MAX_DETS = 100


def stat_labels(max_dets: int = COCO_MAX_DETS) -> list[str]:
    """pycocotools' label of each stat, at a cap of ``max_dets`` detections per image."""
    return [t.replace("{M}", str(max_dets)) for t in _STAT_TEXT]


STAT_LABELS = stat_labels()


@dataclass
class EvalResult:
    stats: dict[str, float]
    per_class_ap: dict[str, float]
    per_class_ap50: dict[str, float]
    detections: dict[int, Detections]  # image id -> its detections (original pixels, CPU)
    precision: np.ndarray | None = None  # COCOeval precision [T, R, K, A, M]
    confusion: np.ndarray | None = None
    first_batch: dict | None = None
    extra: dict = field(default_factory=dict)
    max_dets: int = COCO_MAX_DETS  # COCO's cap of detections per image in these stats

    def metrics(self) -> dict[str, Any]:
        """Plain numbers for checkpoints and metrics.json."""
        return {**{k: float(v) for k, v in self.stats.items()}, "per_class_AP": dict(self.per_class_ap),
                "per_class_AP50": dict(self.per_class_ap50),
                "num_detections": sum(len(d) for d in self.detections.values()), "max_dets": self.max_dets, **self.extra}


@torch.no_grad()
def run_inference(model, loader, device: torch.device, *, amp: Any = False, conf: float | None = None,
                  iou: float | None = None, max_det: int | None | FromConfig = FROM_CONFIG,
                  keep_first_batch: bool = False, progress: bool = False
                  ) -> tuple[dict[int, Detections], dict | None, list[str]]:
    """Detections of every image of ``loader`` (batches of :func:`retinadet.engine.loaders.eval_loader`),
    by image id, through the one inference path (:func:`retinadet.model.inference.detect_batch`), and the
    files the loader could not read (skipped: their boxes count as missed)."""
    out: dict[int, Detections] = {}
    first = None
    skipped: list[str] = []
    for batch in tqdm(loader, desc="val", leave=False, disable=not progress):
        skipped += batch.get("stats", {}).get("skipped", [])
        inputs = InputBatch(batch["images"].to(device, non_blocking=True), batch["image_sizes"].to(device),
                            batch["orig_sizes"].to(device))
        dets = detect_batch(model, inputs, conf=conf, iou=iou, max_det=max_det, amp=amp)
        for image_id, path, d in zip(batch["image_ids"].tolist(), batch["paths"], dets):
            d.source = path
            out[image_id] = d.cpu()
        if keep_first_batch and first is None:
            first = {"images": batch["images"], "image_sizes": batch["image_sizes"], "boxes": batch["boxes"],
                     "labels": batch["labels"],
                     "dets": [d.cpu().rescaled(s) for d, s in zip(dets, batch["image_sizes"].tolist())]}
    return out, first, skipped


def coco_array(detections: dict[int, Detections], category_ids: Sequence[int]) -> np.ndarray:
    """[D, 7] rows (image_id, x, y, w, h, score, category_id), the array pycocotools' loadRes takes."""
    parts = [np.zeros((0, 7))]
    cat = np.asarray(category_ids, dtype=np.float64)
    for image_id, d in detections.items():
        if len(d):
            parts.append(np.concatenate([np.full((len(d), 1), float(image_id)), d.xywh().double().numpy(),
                                         d.scores.double().numpy()[:, None], cat[d.labels.numpy()][:, None]], axis=1))
    return np.concatenate(parts)


def coco_max_dets(detections: dict[int, Detections], cap: int | None) -> int:
    """COCO's cap of detections per image: the model's own ``cap``, so that crowded images (hundreds of cells) are
    not cut to COCO's 100; without a cap, the most any image has (never below 100)."""
    if cap is not None:
        return int(cap)
    return max([COCO_MAX_DETS, *(len(d) for d in detections.values())])


def coco_eval(data: DatasetRecords, detections: dict[int, Detections], max_dets: int = COCO_MAX_DETS
              ) -> tuple[dict[str, float], np.ndarray | None]:
    """The 12 COCO stats at ``max_dets`` detections per image and COCOeval's precision array (None when there are
    no detections)."""
    arr = coco_array(detections, data.category_ids)
    if len(arr) == 0:
        return {k: 0.0 for k in STAT_NAMES}, None
    gt = coco_api(data.records, data.class_names, data.category_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(arr)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = sorted(int(r.image_id) for r in data.records)
        ev.params.maxDets = [1, 10, int(max_dets)]
        ev.evaluate()
        ev.accumulate()
    precision = np.asarray(ev.eval["precision"])
    return summarize(precision, np.asarray(ev.eval["recall"]), np.asarray(ev.params.iouThrs)), precision


def summarize(precision: np.ndarray, recall: np.ndarray, iou_thrs: np.ndarray) -> dict[str, float]:
    """The 12 COCO stats from COCOeval's accumulated arrays (precision [T, R, K, A, M], recall [T, K, A, M]), at
    its last cap of detections per image. pycocotools' own ``summarize`` reads its AP at a cap of 100 whatever
    the caps are, so it cannot report a larger one."""
    def mean(x: np.ndarray) -> float:
        x = x[x > -1]
        return float(x.mean()) if x.size else -1.0

    t50, t75 = (int(np.argmin(np.abs(iou_thrs - t))) for t in (0.5, 0.75))
    ap = [mean(precision[..., 0, -1]), mean(precision[t50, ..., 0, -1]), mean(precision[t75, ..., 0, -1]),
          *(mean(precision[..., a, -1]) for a in (1, 2, 3))]
    ar = [mean(recall[..., 0, m]) for m in (0, 1, 2)] + [mean(recall[..., a, -1]) for a in (1, 2, 3)]
    return dict(zip(STAT_NAMES, ap + ar))


def per_class_ap(precision: np.ndarray | None, class_names: Sequence[str]) -> tuple[dict[str, float], dict[str, float]]:
    """AP (IoU .50:.95) and AP50 per class, area all, 100 detections; -1 for a class with no GT."""
    ap, ap50 = {}, {}
    for k, name in enumerate(class_names):
        if precision is None:
            ap[name] = ap50[name] = 0.0
            continue
        p = precision[:, :, k, 0, -1]
        ap[name] = float(p[p > -1].mean()) if (p > -1).any() else -1.0
        p50 = p[0]
        ap50[name] = float(p50[p50 > -1].mean()) if (p50 > -1).any() else -1.0
    return ap, ap50


def confusion_matrix(data: DatasetRecords, detections: dict[int, Detections], conf: float = 0.25,
                     iou: float = 0.5) -> np.ndarray:
    """[K+1, K+1]: rows predicted class, columns true class; index K is background. Greedy matching per
    image, best score first (a Python loop over detections: run once per evaluation, not per step)."""
    k = data.num_classes
    m = np.zeros((k + 1, k + 1), dtype=np.int64)
    for r in data.records:
        keep = ~r.crowd
        gt_boxes, gt_labels = torch.from_numpy(r.boxes[keep]).double(), r.labels[keep]
        d = detections.get(int(r.image_id))
        d = d[d.scores >= conf] if d is not None else Detections.empty((r.height, r.width))
        order = torch.argsort(-d.scores, stable=True)
        pb, pl = d.boxes[order].double(), d.labels[order].numpy()
        matched_gt = np.zeros(len(gt_labels), dtype=bool)
        if len(d) and len(gt_labels):
            ious = box_iou(pb, gt_boxes).numpy()
            for i in range(len(pl)):
                cand = np.where(~matched_gt & (ious[i] >= iou))[0]
                if len(cand):
                    j = cand[np.argmax(ious[i, cand])]
                    matched_gt[j] = True
                    m[pl[i], gt_labels[j]] += 1
                else:
                    m[pl[i], k] += 1
        else:
            np.add.at(m, (pl, np.full(len(pl), k)), 1)
        np.add.at(m, (np.full(int((~matched_gt).sum()), k), gt_labels[~matched_gt]), 1)
    return m


def evaluate(model, data: DatasetRecords, *, batch_size: int = 8, workers: int = 0, device: torch.device | str = "cpu",
             amp: Any = False, dist_info: DistInfo | None = None, matrix_conf: float = 0.25, keep_first_batch: bool = False,
             progress: bool = False, batches: Sequence[dict] | None = None, with_confusion: bool = True,
             preprocess: PreprocessConfig | None = None, conf: float | None = None, iou: float | None = None,
             max_det: int | None | FromConfig = FROM_CONFIG, tiling: TileOptions | None = None,
             scale: TrainingScale | None = None, log=None) -> EvalResult | None:
    """Run ``model`` on ``data`` (resized by ``preprocess``, default the model's), then COCO-evaluate. Under DDP every
    rank infers on its shard; predictions are gathered and rank 0 evaluates (other ranks get None). ``batches``: this
    rank's batches of ``data`` from ``eval_loader``, already decoded (training keeps them between epochs).
    ``conf``/``iou``/``max_det``: the inference options (default: the model's). ``tiling``: sliced inference of the
    images it decides to slice from ``scale`` (then every image is read whole and goes through
    :func:`retinadet.model.inference.detect_images`). ``matrix_conf``: the confusion matrix's score threshold;
    ``with_confusion=False`` leaves the matrix to ``write_eval_outputs``, for callers that draw only the last of many
    evaluations. ``log`` hears what sliced inference did."""
    info = dist_info or DistInfo()
    device = torch.device(device)
    pre = preprocess or model.cfg.preprocess
    sliced = tiling is not None and any(plan_tiles(r.height, r.width, pre, scale, tiling) is not None for r in data.records)
    options = dict(conf=conf, iou=iou, max_det=max_det, amp=amp)
    if sliced:
        report = TilingReport(log if info.is_main else None)
        dets, skipped = run_sliced_inference(model, data, pre, tiling, scale, batch_size, report, info, progress, **options)
        first = None
    else:
        _warn_shrunk(data, pre, scale, log if info.is_main else None)
        loader = batches if batches is not None else eval_loader(data, pre, batch_size, workers, info.rank, info.world_size)
        dets, first, skipped = run_inference(model, loader, device, keep_first_batch=keep_first_batch, progress=progress,
                                             **options)
    parts = all_gather_objects((dets, skipped), info)
    if not info.is_main:
        return None
    dets = {image_id: d for part, _ in parts for image_id, d in part.items()}
    skipped = sorted({path for _, paths in parts for path in paths})
    cap = model.cfg.inference.max_det if max_det is FROM_CONFIG else max_det
    max_dets = coco_max_dets(dets, None if sliced and max_det is FROM_CONFIG else cap)
    stats, precision = coco_eval(data, dets, max_dets)
    ap, ap50 = per_class_ap(precision, data.class_names)
    confusion = confusion_matrix(data, dets, matrix_conf) if with_confusion else None
    extra = {"skipped_images": skipped} if skipped else {}
    return EvalResult(stats, ap, ap50, dets, precision, confusion, first, extra, max_dets)


@torch.no_grad()
def run_sliced_inference(model, data: DatasetRecords, preprocess: PreprocessConfig, tiling: TileOptions,
                         scale: TrainingScale | None, batch_size: int, report: TilingReport, info: DistInfo,
                         progress: bool = False, **options) -> tuple[dict[int, Detections], list[str]]:
    """Detections of this rank's images of ``data`` (images r, r+world, ...), each read whole and sliced as
    ``tiling`` decides, ``batch_size`` images (and their tiles ``batch_size`` at a time) per step; unreadable
    files are skipped and listed (their boxes count as missed)."""
    records = data.records[info.rank::info.world_size]
    out: dict[int, Detections] = {}
    skipped: list[str] = []
    step = max(1, int(batch_size))
    bar = tqdm(total=len(records), desc="val (sliced)", leave=False, disable=not progress)
    for start in range(0, len(records), step):
        images, kept = [], []
        for r in records[start:start + step]:
            try:
                # A large tiled TIFF is read by region.
                images.append(open_regions(r.path, window=preprocess.window) or read_image(r.path, preprocess.window))
                kept.append(r)
            except DataError:
                skipped.append(str(r.path))
        if images:
            dets = detect_images(model, images, preprocess, tiling=tiling, scale=scale, batch_size=step, report=report,
                                 **options)
            for r, d in zip(kept, dets):
                d.source = str(r.path)
                out[int(r.image_id)] = d.cpu()
            for img in images:
                if isinstance(img, RegionImage):
                    img.close()
        bar.update(len(records[start:start + step]))
    bar.close()
    if report.log is not None:
        report.log(report.summary())
    return out, skipped


def _warn_shrunk(data: DatasetRecords, preprocess: PreprocessConfig, scale: TrainingScale | None, log) -> None:
    """Say when whole-image inference shows images much smaller than the model was trained at."""
    if log is None or scale is None:
        return
    for r in data.records:
        warning = shrink_warning(r.height, r.width, preprocess, scale)
        if warning:
            log(f"warning: {warning}")
            return


def coco_results(detections: dict[int, Detections], category_ids: Sequence[int]) -> list[dict]:
    """COCO results-format dicts (what pycocotools' ``loadRes`` reads), category ids mapped back to the dataset's."""
    return [{"image_id": int(row[0]), "category_id": int(row[6]), "bbox": [round(v, 3) for v in row[1:5]],
             "score": round_score(row[5])} for row in coco_array(detections, category_ids).tolist()]


def format_stats(stats: dict[str, float], max_dets: int = COCO_MAX_DETS) -> str:
    labels = stat_labels(max_dets)
    width = max(len(s) for s in labels)
    return "\n".join(f"  {name:<6} {label:<{width}}  {stats[name]:.4f}" for name, label in zip(STAT_NAMES, labels))


def format_froc(f: dict) -> str:
    points = "  ".join(f"{p:g}: {v:.3f}" for p, v in zip(f["fppi"], f["sensitivity"]))
    lines = [f"FROC (hit {f['hit']}; sensitivity at false positives per image {points})",
             f"  all classes  score {f['score']:.4f}  95% CI [{f['ci95'][0]:.4f}, {f['ci95'][1]:.4f}]  "
             f"({f['lesions']} lesions, {f['images']} images)"]
    for name, part in f["per_class"].items():
        lines.append(f"  {name:11}  score {part['score']:.4f}  95% CI [{part['ci95'][0]:.4f}, {part['ci95'][1]:.4f}]")
    return "\n".join(lines)


def format_per_class(result: EvalResult, data: DatasetRecords) -> str:
    counts = data.boxes_per_class()
    w = max(8, max(len(n) for n in data.class_names))
    lines = [f"  {'class':<{w}} {'boxes':>6} {'AP':>7} {'AP50':>7}"]
    for name in data.class_names:
        lines.append(f"  {name:<{w}} {counts[name]:>6} {result.per_class_ap[name]:>7.4f} {result.per_class_ap50[name]:>7.4f}")
    return "\n".join(lines)


def write_eval_outputs(result: EvalResult, data: DatasetRecords, out_dir: str | os.PathLike, matrix_conf: float,
                       plots: bool = True) -> dict[str, Path]:
    """metrics.json, predictions.json (COCO results), PR curves and confusion matrix PNGs, and skipped.txt
    when images could not be read."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"metrics": write_json(out / "metrics.json", result.metrics()),
             "predictions": write_json(out / "predictions.json", coco_results(result.detections, data.category_ids))}
    skipped = result.extra.get("skipped_images")
    if skipped:
        files["skipped"] = atomic_write_text(out / "skipped.txt", "".join(f"{p}\n" for p in skipped))
    if plots:
        files["pr_curves"] = plot_pr_curves(result.precision, data.class_names, out / "PR_curves.png")
        if result.confusion is None:
            result.confusion = confusion_matrix(data, result.detections, matrix_conf)
        files["confusion"] = plot_confusion(result.confusion, data.class_names, out / "confusion_matrix.png", matrix_conf)
        if "froc" in result.extra:
            files["froc"] = plot_froc(result.extra["froc"], out / "FROC.png")
        if "screening" in result.extra:
            files["roc"] = plot_roc(result.extra["screening"], out / "ROC.png")
    return files


def evaluate_detector(detector, data: str | os.PathLike | None = None, split: str | None = None, *,
                      batch: int | None = None, workers: int = 0, device: str | None = None, amp: Any = False,
                      conf: float | None = None, iou: float | None = None, max_det: int | None | FromConfig = FROM_CONFIG,
                      imgsz: int | None = None, matrix_conf: float = 0.25,
                      tile: TileOptions | int | str | None = "auto", tile_overlap: float = 0.2, tile_merge: str = "nms",
                      tile_match: str = "iou", tile_threshold: float | None = None, full_image: bool = False,
                      save_dir: str | os.PathLike | None = None, plots: bool = True,
                      project: str = "runs", name: str | None = None, exist_ok: bool = False,
                      log=print, progress: bool = False, froc_hit: str = "iou:0.5",
                      operating_point: str | None = None, window: str | None = None) -> dict[str, Any]:
    """``Detector.val``: COCO metrics, FROC and operating points of a loaded detector on a dataset split.

    Without ``data`` the dataset (and val split, carved or not) recorded in the checkpoint is
    used, with the validation batch size recorded there. ``conf``/``iou``/``max_det``/``imgsz``: inference as in
    ``predict`` (default: the model's); ``tile*``/``full_image``: sliced inference as in ``predict`` (``auto`` slices
    the images the model's training scale calls for). ``matrix_conf``: the score threshold of the confusion matrix, the error counts and
    the gallery. ``froc_hit``: when a detection finds a lesion (``iou:T`` or ``center``). ``operating_point``
    (``fppi=F``, ``sensitivity=S``, ``f1``) chooses a score threshold per class on this split; thresholds stored
    in the checkpoint are reported as reached here. Writes outputs to ``save_dir`` (or a new
    ``<project>/val/<name>``) and returns the metrics dict.
    """
    rule = HitRule.parse(froc_hit)  # bad options fail before any inference
    point = OperatingPoint.parse(operating_point) if operating_point else None
    pre = detector.model.cfg.preprocess.at_size(imgsz).with_window(window)
    tiling = tile_options(tile, tile_overlap, tile_merge, tile_match, tile_threshold, full_image)
    ck = detector.checkpoint or {}
    records = eval_records(data, split, ck.get("data"), detector.class_names, detector.category_ids)
    batch = int(batch or (ck.get("train_config") or {}).get("val_batch") or 8)
    if device is not None:
        detector.to(device)
    amp = resolve_amp(amp, detector.device, log)  # "auto": the precision this device runs fast, said in one line
    result = evaluate(detector.model, records, batch_size=batch, workers=workers, device=detector.device, amp=amp,
                      matrix_conf=matrix_conf, progress=progress, preprocess=pre, conf=conf, iou=iou, max_det=max_det,
                      tiling=tiling, scale=TrainingScale.from_dict(ck.get("scale")), log=log)
    return _val_outputs(result, records, getattr(detector, "path", None) or "model", rule, point, ck.get("thresholds"),
                        matrix_conf, pre.window, save_dir, plots, project, name, exist_ok, log)


def eval_records(data: str | os.PathLike | None, split: str | None, recorded: dict | None, class_names: Sequence[str],
                 category_ids: Sequence[int] | None) -> DatasetRecords:
    """The split ``val`` evaluates on: of ``data``, or without it of the dataset the weights record (``recorded``: a
    checkpoint's data info, with its val split, carved or not), checked against the weights' classes and for boxes."""
    if data is None:
        if not isinstance(recorded, dict):
            raise ConfigError("these weights record no dataset; pass --data")
        records = eval_split(recorded, split)
    else:
        records = eval_split(data, split)
    check_classes(class_names, records)
    if not any((~r.crowd).any() for r in records.records):
        raise DataError(f"{records.root}: split '{records.split or 'val'}' has no ground-truth boxes; "
                        "val measures against labelled images (predict runs on unlabelled ones)")
    if category_ids is not None and data is None:
        records = _with_category_ids(records, category_ids)
    return records


def _val_outputs(result: EvalResult, records: DatasetRecords, title: str, rule: HitRule, point: OperatingPoint | None,
                 stored_thresholds: dict | None, matrix_conf: float, window: str | None, save_dir, plots: bool,
                 project: str, name: str | None, exist_ok: bool, log) -> dict[str, Any]:
    """The clinical analysis, files (metrics.json, predictions, plots, report.html) and printed tables of one ``val``."""
    split_name = records.split or "val"
    reports = clinical_analysis(result, records, split_name, rule, point, stored_thresholds, matrix_conf)
    out = Path(save_dir) if save_dir else increment_run_dir(project, "val", name, exist_ok)
    files = write_eval_outputs(result, records, out, matrix_conf, plots)
    if plots:
        files["gallery"] = draw_worst(records, result.detections, result.extra["errors"], out / "errors_gallery.png",
                                      records.class_names, window)
        counts = records.boxes_per_class()
        files["report"] = write_report(
            out, result.metrics(), [(k, label, result.stats[k]) for k, label in zip(STAT_NAMES, stat_labels(result.max_dets))],
            [(n, counts[n], result.per_class_ap[n], result.per_class_ap50[n]) for n in records.class_names],
            f"retinadet val: {title} on {split_name} ({len(records)} images)", files)
    log(f"{split_name}: {len(records)} images, {sum(records.boxes_per_class().values())} boxes")
    log(format_stats(result.stats, result.max_dets))
    log(format_per_class(result, records))
    for report in reports:
        log(report)
    skipped = result.extra.get("skipped_images", [])
    if skipped:
        log(f"{len(skipped)} unreadable image(s) skipped, their boxes counted as missed: "
            f"{', '.join(skipped[:3])}{', ...' if len(skipped) > 3 else ''} (skipped.txt)")
    if plots:
        log(f"report: {files['report']}")
    log(f"results saved to {out}")
    return {**result.metrics(), "save_dir": str(out)}


# ----------------------------------------------------------------------------- exported models


def evaluate_runner(runner, data: str | os.PathLike | None = None, split: str | None = None, *,
                    batch: int | None = None, conf: float | None = None, iou: float | None = None,
                    max_det: int | None | FromConfig = FROM_CONFIG, imgsz: int | None = None, matrix_conf: float = 0.25,
                    tile: TileOptions | int | str | None = "auto", tile_overlap: float = 0.2, tile_merge: str = "nms",
                    tile_match: str = "iou", tile_threshold: float | None = None, full_image: bool = False,
                    save_dir: str | os.PathLike | None = None, plots: bool = True, project: str = "runs",
                    name: str | None = None, exist_ok: bool = False, log=print, progress: bool = False,
                    froc_hit: str = "iou:0.5", operating_point: str | None = None, window: str | None = None) -> dict[str, Any]:
    """``val`` of an exported model: :func:`evaluate_detector`'s metrics, analysis and files, from the detections of
    its torch-free runner (``runner``: an :class:`~retinadet.export.runtime.ExportedDetector`, whose metadata gives
    the classes, preprocessing, training scale, thresholds and, without ``data``, the dataset the model was trained
    on). The options are :func:`evaluate_detector`'s; ``conf``/``iou``/``max_det`` are bounded by what the graph was
    exported with (the runner says how to re-export)."""
    rule = HitRule.parse(froc_hit)  # bad options fail before any inference
    point = OperatingPoint.parse(operating_point) if operating_point else None
    tiling = tile_options(tile, tile_overlap, tile_merge, tile_match, tile_threshold, full_image)
    records = eval_records(data, split, runner.meta.get("data"), runner.class_names, runner.category_ids)
    result = score_runner(runner, records, batch_size=int(batch or 8), conf=conf, iou=iou, max_det=max_det, imgsz=imgsz,
                          tiling=tiling, window=window, matrix_conf=matrix_conf, progress=progress, log=log)
    return _val_outputs(result, records, runner.path, rule, point, runner.meta.get("thresholds"), matrix_conf,
                        window or runner.preprocess_cfg.get("window"), save_dir, plots, project, name, exist_ok, log)


def score_runner(runner, data: DatasetRecords, *, batch_size: int = 8, conf: float | None = None, iou: float | None = None,
                 max_det: int | None | FromConfig = FROM_CONFIG, imgsz: int | None = None, tiling: TileOptions | None = None,
                 window: str | None = None, matrix_conf: float = 0.25, with_confusion: bool = True, progress: bool = False,
                 log=None) -> EvalResult:
    """COCO evaluation of an exported model's runner on ``data``: each image read as ``val`` reads it
    (:func:`retinadet.data.images.read_image`, windowed by ``window`` or the model's rule), through
    ``runner.predict`` (sliced as ``tiling`` decides from the training scale in the metadata), then
    :func:`coco_eval` as for the torch model. Unreadable images are skipped and count as missed."""
    runner = runner.at_size(imgsz)
    window = window or runner.preprocess_cfg.get("window")
    report = TilingReport(log)
    out: dict[int, Detections] = {}
    skipped: list[str] = []
    step = max(1, int(batch_size))
    bar = tqdm(total=len(data.records), desc="val (exported)", leave=False, disable=not progress)
    for start in range(0, len(data.records), step):
        images, kept = [], []
        for r in data.records[start:start + step]:
            try:
                images.append(np.ascontiguousarray(read_image(r.path, window).permute(1, 2, 0).numpy()))
                kept.append(r)
            except DataError:
                skipped.append(str(r.path))
        found = runner.predict(images, conf=conf, iou=iou, max_det=max_det, batch_size=step, tile=tiling,
                               report=report) if images else []
        for r, d in zip(kept, found):
            out[int(r.image_id)] = _from_numpy(d, str(r.path))
        bar.update(len(data.records[start:start + step]))
    bar.close()
    if report.sliced and log is not None:
        log(report.summary())
    # COCO's cap follows the graph's, as for the torch model; a sliced run keeps every merged detection.
    cap = runner.meta["model_config"]["inference"].get("max_det") if max_det is FROM_CONFIG else max_det
    max_dets = coco_max_dets(out, None if report.sliced and max_det is FROM_CONFIG else cap)
    stats, precision = coco_eval(data, out, max_dets)
    ap, ap50 = per_class_ap(precision, data.class_names)
    confusion = confusion_matrix(data, out, matrix_conf) if with_confusion else None
    extra = {"skipped_images": sorted(skipped)} if skipped else {}
    return EvalResult(stats, ap, ap50, out, precision, confusion, None, extra, max_dets)


def _from_numpy(d, source: str) -> Detections:
    """A runner's numpy detections as :class:`Detections` (the graph does not say which anchor found each: -1)."""
    unknown = torch.full((len(d),), -1, dtype=torch.int64)
    return Detections(torch.from_numpy(np.asarray(d.boxes, dtype=np.float32).reshape(-1, 4)),
                      torch.from_numpy(np.asarray(d.scores, dtype=np.float32)),
                      torch.from_numpy(np.asarray(d.labels, dtype=np.int64)), unknown, unknown.clone(),
                      tuple(d.image_size), list(d.class_names), source,
                      None if d.tiles is None else torch.from_numpy(np.asarray(d.tiles, dtype=np.int64)))


def clinical_analysis(result: EvalResult, records: DatasetRecords, split_name: str, rule: HitRule,
                      point: OperatingPoint | None, stored: dict | None, matrix_conf: float) -> list[str]:
    """What a screening team reports, into ``result.extra`` (and so metrics.json): FROC, the operating point
    chosen here or what the checkpoint's thresholds reach here, image-level screening and the error analysis.
    Returns the printed tables."""
    names = records.class_names
    match = match_lesions(records, result.detections, rule)
    result.extra["froc"] = froc_of_match(match, names, rule)
    reports = [format_froc(result.extra["froc"])]
    thresholds = None
    if point is not None:
        chosen, uncal = choose_thresholds(match, names, point), uncalibrated(match, names)
        op = {"spec": str(point), "split": split_name, "hit": str(rule), "per_class": chosen,
              "overall": overall(chosen, match, names), "not_calibrated": uncal}
        result.extra["operating_point"], thresholds = op, chosen
        reports.append(format_operating_point(f"operating point {point} chosen on {split_name} (hit {rule}):", chosen,
                                              op["overall"], uncal))
    if isinstance(stored, dict) and stored.get("per_class"):
        reached = at_thresholds(match, names, stored["per_class"])
        what = f"{stored.get('spec')} on {stored.get('split')}"
        result.extra["at_stored_thresholds"] = {"chosen": what, "per_class": reached,
                                                "overall": overall(reached, match, names)}
        thresholds = thresholds or reached
        reports.append(format_operating_point(f"at the checkpoint's thresholds ({what}), on {split_name}:", reached,
                                              result.extra["at_stored_thresholds"]["overall"]))
    result.extra["screening"] = screening(records, result.detections,
                                          {k: v["threshold"] for k, v in thresholds.items()} if thresholds else None)
    reports.append(format_screening(result.extra["screening"]))
    result.extra["errors"] = error_analysis(records, result.detections, matrix_conf)
    reports.append(format_errors(result.extra["errors"]))
    return reports


def check_classes(class_names: Sequence[str], data: DatasetRecords) -> None:
    if len(class_names) != data.num_classes:
        raise ConfigError(f"class-count mismatch: the weights have {len(class_names)} classes "
                          f"({', '.join(class_names[:10])}), the dataset has {data.num_classes} "
                          f"({', '.join(data.class_names[:10])})")


def _with_category_ids(records: DatasetRecords, category_ids: Sequence[int]) -> DatasetRecords:
    if list(records.category_ids) == list(category_ids):
        return records
    return replace(records, category_ids=list(category_ids))
