"""Export a RetinaNet to ONNX, OpenVINO or TorchScript, verify it, and time it against eager PyTorch; optionally
quantize the ONNX or OpenVINO model to INT8 behind an AP gate (:mod:`retinadet.export.int8`).

ONNX uses torch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``): it
traces :class:`~retinadet.export.graph.ExportModule`, whose sizes are all read from tensor
shapes, so the graph has a dynamic batch and dynamic padded height and width, anchors built
from the feature-map shapes, per-level top-k with k = min(topk, count), and
``torchvision.ops.nms`` as ONNX ``NonMaxSuppression``. (The dynamo exporter needs every
data-dependent size, from ``nonzero`` and NMS, declared as unbacked symbols; the traced
graph is the same computation with none of that.) TorchScript is a ``torch.jit.trace`` of
the same module; it generalises over sizes for the same reason. OpenVINO is that ONNX graph converted by
``openvino.convert_model``, its metadata in the IR's ``rt_info`` (:mod:`retinadet.export.openvino_runtime`).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retinadet.export.errors import ExportError
from retinadet.export.graph import INPUT_NAMES, OUTPUT_NAMES, ExportModule
from retinadet.model.retinanet import RetinaNet
from retinadet.weights.resolve import load_weights

MIN_OPSET = 11  # NonMaxSuppression
DEFAULT_OPSET = 17
FORMATS = ("onnx", "openvino", "torchscript")
SUFFIX = {"onnx": ".onnx", "openvino": ".xml", "torchscript": ".torchscript"}
INT8_FORMATS = ("onnx", "openvino")
# What each step imports: (module, what needs it, the extra that installs it).
_ONNX = ("onnx", "exporting to ONNX (and to OpenVINO, which converts the ONNX graph)", "export")
_ORT = ("onnxruntime", "checking the exported ONNX graph against PyTorch", "export")
_OPENVINO = ("openvino", "OpenVINO export", "openvino")
_PACKAGES = {"onnx": [_ONNX, _ORT], "openvino": [_ONNX, _OPENVINO], "torchscript": []}
_INT8_PACKAGES = {"onnx": [("onnxruntime.quantization", "INT8 quantization of ONNX models", "export")],
                  "openvino": [("nncf", "INT8 quantization of OpenVINO models", "openvino")]}


def require_packages(fmt: str, int8: bool = False) -> None:
    """Fail before any work, in one line naming the package and the extra, when a package the export needs is
    missing."""
    for module, what, extra in _PACKAGES[fmt] + (_INT8_PACKAGES.get(fmt, []) if int8 else []):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            package = module.split(".")[0]
            raise ExportError(f"{what} needs the '{package}' package, which is not installed: "
                              f"pip install 'retinadet[{extra}]' (or pip install {package})") from exc


def max_opset() -> int:
    """Highest opset both the TorchScript-based exporter and the installed onnxruntime accept."""
    try:
        from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET as torch_max
    except ImportError:  # pragma: no cover - older/newer torch
        torch_max = 20
    return int(torch_max)


def check_opset(opset: int) -> int:
    top = max_opset()
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: the exported post-processing uses NonMaxSuppression (opset 11+); "
                          f"use --opset {DEFAULT_OPSET} (supported: {MIN_OPSET}..{top})")
    if opset > top:
        raise ExportError(f"opset {opset} is newer than torch's TorchScript-based ONNX exporter supports; "
                          f"use --opset {top} or lower (supported: {MIN_OPSET}..{top})")
    return opset


def sample_inputs(model: RetinaNet, imgsz: int | None = None, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random padded batch [batch, 3, S, S] (S = imgsz rounded up to the stride) and its sizes."""
    pre = model.cfg.preprocess
    size = int(imgsz or pre.fixed_size or pre.min_size)
    d = pre.size_divisible
    side = int(math.ceil(size / d) * d)
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, model.backbone.in_channels, side, side, generator=g)
    sizes = torch.tensor([[side, side]] * batch, dtype=torch.int64)
    return images, sizes


