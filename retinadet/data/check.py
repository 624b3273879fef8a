"""``retinadet data check``: statistics, every problem with its file, and anchor coverage.

Anchor coverage is the share of (non-crowd) ground-truth boxes whose best anchor
reaches IoU >= 0.5 and >= 0.4 (positive for the torchvision-style presets and for ``fast``), computed at
the size the model will actually see (its resize rule, or ``--imgsz``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from retinadet.data.discover import load_splits, normalize_split
from retinadet.data.images import read_image
from retinadet.data.records import DatasetRecords, Problem
from retinadet.errors import DataError
from retinadet.model import resolve_model_config
from retinadet.model.anchors import anchors_for_image_size
from retinadet.model.preprocess import padded_size, resized_size

COCO_SMALL, COCO_MEDIUM = 32**2, 96**2
PIXEL_BINS = (16, 32, 64, 128, 256)
LOW_COVERAGE = 0.9
WARNINGS_PER_KIND = 20


@dataclass
class SplitStats:
    images: int
    boxes_per_class: dict[str, int]
    negatives: int
    crowd: int
    coco_sizes: dict[str, int]  # small / medium / large, by area in file pixels
    resized_sides: dict[str, int]  # sqrt(area) after the model's resize, binned
    resized_percentiles: dict[str, float]


@dataclass
class CheckReport:
    path: str
    class_names: list[str]
    splits: dict[str, SplitStats]
    problems: list[Problem]
    model: str
    input_size: str
    coverage_05: float | None = None
    coverage_04: float | None = None
    boxes_checked: int = 0
    hints: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors


def _verify_images(ds: DatasetRecords, problems: list[Problem]) -> None:
    """Decode every image: finds missing, unreadable and truncated files and size mismatches."""

    for r in ds.records:
        if not r.path.is_file():
            problems.append(Problem(str(r.path), f"image file not found (listed in {r.source or ds.root})", "missing_file"))
            continue
        try:
            img = read_image(r.path)
        except DataError as exc:
            problems.append(Problem(str(r.path), str(exc).split(": ", 1)[-1], "unreadable_image"))
            continue
        h, w = int(img.shape[-2]), int(img.shape[-1])
        if (r.width, r.height) != (w, h) and r.width > 0:
            problems.append(Problem(r.source or str(r.path), f"{r.path.name}: annotated size {r.width}x{r.height} "
                                    f"but the file is {w}x{h}", "size_mismatch"))


def _split_stats(ds: DatasetRecords, pre: Any) -> SplitStats:
    sides, coco = [], {"small": 0, "medium": 0, "large": 0}
    crowd = 0
    for r in ds.records:
        if r.num_boxes == 0:
            continue
        crowd += int(r.crowd.sum())
        wh = (r.boxes[:, 2:] - r.boxes[:, :2]).astype(np.float64)
        area = wh[:, 0] * wh[:, 1]
        coco["small"] += int((area < COCO_SMALL).sum())
        coco["medium"] += int(((area >= COCO_SMALL) & (area < COCO_MEDIUM)).sum())
        coco["large"] += int((area >= COCO_MEDIUM).sum())
        if r.width > 0 and r.height > 0:
            oh, ow = resized_size(r.height, r.width, pre)
            scale = math.sqrt((oh / r.height) * (ow / r.width))
            sides.append(np.sqrt(area) * scale)
    sides_arr = np.concatenate(sides) if sides else np.zeros(0)
    edges = [0, *PIXEL_BINS, math.inf]
    binned = {}
    for lo, hi in zip(edges[:-1], edges[1:]):
        label = f"<{hi}" if lo == 0 else (f">={lo}" if hi == math.inf else f"{lo}-{hi}")
        binned[label] = int(((sides_arr >= lo) & (sides_arr < hi)).sum())
    pct = {}
    if len(sides_arr):
        for q in (0, 5, 50, 95, 100):
            pct[f"p{q}"] = float(np.percentile(sides_arr, q))
    return SplitStats(len(ds), ds.boxes_per_class(), ds.num_negatives(), crowd, coco, binned, pct)


def anchor_coverage(datasets: list[DatasetRecords], model_cfg: Any) -> tuple[float | None, float | None, int, np.ndarray]:
    """(share >= 0.5, share >= 0.4, boxes, best IoU per box; values < 0.4 are lower bounds)
    for non-crowd boxes at the model's input size."""
    from torchvision.ops import box_iou


    pre = model_cfg.preprocess
    cache: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
    best_all = []
    for ds in datasets:
        for r in ds.records:
            keep = ~r.crowd
            if r.num_boxes == 0 or not keep.any() or r.width <= 0 or r.height <= 0:
                continue
            oh, ow = resized_size(r.height, r.width, pre)
            ph, pw = padded_size([(oh, ow)], pre)
            if (ph, pw) not in cache:
                anchors = anchors_for_image_size(model_cfg.anchors, (ph, pw)).float()
                cache[(ph, pw)] = (anchors, (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1]))
            anchors, anchor_area = cache[(ph, pw)]
            boxes = torch.from_numpy(r.boxes[keep]).float()
            boxes = boxes * torch.tensor([ow / r.width, oh / r.height, ow / r.width, oh / r.height])
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            # IoU <= min(area)/max(area), so anchors outside 0.4x..2.5x the box areas cannot
            # reach the 0.4 threshold: skipping them is exact for the coverage figures.
            near = (anchor_area >= 0.4 * area.min()) & (anchor_area <= 2.5 * area.max())
            if not near.any():
                best_all.append(np.zeros(len(boxes)))
                continue
            best_all.append(box_iou(boxes, anchors[near]).amax(dim=1).numpy())
    if not best_all:
        return None, None, 0, np.zeros(0)
    best = np.concatenate(best_all)
    return float((best >= 0.5).mean()), float((best >= 0.4).mean()), int(len(best)), best


