"""PNG plots: training curves, PR curves, confusion matrix, prediction grids (matplotlib, Agg)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from retinadet.structures import Detections
from retinadet.utils.colors import class_colors


def _figure(figsize: tuple[float, float]):
    """A figure outside pyplot: rendering to files never touches the global backend (a notebook keeps its own)."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def _save(fig, path: str | os.PathLike) -> Path:
    """Save atomically (temp file + rename) so a crash never leaves a truncated PNG."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)
    return path


def _save_rates(fig, ax, xlabel: str, ylabel: str, title: str, legend: str, path: str | os.PathLike) -> Path:
    """Axes of two rates in [0, 1] (PR, ROC): limits, labels, legend, grid, then saved."""
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc=legend, fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_results(header: Sequence[str], rows: Sequence[Sequence[str]], path: str | os.PathLike) -> Path:
    """Loss parts and AP curves per epoch from results.csv columns."""
    cols = {h: i for i, h in enumerate(header)}
    data = np.array([[float(v) if v not in ("", "nan") else np.nan for v in r] for r in rows], dtype=float).reshape(-1, len(header))
    epoch = data[:, cols["epoch"]]
    panels = [("loss_total", "loss"), ("loss_cls", "cls loss"), ("loss_box", "box loss"), ("lr", "lr"),
              ("AP", "AP"), ("AP50", "AP50")]
    fig = _figure((12, 6))
    axes = fig.subplots(2, 3)
    for ax, (key, title) in zip(axes.ravel(), panels):
        y = data[:, cols[key]]
        ok = np.isfinite(y)
        ax.plot(epoch[ok], y[ok], marker="o")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = _save(fig, path)
    return out


def plot_pr_curves(precision: np.ndarray | None, class_names: Sequence[str], path: str | os.PathLike) -> Path:
    """Precision-recall at IoU 0.5 per class (``precision`` is COCOeval's [T, R, K, A, M] array)."""
    fig = _figure((7, 6))
    ax = fig.subplots()
    recall = np.linspace(0, 1, 101)
    if precision is not None:
        for k, name in enumerate(class_names):
            p = precision[0, :, k, 0, -1]
            valid = p > -1
            ap = float(p[valid].mean()) if valid.any() else float("nan")
            ax.plot(recall[valid], p[valid], label=f"{name} AP50={ap:.3f}")
    return _save_rates(fig, ax, "recall", "precision", "PR curves (IoU 0.5)", "lower left", path)


def plot_froc(froc: dict, path: str | os.PathLike) -> Path:
    """Sensitivity against false positives per image (log scale), over all classes and per class, with the
    FROC points marked (``froc`` is the ``froc`` section of metrics.json)."""
    fig = _figure((7, 5))
    ax = fig.subplots()
    curves = [("all classes", froc)] + list(froc.get("per_class", {}).items())
    for i, (name, part) in enumerate(curves):
        fppi, sens = np.asarray(part["curve"]["fppi"]), np.asarray(part["curve"]["sensitivity"])
        keep = fppi > 0
        style = {"color": "black", "linewidth": 2} if i == 0 else {"linewidth": 1}
        lo, hi = part["ci95"]
        ax.plot(fppi[keep], sens[keep], label=f"{name}: FROC {part['score']:.3f} [{lo:.3f}, {hi:.3f}]", **style)
        ax.scatter(part["fppi"], part["sensitivity"], s=12, color=style.get("color"), zorder=3)
    ax.set_xscale("log")
    ax.set_xlim(froc["fppi"][0] / 2, froc["fppi"][-1] * 2)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per image")
    ax.set_ylabel("sensitivity (lesions found)")
    ax.set_title(f"FROC (hit: {froc['hit']}; score = mean sensitivity at the marked points, 95% CI)")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return _save(fig, path)


def plot_roc(screening: dict, path: str | os.PathLike) -> Path:
    """Image-level ROC curves (the ``screening`` section of metrics.json): over all classes and per class."""
    fig = _figure((6, 5.5))
    ax = fig.subplots()
    curves = [("all classes", screening)] + list(screening.get("per_class", {}).items())
    for i, (name, part) in enumerate(curves):
        if not np.isfinite(part["auc"]):
            continue  # no negative (or no positive) images: no curve
        style = {"color": "black", "linewidth": 2} if i == 0 else {"linewidth": 1}
        lo, hi = part["auc_ci95"]
        ax.plot(part["roc"]["fpr"], part["roc"]["tpr"], label=f"{name}: AUC {part['auc']:.3f} [{lo:.3f}, {hi:.3f}]",
                **style)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    return _save_rates(fig, ax, "false positive rate (negative images flagged)", "sensitivity (positive images flagged)",
                       "image-level ROC (an image's score: its best detection)", "lower right", path)


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], path: str | os.PathLike, conf: float, iou: float = 0.5) -> Path:
    """Rows: predicted class (+ background = missed GT); columns: true class (+ background = false positive)."""
    names = list(class_names) + ["background"]
    n = len(names)
    fig = _figure((max(5, 0.6 * n + 3), max(4, 0.6 * n + 2)))
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title(f"confusion matrix (IoU {iou}, conf >= {conf})")
    vmax = matrix.max() if matrix.size else 0
    for i in range(n):
        for j in range(n):
            if matrix[i, j]:
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if matrix[i, j] > 0.5 * vmax else "black")
    fig.tight_layout()
    out = _save(fig, path)
    return out


