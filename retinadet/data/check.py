"""``retinadet data check``: statistics, every problem with its file, and anchor coverage.

Anchor coverage is the share of (non-crowd) ground-truth boxes whose best anchor
reaches IoU >= 0.5 and >= 0.4 (positive for the torchvision-style presets and for ``fast``), computed at
the size the model will actually see (its resize rule, or ``--imgsz``).

Every statistic is computed on all boxes of all splits at once (one concatenation, then numpy), so that a
dataset of 100k images is checked in seconds; ``check_plot`` draws the same numbers.
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from retinadet.data.discover import load_splits, normalize_split
from retinadet.data.images import read_image
from retinadet.data.records import BoxTable, DatasetRecords, ImageRecord, Problem, sanitize_boxes
from retinadet.errors import DataError
from retinadet.model import resolve_model_config
from retinadet.model.anchor_fit import fit_anchors, set_overrides
from retinadet.model.anchors import base_anchors, feature_sizes_for, level_strides
from retinadet.model.config import AnchorConfig
from retinadet.model.input_fit import InputSizeChoice, fit_input_size
from retinadet.model.preprocess import padded_size, resized_size
from retinadet.utils.window import DEFAULT_WINDOW

COCO_SMALL, COCO_MEDIUM = 32**2, 96**2
PIXEL_BINS = (16, 32, 64, 128, 256)
LOW_COVERAGE = 0.9
WARNINGS_PER_KIND = 20
BOX_CHUNK = 1 << 16  # boxes per step of the anchor IoU: bounds the [boxes, anchors per location] temporaries


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
class BoxColumns:
    """One entry per box of the checked splits, in the model's input pixels: what ``check_plot`` draws."""

    split: np.ndarray  # int: index into CheckReport.splits
    side: np.ndarray  # sqrt(area) after the resize; NaN where the image size is unknown
    aspect: np.ndarray  # height / width
    best_iou: np.ndarray  # best anchor IoU; NaN for crowd boxes and unknown image sizes


@dataclass
class AnchorFit:
    """``--fit-anchors``: the shape-only coverage (``model.anchor_fit``) before and after the fit, the exact one
    (anchors on the grid, as ``coverage_05``) with the fitted anchors, and the fitted anchors."""

    anchors: AnchorConfig
    shape_before: float
    shape_after: float
    exact_after: float | None

    @property
    def changed(self) -> bool:
        return self.shape_after > self.shape_before


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
    columns: BoxColumns | None = field(default=None, repr=False)
    anchor_sides: list[list[float]] = field(default_factory=list)  # per pyramid level, sqrt(area) at each scale
    anchor_ratios: list[float] = field(default_factory=list)  # height / width
    anchor_fit: AnchorFit | None = None
    # The input size `train` would fit to the training boxes (model.input_fit); None with --imgsz or without boxes.
    input_fit: InputSizeChoice | None = None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors


def _reported_missing(ds: DatasetRecords) -> set[str]:
    """Images the loader already reported as not found (with the annotation file and field): not reported twice."""
    return {p.image for p in ds.problems if p.kind == "missing_file" and p.image}


def _verify_images(ds: DatasetRecords, problems: list[Problem]) -> None:
    """Decode every image: finds missing, unreadable and truncated files and size mismatches."""
    reported = _reported_missing(ds)
    for r in ds.records:
        if str(r.path) in reported:
            continue
        if not r.path.is_file():
            problems.append(Problem(str(r.path), f"image file not found (listed in {r.source or ds.root})", "missing_file"))
            continue
        try:
            # Any windowing rule decodes a 16-bit file: this checks the file, not a model's input.
            img = read_image(r.path, DEFAULT_WINDOW)
        except DataError as exc:
            problems.append(Problem(str(r.path), str(exc).split(": ", 1)[-1], "unreadable_image"))
            continue
        h, w = int(img.shape[-2]), int(img.shape[-1])
        if (r.width, r.height) != (w, h) and r.width > 0:
            problems.append(Problem(r.source or str(r.path), f"{r.path.name}: annotated size {r.width}x{r.height} "
                                    f"but the file is {w}x{h}", "size_mismatch"))