def metadata(model: RetinaNet, module: ExportModule, class_names: Sequence[str], category_ids=None,
             extra: dict | None = None) -> dict[str, str]:
    try:
        from importlib.metadata import version

        ours = version("retinadet")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        ours = "unknown"
    meta = {
        "class_names": list(class_names),
        "category_ids": list(category_ids) if category_ids is not None else None,
        "model_config": model.cfg.to_dict(),
        "score_thresh": module.score_thresh,
        "nms_iou": module.nms_iou,
        "max_det": module.max_det,
        "topk_per_level": module.topk,
        "input_dtype": module.input_dtype,
        "inputs": {"images": f"[B, 3, H, W] {module.input_dtype}" + (" in [0, 1]" if module.input_dtype == "float32" else " 0..255")
                   + f", resized and zero-padded bottom-right, H and W multiples of {model.cfg.preprocess.size_divisible}",
                   "image_sizes": "[B, 2] int64 (h, w) of each resized image before padding"},
        "outputs": {"boxes": "[B, max_det, 4] float32 xyxy, resized-image pixels", "scores": "[B, max_det] float32",
                    "labels": "[B, max_det] int64, -1 = padding", "num_dets": "[B] int64"},
        "retinadet_version": ours,
        "torch_version": torch.__version__,
        "format_version": 1,
    }
    meta.update(extra or {})
    return {f"retinadet.{k}": json.dumps(v) for k, v in meta.items()}


def _unsupported(model: RetinaNet, fmt: str, exc: Exception) -> ExportError:
    name = model.cfg.backbone.name
    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    return ExportError(f"backbone '{name}' cannot be exported to {fmt} ({type(exc).__name__}: {first}); "
                       "use a backbone whose ops export, e.g. a ResNet (`backbone.name=resnet50`) or the 'fast' preset")


