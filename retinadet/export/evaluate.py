"""``val`` of an exported model (.onnx, OpenVINO .xml): its runner's detections through the COCO evaluation, FROC,
analysis and files of :func:`retinadet.engine.evaluate.evaluate_detector`.

The one module of ``export`` that imports ``engine`` (a contract exception in pyproject.toml): the runners stay
torch-free, and ``engine`` never imports ``export``.
"""

from __future__ import annotations

import os
from typing import Any

from retinadet.engine.evaluate import eval_records, evaluate_runner, score_runner
from retinadet.export.runners import open_runner
from retinadet.export.runtime import ExportedDetector
from retinadet.utils.tiling import tile_options


def evaluate_exported(path: str | os.PathLike | ExportedDetector, data: str | os.PathLike | None = None,
                      split: str | None = None, *, device: str | None = None, **options: Any) -> dict[str, Any]:
    """``retinadet val --weights model.onnx|model.xml``: COCO metrics (and FROC, operating points, the files of
    ``val``) of the exported model on ``split`` of ``data`` (default: the val split of the dataset recorded in its
    metadata). ``device``: OpenVINO's (CPU by default; GPU, AUTO); the ONNX runner runs on the CPU. ``options``:
    :func:`retinadet.engine.evaluate.evaluate_runner`'s (batch, conf, max_det, imgsz, tile*, save_dir, plots, ...).
    Returns the metrics dict, as ``Detector.val`` does."""
    return evaluate_runner(open_runner(path, device), data, split, **options)


def exported_records(runner: ExportedDetector, data: str | os.PathLike | None = None, split: str | None = None):
    """The split ``val`` evaluates an exported model on (see :func:`evaluate_exported`)."""
    return eval_records(data, split, runner.meta.get("data"), runner.class_names, runner.category_ids)


def exported_ap(runner: ExportedDetector, records) -> float:
    """COCO AP (IoU .50:.95) of an exported model on ``records``, as ``val`` computes it by default (``--tile auto``:
    the images the training scale in the metadata calls for are sliced), with no files written."""
    return float(score_runner(runner, records, tiling=tile_options("auto"), with_confusion=False).stats["AP"])
