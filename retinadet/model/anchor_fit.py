"""Fit the anchor shapes to a dataset's boxes, in the manner of YOLOv5's autoanchor, for RetinaNet's layout.

RetinaNet's anchors are a base size per pyramid level times ``scales`` and ``ratios`` shared by every level, so
those two lists are what is fitted (the level sizes stay: they follow the strides). The coverage optimised is
shape-only, as autoanchor's: each box against every anchor shape centred on it, IoU
``min(w) * min(h) / union``; it ignores where the grid places anchors (``data/check.best_anchor_iou`` counts that).
1-D k-means on log aspect ratio and on the log size offset within a level gives the start, then a genetic
(mutate-and-keep) evolution refines it. The number of anchors per location never changes (the heads' size
depends on it), and a fit that does not beat the input on all boxes returns the input unchanged.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from retinadet.errors import ConfigError
from retinadet.model.config import AnchorConfig

IOU_THRESH = 0.5
SAMPLE = 3000  # boxes the evolution scores per step; the final comparison uses all of them
RATIO_RANGE = (1 / 16, 16.0)
SCALE_RANGE = (0.35, 4.0)
DECIMALS = 4  # the fitted values are rounded once, so that the --set line and the model use the same anchors


def anchor_shapes(cfg: AnchorConfig, ratios: np.ndarray | None = None, scales: np.ndarray | None = None) -> np.ndarray:
    """(w, h) of every anchor shape of ``cfg`` [levels * A, 2], as ``anchors.base_anchors`` builds them (truncated
    sizes, rounded half extents); ``ratios``/``scales`` replace the config's. Accepts a leading population axis."""
    r = np.asarray(cfg.ratios if ratios is None else ratios, dtype=np.float64)
    s = np.asarray(cfg.scales if scales is None else scales, dtype=np.float64)
    sizes = np.asarray(cfg.sizes, dtype=np.float64)
    side = sizes[:, None] * s[..., None, :]  # [..., L, S]
    if cfg.truncate_sizes:
        side = np.trunc(side)
    hr = np.sqrt(r)[..., None, :, None]  # [..., 1, R, 1]
    w = side[..., :, None, :] / hr  # [..., L, R, S]: ratio-major, scale-minor as in base_anchors
    h = side[..., :, None, :] * hr
    if cfg.round_base:
        w, h = 2 * np.round(w / 2), 2 * np.round(h / 2)
    return np.stack([w, h], axis=-1).reshape(*w.shape[:-3], -1, 2)


def shape_iou(boxes_wh: np.ndarray, shapes: np.ndarray) -> np.ndarray:
    """Best centred IoU of each box [N, 2] with the shapes [..., A, 2]: [..., N]."""
    bw, bh = boxes_wh[:, 0, None], boxes_wh[:, 1, None]
    aw, ah = shapes[..., None, :, 0], shapes[..., None, :, 1]
    inter = np.minimum(bw, aw) * np.minimum(bh, ah)
    return (inter / (bw * bh + aw * ah - inter)).max(axis=-1)


def shape_coverage(boxes_wh: np.ndarray, cfg: AnchorConfig, thresh: float = IOU_THRESH) -> float:
    """Share of boxes whose best centred anchor shape reaches ``thresh``."""
    boxes_wh = _checked(boxes_wh)
    return float((shape_iou(boxes_wh, anchor_shapes(cfg)) >= thresh).mean()) if len(boxes_wh) else 1.0


def _checked(boxes_wh: np.ndarray) -> np.ndarray:
    wh = np.asarray(boxes_wh, dtype=np.float64)
    if wh.ndim != 2 or wh.shape[1] != 2:
        raise ConfigError(f"fit_anchors: boxes_wh must be [N, 2] (width, height), got shape {list(wh.shape)}")
    keep = np.isfinite(wh).all(axis=1) & (wh > 0).all(axis=1)  # degenerate boxes have no shape to match
    return wh[keep]


def _kmeans_1d(x: np.ndarray, k: int, iters: int = 30) -> np.ndarray:
    """Sorted centroids of ``x`` (quantile start: deterministic, no seed needed)."""
    c = np.quantile(x, (np.arange(k) + 0.5) / k)
    for _ in range(iters):
        which = np.abs(x[:, None] - c[None, :]).argmin(axis=1)
        counts = np.bincount(which, minlength=k)
        sums = np.bincount(which, weights=x, minlength=k)
        c = np.where(counts > 0, sums / np.maximum(counts, 1), c)
    return np.sort(c)