def _prepare(path, model, imgsz, batch, max_det, score_thresh, nms_iou, input_dtype):
    """The output path (folder created), the traceable module and sample inputs for tracing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = ExportModule(model.cpu().eval(), max_det=max_det, score_thresh=score_thresh, nms_iou=nms_iou,
                          input_dtype=input_dtype).eval()
    images, sizes = sample_inputs(model, imgsz, batch)
    if input_dtype == "uint8":
        images = (images * 255).round().to(torch.uint8)
    return path, module, images, sizes


def export_onnx(model: RetinaNet, path: str | os.PathLike, class_names: Sequence[str], *, category_ids=None,
                opset: int = DEFAULT_OPSET, imgsz: int | None = None, batch: int = 1, score_thresh: float | None = None,
                nms_iou: float | None = None, max_det: int | None = None, input_dtype: str = "float32",
                verify: bool = True, thresholds: dict | None = None, scale: Any = None, data: dict | None = None,
                extra: dict | None = None) -> Path:
    """Write ``path`` (.onnx): normalisation, network, anchors and post-processing in one graph.
    ``thresholds`` (a checkpoint's per-class operating point), ``scale`` (its training scale, a
    ``TrainingScale`` or its dict, from which the runner decides ``--tile auto``) and ``data`` (its dataset and val
    split, where ``val`` and INT8 calibration find them) go into the metadata, with ``extra`` entries.

    Runs ``onnx.checker`` and, with ``verify``, checks onnxruntime against eager PyTorch at a
    second input size and batch, so a graph that silently fixed a size is refused."""
    check_opset(int(opset))
    try:
        import onnx
    except ImportError as exc:
        raise ExportError("ONNX export needs onnx and onnxscript: pip install 'retinadet[export]'") from exc
    path, module, images, sizes = _prepare(path, model, imgsz, batch, max_det, score_thresh, nms_iou, input_dtype)
    dyn = {"images": {0: "batch", 2: "height", 3: "width"}, "image_sizes": {0: "batch"}, "boxes": {0: "batch"},
           "scores": {0: "batch"}, "labels": {0: "batch"}, "num_dets": {0: "batch"}}
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (images, sizes), str(tmp), input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                              dynamic_axes=dyn, opset_version=int(opset), dynamo=False, do_constant_folding=True)
    except Exception as exc:  # the exporter raises many types for an op it cannot convert
        tmp.unlink(missing_ok=True)
        raise _unsupported(model, f"ONNX opset {opset}", exc) from exc
    proto = onnx.load(str(tmp))
    extra = {"opset": int(opset), "exporter": "torch.onnx.export(dynamo=False)", "thresholds": thresholds,
             **({"data": data} if data is not None else {}), **(extra or {})}
    if scale is not None:
        extra["scale"] = scale.to_dict() if hasattr(scale, "to_dict") else dict(scale)
    for key, value in metadata(model, module, class_names, category_ids, extra).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "retinadet"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)
    if verify:
        try:
            verify_onnx(module, path, imgsz)
        except ExportError:
            path.unlink(missing_ok=True)
            raise
    return path


def _compare(ref: Sequence[torch.Tensor], got: Sequence[torch.Tensor], atol_box: float = 1e-2, atol_score: float = 1e-4) -> str | None:
    """None when both give the same detections (counts, labels, scores, boxes), else what differs."""
    rb, rs, rl, rn = (t.detach().cpu() for t in ref)
    gb, gs, gl, gn = (t.detach().cpu() for t in got)
    if not torch.equal(rn.long(), gn.long()):
        return f"detection counts differ ({rn.tolist()} vs {gn.tolist()})"
    for i, n in enumerate(rn.tolist()):
        if not n:
            continue
        ds = (rs[i, :n] - gs[i, :n]).abs().max().item()
        if ds > atol_score:
            return f"scores differ in image {i} by {ds:.2e}"
        if torch.equal(rl[i, :n].long(), gl[i, :n].long()):
            db = (rb[i, :n] - gb[i, :n]).abs().max().item()
            if db > atol_box:
                return f"boxes differ in image {i} by {db:.2e} px"
        elif sorted(rl[i, :n].tolist()) != sorted(gl[i, :n].tolist()):
            return f"labels differ in image {i}"
    return None


def _compare_loose(ref: Sequence[torch.Tensor], got: Sequence[torch.Tensor], atol_box: float, atol_score: float,
                   score_thresh: float) -> str | None:
    """:func:`_compare` for an engine whose float32 kernels round differently (OpenVINO): scores within
    ``atol_score`` may swap places, so detections are paired by label, score and nearest box; those within
    ``atol_score`` of the score threshold or of the last kept score (which may fall either side of it) may be
    missing on one side."""
    rb, rs, rl, rn = (t.detach().cpu().double() for t in ref)
    gb, gs, gl, gn = (t.detach().cpu().double() for t in got)
    for i in range(rn.shape[0]):
        n, m = int(rn[i]), int(gn[i])
        edge = min(float(rs[i, n - 1]), float(gs[i, m - 1])) if n and m else score_thresh
        exempt = max(edge, score_thresh) + atol_score
        if int((rs[i, :n] > exempt).sum()) > m or int((gs[i, :m] > exempt).sum()) > n:
            return f"detection counts differ in image {i} ({n} vs {m})"
        k = min(n, m)
        ds = (rs[i, :k] - gs[i, :k]).abs().max().item() if k else 0.0
        if ds > atol_score:
            return f"scores differ in image {i} by {ds:.2e}"
        for j in torch.nonzero(rs[i, :n] > exempt).reshape(-1).tolist():
            same = (gl[i, :m] == rl[i, j]) & ((gs[i, :m] - rs[i, j]).abs() <= atol_score)
            if not bool(same.any()):
                return f"detection {j} of image {i} has no counterpart"
            db = (gb[i, :m][same] - rb[i, j]).abs().max(dim=1).values.min().item()
            if db > atol_box:
                return f"boxes differ in image {i} by {db:.2e} px"
    return None


def verify_onnx(module: ExportModule, path: Path, imgsz: int | None) -> None:
    """onnxruntime vs eager at a different batch and a non-square size than the trace."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    _verify(module, imgsz, lambda images, sizes: sess.run(None, {"images": images, "image_sizes": sizes}), "ONNX graph")


def _verify(module: ExportModule, imgsz: int | None, run, what: str, loose: bool = False) -> None:
    """``run`` (numpy images, sizes -> the four outputs) vs eager at a different batch and a non-square size than
    the trace; ``loose``: :func:`_compare_loose` (OpenVINO's kernels: scores ~2e-4 from PyTorch's)."""
    model = module.model
    images, sizes = sample_inputs(model, imgsz, 2, seed=1)
    d = model.cfg.preprocess.size_divisible
    images = images[..., : max(d, images.shape[-1] - d)]  # non-square
    sizes = torch.tensor([[images.shape[-2], images.shape[-1]], [images.shape[-2] - 5, images.shape[-1] - 7]])
    if module.input_dtype == "uint8":
        images = (images * 255).round().to(torch.uint8)
    with torch.no_grad():
        ref = module(images, sizes)
    got = [torch.from_numpy(v) for v in run(images.numpy(), sizes.numpy())]
    problem = _compare(ref, got)
    if problem is not None:
        # Detections whose scores tie within float rounding may come out in either order (a deep backbone at 800 px
        # rounds differently in another engine): paired by label, score and box, they must still agree.
        problem = (_compare_loose(ref, got, 5e-2, 2e-3, module.score_thresh) if loose
                   else _compare_loose(ref, got, 1e-2, 1e-4, module.score_thresh))
    if problem is not None:
        raise ExportError(f"the exported {what} does not reproduce PyTorch at input {tuple(images.shape)} ({problem}): "
                          f"backbone '{model.cfg.backbone.name}' likely fixed a size while tracing; use a torchvision ResNet "
                          "backbone")


