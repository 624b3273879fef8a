"""Data structures shared by every layer: the one detection type."""

from retinadet.structures.detections import Detections

__all__ = ["Detections"]