def _stat_images(ds: DatasetRecords, problems: list[Problem]) -> None:
    """``--no-images``: every file exists, is a regular file and is not empty, from one ``os.stat`` each.

    A stat reads file-system metadata only (microseconds; 100k files well under a second), while decoding reads and
    inflates every pixel (hours for 100k scans). It finds the common breakages (missing, moved, zero-byte files
    from an interrupted copy), not truncated or corrupt ones, nor a mismatch of the annotated size.
    """
    reported = _reported_missing(ds)
    for r in ds.records:
        name = str(r.path)
        if name in reported:
            continue
        try:
            st = os.stat(name)
        except OSError:
            problems.append(Problem(name, f"image file not found (listed in {r.source or ds.root})", "missing_file"))
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.append(Problem(name, f"not a regular file (listed in {r.source or ds.root})", "missing_file"))
        elif st.st_size == 0:
            problems.append(Problem(name, "image file is empty", "unreadable_image"))


def _check_bounds_of_unannotated_sizes(ds: DatasetRecords, problems: list[Problem]) -> None:
    """Boxes of images whose size the annotations lacked were not checked against the image on load: check them
    now, with the size read from the header (the training transforms clip them, counted, as for any box)."""
    late = [r for r in ds.records if r.size_from_header and r.num_boxes]
    if not late:
        return
    table = BoxTable.of(late)
    widths = np.array([r.width for r in late], dtype=np.int64)  # reads each header once
    heights = np.array([r.height for r in late], dtype=np.int64)
    first_box = np.cumsum([0] + [r.num_boxes for r in late])
    sources = np.array([r.source for r in late], dtype=object)
    for source in dict.fromkeys(sources.tolist()):
        rows = np.flatnonzero(sources[table.image] == source)

        def name(k: int, rows=rows) -> str:
            image = int(table.image[rows[k]])
            return f"{late[image].path.name} (size from the image), box {int(rows[k] - first_box[image])}"

        sanitize_boxes(table.boxes[rows], widths[table.image[rows]], heights[table.image[rows]], source or str(ds.root),
                       problems, name)


def _best_overlap(lo: np.ndarray, hi: np.ndarray, a_lo: np.ndarray, a_hi: np.ndarray, cells: int, stride: float,
                  offset: float) -> np.ndarray:
    """Along one axis: the largest overlap of each box [lo, hi] with each anchor shape [a_lo, a_hi] placed at any of
    the ``cells`` grid centres (i + offset) * stride. [boxes, shapes].

    The overlap is symmetric in the distance between the two centres and shrinks with it, so the grid centre
    nearest to the box's (clamped to the grid) is the best one: no need to build every anchor.
    """
    aligned = ((lo + hi) / 2)[:, None] - ((a_lo + a_hi) / 2)[None, :]
    centre = (np.clip(np.rint(aligned / stride - offset), 0, cells - 1) + offset) * stride
    return np.clip(np.minimum(hi[:, None], centre + a_hi) - np.maximum(lo[:, None], centre + a_lo), 0, None)


