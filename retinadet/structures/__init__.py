"""Data structures shared by every layer: the one detection type."""

from retinadet.structures.detections import Detections, DetectionsList

__all__ = ["Detections", "DetectionsList"]
