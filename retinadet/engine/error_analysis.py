"""Where the model goes wrong, in the manner of TIDE (Bolya et al., 2020): each error counted as one kind,
and beside each kind the AP50 gained when an oracle fixes every error of that kind.

A detection that is not a true positive at IoU 0.5 (its class, its box, a box not matched before) is:
- ``classification``: IoU >= 0.5 with a box of another class;
- ``localisation``: its class, 0.1 <= IoU < 0.5;
- ``both``: another class, 0.1 <= IoU < 0.5;
- ``duplicate``: its class, IoU >= 0.5 with a box a higher-scored detection already matched;
- ``background``: IoU < 0.1 with every box.
A box no detection matches is ``missed``. Fixes, as TIDE makes them: a classification error gets the class of
the box it covers and a localisation error that box (each unless the box is matched already, which makes it a
duplicate to drop); both, duplicate and background errors are dropped; missed boxes are removed from the
ground truth. AP50 is COCO's (101 recall points, greedy matching by score), over the classes with boxes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

from retinadet.data.images import read_image
from retinadet.data.records import DatasetRecords
from retinadet.engine.plots import error_gallery
from retinadet.errors import DataError
from retinadet.structures import Detections

KINDS = ("classification", "localisation", "both", "duplicate", "background", "missed")
FG, BG = 0.5, 0.1


@dataclass
class _Image:
    gt: np.ndarray  # [G, 4] non-crowd boxes
    gt_labels: np.ndarray  # [G]
    crowd: np.ndarray  # [C, 4]
    crowd_labels: np.ndarray
    boxes: np.ndarray  # [D, 4] detections, best first
    scores: np.ndarray
    labels: np.ndarray


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    return box_iou(torch.from_numpy(a).double(), torch.from_numpy(b).double()).numpy()


def _images(data: DatasetRecords, detections: dict[int, Detections]) -> list[_Image]:
    out = []
    for r in data.records:
        d = detections.get(int(r.image_id))
        order = torch.argsort(-d.scores, stable=True) if d is not None and len(d) else torch.zeros(0, dtype=torch.long)
        out.append(_Image(r.boxes[~r.crowd].astype(np.float64), r.labels[~r.crowd], r.boxes[r.crowd].astype(np.float64),
                          r.labels[r.crowd],
                          d.boxes[order].double().numpy() if len(order) else np.zeros((0, 4)),
                          d.scores[order].double().numpy() if len(order) else np.zeros(0),
                          d.labels[order].numpy() if len(order) else np.zeros(0, np.int64)))
    return out


def _match(im: _Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true positive [D], ignored [D] (on a crowd box), matched box [G]) with COCO's greedy matching at IoU 0.5."""
    iou = _iou(im.boxes, im.gt)
    same = im.labels[:, None] == im.gt_labels[None, :]
    taken = np.zeros(len(im.gt), bool)
    tp = np.zeros(len(im.boxes), bool)
    for i in range(len(im.boxes)):  # by score: each detection takes the best free box of its class
        cand = np.where(same[i] & ~taken & (iou[i] >= FG), iou[i], -1.0)
        if len(cand) and cand.max() >= FG:
            taken[int(cand.argmax())] = tp[i] = True
    crowd_iou = _iou(im.boxes, im.crowd)
    ignored = ~tp & ((crowd_iou >= FG) & (im.labels[:, None] == im.crowd_labels[None, :])).any(1)
    return tp, ignored, taken


def average_precision(images: list[_Image], num_classes: int) -> float:
    """COCO's AP at IoU 0.5 (101-point interpolation), averaged over the classes that have boxes."""
    per_class = {k: ([], [], 0) for k in range(num_classes)}
    for im in images:
        tp, ignored, _ = _match(im)
        for k in range(num_classes):
            sel = (im.labels == k) & ~ignored
            scores, hits, n = per_class[k]
            scores.extend(im.scores[sel].tolist())
            hits.extend(tp[sel].tolist())
            per_class[k] = (scores, hits, n + int((im.gt_labels == k).sum()))
    aps = []
    for scores, hits, n in per_class.values():
        if n == 0:
            continue
        if not scores:  # boxes to find and no detection of the class
            aps.append(0.0)
            continue
        order = np.argsort(-np.asarray(scores), kind="mergesort")
        h = np.asarray(hits, dtype=np.float64)[order]
        tps, fps = np.cumsum(h), np.cumsum(1 - h)
        recall = tps / n
        precision = np.maximum.accumulate((tps / np.maximum(tps + fps, 1e-12))[::-1])[::-1]
        points = np.linspace(0, 1, 101)
        idx = np.searchsorted(recall, points, side="left")
        aps.append(float(np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0).mean()))
    return float(np.mean(aps)) if aps else float("nan")


