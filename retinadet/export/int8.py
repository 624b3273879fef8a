"""INT8 post-training quantization of an exported model, kept only when its AP holds.

Calibration images come from the val split of the model's dataset (recorded in the export's metadata, as ``val``
finds it; ``data`` overrides), evenly spaced over the split, each fed as the runner feeds it (resized by the
model's rule, tiles for an image it slices). ONNX: onnxruntime's static QDQ quantization; OpenVINO: NNCF. Weights
per output channel, activations per tensor (MinMax ranges).

Only the network is quantized (backbone, FPN and head, by the node scopes of
:data:`retinadet.export.graph.NETWORK_SCOPES`); normalisation, anchors, box decoding and NMS stay in float32.
They cost little next to the convolutions, and INT8 there would cost accuracy for nothing: decoded boxes and
anchors are coordinates in pixels, where one INT8 step of a range spanning a 1000-pixel image is about 8 pixels,
the anchors are built in float64 to be exact, and index arithmetic (top-k, gathers, the NMS offsets) is not a
range to quantize at all. The network's outputs (logits, box deltas) reach post-processing in float32 too: NNCF
quantizes the inputs of an operation, not its output, while onnxruntime's QDQ also quantizes a convolution's
output, so in ONNX the two prediction convolutions (:data:`~retinadet.export.graph.PREDICTION_SCOPES`, about 2%
of the head's work) stay float32; otherwise every score would be one of 256 levels and near-equal ones would tie.

The gate: the fp32 and the INT8 files are both evaluated on the split through their runners (COCO AP, as
``val`` computes it, with ``val``'s default sliced inference); a drop of more than ``max_drop`` refuses the INT8
model: its file is never moved into place, and the fp32 file stays.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retinadet.errors import DataError
from retinadet.export.errors import ExportError
from retinadet.export.evaluate import exported_ap, exported_records
from retinadet.export.graph import NETWORK_SCOPES, PREDICTION_SCOPES
from retinadet.export.runners import open_runner
from retinadet.export.runtime import read_image

DEFAULT_IMAGES = 100
DEFAULT_MAX_DROP = 0.01
# A node of the network: its name is scoped by one of NETWORK_SCOPES (a repeated call gets a suffix, "cls_tower_3";
# the exporter may put the wrapper's own scope first).
NETWORK_NODE = re.compile(r"^(?:/model)?/(?:" + "|".join(NETWORK_SCOPES) + r")(?:_\d+)?/")
PREDICTION_NODE = re.compile(r"^(?:/model)?/(?:" + "|".join(PREDICTION_SCOPES) + r")(?:_\d+)?/")


class Int8Refused(ExportError):
    """The INT8 model lost more AP than allowed; the message names both APs."""


def int8_path(fp32_path: str | os.PathLike) -> Path:
    """``model.onnx`` -> ``model.int8.onnx``, ``model.xml`` -> ``model.int8.xml``."""
    p = Path(fp32_path)
    return p.with_name(f"{p.stem}.int8{p.suffix}")


def calibration_images(records, count: int, window: str | None) -> list[np.ndarray]:
    """``count`` images of the split (all when it has fewer), evenly spaced over it, as the runner reads them;
    unreadable files are passed over."""
    rows = records.records
    if count < 1:
        raise ExportError(f"--int8-images must be at least 1, got {count}")
    picks = np.unique(np.linspace(0, len(rows) - 1, num=min(count, len(rows))).round().astype(int)) if rows else []
    images = []
    for i in picks:
        try:
            images.append(read_image(rows[int(i)].path, window))
        except DataError:
            continue
    if not images:
        raise DataError(f"{records.root}: none of the {len(picks)} calibration images of split "
                        f"'{records.split or 'val'}' could be read")
    return images


def network_nodes(names: Sequence[str], what: str) -> tuple[list[str], list[str]]:
    """(network nodes, the others) of a graph's node names; refused when no node is the network's (a graph
    exported otherwise, whose scopes this rule does not know)."""
    inside = [n for n in names if NETWORK_NODE.match(n)]
    if not inside:
        raise ExportError(f"{what}: no node is scoped as the network's ({', '.join(NETWORK_SCOPES)}), so INT8 cannot "
                          "keep post-processing in float32; export it again with this version of retinadet")
    return inside, [n for n in names if not NETWORK_NODE.match(n)]


@contextlib.contextmanager
def _quiet(*names: str):
    """The quantizers' per-node warnings and info (hundreds of lines) held back; errors still show."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def quantize_onnx(fp32_path: str | os.PathLike, out: str | os.PathLike, batches: list[tuple[np.ndarray, np.ndarray]],
                  info: dict) -> Path:
    """``out``: ``fp32_path`` with QDQ INT8 (onnxruntime ``quantize_static``: per-channel int8 weights, int8
    activations, MinMax ranges over ``batches``) in the network but its prediction convolutions, and the fp32 file's
    metadata plus ``retinadet.quantization`` (``info``)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._items = iter(batches)

        def get_next(self):
            item = next(self._items, None)
            return None if item is None else {"images": item[0], "image_sizes": item[1]}

    proto = onnx.load(os.fspath(fp32_path))
    inside, excluded = network_nodes([n.name for n in proto.graph.node], str(fp32_path))
    excluded += [n for n in inside if PREDICTION_NODE.match(n)]  # their outputs would be quantized with them
    out = Path(out)
    written = False
    try:
        with _quiet("root", "onnxruntime"):
            quantize_static(os.fspath(fp32_path), os.fspath(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                            calibrate_method=CalibrationMethod.MinMax)
        quantized = onnx.load(os.fspath(out))
        del quantized.metadata_props[:]
        for entry in proto.metadata_props:
            quantized.metadata_props.add(key=entry.key, value=entry.value)
        quantized.metadata_props.add(key="retinadet.quantization", value=json.dumps(info))
        onnx.save(quantized, os.fspath(out))
        written = True
    finally:
        if not written:  # whatever failed propagates; no half-written file is left behind
            out.unlink(missing_ok=True)
    return out


def quantize_openvino(fp32_path: str | os.PathLike, out: str | os.PathLike, batches: list[tuple[np.ndarray, np.ndarray]],
                      info: dict) -> Path:
    """``out`` (.xml): ``fp32_path`` quantized by NNCF (``nncf.quantize``: per-channel int8 weights, MinMax activation
    ranges over ``batches``, fast bias correction) with post-processing in NNCF's ignored scope, and the fp32 IR's
    metadata plus ``retinadet.quantization`` (``info``)."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    from retinadet.export.openvino_runtime import openvino_module, remove_ir, rt_metadata, save_ir, set_rt_metadata

    ov = openvino_module()
    model = ov.Core().read_model(os.fspath(fp32_path))
    network_nodes([op.get_friendly_name() for op in model.get_ordered_ops()], str(fp32_path))
    props = rt_metadata(model)
    # Everything whose name is not the network's: a pattern NNCF matches from the start of each node's name.
    ignored = nncf.IgnoredScope(patterns=[r"(?!" + NETWORK_NODE.pattern.lstrip("^") + ")"], validate=False)
    params = AdvancedQuantizationParameters(weights_quantization_params=QuantizationParameters(per_channel=True))
    with _quiet("nncf"):
        quantized = nncf.quantize(model, nncf.Dataset(batches, lambda item: {"images": item[0], "image_sizes": item[1]}),
                                  subset_size=len(batches), ignored_scope=ignored, advanced_parameters=params)
    set_rt_metadata(quantized, {**props, "retinadet.quantization": json.dumps(info)})
    saved = False
    try:
        path = save_ir(quantized, out)
        saved = True
        return path
    finally:
        if not saved:  # whatever failed propagates; no half-written IR is left behind
            remove_ir(out)


