"""Operating points: a score threshold per class chosen on one split (``fppi=1``, ``sensitivity=0.95``
or ``f1``), and what a set of thresholds reaches on any split.

Each class's threshold comes from that class's FROC curve (``retinadet.engine.froc``): its lesions, and
its false positives per image over every image of the split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from retinadet.engine.froc import LesionMatch, froc_curve
from retinadet.errors import ConfigError


@dataclass(frozen=True)
class OperatingPoint:
    kind: str  # "fppi", "sensitivity" or "f1"
    value: float | None = None

    @classmethod
    def parse(cls, spec: str) -> OperatingPoint:
        """``fppi=F`` (F > 0), ``sensitivity=S`` (0 < S <= 1) or ``f1``."""
        kind, sep, value = str(spec).partition("=")
        if kind == "f1" and not sep:
            return cls("f1")
        try:
            v = float(value)
        except ValueError:
            v = float("nan")
        if kind == "fppi" and v > 0 or kind == "sensitivity" and 0 < v <= 1:
            return cls(kind, v)
        raise ConfigError(f"--operating-point '{spec}': use fppi=F with F > 0 (false positives per image), "
                          "sensitivity=S with 0 < S <= 1, or f1")

    def __str__(self) -> str:
        return "f1" if self.kind == "f1" else f"{self.kind}={self.value:g}"


def _pick(point: OperatingPoint, fppi: np.ndarray, sens: np.ndarray, lesions: int, images: int, name: str) -> int:
    """Index of the chosen point on a class's curve (index 0 is the start, above every score)."""
    if point.kind == "fppi":
        ok = np.flatnonzero(fppi[1:] <= point.value + 1e-12) + 1
        if not len(ok):
            raise ConfigError(f"class '{name}': no threshold keeps false positives per image at or below {point.value:g} "
                              f"(the best-scored detection alone gives {fppi[1]:.3g})")
        return int(ok[-1])  # sensitivity only grows along the curve: the last point within the budget
    if point.kind == "sensitivity":
        ok = np.flatnonzero(sens[1:] >= point.value - 1e-12) + 1
        if not len(ok):
            raise ConfigError(f"class '{name}': no threshold reaches sensitivity {point.value:g} "
                              f"(at most {sens.max():.3g}, with every detection kept)")
        return int(ok[0])  # the highest threshold that reaches it: the fewest false positives
    tp, fp = sens * lesions, fppi * images
    f1 = np.where(tp > 0, 2 * tp / np.maximum(2 * tp + fp + (lesions - tp), 1e-12), 0.0)
    return int(np.argmax(f1[1:])) + 1


def uncalibrated(match: LesionMatch, class_names: Sequence[str]) -> dict[str, str]:
    """Classes a split cannot choose a threshold for, and why (no threshold is stored for them)."""
    out = {}
    for k, name in enumerate(class_names):
        sub = match.of_class(k)
        if not len(sub.tp_scores):
            out[name] = "no boxes on this split"
        elif not (sub.tp_scores > 0).any():
            out[name] = "no detection finds any of its boxes"
    return out


def choose_thresholds(match: LesionMatch, class_names: Sequence[str], point: OperatingPoint) -> dict[str, dict]:
    """Per class the split can calibrate (see :func:`uncalibrated`): the chosen threshold and the sensitivity and
    false positives per image it reaches there."""
    out, skip = {}, uncalibrated(match, class_names)
    for k, name in enumerate(class_names):
        if name in skip:
            continue
        sub = match.of_class(k)
        thresholds, fppi, sens = froc_curve(sub)
        i = _pick(point, fppi, sens, len(sub.tp_scores), sub.num_images, name)
        out[name] = {"threshold": float(thresholds[i]), "sensitivity": float(sens[i]), "fppi": float(fppi[i])}
    if not out:
        raise ConfigError(f"--operating-point {point}: no class can be calibrated on this split "
                          f"({'; '.join(f'{n}: {r}' for n, r in skip.items())})")
    return out


def at_thresholds(match: LesionMatch, class_names: Sequence[str], thresholds: Mapping[str, float]) -> dict[str, dict]:
    """Sensitivity and false positives per image that given per-class thresholds reach on this split."""
    out = {}
    for k, name in enumerate(class_names):
        if name not in thresholds:
            continue
        sub, t = match.of_class(k), float(thresholds[name])
        out[name] = {"threshold": t, "fppi": float((sub.fp_scores >= t).sum() / max(sub.num_images, 1)),
                     "sensitivity": float((sub.tp_scores >= t).mean()) if len(sub.tp_scores) else float("nan")}
    return out


def overall(per_class: Mapping[str, dict], match: LesionMatch, class_names: Sequence[str]) -> dict:
    """All classes at their thresholds: lesions found over all lesions, false positives per image summed."""
    found = lesions = fps = 0.0
    for k, name in enumerate(class_names):
        if name in per_class:
            sub, t = match.of_class(k), per_class[name]["threshold"]
            found += float((sub.tp_scores >= t).sum())
            lesions += len(sub.tp_scores)
            fps += float((sub.fp_scores >= t).sum())
    return {"sensitivity": found / lesions if lesions else float("nan"), "fppi": fps / max(match.num_images, 1)}


def format_operating_point(title: str, per_class: Mapping[str, dict], total: dict,
                           skipped: Mapping[str, str] | None = None) -> str:
    w = max([8, *map(len, per_class), *map(len, skipped or {})])
    lines = [title, f"  {'class':<{w}} {'threshold':>9} {'sensitivity':>11} {'FP/image':>9}"]
    for name, r in per_class.items():
        lines.append(f"  {name:<{w}} {r['threshold']:>9.4f} {r['sensitivity']:>11.3f} {r['fppi']:>9.3f}")
    lines.append(f"  {'all':<{w}} {'':>9} {total['sensitivity']:>11.3f} {total['fppi']:>9.3f}")
    for name, reason in (skipped or {}).items():
        lines.append(f"  {name:<{w}} no threshold chosen: {reason}")
    return "\n".join(lines)