def _kmeans_start(wh: np.ndarray, cfg: AnchorConfig) -> tuple[np.ndarray, np.ndarray]:
    """Ratios from k-means on log(h / w); scales from k-means on each box's log2 size above the largest level base
    size it reaches (the offset that ``scales`` must supply), so both lists suit every level at once."""
    ratios = np.exp(_kmeans_1d(np.log(wh[:, 1] / wh[:, 0]), len(cfg.ratios)))
    log_side = 0.5 * np.log2(wh[:, 0] * wh[:, 1])
    offset = log_side[:, None] - np.log2(np.asarray(cfg.sizes, dtype=np.float64))[None, :]
    above = np.where(offset >= 0, offset, np.inf).min(axis=1)
    above = np.where(np.isfinite(above), above, offset[:, 0])  # smaller than every level: below the first
    scales = 2 ** _kmeans_1d(above, len(cfg.scales))
    return ratios, scales


def _fitness(iou: np.ndarray, thresh: float) -> np.ndarray:
    # The coverage itself is a step function, flat under small mutations; the clipped IoU term adds a slope
    # towards the threshold without rewarding boxes already over it (which would trade coverage for tightness).
    return (iou >= thresh).mean(axis=-1) + 0.5 * np.minimum(iou / thresh, 1.0).mean(axis=-1)


def _clean(ratios: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (np.round(np.sort(np.clip(ratios, *RATIO_RANGE), axis=-1), DECIMALS),
            np.round(np.sort(np.clip(scales, *SCALE_RANGE), axis=-1), DECIMALS))


def fit_anchors(boxes_wh: np.ndarray, cfg: AnchorConfig, seed: int = 0, iterations: int = 300,
                population: int = 6, thresh: float = IOU_THRESH) -> tuple[AnchorConfig, float, float]:
    """(fitted config, coverage before, coverage after): ``ratios`` and ``scales`` of ``cfg`` fitted to ``boxes_wh``
    [N, 2] (width, height in network input pixels), maximising the share of boxes whose best centred anchor shape
    reaches IoU ``thresh``. Deterministic for a ``seed``; returns ``cfg`` itself when nothing beats it."""
    wh = _checked(boxes_wh)
    if iterations < 0 or population < 1:
        raise ConfigError(f"fit_anchors: iterations must be >= 0 and population >= 1, got {iterations}, {population}")
    if not len(wh):
        return cfg, 1.0, 1.0
    before = shape_coverage(wh, cfg, thresh)
    if before >= 1.0:
        return cfg, before, before
    rng = np.random.default_rng(seed)
    sample = wh[rng.choice(len(wh), SAMPLE, replace=False)] if len(wh) > SAMPLE else wh

    sample = sample.astype(np.float32)  # float32 halves the memory traffic of the evolution's IoUs

    def score(r: np.ndarray, s: np.ndarray) -> np.ndarray:
        return _fitness(shape_iou(sample, anchor_shapes(cfg, r, s).astype(np.float32)), thresh)

    starts = [_clean(np.asarray(cfg.ratios, float), np.asarray(cfg.scales, float)), _clean(*_kmeans_start(wh, cfg))]
    best_r, best_s = max(starts, key=lambda rs: float(score(*rs)))
    best_f = float(score(best_r, best_s))
    n_r = len(best_r)
    for _ in range(iterations):
        if best_f >= 1.5:  # every sampled box covered, and the slope term is saturated: nothing left to gain
            break
        # A population of mutants of the best so far, in log space (ratios and scales are multiplicative); as in
        # autoanchor, each value mutates with probability 0.9 and some mutant always changes.
        genes = np.log(np.concatenate([best_r, best_s]))
        mask = rng.random((population, len(genes))) < 0.9
        mask[~mask.any(axis=1), 0] = True
        step = rng.standard_normal((population, len(genes))) * rng.random((population, 1)) * 0.3
        mutant = np.exp(genes[None, :] + mask * step)
        r, s = _clean(mutant[:, :n_r], mutant[:, n_r:])
        f = score(r, s)
        k = int(f.argmax())
        if f[k] > best_f:
            best_f, best_r, best_s = float(f[k]), r[k], s[k]
    fitted = dataclasses.replace(cfg, ratios=[float(v) for v in best_r], scales=[float(v) for v in best_s])
    after = shape_coverage(wh, fitted, thresh)
    if after <= before:  # judged on all boxes, not the sample: never hand back something worse
        return cfg, before, before
    return fitted, before, after


def set_overrides(cfg: AnchorConfig) -> str:
    """The fitted shapes as ``--set`` options of ``retinadet train``."""
    def fmt(values: list[float]) -> str:
        return "[" + ",".join(f"{v:g}" for v in values) + "]"

    return f"--set anchors.ratios={fmt(cfg.ratios)} --set anchors.scales={fmt(cfg.scales)}"
