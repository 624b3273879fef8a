"""Run an exported OpenVINO RetinaNet (``model.xml`` + ``model.bin``) with OpenVINO, numpy and Pillow only (never torch).

Everything but the engine is :mod:`retinadet.export.runtime`'s, as for the onnxruntime runner: the same bit-exact
preprocessing, sliced inference, prediction files and command line. The metadata is the ONNX export's
``retinadet.*`` entries, kept in the IR's ``rt_info`` under ``retinadet`` (see :func:`read_metadata`).

The CPU plugin runs in float32 by default here (``precision="f32"``): left to itself, it picks bfloat16 on CPUs
that have it, and the detections then drift from the model's (scores by about 1e-3). ``precision="bf16"`` (or
``"f16"``) trades that for speed. An INT8 model's quantized layers run in INT8 either way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retinadet.export.errors import ExportError
from retinadet.export.runtime import ExportedDetector, decode_metadata, predict_exported, runner_main

RT_SECTION = "retinadet"  # rt_info section of the metadata: <rt_info><retinadet><class_names value="..."/>...
OUTPUT_ORDER = ("boxes", "scores", "labels", "num_dets")
PRECISIONS = ("f32", "bf16", "f16")


def openvino_module():
    """The ``openvino`` package, or a one-line error naming the extra to install."""
    try:
        import openvino
    except ImportError as exc:
        raise ExportError("running OpenVINO models (.xml) needs openvino: pip install 'retinadet[openvino]' "
                          "(or pip install openvino)") from exc
    return openvino


def xml_path(path: str | os.PathLike) -> Path:
    """The IR's .xml (its weights are the .bin of the same name), checked to exist."""
    p = Path(path)
    if p.suffix.lower() != ".xml":
        raise ExportError(f"{p}: an OpenVINO model is a .xml file (with its .bin beside it)")
    if not p.is_file():
        raise ExportError(f"{p}: OpenVINO model file not found")
    if not p.with_suffix(".bin").is_file():
        raise ExportError(f"{p}: its weights file {p.with_suffix('.bin').name} is missing beside it")
    return p


def rt_metadata(model) -> dict[str, str]:
    """``retinadet.<key>`` -> JSON text, from an ``openvino.Model``'s rt_info (the ONNX metadata_props' form)."""
    if not model.has_rt_info([RT_SECTION]):
        return {}
    section = model.get_rt_info()[RT_SECTION]
    return {f"retinadet.{key}": model.get_rt_info([RT_SECTION, key]).astype(str) for key in section}


def set_rt_metadata(model, props: dict[str, str]) -> None:
    """Store ``retinadet.<key>`` -> JSON text (an ONNX export's metadata_props) in the model's rt_info, where
    :func:`rt_metadata` reads them; saved inside the .xml."""
    for key, value in props.items():
        if key.startswith("retinadet."):
            model.set_rt_info(value, [RT_SECTION, key[len("retinadet."):]])


def save_ir(model, path: str | os.PathLike) -> Path:
    """Write ``path`` (.xml) and its .bin from an ``openvino.Model``, weights at full precision (OpenVINO would
    halve them to f16 by default, and the detections would drift). Both files are written under temporary names
    and moved into place; the old .xml goes first, so that an interruption leaves no .xml rather than one whose
    .bin does not match."""
    ov = openvino_module()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.xml")
    try:
        ov.save_model(model, os.fspath(tmp), compress_to_fp16=False)
        path.unlink(missing_ok=True)
        os.replace(tmp.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_suffix(".bin").unlink(missing_ok=True)
    return path


def remove_ir(path: str | os.PathLike) -> None:
    """Delete an IR's .xml and .bin (the .xml first: see :func:`save_ir`)."""
    p = Path(path)
    p.unlink(missing_ok=True)
    p.with_suffix(".bin").unlink(missing_ok=True)


def read_metadata(path: str | os.PathLike, model=None) -> dict[str, Any]:
    """The ``retinadet.*`` metadata of an OpenVINO export, JSON-decoded."""
    if model is None:
        model = _read_model(path, openvino_module().Core())
    return decode_metadata(rt_metadata(model), path, "OpenVINO")


def _read_model(path, core):
    p = xml_path(path)
    try:
        return core.read_model(os.fspath(p))
    except Exception as exc:  # OpenVINO raises RuntimeError and its own types
        raise ExportError(f"{p}: OpenVINO cannot read it ({str(exc).strip().splitlines()[0][:200]})") from exc


class OpenVinoDetector(ExportedDetector):
    """An OpenVINO IR run by OpenVINO on ``device`` (CPU by default; GPU or AUTO where OpenVINO has them), at
    ``precision`` (f32 by default: see the module docstring); ``predict`` as
    :class:`~retinadet.export.runtime.ExportedDetector`'s."""

    def __init__(self, path: str | os.PathLike, device: str = "CPU", precision: str = "f32"):
        if precision not in PRECISIONS:
            raise ExportError(f"OpenVINO precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
        core = openvino_module().Core()
        model = _read_model(path, core)
        super().__init__(path, read_metadata(path, model))
        self.device = device.upper()
        try:
            self.compiled = core.compile_model(model, self.device, {"INFERENCE_PRECISION_HINT": precision})
        except Exception as exc:  # noqa: BLE001 - an unknown device, a plugin failure
            raise ExportError(f"{path}: OpenVINO cannot compile it for {self.device} "
                              f"({str(exc).strip().splitlines()[0][:200]})") from exc
        self.request = self.compiled.create_infer_request()
        self._outputs = [self.compiled.output(name) for name in OUTPUT_ORDER]

    def run(self, batch: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
        out = self.request.infer({"images": batch, "image_sizes": sizes})
        # Copies: the request's output buffers are reused by the next infer.
        return [np.array(out[o]) for o in self._outputs]


def predict_openvino(weights: Any, source: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """``retinadet predict`` for OpenVINO ``.xml`` weights (a path or an :class:`OpenVinoDetector`); the options
    are :func:`~retinadet.export.runtime.predict_exported`'s."""
    return predict_exported(weights, source, lambda w: w if isinstance(w, OpenVinoDetector) else OpenVinoDetector(w),
                            **options)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m retinadet.export.openvino_runtime --weights M.xml --source S``: the predict command
    for machines with OpenVINO but no torch (the options of ``retinadet predict``)."""
    return runner_main(argv, "python -m retinadet.export.openvino_runtime", main.__doc__.splitlines()[0],
                       "an exported OpenVINO .xml model (its .bin beside it)", predict_openvino)


if __name__ == "__main__":
    raise SystemExit(main())