def export_openvino(model: RetinaNet, path: str | os.PathLike, class_names: Sequence[str], *, category_ids=None,
                    opset: int = DEFAULT_OPSET, imgsz: int | None = None, batch: int = 1, score_thresh: float | None = None,
                    nms_iou: float | None = None, max_det: int | None = None, input_dtype: str = "float32",
                    verify: bool = True, thresholds: dict | None = None, scale: Any = None, data: dict | None = None) -> Path:
    """Write ``path`` (.xml, and its .bin): the ONNX graph of :func:`export_onnx` (post-processing inside) converted by
    ``openvino.convert_model``, weights kept in float32, the same ``retinadet.*`` metadata in the IR's rt_info.
    With ``verify``, OpenVINO (CPU, float32) is checked against eager PyTorch at a second batch and a non-square
    size, as the ONNX export is."""
    import onnx

    from retinadet.export.openvino_runtime import OUTPUT_ORDER, openvino_module, remove_ir, save_ir, set_rt_metadata

    ov = openvino_module()
    path = Path(path)
    if path.suffix.lower() != ".xml":
        raise ExportError(f"{path}: an OpenVINO model is written as a .xml file (its weights beside it as .bin)")
    with tempfile.TemporaryDirectory(prefix=".retinadet-openvino-", dir=path.parent if path.parent.is_dir() else None) as tmp:
        onnx_path = export_onnx(model, Path(tmp) / "model.onnx", class_names, category_ids=category_ids, opset=opset,
                                imgsz=imgsz, batch=batch, score_thresh=score_thresh, nms_iou=nms_iou, max_det=max_det,
                                input_dtype=input_dtype, verify=False, thresholds=thresholds, scale=scale, data=data,
                                extra={"exporter": "torch.onnx.export(dynamo=False) + openvino.convert_model",
                                       "openvino_version": ov.get_version()})
        props = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
        try:
            converted = ov.convert_model(str(onnx_path))
        except Exception as exc:  # noqa: BLE001 - the converter raises its own types for an op it lacks
            raise _unsupported(model, "OpenVINO", exc) from exc
    set_rt_metadata(converted, props)
    save_ir(converted, path)
    if verify:
        compiled = ov.Core().compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

        def run(images, sizes):
            out = compiled({"images": images, "image_sizes": sizes})
            return [np.array(out[compiled.output(name)]) for name in OUTPUT_ORDER]

        try:
            _verify(ExportModule(model.cpu().eval(), max_det=max_det, score_thresh=score_thresh, nms_iou=nms_iou,
                                 input_dtype=input_dtype).eval(), imgsz, run, "OpenVINO model", loose=True)
        except ExportError:
            remove_ir(path)
            raise
    return path