def quantize_gated(fp32_path: str | os.PathLike, *, data: str | os.PathLike | None = None, images: int = DEFAULT_IMAGES,
                   max_drop: float = DEFAULT_MAX_DROP, output: str | os.PathLike | None = None,
                   log: Callable[[str], None] = print, log_refusal: bool = True) -> dict[str, Any]:
    """Quantize the exported ``fp32_path`` (.onnx or .xml) to INT8, calibrated on ``images`` images of the val split
    (of ``data``, else of the dataset in its metadata), and keep it (at ``output``, default ``model.int8.<ext>``
    beside it) only when its AP on that split is at most ``max_drop`` below the fp32 file's.

    Returns ``{"path", "fp32_path", "int8_path", "ap_fp32", "ap_int8", "ap_drop", "max_drop", "accepted",
    "calibration_images", "split", "message"}``: ``path`` is the file to deploy (the INT8 one when accepted, else the
    fp32 one) and ``int8_path`` None when refused; a refusal leaves no INT8 file. ``log`` hears the progress and the
    outcome (a refusal only with ``log_refusal``: a caller that raises it says it once)."""
    if not max_drop >= 0:
        raise ExportError(f"--int8-max-drop must be a non-negative AP difference, got {max_drop}")
    fp32_path = Path(fp32_path)
    fmt = {".onnx": "onnx", ".xml": "openvino"}.get(fp32_path.suffix.lower())
    if fmt is None:
        raise ExportError(f"{fp32_path}: INT8 quantization takes an exported .onnx or OpenVINO .xml model")
    final = Path(output) if output is not None else int8_path(fp32_path)
    if final.resolve() == fp32_path.resolve():
        raise ExportError(f"{final}: the INT8 output would overwrite the fp32 model; choose another path")
    fp32 = open_runner(fp32_path)
    records = exported_records(fp32, data)
    split = records.split or "val"
    pictures = calibration_images(records, int(images), fp32.preprocess_cfg.get("window"))
    batches = [b for img in pictures for b in fp32.network_inputs([img])]
    log(f"INT8: calibrating on {len(pictures)} image(s) of {split} ({len(batches)} network input(s)); "
        f"measuring AP on its {len(records)} image(s)")
    ap_fp32 = exported_ap(fp32, records)
    info = {"precision": "int8", "backend": "onnxruntime quantize_static (QDQ)" if fmt == "onnx" else "nncf.quantize",
            "weights": "int8 per channel", "activations": "int8 per tensor, MinMax", "calibration_images": len(pictures),
            "calibration_split": split, "fp32_model": fp32_path.name}
    tmp = final.with_name(f".{final.stem}.tmp{final.suffix}")  # the runner picks its engine by this suffix
    quantize = quantize_onnx if fmt == "onnx" else quantize_openvino
    try:
        quantize(fp32_path, tmp, batches, info)
        ap_int8 = exported_ap(open_runner(tmp), records)
    except ExportError:
        _remove(tmp, fmt)
        raise
    except Exception as exc:  # the quantizers raise their own types
        _remove(tmp, fmt)
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{fp32_path}: INT8 quantization failed ({type(exc).__name__}: {first})") from exc
    drop = ap_fp32 - ap_int8
    accepted = drop <= max_drop
    result = {"fp32_path": str(fp32_path), "ap_fp32": ap_fp32, "ap_int8": ap_int8, "ap_drop": drop, "max_drop": max_drop,
              "accepted": accepted, "calibration_images": len(pictures), "split": split, "format": fmt}
    if accepted:
        _move(tmp, final, fmt)
        result.update(path=str(final), int8_path=str(final),
                      message=f"INT8 kept: AP on {split} {ap_fp32:.4f} (fp32) -> {ap_int8:.4f} (int8), a drop of "
                              f"{drop:.4f} <= --int8-max-drop {max_drop:g}; wrote {final}")
    else:
        _remove(tmp, fmt)
        _remove(final, fmt)  # an INT8 file of an earlier export would pass for this one's
        result.update(path=str(fp32_path), int8_path=None,
                      message=f"INT8 refused: AP on {split} fell from {ap_fp32:.4f} (fp32) to {ap_int8:.4f} (int8), a drop "
                              f"of {drop:.4f} > --int8-max-drop {max_drop:g}; kept the fp32 {fp32_path}, wrote no INT8 file")
    if accepted or log_refusal:
        log(result["message"])
    return result


def _move(tmp: Path, final: Path, fmt: str) -> None:
    if fmt == "onnx":
        os.replace(tmp, final)
        return
    final.unlink(missing_ok=True)  # the .xml first, as save_ir does
    os.replace(tmp.with_suffix(".bin"), final.with_suffix(".bin"))
    os.replace(tmp, final)


def _remove(path: Path, fmt: str) -> None:
    path.unlink(missing_ok=True)
    if fmt == "openvino":
        path.with_suffix(".bin").unlink(missing_ok=True)
