"""Visual explanations of detections: Grad-CAM, Grad-CAM++ and EigenCAM heatmaps.

``Detector.explain(image, ...)`` (or :func:`explain`) returns an :class:`Explanation`;
``retinadet cam`` writes overlays and grids under ``runs/cam/<name>/``.
"""

from retinadet.explain.api import Explanation, NoDetectionsError, explain, inference_ms
from retinadet.explain.cam import (
    LAYERS,
    METHODS,
    NORM_STATS,
    TARGETS,
    ForwardRecord,
    compute_cams,
    eigencam,
    forward_with_maps,
    gradcam,
    gradcam_plus_plus,
    norm_stats_mode,
    to_original,
    upsample_to_input,
)
from retinadet.explain.run import run_cam

__all__ = [
    "Explanation", "NoDetectionsError", "explain", "inference_ms", "LAYERS", "METHODS", "NORM_STATS", "TARGETS", "ForwardRecord",
    "compute_cams", "eigencam", "forward_with_maps", "gradcam", "gradcam_plus_plus", "norm_stats_mode", "to_original",
    "upsample_to_input", "run_cam",
]