def check_dataset(path: str | os.PathLike, model: str = "fast", imgsz: int | None = None,
                  split: str | None = None, verify_images: bool = True) -> CheckReport:
    """Load every split of ``path``, decode its images (unless ``verify_images=False``) and
    report statistics, problems and anchor coverage for ``model`` at its input size."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: threading only adds contention on a shared CPU
    try:
        return _check(path, model, imgsz, split, verify_images)
    finally:
        torch.set_num_threads(threads)


def _check(path, model, imgsz, split, verify_images) -> CheckReport:

    splits = load_splits(path)
    if split is not None:
        key = normalize_split(split)
        if key not in splits:
            raise DataError(f"{path}: no split '{split}' (available: {', '.join(splits)})")
        splits = {key: splits[key]}
    cfg = resolve_model_config(model)
    if imgsz:  # --imgsz N: the long side becomes N for letterbox models, both limits N otherwise
        cfg = cfg.replace(cfg.preprocess.size_overrides(imgsz))
    pre = cfg.preprocess
    problems: list[Problem] = []
    stats = {}
    seen_files: dict[str, str] = {}
    for name, ds in splits.items():
        problems += ds.problems
        if verify_images:
            _verify_images(ds, problems)
        for r in ds.records:
            key = str(r.path.resolve())
            if key in seen_files and seen_files[key] != name:
                problems.append(Problem(str(r.path), f"image is in splits '{seen_files[key]}' and '{name}' (leakage)",
                                        "duplicate_file", "warning"))
            seen_files.setdefault(key, name)
        stats[name] = _split_stats(ds, pre)
    first = next(iter(splits.values()))
    size = f"fixed {pre.fixed_size}" if pre.fixed_size else f"short side {pre.min_size}, long side <= {pre.max_size}"
    report = CheckReport(str(path), first.class_names, stats, problems, model, size)
    cov5, cov4, n, best = anchor_coverage(list(splits.values()), cfg)
    report.coverage_05, report.coverage_04, report.boxes_checked = cov5, cov4, n
    if cov5 is not None and cov5 < LOW_COVERAGE:
        smallest = min(cfg.anchors.sizes)
        sides = np.concatenate([np.sqrt(np.prod(r.boxes[~r.crowd][:, 2:] - r.boxes[~r.crowd][:, :2], axis=1))
                                * math.sqrt(resized_size(r.height, r.width, pre)[0] / r.height)
                                for ds in splits.values() for r in ds.records if r.num_boxes and r.height > 0] or [np.zeros(0)])
        small_share = float((sides < 0.75 * smallest).mean()) if len(sides) else 0.0
        if small_share > 0.2:
            report.hints.append(f"{small_share:.0%} of boxes are smaller than 0.75x the smallest anchor ({smallest:g} px) "
                                f"after resizing: use smaller anchors or a larger input (--imgsz)")
        else:
            report.hints.append("many boxes match no anchor well: check their aspect ratios against the anchor ratios "
                                f"{cfg.anchors.ratios} or change the input size")
    return report


def format_report(report: CheckReport) -> str:
    lines = [f"Dataset: {report.path}", f"Classes ({len(report.class_names)}): {', '.join(report.class_names)}"]
    for name, s in report.splits.items():
        total = sum(s.boxes_per_class.values())
        lines.append(f"\n[{name}] {s.images} images, {total} boxes, {s.negatives} images without boxes, {s.crowd} crowd/difficult")
        for cls, n in s.boxes_per_class.items():
            lines.append(f"  {cls:<24} {n:>8}")
        lines.append("  COCO sizes (file pixels): " + ", ".join(f"{k} {v}" for k, v in s.coco_sizes.items()))
        lines.append("  box side after resize (px): " + ", ".join(f"{k}: {v}" for k, v in s.resized_sides.items()))
        if s.resized_percentiles:
            lines.append("  side percentiles (px): " + ", ".join(f"{k} {v:.1f}" for k, v in s.resized_percentiles.items()))
    lines.append(f"\nAnchor coverage ({report.model}, {report.input_size}):")
    if report.coverage_05 is None:
        lines.append("  no boxes to check")
    else:
        lines.append(f"  best anchor IoU >= 0.5: {report.coverage_05:.1%}   >= 0.4: {report.coverage_04:.1%}   "
                     f"({report.boxes_checked} boxes)")
    for hint in report.hints:
        lines.append(f"  hint: {hint}")
    errors = report.errors
    warnings_ = [p for p in report.problems if p.severity != "error"]
    lines.append(f"\nProblems: {len(errors)} error(s), {len(warnings_)} warning(s)")
    for p in errors:
        lines.append(f"  {p}")
    # Warnings are repaired on load; a systematic one (e.g. every box 1 px over the edge)
    # would bury the errors, so each kind is listed up to WARNINGS_PER_KIND times.
    shown: dict[str, int] = {}
    for p in warnings_:
        shown[p.kind] = shown.get(p.kind, 0) + 1
        if shown[p.kind] <= WARNINGS_PER_KIND:
            lines.append(f"  {p}")
    for kind, n in shown.items():
        if n > WARNINGS_PER_KIND:
            lines.append(f"  ... and {n - WARNINGS_PER_KIND} more '{kind}' warnings")
    return "\n".join(lines)