def classify_errors(im: _Image) -> tuple[np.ndarray, np.ndarray]:
    """(kind of each detection: an index into KINDS, -1 for true positives and ignored ones; missed boxes [G])."""
    tp, ignored, taken = _match(im)
    iou = _iou(im.boxes, im.gt)
    same = im.labels[:, None] == im.gt_labels[None, :]
    kind = np.full(len(im.boxes), -1)
    for i in np.flatnonzero(~tp & ~ignored):
        own = np.where(same[i], iou[i], 0.0).max(initial=0.0)
        other = np.where(~same[i], iou[i], 0.0).max(initial=0.0)
        if own >= FG:
            kind[i] = KINDS.index("duplicate")
        elif other >= FG:
            kind[i] = KINDS.index("classification")
        elif own >= BG:
            kind[i] = KINDS.index("localisation")
        elif other >= BG:
            kind[i] = KINDS.index("both")
        else:
            kind[i] = KINDS.index("background")
    return kind, ~taken


def _fixed(images: list[_Image], what: str) -> list[_Image]:
    out = []
    for im in images:
        kind, missed = classify_errors(im)
        boxes, labels, keep = im.boxes.copy(), im.labels.copy(), np.ones(len(im.boxes), bool)
        gt_keep = np.ones(len(im.gt), bool)
        if what == "missed":
            gt_keep = ~missed
        elif what in ("both", "duplicate", "background"):
            keep &= kind != KINDS.index(what)
        else:  # classification or localisation: move the detection onto the box it was meant for
            iou = _iou(im.boxes, im.gt)
            _, _, taken = _match(im)
            used = taken.copy()
            for i in np.flatnonzero(kind == KINDS.index(what)):
                same = im.labels[i] == im.gt_labels
                j = int(np.where(same if what == "localisation" else ~same, iou[i], -1).argmax())
                if used[j]:
                    keep[i] = False  # the box was found already: this one is a duplicate now
                    continue
                used[j] = True
                if what == "classification":
                    labels[i] = im.gt_labels[j]
                else:
                    boxes[i] = im.gt[j]
        out.append(_Image(im.gt[gt_keep], im.gt_labels[gt_keep], im.crowd, im.crowd_labels, boxes[keep], im.scores[keep],
                          labels[keep]))
    return out


def error_analysis(data: DatasetRecords, detections: dict[int, Detections], conf: float = 0.25) -> dict:
    """Counts of each kind of error among detections scored ``conf`` or more (what a reader of the output sees),
    and the AP50 each fix gains over all detections (as AP is computed)."""
    everything = _images(data, detections)
    base = average_precision(everything, data.num_classes)
    gain = {kind: average_precision(_fixed(everything, kind), data.num_classes) - base for kind in KINDS}
    images = _images(data, {k: d[d.scores >= conf] for k, d in detections.items()})
    counts = dict.fromkeys(KINDS, 0)
    worst = []
    for r, im in zip(data.records, images):
        kind, missed = classify_errors(im)
        for k in range(len(KINDS) - 1):
            counts[KINDS[k]] += int((kind == k).sum())
        counts["missed"] += int(missed.sum())
        fp_scores = im.scores[kind >= 0]
        worst.append({"image_id": int(r.image_id), "file": str(r.path), "missed": int(missed.sum()),
                      "worst_false_positive": float(fp_scores.max(initial=0.0))})
    return {"conf": conf, "AP50": base, "counts": counts, "AP50_gain": gain,
            "most_missed": sorted(worst, key=lambda w: -w["missed"])[:4],
            "most_confident_false_positives": sorted(worst, key=lambda w: -w["worst_false_positive"])[:4]}


def format_errors(e: dict) -> str:
    lines = [f"errors at score >= {e['conf']:g} (TIDE-style), and the AP50 fixing each kind gains (AP50 {e['AP50']:.4f}):"]
    lines += [f"  {k:15} {e['counts'][k]:>6}   +{e['AP50_gain'][k]:.4f} AP50" for k in KINDS]
    return "\n".join(lines)


def draw_worst(data: DatasetRecords, detections: dict[int, Detections], errors: dict, path, class_names,
               window: str | None = None) -> Path | None:
    """The gallery: the images with the most missed boxes, then those with the most confident false positives
    (labels beside predictions scored ``errors['conf']`` or more). An image that cannot be read is left out."""
    by_id = {int(r.image_id): r for r in data.records}
    rows, seen = [], set()
    picks = [(w, f"{w['missed']} missed") for w in errors["most_missed"] if w["missed"]]
    picks += [(w, f"false positive scored {w['worst_false_positive']:.2f}")
              for w in errors["most_confident_false_positives"] if w["worst_false_positive"] > 0]
    for worst, why in picks:
        if worst["image_id"] in seen:
            continue
        seen.add(worst["image_id"])
        r = by_id[worst["image_id"]]
        try:
            image = read_image(r.path, window)
        except DataError:
            continue
        d = detections.get(int(r.image_id)) or Detections.empty((r.height, r.width), class_names)
        rows.append((image, torch.from_numpy(r.boxes[~r.crowd]), torch.from_numpy(r.labels[~r.crowd]),
                     d[d.scores >= errors["conf"]], f"{Path(r.path).name}: {why}"))
    return error_gallery(rows, class_names, path) if rows else None
