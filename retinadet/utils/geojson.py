"""Detections as GeoJSON that QuPath imports (*File > Import objects*): one Feature per box, a rectangle in image
pixels (QuPath's frame: origin top-left, full resolution), with its class as a QuPath classification (name and
colour) and its score as a measurement. Torch-free, shared with the ONNX runner."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from retinadet.errors import DataError
from retinadet.utils.colors import class_colors
from retinadet.utils.scores import round_score


def to_feature_collection(boxes: Sequence[Sequence[float]], scores: Sequence[float], labels: Sequence[int],
                          class_names: Sequence[str]) -> dict:
    """A FeatureCollection of detections (xyxy boxes in image pixels)."""
    colors = class_colors(len(class_names))
    features = []
    for (x1, y1, x2, y2), score, label in zip(boxes, scores, labels):
        ring = [[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]]
        features.append({"type": "Feature",
                         "geometry": {"type": "Polygon", "coordinates": [[[round(float(x), 3), round(float(y), 3)] for x, y in ring]]},
                         "properties": {"objectType": "detection",
                                        "classification": {"name": class_names[int(label)], "color": list(colors[int(label)])},
                                        "measurements": {"score": round_score(score)}}})
    return {"type": "FeatureCollection", "features": features}


def read_feature_collection(path: str | os.PathLike) -> list[dict]:
    """The rectangles of a GeoJSON file written by :func:`to_feature_collection` (or by QuPath): a dict per
    feature with ``box`` (xyxy, the polygon's bounds), ``class_name`` and ``score`` (None when not measured)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{p}: not a readable GeoJSON file ({exc})") from None
    features = data.get("features") if isinstance(data, dict) else data
    if not isinstance(features, list):
        raise DataError(f"{p}: expected a FeatureCollection (or a list of features)")
    out = []
    for k, f in enumerate(features):
        try:
            ring = f["geometry"]["coordinates"][0]
            xs, ys = [float(pt[0]) for pt in ring], [float(pt[1]) for pt in ring]
            props = f.get("properties") or {}
            name = (props.get("classification") or {}).get("name")
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise DataError(f"{p}: feature {k}: not a polygon with coordinates ({exc})") from None
        score = (props.get("measurements") or {}).get("score") if isinstance(props.get("measurements"), dict) else None
        out.append({"box": [min(xs), min(ys), max(xs), max(ys)], "class_name": name, "score": score})
    return out