def export_torchscript(model: RetinaNet, path: str | os.PathLike, class_names: Sequence[str], *, category_ids=None,
                       imgsz: int | None = None, batch: int = 1, score_thresh: float | None = None,
                       nms_iou: float | None = None, max_det: int | None = None, input_dtype: str = "float32",
                       verify: bool = True) -> Path:
    """Write a traced TorchScript module (same inputs and outputs as the ONNX graph).

    C++: ``auto m = torch::jit::load(path); auto out = m.forward({images, image_sizes}).toTuple();``
    -> (boxes [B, max_det, 4], scores [B, max_det], labels [B, max_det], num_dets [B]); the
    metadata JSON is the extra file ``retinadet.json`` (``torch::jit::load(path, device, extra_files)``)."""
    path, module, images, sizes = _prepare(path, model, imgsz, batch, max_det, score_thresh, nms_iou, input_dtype)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(module, (images, sizes), check_trace=False)
    except Exception as exc:  # noqa: BLE001
        raise _unsupported(model, "TorchScript", exc) from exc
    meta = {k[len("retinadet."):]: json.loads(v) for k, v in metadata(model, module, class_names, category_ids,
                                                                        {"exporter": "torch.jit.trace"}).items()}
    tmp = path.with_name(f".{path.name}.tmp")
    traced.save(str(tmp), _extra_files={"retinadet.json": json.dumps(meta)})
    os.replace(tmp, path)
    if verify:
        images2, sizes2 = sample_inputs(model, imgsz, 2, seed=1)
        images2 = images2[..., : max(32, images2.shape[-1] - 32)]
        sizes2 = torch.tensor([[images2.shape[-2], images2.shape[-1]]] * 2)
        if input_dtype == "uint8":
            images2 = (images2 * 255).round().to(torch.uint8)
        loaded = torch.jit.load(str(path))
        with torch.no_grad():
            problem = _compare(module(images2, sizes2), loaded(images2, sizes2))
        if problem is not None:
            path.unlink(missing_ok=True)
            raise ExportError(f"the traced TorchScript module does not reproduce PyTorch at another input size ({problem}); "
                              f"backbone '{model.cfg.backbone.name}' fixed a size while tracing; use a ResNet backbone")
    return path


def load_torchscript(path: str | os.PathLike) -> tuple[torch.jit.ScriptModule, dict]:
    """The traced module and its metadata."""
    extra = {"retinadet.json": ""}
    module = torch.jit.load(os.fspath(path), map_location="cpu", _extra_files=extra)
    return module, json.loads(extra["retinadet.json"])


# ----------------------------------------------------------------------------- benchmark


