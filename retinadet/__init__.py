"""retinadet: RetinaNet object detection toolkit.

The public API is ``Detector``, ``load``, ``predict`` (from :mod:`retinadet.detector`) and ``train``
(from :mod:`retinadet.engine.train`). They resolve on first use, so that ``import retinadet`` stays light
and the torch-free ONNX runner (``retinadet.export.onnx_runtime``) imports this package without torch.
"""

import importlib

__all__ = ["Detector", "load", "predict", "train"]

_API = {"Detector": "retinadet.detector", "load": "retinadet.detector", "predict": "retinadet.detector",
        "train": "retinadet.engine.train"}


def __getattr__(name):
    if name not in _API:
        raise AttributeError(f"module 'retinadet' has no attribute '{name}'")
    return getattr(importlib.import_module(_API[name]), name)
