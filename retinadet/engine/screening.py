"""Image-level screening: which images (slides, fields) would be flagged for a person to look at.

An image's score is its highest detection score, per class and over all classes (0 without detections); an
image is positive when it holds a (non-crowd) box of the class. ROC curve and AUC, and the sensitivity and
specificity of flagging at the per-class operating thresholds (an image is flagged when any class reaches
its threshold), each with a 95% bootstrap CI over images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from retinadet.data.records import DatasetRecords
from retinadet.structures import Detections


def image_scores(data: DatasetRecords, detections: dict[int, Detections]) -> tuple[np.ndarray, np.ndarray]:
    """(scores [N, K], positive [N, K]): per image and class, the best detection score and whether it holds a box."""
    k = data.num_classes
    scores = np.zeros((len(data.records), k))
    positive = np.zeros((len(data.records), k), dtype=bool)
    for i, r in enumerate(data.records):
        positive[i, np.unique(r.labels[~r.crowd])] = True
        d = detections.get(int(r.image_id))
        if d is not None and len(d):
            np.maximum.at(scores[i], d.labels.numpy(), d.scores.double().numpy())
    return scores, positive


def roc_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Area under the ROC curve: the chance that a positive image outscores a negative one (ties count half).
    ``weights``: how often each image counts (a bootstrap draw)."""
    w = np.ones(len(scores)) if weights is None else weights
    pos_w, neg_w = (w * positive).sum(), (w * ~positive).sum()
    if pos_w == 0 or neg_w == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    s, p, ww = scores[order], positive[order], w[order]
    uniq, start = np.unique(s, return_index=True)
    neg_per = np.add.reduceat(ww * ~p, start)  # negatives' weight at each distinct score
    pos_per = np.add.reduceat(ww * p, start)
    below = np.cumsum(neg_per) - neg_per  # negatives strictly below each score
    return float(((below + 0.5 * neg_per) * pos_per).sum() / (pos_w * neg_w))


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[list[float], list[float]]:
    """(false positive rate, true positive rate), thresholds falling from above the highest score."""
    order = np.argsort(-scores, kind="stable")
    s, p = scores[order], positive[order]
    last = np.r_[s[1:] != s[:-1], True]
    tp, fp = np.cumsum(p)[last], np.cumsum(~p)[last]
    fpr, tpr = np.r_[0.0, fp / max(1, (~positive).sum())], np.r_[0.0, tp / max(1, positive.sum())]
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(400, len(fpr))).round().astype(int))  # enough to draw
    return fpr[keep].tolist(), tpr[keep].tolist()


def _ci(values: Sequence[float]) -> list[float]:
    v = np.asarray([x for x in values if np.isfinite(x)])
    return [float(x) for x in np.percentile(v, [2.5, 97.5])] if len(v) else [float("nan"), float("nan")]


def _rates(flagged: np.ndarray, positive: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    pos, neg = (w * positive).sum(), (w * ~positive).sum()
    sens = (w * (flagged & positive)).sum() / pos if pos else float("nan")
    spec = (w * (~flagged & ~positive)).sum() / neg if neg else float("nan")
    return float(sens), float(spec)


def screening(data: DatasetRecords, detections: dict[int, Detections], thresholds: Mapping[str, float] | None = None,
              resamples: int = 1000, seed: int = 0) -> dict:
    """The ``screening`` section of metrics.json: over all classes and per class."""
    scores, positive = image_scores(data, detections)
    n = len(scores)
    rng = np.random.default_rng(seed)
    draws = [np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64) for _ in range(resamples)]
    names = list(data.class_names)
    columns = [("all classes", scores.max(1, initial=0.0), positive.any(1))]
    columns += [(name, scores[:, k], positive[:, k]) for k, name in enumerate(names)]
    flagged_all = None
    if thresholds:
        limits = np.array([thresholds.get(name, np.inf) for name in names])
        flagged_all = (scores >= limits[None, :]).any(1)
    out: dict = {"images": n, "per_class": {}}
    for name, s, p in columns:
        part = {"positives": int(p.sum()), "negatives": int((~p).sum()), "auc": roc_auc(s, p),
                "auc_ci95": _ci([roc_auc(s, p, w) for w in draws]), "roc": dict(zip(("fpr", "tpr"), roc_curve(s, p)))}
        if thresholds and (name == "all classes" or name in thresholds):
            flagged = flagged_all if name == "all classes" else s >= thresholds[name]
            sens, spec = _rates(flagged, p, np.ones(n))
            boot = [_rates(flagged, p, w) for w in draws]
            part["at_thresholds"] = {"sensitivity": sens, "specificity": spec, "flagged": int(flagged.sum()),
                                     "sensitivity_ci95": _ci([b[0] for b in boot]),
                                     "specificity_ci95": _ci([b[1] for b in boot])}
        if name == "all classes":
            out.update(part)
        else:
            out["per_class"][name] = part
    return out


def format_screening(s: dict) -> str:
    def row(name: str, part: dict) -> str:
        auc = "n/a (needs positive and negative images)" if not np.isfinite(part["auc"]) else \
            f"{part['auc']:.3f} [{part['auc_ci95'][0]:.3f}, {part['auc_ci95'][1]:.3f}]"
        text = f"  {name:11} {part['positives']:>4} positive / {part['negatives']:>4} negative images  AUC {auc}"
        at = part.get("at_thresholds")
        if at:
            text += (f"; flagged at the thresholds: sensitivity {at['sensitivity']:.3f}, "
                     f"specificity {at['specificity']:.3f}" if np.isfinite(at["specificity"]) else
                     f"; flagged at the thresholds: sensitivity {at['sensitivity']:.3f}")
        return text

    lines = [f"image-level screening ({s['images']} images; an image's score is its best detection):", row("all classes", s)]
    lines += [row(name, part) for name, part in s["per_class"].items()]
    return "\n".join(lines)