def _time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def benchmark(model: RetinaNet, exported: str | os.PathLike, fmt: str, imgsz: int | None = None, batch: int = 1,
              repeats: int = 5) -> dict[str, Any]:
    """Median ms per image of eager PyTorch (normalise + network + postprocess) and of the exported
    model at the same input, both on this CPU with their default thread counts."""
    model = model.cpu().eval()
    images, sizes = sample_inputs(model, imgsz, batch, seed=2)

    def eager():
        with torch.no_grad():
            x = model.normalize(images, sizes)
            c, d, a, pl = model.forward_raw(x)
            model.postprocess(c, d, a, pl, sizes, x.shape[-2:])

    if fmt == "openvino":
        from retinadet.export.openvino_runtime import OpenVinoDetector

        ov_det = OpenVinoDetector(exported)
        x = images.numpy() if ov_det.input_dtype != "uint8" else (images * 255).round().to(torch.uint8).numpy()

        def run():
            ov_det.run(x, sizes.numpy())
    elif fmt == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(os.fspath(exported), providers=["CPUExecutionProvider"])
        feed = {"images": images.numpy(), "image_sizes": sizes.numpy()}
        meta = sess.get_modelmeta().custom_metadata_map
        if json.loads(meta.get("retinadet.input_dtype", '"float32"')) == "uint8":
            feed["images"] = (images * 255).round().to(torch.uint8).numpy()

        def run():
            sess.run(None, feed)
    else:
        ts, meta = load_torchscript(exported)
        x = images if meta.get("input_dtype") != "uint8" else (images * 255).round().to(torch.uint8)

        def run():
            with torch.no_grad():
                ts(x, sizes)

    eager_s = _time(eager, repeats)
    run_s = _time(run, repeats)
    return {"input": list(images.shape), "batch": batch, "eager_ms_per_image": 1000 * eager_s / batch,
            f"{fmt}_ms_per_image": 1000 * run_s / batch, "speedup": eager_s / run_s, "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------- from a weights spec


def default_output(weights: str | os.PathLike, fmt: str) -> Path:
    p = Path(os.fspath(weights))
    return p.with_suffix(SUFFIX[fmt]) if p.suffix else p.with_name(p.name + SUFFIX[fmt])


def export(weights: Any, fmt: str = "onnx", output: str | os.PathLike | None = None, *, opset: int = DEFAULT_OPSET,
           imgsz: int | None = None, batch: int = 1, score_thresh: float | None = None, nms_iou: float | None = None,
           max_det: int | None = None, input_dtype: str = "float32", bench: bool = True, repeats: int = 5,
           int8: bool = False, int8_data: str | os.PathLike | None = None, int8_images: int = 100,
           int8_max_drop: float = 0.01, int8_strict: bool = False, log=print) -> dict[str, Any]:
    """Export a weights spec (anything ``retinadet.load`` reads) or a loaded detector (anything with ``model``,
    ``class_names`` and ``category_ids``, such as a ``Detector``); the file goes beside the weights unless
    ``output`` is given. Returns the path and, with ``bench``, the timings.

    ``int8`` (ONNX, OpenVINO): also quantize the exported model (:func:`retinadet.export.int8.quantize_gated`),
    calibrated on ``int8_images`` images of the val split of the weights' dataset (``int8_data`` overrides), and keep
    ``model.int8.<ext>`` only when its AP on that split is at most ``int8_max_drop`` below the fp32 model's. The
    result then has ``fp32_path``, ``int8_path`` (None when refused), ``ap_fp32``, ``ap_int8``, ``accepted`` and
    ``message``; ``path`` is the INT8 file when accepted, else the fp32 one (which is always kept). A refusal
    raises :class:`~retinadet.export.int8.Int8Refused` with ``int8_strict`` (the CLI), and is returned otherwise."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format '{fmt}'; use one of {', '.join(FORMATS)}")
    if int8 and fmt not in INT8_FORMATS:
        raise ExportError(f"--int8 quantizes ONNX or OpenVINO models, not {fmt}; use --format onnx or --format openvino")
    if int8 and int8_images < 1:
        raise ExportError(f"--int8-images must be at least 1, got {int8_images}")
    if int8 and not int8_max_drop >= 0:
        raise ExportError(f"--int8-max-drop must be a non-negative AP difference, got {int8_max_drop}")
    if fmt in ("onnx", "openvino"):
        check_opset(int(opset))
    require_packages(fmt, int8)  # a missing package fails here, before the weights load
    if isinstance(weights, (str, os.PathLike)):
        det = load_weights(weights)
    else:
        det = weights
        if output is None:
            raise ExportError("exporting a loaded detector needs an output path")
    out = Path(output) if output is not None else default_output(weights, fmt)
    if fmt == "openvino" and out.suffix.lower() != ".xml":
        raise ExportError(f"-o {out}: an OpenVINO model is written as a .xml file (its weights beside it as .bin)")
    ckpt = getattr(det, "checkpoint", None) or {}
    if int8 and int8_data is None and not isinstance(ckpt.get("data"), dict):
        raise ExportError("--int8 calibrates and measures AP on the val split of the model's dataset, and these weights "
                          "record none; pass --data")
    kwargs = dict(category_ids=det.category_ids, imgsz=imgsz, batch=batch, score_thresh=score_thresh, nms_iou=nms_iou,
                  max_det=max_det, input_dtype=input_dtype)
    model = det.model.cpu().eval()
    if fmt in ("onnx", "openvino"):
        writer = export_onnx if fmt == "onnx" else export_openvino
        path = writer(model, out, det.class_names, opset=opset, thresholds=ckpt.get("thresholds"),
                      scale=ckpt.get("scale"), data=ckpt.get("data"), **kwargs)
    else:
        path = export_torchscript(model, out, det.class_names, **kwargs)
    size_mb = (path.stat().st_size + (path.with_suffix(".bin").stat().st_size if fmt == "openvino" else 0)) / 1e6
    log(f"exported {fmt} to {path} ({size_mb:.1f} MB)")
    result: dict[str, Any] = {"path": str(path), "format": fmt}
    if bench:
        b = benchmark(model, path, fmt, imgsz, batch, repeats)
        result["benchmark"] = b
        log(format_benchmark([b], fmt))
    if int8:
        from retinadet.export.int8 import Int8Refused, quantize_gated

        gate = quantize_gated(path, data=int8_data, images=int8_images, max_drop=int8_max_drop, log=log,
                              log_refusal=not int8_strict)
        result.update(gate)
        if not gate["accepted"] and int8_strict:
            raise Int8Refused(gate["message"])
    return result


def format_benchmark(rows: Sequence[dict], fmt: str) -> str:
    lines = [f"{'input':>18} | {'eager ms/img':>12} | {fmt + ' ms/img':>16} | {'speedup':>7}", "-" * 64]
    for r in rows:
        lines.append(f"{'x'.join(map(str, r['input'])):>18} | {r['eager_ms_per_image']:12.1f} | "
                     f"{r[fmt + '_ms_per_image']:16.1f} | {r['speedup']:6.2f}x")
    lines.append(f"(median of runs, this CPU, torch threads={rows[0]['threads']})")
    return "\n".join(lines)
