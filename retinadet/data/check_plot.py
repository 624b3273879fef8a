"""``retinadet data check --plot``: the check's numbers in one PNG (matplotlib, Agg, outside pyplot).

Four panels: boxes per class and split (bars), box size after the model's resize (sqrt area, log x), box aspect
ratios (height / width, log x), and the share of boxes whose best anchor reaches IoU 0.5 / 0.4 per size bin, with
the anchor sizes and ratios marked where they apply.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from retinadet.data.check import CheckReport
from retinadet.errors import DataError

SIZE_BINS = 24
ASPECT_BINS = 24
MIN_BOXES_PER_BIN = 5  # a coverage share of fewer boxes is mostly noise: drawn hollow


def _figure(figsize: tuple[float, float]):
    """A figure on the Agg canvas, outside pyplot: never touches the global backend (a notebook keeps its own)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    """Atomically (temp file + rename), as engine/plots does: a crash never leaves a truncated PNG."""
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=100, format="png")
    os.replace(tmp, path)
    return path


def _log_bins(values: np.ndarray, count: int) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo * 1.01:
        lo, hi = lo / 1.5, hi * 1.5
    return np.geomspace(lo, hi, count + 1)


def _empty(ax, title: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, "no boxes", ha="center", va="center", transform=ax.transAxes)


def _class_counts(ax, report: CheckReport) -> None:
    names = report.class_names
    x = np.arange(len(names))
    width = 0.8 / max(1, len(report.splits))
    for i, (split, stats) in enumerate(report.splits.items()):
        counts = [stats.boxes_per_class.get(n, 0) for n in names]
        ax.bar(x + (i - (len(report.splits) - 1) / 2) * width, counts, width, label=split)
    ax.set_xticks(x, names, rotation=30 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center", fontsize=8)
    ax.set_ylabel("boxes")
    ax.set_title("boxes per class")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")


def _mark_anchor_sizes(ax, report: CheckReport) -> None:
    """Each pyramid level: its base size dotted, the span of its scales shaded."""
    for k, sides in enumerate(report.anchor_sides):
        ax.axvspan(min(sides), max(sides), color="grey", alpha=0.12, linewidth=0)
        ax.axvline(sides[0], color="grey", linestyle=":", linewidth=1, label="anchor sizes (per level)" if k == 0 else None)


def _log_axis(ax, edges: np.ndarray) -> None:
    """Log x limited to the data (anchor marks beyond it would squeeze it), plain-number tick labels."""
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log")
    ax.set_xlim(edges[0], edges[-1])
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    if edges[-1] / edges[0] < 10:  # under a decade matplotlib labels the minor ticks (in 4x10^-1 style otherwise)
        ax.xaxis.set_minor_formatter(plain)


def _histograms(ax, report: CheckReport, values: np.ndarray, bins: int, xlabel: str, title: str, marks) -> None:
    columns = report.columns
    ok = np.isfinite(values) & (values > 0)
    if not ok.any():
        _empty(ax, title)
        return
    edges = _log_bins(values[ok], bins)
    for i, split in enumerate(report.splits):
        ax.hist(values[ok & (columns.split == i)], bins=edges, histtype="step", linewidth=1.5, label=split)
    marks(ax)
    _log_axis(ax, edges)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("boxes")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def _mark_ratios(report: CheckReport):
    def mark(ax) -> None:
        for k, ratio in enumerate(report.anchor_ratios):
            ax.axvline(ratio, color="grey", linestyle=":", linewidth=1, label="anchor ratios" if k == 0 else None)
    return mark


def _coverage(ax, report: CheckReport) -> None:
    columns = report.columns
    title = "anchor coverage by box size"
    ok = np.isfinite(columns.best_iou) & np.isfinite(columns.side) & (columns.side > 0)
    if not ok.any():
        _empty(ax, title)
        return
    side, best = columns.side[ok], columns.best_iou[ok]
    edges = _log_bins(side, SIZE_BINS // 2)
    which = np.clip(np.searchsorted(edges, side, side="right") - 1, 0, len(edges) - 2)
    boxes = np.bincount(which, minlength=len(edges) - 1)
    centres = np.sqrt(edges[:-1] * edges[1:])
    has, filled = boxes > 0, boxes >= MIN_BOXES_PER_BIN
    for threshold, colour in ((0.5, "tab:blue"), (0.4, "tab:orange")):
        share = np.bincount(which, weights=best >= threshold, minlength=len(edges) - 1) / np.maximum(boxes, 1)
        ax.plot(centres[has], share[has], color=colour, label=f"best IoU >= {threshold}")
        ax.scatter(centres[has & filled], share[has & filled], color=colour, s=18)
        ax.scatter(centres[has & ~filled], share[has & ~filled], facecolors="none", edgecolors=colour, s=18)
    _mark_anchor_sizes(ax, report)
    _log_axis(ax, edges)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("box side after resize (px, log)")
    ax.set_ylabel(f"share of boxes (hollow: < {MIN_BOXES_PER_BIN} in the bin)")
    overall = "" if report.coverage_05 is None else f" (all: {report.coverage_05:.1%} / {report.coverage_04:.1%})"
    ax.set_title(title + overall)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)


def draw_check(report: CheckReport):
    """The figure of ``report`` (a matplotlib Figure, not saved)."""
    if report.columns is None:
        raise ValueError("the report holds no per-box columns (build it with check_dataset)")
    fig = _figure((13, 9))
    axes = fig.subplots(2, 2)
    _class_counts(axes[0, 0], report)
    _histograms(axes[0, 1], report, report.columns.side, SIZE_BINS, "box side after resize (px, sqrt area, log)",
                "box sizes at the model's input", lambda ax: _mark_anchor_sizes(ax, report))
    _histograms(axes[1, 0], report, report.columns.aspect, ASPECT_BINS, "height / width (log)", "box aspect ratios",
                _mark_ratios(report))
    _coverage(axes[1, 1], report)
    fig.suptitle(f"{report.path}: {report.model}, {report.input_size}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_path(dataset: str | os.PathLike, file: str | os.PathLike = "") -> Path:
    """Where ``--plot [FILE]`` writes: FILE (a folder gets the default name inside), or ``<dataset>_check.png`` in
    the current folder. Raises DataError for a FILE that is not a .png."""
    stem = Path(os.path.normpath(str(dataset))).stem  # "data/bccd/" -> bccd, "train.json" -> train
    name = f"{stem or 'dataset'}_check.png"
    if not str(file):
        return Path(name)
    target = Path(file)
    if target.is_dir():
        return target / name
    if target.suffix.lower() != ".png":
        raise DataError(f"--plot {file}: the plot is a PNG; give a file name ending in .png (or a folder)")
    return target


def plot_check(report: CheckReport, path: str | os.PathLike):
    """Draw ``report`` to the PNG ``path``: (the path written, the figure)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = draw_check(report)
    return _save(fig, path), fig
