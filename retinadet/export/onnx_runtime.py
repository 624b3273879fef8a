"""Run an exported ONNX RetinaNet with onnxruntime, numpy and Pillow only (never torch).

What the runners share (bit-exact preprocessing, sliced inference, the prediction writer, the command line) is
:mod:`retinadet.export.runtime`; this module supplies the onnxruntime session and the ONNX metadata. The shared
names are importable from here as before (``preprocess``, ``read_image``, ``NumpyDetections``, ...).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retinadet.export.errors import ExportError
from retinadet.export.runtime import (  # noqa: F401 - the runner's public names, kept importable from here
    META_PREFIX,
    ExportedDetector,
    NumpyDetections,
    boxes_to_original,
    decode_metadata,
    draw_boxes,
    predict_exported,
    preprocess,
    read_image,
    resize_image,
    resize_uint8,
    resized_size,
    runner_main,
    save_image,
)
from retinadet.utils.tiling import TilingReport  # noqa: F401 - importable from the runner, as before


def read_metadata(path: str | os.PathLike, session=None) -> dict[str, Any]:
    """The ``retinadet.*`` metadata_props of an exported model, JSON-decoded."""
    if session is None:
        session = _session(path)
    return decode_metadata(session.get_modelmeta().custom_metadata_map, path, "ONNX")


def _session(path, providers=None):
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ExportError("running .onnx models needs onnxruntime: pip install 'retinadet[onnx]' "
                          "(or pip install onnxruntime)") from exc
    if not Path(path).is_file():
        raise ExportError(f"{path}: ONNX file not found")
    try:
        return ort.InferenceSession(os.fspath(path), providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ExportError(f"{path}: onnxruntime cannot load it ({str(exc).splitlines()[0][:200]})") from exc


class OnnxDetector(ExportedDetector):
    """An exported ONNX model run by onnxruntime (``session``); see :class:`~retinadet.export.runtime.ExportedDetector`
    for ``predict``."""

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] | None = None):
        self.session = _session(path, providers)
        super().__init__(path, read_metadata(path, self.session))

    def run(self, batch: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {"images": batch, "image_sizes": sizes})


def predict_onnx(weights: Any, source: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """``retinadet predict`` for ``.onnx`` weights (a path or an :class:`OnnxDetector`); the options are
    :func:`~retinadet.export.runtime.predict_exported`'s."""
    return predict_exported(weights, source, lambda w: w if isinstance(w, OnnxDetector) else OnnxDetector(w), **options)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m retinadet.export.onnx_runtime --weights M.onnx --source S``: the predict command
    for machines with onnxruntime but no torch (the options of ``retinadet predict``)."""
    return runner_main(argv, "python -m retinadet.export.onnx_runtime", main.__doc__.splitlines()[0],
                       "an exported .onnx model", predict_onnx)


if __name__ == "__main__":
    raise SystemExit(main())