def best_anchor_iou(boxes: np.ndarray, padded: np.ndarray, anchors: AnchorConfig) -> np.ndarray:
    """Best IoU of each box (xyxy, input pixels) with any anchor of its padded input size ``padded`` [N, 2] (h, w).

    Exact (the IoU of an anchor shape is largest where its overlap is on both axes, each found by
    ``_best_overlap``), and O(boxes x anchor shapes) instead of O(boxes x anchors): a million boxes in seconds.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    best = np.zeros(len(boxes))
    if not len(boxes):
        return best
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    sizes, group = np.unique(np.asarray(padded, dtype=np.int64).reshape(-1, 2), axis=0, return_inverse=True)
    group = group.reshape(-1)
    for g, (ph, pw) in enumerate(sizes.tolist()):
        members = np.flatnonzero(group == g)
        grids = feature_sizes_for((ph, pw))
        for size, (gh, gw), (sh, sw) in zip(anchors.sizes, grids, level_strides(anchors, (ph, pw), grids)):
            shape = base_anchors(anchors, size).numpy()  # [A, 4] around a grid centre
            shape_area = (shape[:, 2] - shape[:, 0]) * (shape[:, 3] - shape[:, 1])
            for at in range(0, len(members), BOX_CHUNK):
                rows = members[at: at + BOX_CHUNK]
                b = boxes[rows]
                inter = (_best_overlap(b[:, 0], b[:, 2], shape[:, 0], shape[:, 2], gw, sw, anchors.center_offset)
                         * _best_overlap(b[:, 1], b[:, 3], shape[:, 1], shape[:, 3], gh, sh, anchors.center_offset))
                iou = inter / (area[rows, None] + shape_area[None, :] - inter)
                best[rows] = np.maximum(best[rows], iou.max(axis=1))
    return best


@dataclass
class _InputBoxes:
    """All boxes of the checked splits, with their records' sizes at the network input."""

    table: BoxTable
    split: np.ndarray  # int per box
    record_split: np.ndarray  # int per record
    sized: np.ndarray  # bool per box: its image size is known
    scale: np.ndarray  # [N, 2] (x, y) file pixels -> input pixels (0 where the size is unknown)
    padded: np.ndarray  # [N, 2] (h, w) padded input the box is matched in

    @property
    def side(self) -> np.ndarray:
        wh = (self.table.boxes[:, 2:] - self.table.boxes[:, :2]).astype(np.float64) * self.scale
        return np.where(self.sized, np.sqrt(wh[:, 0] * wh[:, 1]), np.nan)

    @property
    def native(self) -> np.ndarray:
        """Per box: the factor on the input size at which its image is at its own resolution (NaN: size unknown)."""
        with np.errstate(divide="ignore"):
            return np.where(self.sized, 1.0 / np.sqrt(self.scale[:, 0] * self.scale[:, 1]), np.nan)


def _input_boxes(splits: dict[str, DatasetRecords], pre: Any) -> _InputBoxes:
    records: list[ImageRecord] = [r for ds in splits.values() for r in ds.records]
    record_split = np.repeat(np.arange(len(splits)), [len(ds.records) for ds in splits.values()])
    table = BoxTable.of(records)
    sizes = np.array([(r.height, r.width) for r in records], dtype=np.int64).reshape(-1, 2)
    # The resize rule once per distinct image size (a dataset has few), not once per image.
    distinct, which = np.unique(sizes, axis=0, return_inverse=True)
    which = which.reshape(-1)
    scale_of = np.zeros((len(distinct), 2))
    padded_of = np.zeros((len(distinct), 2), dtype=np.int64)
    for k, (h, w) in enumerate(distinct.tolist()):
        if h > 0 and w > 0:
            oh, ow = resized_size(h, w, pre)
            scale_of[k] = (ow / w, oh / h)
            padded_of[k] = padded_size([(oh, ow)], pre)
    per_box = which[table.image]
    return _InputBoxes(table, record_split[table.image], record_split, (sizes[table.image] > 0).all(axis=1),
                       scale_of[per_box], padded_of[per_box])


def _split_stats(ds: DatasetRecords, table: BoxTable, side: np.ndarray) -> SplitStats:
    wh = (table.boxes[:, 2:] - table.boxes[:, :2]).astype(np.float64)
    area = wh[:, 0] * wh[:, 1]
    coco = {"small": int((area < COCO_SMALL).sum()), "medium": int(((area >= COCO_SMALL) & (area < COCO_MEDIUM)).sum()),
            "large": int((area >= COCO_MEDIUM).sum())}
    sides = side[np.isfinite(side)]
    edges = [0, *PIXEL_BINS, math.inf]
    binned = {}
    for lo, hi in zip(edges[:-1], edges[1:]):
        label = f"<{hi}" if lo == 0 else (f">={lo}" if hi == math.inf else f"{lo}-{hi}")
        binned[label] = int(((sides >= lo) & (sides < hi)).sum())
    pct = {f"p{q}": float(v) for q, v in zip((0, 5, 50, 95, 100), np.percentile(sides, (0, 5, 50, 95, 100)))} if len(sides) else {}
    counts = np.bincount(table.labels[table.labels < ds.num_classes], minlength=ds.num_classes)
    return SplitStats(len(ds), {n: int(c) for n, c in zip(ds.class_names, counts)}, ds.num_negatives(),
                      int(table.crowd.sum()), coco, binned, pct)


