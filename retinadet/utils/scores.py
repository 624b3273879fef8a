"""How a detection score is written to a file (JSON, GeoJSON, Label Studio, CVAT)."""

from __future__ import annotations


def round_score(score: float) -> float:
    """Six significant digits, not fixed decimals. A model whose scores are small (early in training, or a quality
    focal loss scoring boxes by their IoU) would otherwise get ties that reorder its detections, and the AP computed
    from the file would move away from what ``val`` measured."""
    return float(f"{float(score):.6g}")