def draw_boxes(image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str],
               scores: torch.Tensor | None = None, width: int = 2) -> torch.Tensor:
    """uint8 [3, H, W] with each box in its class colour, labelled with the class (and score). A windowed image of
    more than 8 bits (float in [0, 1]) is drawn as the network saw it, in 8 bits."""
    from torchvision.utils import draw_bounding_boxes

    if image.is_floating_point():
        image = (image * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    if boxes.numel() == 0:
        return image
    colors = class_colors(len(class_names))
    lab = labels.tolist()
    text = [class_names[c] if scores is None else f"{class_names[c]} {s:.2f}" for c, s in
            zip(lab, scores.tolist() if scores is not None else [None] * len(lab))]
    return draw_bounding_boxes(image, boxes.float(), labels=text, colors=[colors[c] for c in lab], width=width)


def save_image(image: torch.Tensor, path: str | os.PathLike) -> Path:
    from PIL import Image

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(tmp)
    os.replace(tmp, path)
    return path


def prediction_grid(images: torch.Tensor, sizes: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor,
                    dets: Sequence[Detections], class_names: Sequence[str], path: str | os.PathLike,
                    max_images: int = 8) -> Path:
    """Per image: labels (left) beside predictions (right, CPU :class:`Detections` in input pixels), stacked in rows."""
    rows = []
    for i in range(min(max_images, images.shape[0])):
        h, w = int(sizes[i, 0]), int(sizes[i, 1])
        img = images[i, :, :h, :w].cpu()
        valid = gt_labels[i] >= 0
        left = draw_boxes(img, gt_boxes[i][valid].cpu(), gt_labels[i][valid].cpu(), class_names)
        right = draw_boxes(img, dets[i].boxes, dets[i].labels, class_names, dets[i].scores)
        rows.append(torch.cat([left, torch.full((3, h, 4), 255, dtype=torch.uint8), right], dim=2))
    width = max(r.shape[2] for r in rows)
    rows = [torch.nn.functional.pad(r, (0, width - r.shape[2], 0, 4), value=255) for r in rows]
    return save_image(torch.cat(rows, dim=1), path)


def error_gallery(rows: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor, Detections, str]],
                  class_names: Sequence[str], path: str | os.PathLike, width: int = 360) -> Path:
    """One row per image: its labels (left) beside the predictions (right); ``rows`` of (uint8 image, ground-truth
    boxes, labels, detections, caption). Panels are scaled to ``width`` px."""
    from PIL import Image, ImageDraw  # drawing the captions

    strips = []
    for image, gt_boxes, gt_labels, dets, caption in rows:
        left = draw_boxes(image, gt_boxes, gt_labels, class_names)
        right = draw_boxes(image, dets.boxes, dets.labels, class_names, dets.scores)
        pair = torch.cat([left, torch.full((3, image.shape[1], 6), 255, dtype=torch.uint8), right], dim=2)
        pil = Image.fromarray(pair.permute(1, 2, 0).numpy())
        pil = pil.resize((2 * width + 6, max(1, round(pil.height * (2 * width + 6) / pil.width))))
        canvas = Image.new("RGB", (pil.width, pil.height + 18), "white")
        canvas.paste(pil, (0, 18))
        ImageDraw.Draw(canvas).text((4, 3), caption, fill=(0, 0, 0))
        strips.append(torch.from_numpy(np.array(canvas)).permute(2, 0, 1))  # a copy: PIL's buffer is read-only
    if not strips:
        strips = [torch.full((3, 40, 2 * width + 6), 255, dtype=torch.uint8)]
    return save_image(torch.cat(strips, dim=1), path)
