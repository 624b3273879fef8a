"""``retinadet rank``: which unlabelled images a person should label next.

Labels teach a model most where it hesitates, and a budget is wasted on near-copies of one scene, so an image's
claim is its detections' uncertainty, discounted by how close it looks to the images already chosen.

* **Uncertainty** of a detection with score ``s`` of a class whose threshold is ``t`` (the checkpoint's stored
  per-class thresholds, else 0.25, as ``predict`` decides): ``max(0, 1 - |s - t| / 0.15)``, 1 at the threshold
  and 0 from 0.15 away. An image's uncertainty is the sum over its detections (a count of the detections within
  0.15 of the threshold, weighted by how close they sit). The review page sorts its queue by the same number.
* **Diversity**: each image's backbone/FPN feature (every pyramid level average-pooled over the image, not the
  padding, each level L2-normalised, then the whole) and its distance to the nearest image already picked,
  ``(1 - cos) / 2`` (1 while nothing is picked).
* **Greedy selection**: repeatedly pick the image with the largest ``(u / max u + 0.1) * distance``; the 0.1 lets
  a confident but novel image (or one with no detection at all) be picked over a copy of one already chosen,
  and an exact duplicate (distance 0) comes only after every other image. Ties go to the earlier path.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from retinadet.data.images import read_image
from retinadet.errors import ConfigError, DataError
from retinadet.model.preprocess import prepare_batch
from retinadet.utils.files import atomic_write_text, write_csv
from retinadet.utils.sources import list_sources
from retinadet.utils.thresholds import DEFAULT_CONF

WINDOW = 0.15  # a detection this far from its threshold (or farther) adds no uncertainty
NOVELTY = 0.1  # what an image with no uncertainty still claims for its novelty, against 1 for the most uncertain


def class_thresholds(class_names: Sequence[str], stored: dict | None) -> list[float]:
    """Each class's threshold: the checkpoint's stored per-class value (``val --save-thresholds``), else 0.25."""
    per_class = stored.get("per_class") if isinstance(stored, dict) else None
    return [float(per_class.get(n, DEFAULT_CONF)) if per_class else DEFAULT_CONF for n in class_names]


def detection_floor(model_thresh: float, thresholds: Sequence[float]) -> float:
    """The score threshold to detect at so that every detection that can add uncertainty is seen (but never
    above the model's own threshold, so a reviewer sees at least what the model emits)."""
    return min(float(model_thresh), max(1e-3, min(thresholds, default=DEFAULT_CONF) - WINDOW))


def detection_uncertainty(scores: Tensor, labels: Tensor, thresholds: Sequence[float]) -> Tensor:
    """Per detection: 1 at its class's threshold, falling linearly to 0 at ``WINDOW`` away."""
    t = torch.as_tensor(list(thresholds), dtype=torch.float32)[labels.long().cpu()]
    return (1.0 - (scores.float().cpu() - t).abs() / WINDOW).clamp(min=0.0)


def image_uncertainty(scores: Tensor, labels: Tensor, thresholds: Sequence[float]) -> float:
    return float(detection_uncertainty(scores, labels, thresholds).sum()) if len(scores) else 0.0


@torch.no_grad()
def pooled_features(model, images: Sequence[Tensor], preprocess=None) -> Tensor:
    """[B, D] float32, one unit vector per image: each FPN level average-pooled over the image region (padding
    excluded, so a batch's padding does not change an image's vector), L2-normalised per level and overall."""
    pre = preprocess or model.cfg.preprocess
    device = next(model.parameters()).device
    batch = prepare_batch(list(images), pre, device)
    was_training = model.training
    model.eval()
    try:
        x = model.normalize(batch.images, batch.image_sizes)
        if getattr(model, "channels_last", False):
            x = x.contiguous(memory_format=torch.channels_last)
        levels = model.fpn(model.backbone(x))
    finally:
        model.train(was_training)
    height, width = x.shape[-2:]
    sizes = batch.image_sizes.float()
    parts = []
    for f in levels:
        h, w = f.shape[-2:]
        rows = torch.ceil(sizes[:, 0] * h / height).clamp(1, h)
        cols = torch.ceil(sizes[:, 1] * w / width).clamp(1, w)
        mask = ((torch.arange(h, device=f.device)[None, :, None] < rows[:, None, None])
                & (torch.arange(w, device=f.device)[None, None, :] < cols[:, None, None])).unsqueeze(1).float()
        pooled = (f.float() * mask).sum((-2, -1)) / mask.sum((-2, -1))
        parts.append(torch.nn.functional.normalize(pooled, dim=1))
    return torch.nn.functional.normalize(torch.cat(parts, dim=1), dim=1).cpu()


def select(uncertainty: np.ndarray, features: np.ndarray, budget: int) -> list[tuple[int, float, float]]:
    """Greedy uncertainty x novelty selection (the module docstring's rule): (index, score, distance) per pick,
    best first. ``features``: unit vectors [N, D]."""
    u = np.asarray(uncertainty, dtype=np.float64)
    n = len(u)
    if budget < 1:
        raise ConfigError(f"--budget must be at least 1, got {budget}")
    weight = (u / u.max() if n and u.max() > 0 else np.zeros(n)) + NOVELTY
    feats = np.asarray(features, dtype=np.float64)
    distance = np.ones(n)
    free = np.ones(n, dtype=bool)
    picks = []
    for _ in range(min(budget, n)):
        score = np.where(free, weight * distance, -np.inf)
        i = int(np.argmax(score))  # the first of equal scores: inputs come sorted, so the result is deterministic
        picks.append((i, float(score[i]), float(distance[i])))
        free[i] = False
        distance = np.minimum(distance, np.clip((1.0 - feats @ feats[i]) / 2.0, 0.0, 1.0))
    return picks


@dataclass
class Ranked:
    path: str
    score: float  # the greedy score when picked
    uncertainty: float  # the sum over the image's detections
    diversity: float  # the distance to the nearest image picked before it (1 for the first)
    detections: int


def rank_images(detector, source: str | os.PathLike | Sequence[str], budget: int, batch: int = 4,
                log: Callable[[str], None] = print) -> list[Ranked]:
    """The ``budget`` images of ``source`` (folder, glob, .txt list or a list of paths) worth labelling first.

    ``detector``: a :class:`retinadet.detector.Detector` (its ``predict`` gives the detections, its model the
    features). Unreadable images are skipped and named through ``log``."""
    paths = list_sources(source) if isinstance(source, (str, os.PathLike)) else [str(p) for p in source]
    if budget < 1:
        raise ConfigError(f"--budget must be at least 1, got {budget}")
    thresholds = class_thresholds(detector.class_names, (getattr(detector, "checkpoint", None) or {}).get("thresholds"))
    conf = detection_floor(detector.model.cfg.inference.score_thresh, thresholds)
    kept, unc, counts, feats = [], [], [], []
    step = max(1, int(batch))
    for start in range(0, len(paths), step):
        images, names = [], []
        for p in paths[start:start + step]:
            try:
                images.append(read_image(p, detector.model.cfg.preprocess.window))
                names.append(p)
            except DataError as exc:
                log(f"skipped {exc}")
        if not images:
            continue
        dets = detector.predict(images, conf=conf, batch_size=step)
        feats.append(pooled_features(detector.model, images))
        for name, d in zip(names, dets):
            kept.append(name)
            unc.append(image_uncertainty(d.scores, d.labels, thresholds))
            counts.append(len(d))
    if not kept:
        raise DataError(f"{source}: no readable image to rank")
    picks = select(np.array(unc), torch.cat(feats).numpy(), budget)
    return [Ranked(kept[i], score, unc[i], dist, counts[i]) for i, score, dist in picks]


def write_ranking(ranked: Sequence[Ranked], out: str | os.PathLike) -> tuple[Path, Path]:
    """``out`` (a plain list of paths, best first, that ``predict --source`` and the review page read: relative
    to its folder when inside it) and a CSV beside it with path, score, uncertainty, diversity, detections."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    base = out.parent.resolve()

    def shown(path: str) -> str:
        p = Path(path).resolve()
        return p.relative_to(base).as_posix() if p.is_relative_to(base) else str(p)

    lines = [shown(r.path) for r in ranked]
    atomic_write_text(out, "".join(line + "\n" for line in lines))
    table = write_csv(out.with_suffix(".csv"), ["path", "score", "uncertainty", "diversity", "detections"],
                      [[line, f"{r.score:.6f}", f"{r.uncertainty:.6f}", f"{r.diversity:.6f}", r.detections]
                       for line, r in zip(lines, ranked)])
    return out, table
