"""The torch-free runner of an exported model file, chosen by its suffix: ``.onnx`` (onnxruntime) or ``.xml``
(OpenVINO)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from retinadet.export.errors import ExportError
from retinadet.export.onnx_runtime import OnnxDetector
from retinadet.export.openvino_runtime import OpenVinoDetector
from retinadet.export.runtime import ExportedDetector, predict_exported

SUFFIXES = (".onnx", ".xml")


def is_exported(weights: Any) -> bool:
    """Whether ``weights`` names an exported model a runner takes (or is one already)."""
    if isinstance(weights, ExportedDetector):
        return True
    return isinstance(weights, (str, os.PathLike)) and Path(os.fspath(weights)).suffix.lower() in SUFFIXES


def open_runner(weights: str | os.PathLike | ExportedDetector, device: str | None = None) -> ExportedDetector:
    """The runner's detector of an exported file (an :class:`ExportedDetector` is returned as is). ``device``:
    OpenVINO's device (cpu by default, gpu, auto); onnxruntime runs on the CPU here."""
    if isinstance(weights, ExportedDetector):
        return weights
    suffix = Path(os.fspath(weights)).suffix.lower()
    if suffix == ".onnx":
        if device not in (None, "cpu"):
            raise ExportError(f"--device {device}: the ONNX runner runs on the CPU (onnxruntime's CPU provider); "
                              "leave --device out")
        return OnnxDetector(weights)
    if suffix == ".xml":
        return OpenVinoDetector(weights, device=device or "CPU")
    raise ExportError(f"{weights}: not an exported model (expected {' or '.join(SUFFIXES)})")


def predict_runner(weights: str | os.PathLike | ExportedDetector, source: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """``retinadet predict`` through the runner of ``weights`` (options: :func:`~retinadet.export.runtime.predict_exported`'s)."""
    return predict_exported(weights, source, open_runner, **options)