def anchor_coverage(datasets: list[DatasetRecords], model_cfg: Any) -> tuple[float | None, float | None, int, np.ndarray]:
    """(share >= 0.5, share >= 0.4, boxes, best IoU per box) for non-crowd boxes at the model's input size."""
    boxes = _input_boxes({str(i): ds for i, ds in enumerate(datasets)}, model_cfg.preprocess)
    best = _coverage(boxes, model_cfg.anchors)
    best = best[np.isfinite(best)]
    if not len(best):
        return None, None, 0, best
    return float((best >= 0.5).mean()), float((best >= 0.4).mean()), int(len(best)), best


def input_box_wh(datasets: list[DatasetRecords], preprocess: Any) -> np.ndarray:
    """(width, height) [N, 2] of the non-crowd boxes of images of known size, in the model's input pixels."""
    return _box_wh(_input_boxes({str(i): ds for i, ds in enumerate(datasets)}, preprocess))


def input_box_sides(datasets: list[DatasetRecords], preprocess: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(side, label, native) of the non-crowd boxes of images of known size: side = sqrt(w * h) in the model's input
    pixels, native = the factor on that input at which the box's image is at its own resolution."""
    boxes = _input_boxes({str(i): ds for i, ds in enumerate(datasets)}, preprocess)
    use = boxes.sized & ~boxes.table.crowd
    return boxes.side[use], boxes.table.labels[use], boxes.native[use]


def _box_wh(boxes: _InputBoxes) -> np.ndarray:
    use = boxes.sized & ~boxes.table.crowd
    return (boxes.table.boxes[use, 2:] - boxes.table.boxes[use, :2]).astype(np.float64) * boxes.scale[use]


def _coverage(boxes: _InputBoxes, anchors: AnchorConfig) -> np.ndarray:
    """Best anchor IoU per box; NaN for crowd boxes and boxes of images of unknown size."""
    best = np.full(len(boxes.table), np.nan)
    use = np.flatnonzero(boxes.sized & ~boxes.table.crowd)
    scaled = boxes.table.boxes[use].astype(np.float64) * np.tile(boxes.scale[use], 2)
    best[use] = best_anchor_iou(scaled, boxes.padded[use], anchors)
    return best


def check_dataset(path: str | os.PathLike, model: str = "fast", imgsz: int | None = None,
                  split: str | None = None, verify_images: bool = True, fit: bool = False, seed: int = 0) -> CheckReport:
    """Load every split of ``path``, decode its images (unless ``verify_images=False``: then only ``os.stat`` them) and
    report statistics, problems and anchor coverage for ``model`` at its input size; with ``fit``, also anchors
    fitted to the boxes (``model.anchor_fit``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: threading only adds contention on a shared CPU
    try:
        return _check(path, model, imgsz, split, verify_images, fit, seed)
    finally:
        torch.set_num_threads(threads)


def _check(path, model, imgsz, split, verify_images, fit=False, seed=0) -> CheckReport:

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
    seen_files: dict[str, str] = {}
    for name, ds in splits.items():
        problems += ds.problems
        _check_bounds_of_unannotated_sizes(ds, problems)
        if verify_images:
            _verify_images(ds, problems)
        else:
            _stat_images(ds, problems)
        for r in ds.records:
            # Normalised, not resolved: Path.resolve() is a syscall per path component, seconds for 100k images.
            key = os.path.normpath(os.path.abspath(r.path))
            if key in seen_files and seen_files[key] != name:
                problems.append(Problem(str(r.path), f"image is in splits '{seen_files[key]}' and '{name}' (leakage)",
                                        "duplicate_file", "warning"))
            seen_files.setdefault(key, name)
    boxes = _input_boxes(splits, pre)
    side = boxes.side
    stats = {}
    for i, (name, ds) in enumerate(splits.items()):
        mask = boxes.split == i
        table = BoxTable(boxes.table.boxes[mask], boxes.table.labels[mask], boxes.table.crowd[mask], boxes.table.image[mask])
        stats[name] = _split_stats(ds, table, side[mask])
    first = next(iter(splits.values()))
    size = f"fixed {pre.fixed_size}" if pre.fixed_size else f"short side {pre.min_size}, long side <= {pre.max_size}"
    report = CheckReport(str(path), first.class_names, stats, problems, model, size)
    best = _coverage(boxes, cfg.anchors)
    wh = (boxes.table.boxes[:, 2:] - boxes.table.boxes[:, :2]).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):  # a record built by hand may hold a zero-width box
        aspect = wh[:, 1] / wh[:, 0]
    report.columns = BoxColumns(boxes.split, side, aspect, best)
    anchor = cfg.anchors
    report.anchor_sides = [[float(int(s * k)) if anchor.truncate_sizes else s * k for k in anchor.scales] for s in anchor.sizes]
    report.anchor_ratios = [float(r) for r in anchor.ratios]
    checked = best[np.isfinite(best)]
    if len(checked):
        report.coverage_05, report.coverage_04 = float((checked >= 0.5).mean()), float((checked >= 0.4).mean())
        report.boxes_checked = int(len(checked))
    if fit and len(checked):
        fitted, before, after = fit_anchors(_box_wh(boxes), anchor, seed=seed)
        exact = _coverage(boxes, fitted)
        exact = exact[np.isfinite(exact)]
        report.anchor_fit = AnchorFit(fitted, before, after, float((exact >= 0.5).mean()))
    if not imgsz and len(checked):
        # What `train` fits to: the training boxes (every split's where none is called train).
        fit_on = boxes.sized & ~boxes.table.crowd & ((boxes.split == list(splits).index("train")) if "train" in splits else True)
        report.input_fit = fit_input_size(side[fit_on], boxes.table.labels[fit_on], pre, anchor,
                                          native=boxes.native[fit_on])
    if report.coverage_05 is not None and report.coverage_05 < LOW_COVERAGE:
        smallest = min(anchor.sizes)
        sides = side[np.isfinite(best)]  # the boxes the coverage counts
        small_share = float((sides < 0.75 * smallest).mean())
        if small_share > 0.2:
            report.hints.append(f"{small_share:.0%} of boxes are smaller than 0.75x the smallest anchor ({smallest:g} px) "
                                f"after resizing: use smaller anchors or a larger input (--imgsz)")
        else:
            report.hints.append("many boxes match no anchor well: check their aspect ratios against the anchor ratios "
                                f"{anchor.ratios} or change the input size")
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
    if (size := report.input_fit) is not None:
        lines.append(f"  input size fitted to the training boxes (what train picks without --imgsz): {size.size}px "
                     f"({size.factor:.2f}x): {size.reason}")
        if size.factor > 1:
            lines.append(f"  the coverage above is at the preset's input: --imgsz {size.size} shows it there")
    if (fit := report.anchor_fit) is not None:
        lines.append(f"  fitted anchors (shape-only IoU, anchors centred on each box): IoU >= 0.5 "
                     f"{fit.shape_before:.2%} -> {fit.shape_after:.2%}")
        if fit.changed:
            lines.append(f"  with them, best anchor IoU >= 0.5 on the grid: {report.coverage_05:.1%} -> {fit.exact_after:.1%}")
            lines.append(f"  train with: {set_overrides(fit.anchors)}")
        else:
            lines.append("  the anchors already fit: no better ratios/scales found")
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
