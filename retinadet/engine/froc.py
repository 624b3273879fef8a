"""FROC: lesion sensitivity against false positives per image, the figure screening teams report
(LUNA16, CAMELYON16), with a bootstrap confidence interval over images.

A ground-truth box (a lesion) is hit by a detection of its class when their IoU reaches a threshold
(``iou:0.5``) or when the detection's centre lies inside it (``center``). A lesion counts as found at a
score threshold when a detection scored at least that hits it; a detection that hits no lesion of its
class is a false positive; further detections on a lesion already hit are neither (as in LUNA16's and
MONAI's evaluation). Crowd (``difficult``) boxes are not lesions, and detections on them are ignored.
Every image of the split counts in the false positives per image, those without objects included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import box_iou

from retinadet.data.records import DatasetRecords
from retinadet.errors import ConfigError, DataError
from retinadet.structures import Detections

FPPI_POINTS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # the LUNA16 / CAMELYON16 points


@dataclass(frozen=True)
class HitRule:
    kind: str  # "iou" or "center"
    threshold: float = 0.5

    @classmethod
    def parse(cls, spec: str) -> HitRule:
        """``iou``, ``iou:T`` (0 < T <= 1) or ``center``."""
        kind, _, value = str(spec).partition(":")
        if kind == "center" and not value:
            return cls("center", 0.0)
        if kind == "iou":
            try:
                t = float(value) if value else 0.5
            except ValueError:
                t = -1.0
            if 0.0 < t <= 1.0:
                return cls("iou", t)
        raise ConfigError(f"--froc-hit '{spec}': use iou, iou:T with 0 < T <= 1 (e.g. iou:0.3), or center")

    def __str__(self) -> str:
        return "center" if self.kind == "center" else f"iou:{self.threshold:g}"


@dataclass
class LesionMatch:
    """What FROC needs, for one split: one row per false positive and per lesion."""

    fp_scores: np.ndarray  # [F] scores of the detections that hit no lesion
    fp_image: np.ndarray  # [F] their image's position in the split
    fp_label: np.ndarray  # [F]
    tp_scores: np.ndarray  # [L] per lesion: the best score of a detection hitting it, 0 when none does
    lesion_image: np.ndarray  # [L]
    lesion_label: np.ndarray  # [L]
    num_images: int

    def of_class(self, label: int) -> LesionMatch:
        f, les = self.fp_label == label, self.lesion_label == label
        return LesionMatch(self.fp_scores[f], self.fp_image[f], self.fp_label[f], self.tp_scores[les],
                           self.lesion_image[les], self.lesion_label[les], self.num_images)


def _hits(dets: Detections, gt: torch.Tensor, gt_labels: torch.Tensor, rule: HitRule) -> torch.Tensor:
    """[D, G] bool: detection d hits box g (same class)."""
    if rule.kind == "iou":
        geometric = box_iou(dets.boxes.double(), gt) >= rule.threshold - 1e-12
    else:
        c = (dets.boxes[:, :2] + dets.boxes[:, 2:]).double()[:, None, :] / 2
        geometric = (c >= gt[None, :, :2]).all(-1) & (c <= gt[None, :, 2:]).all(-1)
    return geometric & (dets.labels[:, None] == gt_labels[None, :])


def match_lesions(data: DatasetRecords, detections: dict[int, Detections], rule: HitRule) -> LesionMatch:
    """Lesions and false positives of every image of ``data`` (detections by image id, original pixels).
    One pass per image: images hold different numbers of boxes; within an image it is all tensor work."""
    fp_s, fp_i, fp_l, tp_s, les_i, les_l = [], [], [], [], [], []
    for position, r in enumerate(data.records):
        d = detections.get(int(r.image_id))
        if d is None or len(d) == 0:
            d = Detections.empty((r.height, r.width))
        crowd = torch.from_numpy(r.crowd)
        boxes, labels = torch.from_numpy(r.boxes).double(), torch.from_numpy(r.labels).long()
        hits = _hits(d, boxes[~crowd], labels[~crowd], rule)
        on_crowd = _hits(d, boxes[crowd], labels[crowd], rule).any(1)
        fp = ~hits.any(1) & ~on_crowd
        scores = d.scores.double()
        best = torch.where(hits, scores[:, None], torch.zeros_like(hits, dtype=torch.float64)).amax(0) \
            if len(d) else torch.zeros(hits.shape[1], dtype=torch.float64)
        fp_s.append(scores[fp].numpy())
        fp_l.append(d.labels[fp].numpy())
        fp_i.append(np.full(int(fp.sum()), position))
        tp_s.append(best.numpy())
        les_l.append(labels[~crowd].numpy())
        les_i.append(np.full(int((~crowd).sum()), position))
    cat = lambda parts, dtype: np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)  # noqa: E731
    return LesionMatch(cat(fp_s, np.float64), cat(fp_i, np.int64), cat(fp_l, np.int64), cat(tp_s, np.float64),
                       cat(les_i, np.int64), cat(les_l, np.int64), len(data.records))


def froc_curve(match: LesionMatch, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, false positives per image, sensitivity), thresholds falling from the highest score, the
    curve starting at (0, 0). ``weights`` [R, N] (images drawn R times by a bootstrap) gives R curves at once,
    as [R, T] arrays."""
    scores = np.concatenate([match.fp_scores, match.tp_scores])
    is_fp = np.concatenate([np.ones(len(match.fp_scores)), np.zeros(len(match.tp_scores))])
    image = np.concatenate([match.fp_image, match.lesion_image])
    w = np.ones((1, match.num_images)) if weights is None else np.asarray(weights, dtype=np.float64)
    lesions = w[:, match.lesion_image].sum(1)  # [R]
    positive = scores > 0  # a missed lesion (score 0) is never found
    order = np.argsort(-scores[positive], kind="stable")
    s, fp, img = scores[positive][order], is_fp[positive][order], image[positive][order]
    weight = w[:, img]  # [R, E]
    cum_fp = np.cumsum(weight * fp, axis=1)
    cum_tp = np.cumsum(weight * (1 - fp), axis=1)
    last = np.r_[s[1:] != s[:-1], True] if len(s) else np.zeros(0, bool)  # the last event of each tied score
    zero = np.zeros((w.shape[0], 1))
    fppi = np.concatenate([zero, cum_fp[:, last] / max(match.num_images, 1)], axis=1)
    sens = np.concatenate([zero, cum_tp[:, last] / np.maximum(lesions, 1e-12)[:, None]], axis=1)
    thresholds = np.r_[np.inf, s[last]]
    return (thresholds, fppi[0], sens[0]) if weights is None else (thresholds, fppi, sens)


def sensitivity_at(fppi: np.ndarray, sens: np.ndarray, points: Sequence[float] = FPPI_POINTS) -> np.ndarray:
    """Sensitivity at each false-positive rate, interpolated linearly along the curve (flat past its end)."""
    return np.interp(np.asarray(points, dtype=np.float64), fppi, sens)


def froc_summary(match: LesionMatch, points: Sequence[float] = FPPI_POINTS, resamples: int = 1000,
                 seed: int = 0) -> dict:
    """Sensitivity at ``points``, their mean (the FROC score), and a 95% bootstrap CI of the score over images."""
    if len(match.tp_scores) == 0:
        raise DataError("FROC needs ground truth: the split has no (non-crowd) boxes")
    _, fppi, sens = froc_curve(match)
    at = sensitivity_at(fppi, sens, points)
    rng = np.random.default_rng(seed)
    n = match.num_images
    scores = []
    # Resamples as image weights (how often each image was drawn), a block at a time to bound memory.
    block = max(1, min(resamples, int(2e7 // max(1, len(match.fp_scores) + len(match.tp_scores) + n))))
    for start in range(0, resamples, block):
        r = min(block, resamples - start)
        weights = np.zeros((r, n))
        np.add.at(weights, (np.repeat(np.arange(r), n), rng.integers(0, n, size=r * n)), 1.0)
        _, fppi_r, sens_r = froc_curve(match, weights)
        has_lesions = weights[:, match.lesion_image].sum(1) > 0  # a resample without lesions has no sensitivity
        scores += [sensitivity_at(f, s, points).mean() for f, s, ok in zip(fppi_r, sens_r, has_lesions) if ok]
    lo, hi = np.percentile(scores, [2.5, 97.5]) if len(scores) else (float("nan"), float("nan"))
    return {"fppi": [float(p) for p in points], "sensitivity": [float(v) for v in at], "score": float(at.mean()),
            "ci95": [float(lo), float(hi)], "lesions": int(len(match.tp_scores)), "images": int(match.num_images),
            "curve": _thin(fppi, sens)}


def _thin(fppi: np.ndarray, sens: np.ndarray, points: int = 400) -> dict:
    """The curve for plotting, at most ``points`` of it (the figures above come from the whole curve)."""
    keep = np.unique(np.linspace(0, len(fppi) - 1, min(points, len(fppi))).round().astype(int))
    return {"fppi": fppi[keep].tolist(), "sensitivity": sens[keep].tolist()}


def froc(data: DatasetRecords, detections: dict[int, Detections], hit: str | HitRule = "iou:0.5",
         resamples: int = 1000, seed: int = 0) -> dict:
    """The ``froc`` section of metrics.json: over all classes, and per class (classes without boxes left out)."""
    rule = hit if isinstance(hit, HitRule) else HitRule.parse(hit)
    return froc_of_match(match_lesions(data, detections, rule), data.class_names, rule, resamples, seed)


def froc_of_match(match: LesionMatch, class_names: Sequence[str], rule: HitRule, resamples: int = 1000,
                  seed: int = 0) -> dict:
    out = {"hit": str(rule), **froc_summary(match, resamples=resamples, seed=seed), "per_class": {}}
    for k, name in enumerate(class_names):
        sub = match.of_class(k)
        if len(sub.tp_scores):
            out["per_class"][name] = froc_summary(sub, resamples=resamples, seed=seed)
    return out
