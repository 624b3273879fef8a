"""``retinadet benchmark``: every CPU inference backend of one model, measured side by side in one run.

The backends: eager PyTorch fp32 (the model as trained), channels_last, bf16 autocast (with channels_last),
our TorchScript export, onnxruntime fp32 and INT8, OpenVINO fp32 and INT8. Each one runs in a child process
of its own (:mod:`retinadet.engine.benchmark`: round-robin timing, each child's own peak memory); this module
says how each is prepared (the exports, in the parent), what one run is, and how its AP is measured.

One run is the same work for every backend: one padded batch (the first ``batch`` images of the split, resized
by the model's rule at ``imgsz``, or a fixed synthetic batch) through normalisation, network, anchors and
post-processing (score threshold, top-k, NMS, ``max_det``). Resizing is done once, beforehand, so every backend
sees the same pixels. AP is the COCO AP on the split: through ``Detector.val`` for the torch backends and
through ``evaluate_exported`` for the exported files, both on whole images (no tiling), as they are timed.

It sits above ``retinadet.detector`` (it uses the public API) and beside ``retinadet.serve``; nothing here
imports torch at module level, so the children of onnxruntime and OpenVINO stay torch-free and their peak
memory is what a deployment without torch needs.
"""

from __future__ import annotations

import importlib.util
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retinadet.engine.benchmark import (
    BackendResult,
    BackendSpec,
    cpu_info,
    format_flags,
    format_table,
    measure,
    native_bf16,
    one_line,
    report,
)
from retinadet.errors import ConfigError, RetinadetError
from retinadet.utils.files import write_json

# What each backend imports, as the exporter checks it (retinadet/export/exporter.py require_packages).
ONNX_PACKAGES = ("onnx", "onnxruntime")
OPENVINO_PACKAGES = ("onnx", "openvino")


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    packages: tuple[str, ...] = ()  # import names the backend needs
    extra: str | None = None  # the retinadet extra that installs them


BACKENDS = {b.name: b for b in (
    Backend("eager", "PyTorch fp32, the model as trained"),
    Backend("channels_last", "PyTorch fp32, NHWC weights and inputs"),
    Backend("bf16", "PyTorch bf16 autocast with channels_last"),
    Backend("torchscript", "our TorchScript export (torch.jit.trace)"),
    Backend("onnxruntime", "our ONNX export on onnxruntime, fp32", ONNX_PACKAGES, "export"),
    Backend("onnxruntime-int8", "the ONNX export quantized to INT8 (onnxruntime static QDQ)", ONNX_PACKAGES, "export"),
    Backend("openvino", "our OpenVINO export (IR from the ONNX graph), fp32", OPENVINO_PACKAGES, "openvino"),
    Backend("openvino-int8", "the OpenVINO export quantized to INT8 (NNCF)", (*OPENVINO_PACKAGES, "nncf"), "openvino"),
)}


def parse_backends(spec: str | Sequence[str] | None) -> list[str]:
    """Backend names from ``"a,b"`` or a list (None: all, in table order); an unknown one fails naming the valid."""
    if spec is None:
        return list(BACKENDS)
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown or not names:
        raise ConfigError(f"unknown backend '{unknown[0] if unknown else spec}'; use one or more of {', '.join(BACKENDS)}")
    return list(dict.fromkeys(names))


def missing_packages(packages: Sequence[str]) -> list[str]:
    """The packages that cannot be imported here (found without importing them: nncf and openvino take seconds)."""
    out = []
    for name in packages:
        try:
            found = importlib.util.find_spec(name) is not None  # None also for a module blocked in sys.modules
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(name)
    return out


def install_hint(backend: Backend, missing: Sequence[str]) -> str:
    hint = f"needs {', '.join(missing)}: pip install {' '.join(missing)}"
    return hint + (f" (or pip install 'retinadet[{backend.extra}]')" if backend.extra else "")


# ----------------------------------------------------------------------------- inputs


def _at_size(det, imgsz: int | None):
    """The detector with its resize rule at ``imgsz`` (``--imgsz``), in its config, so that the timed batch, the AP
    and the exports' metadata (which the runners resize by) all use that size."""
    if imgsz:
        pre = det.model.cfg.preprocess
        pre.at_size(imgsz)  # validates the size
        det.model.cfg = det.model.cfg.replace(pre.size_overrides(imgsz))
    return det


def _first_images(det, data, split: str | None, batch: int) -> tuple[list, str]:
    """The first ``batch`` images of the split (repeated when it has fewer), decoded as ``val`` decodes them."""
    from retinadet.data.images import read_image
    from retinadet.engine.datasets import eval_split

    records = eval_split(os.fspath(data), split)
    if not records.records:
        raise ConfigError(f"{data}: split '{split or 'val'}' has no images to benchmark on")
    chosen = [records.records[i % len(records.records)] for i in range(batch)]
    window = det.model.cfg.preprocess.window
    return [read_image(r.path, window) for r in chosen], f"the first {batch} image(s) of {records.split or 'val'} in {data}"


def write_inputs(det, data, split: str | None, batch: int, imgsz: int | None, path: Path) -> tuple[list[int], str]:
    """The padded batch every backend runs, saved to ``path`` (.npz: images, image_sizes, orig_sizes); returns its
    shape and where the images came from."""
    import torch

    from retinadet.model.preprocess import prepare_batch

    pre = det.model.cfg.preprocess
    if data is not None:
        images, source = _first_images(det, data, split, batch)
    else:
        side = int(imgsz or pre.fixed_size or pre.min_size)
        g = torch.Generator().manual_seed(0)
        images = [torch.randint(0, 256, (3, side, side), dtype=torch.uint8, generator=g) for _ in range(batch)]
        source = f"a fixed synthetic batch ({batch} random {side}x{side} image(s))"
    b = prepare_batch(images, pre)
    np.savez(path, images=b.images.numpy(), image_sizes=b.image_sizes.numpy(), orig_sizes=b.orig_sizes.numpy())
    return list(b.images.shape), source


def load_inputs(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def graph_input(images: np.ndarray, input_dtype: str) -> np.ndarray:
    """The padded batch as an exported graph takes it: float32 in [0, 1] or uint8."""
    if input_dtype == "uint8":
        return images if images.dtype == np.uint8 else np.round(images * 255.0).astype(np.uint8)
    return images.astype(np.float32) / np.float32(255.0) if images.dtype == np.uint8 else images.astype(np.float32)


def _quiet(*_args, **_kwargs) -> None:
    return None


# ----------------------------------------------------------------------------- the runners (built in the children)


class TorchRunner:
    """Eager PyTorch in one of three modes: fp32, channels_last, bf16 (autocast, channels_last)."""

    def __init__(self, weights: str, imgsz: int | None, mode: str, inputs: str, threads: int, data: str | None,
                 split: str | None):
        import torch

        from retinadet.detector import load
        from retinadet.model.preprocess import InputBatch

        torch.set_num_threads(threads)
        self.torch = torch
        self.det = _at_size(load(weights, device="cpu"), imgsz)
        if mode in ("channels_last", "bf16"):
            self.det.model.use_channels_last(True)
        self.amp = mode == "bf16"
        arrays = load_inputs(inputs)
        self.batch = InputBatch(*(torch.from_numpy(arrays[k]) for k in ("images", "image_sizes", "orig_sizes")))
        self.data, self.split = data, split

    def run(self) -> None:
        from retinadet.model.inference import detect_batch

        with self.torch.no_grad():
            detect_batch(self.det.model, self.batch, amp=self.amp, class_names=self.det.class_names)

    def ap(self) -> float | None:
        if self.data is None:
            return None
        with tempfile.TemporaryDirectory(prefix="retinadet-benchmark-val-") as out:
            metrics = self.det.val(self.data, self.split, amp=self.amp, tile=None, plots=False, save_dir=out, log=_quiet)
        return float(metrics["AP"])


class TorchScriptRunner:
    """Our TorchScript export, loaded with ``torch.jit.load``."""

    def __init__(self, path: str, inputs: str, threads: int, data: str | None, split: str | None):
        import warnings

        import torch

        from retinadet.export.exporter import load_torchscript

        torch.set_num_threads(threads)
        self.torch, self.path, self.data, self.split = torch, path, data, split
        with warnings.catch_warnings():  # torch.jit's deprecation notice, once per child, says nothing about the run
            warnings.simplefilter("ignore", FutureWarning)
            self.module, self.meta = load_torchscript(path)
        arrays = load_inputs(inputs)
        self.images = torch.from_numpy(graph_input(arrays["images"], self.meta.get("input_dtype", "float32")))
        self.sizes = torch.from_numpy(arrays["image_sizes"])

    def run(self) -> None:
        with self.torch.no_grad():
            self.module(self.images, self.sizes)

    def ap(self) -> float | None:
        if self.data is None:
            return None
        from retinadet.export.runtime import ExportedDetector

        module, torch = self.module, self.torch

        class TorchScriptDetector(ExportedDetector):
            """The TorchScript module behind the exported runners' preprocessing, so its AP is measured as theirs."""

            def run(self, batch: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
                with torch.no_grad():
                    return [t.numpy() for t in module(torch.from_numpy(batch), torch.from_numpy(sizes))]

        return _exported_ap(TorchScriptDetector(self.path, self.meta), self.data, self.split)


class OnnxRuntimeRunner:
    """An ONNX export on onnxruntime's CPU provider, ``threads`` intra-op threads (torch-free)."""

    def __init__(self, path: str, inputs: str, threads: int, data: str | None, split: str | None):
        import onnxruntime as ort

        from retinadet.export.onnx_runtime import read_metadata

        self.path, self.data, self.split = path, data, split
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        meta = read_metadata(path, self.session)
        arrays = load_inputs(inputs)
        self.feed = {"images": graph_input(arrays["images"], meta.get("input_dtype", "float32")),
                     "image_sizes": arrays["image_sizes"]}

    def run(self) -> None:
        self.session.run(None, self.feed)

    def ap(self) -> float | None:
        return _exported_ap(self.path, self.data, self.split)


class OpenVinoRunner:
    """An OpenVINO IR on the CPU plugin, compiled as :class:`~retinadet.export.openvino_runtime.OpenVinoDetector`
    compiles it (float32 precision hint) and with ``threads`` inference threads, which that class leaves to
    OpenVINO (torch-free)."""

    def __init__(self, path: str, inputs: str, threads: int, data: str | None, split: str | None):
        from retinadet.export.openvino_runtime import OUTPUT_ORDER, openvino_module, read_metadata

        self.path, self.data, self.split = path, data, split
        core = openvino_module().Core()
        model = core.read_model(path)
        meta = read_metadata(path, model)
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads})
        self.request = compiled.create_infer_request()
        self.outputs = [compiled.output(name) for name in OUTPUT_ORDER]
        arrays = load_inputs(inputs)
        self.feed = {"images": graph_input(arrays["images"], meta.get("input_dtype", "float32")),
                     "image_sizes": arrays["image_sizes"]}

    def run(self) -> None:
        out = self.request.infer(self.feed)
        # The copies OpenVinoDetector.run makes: the request reuses its output buffers.
        self.last = [np.array(out[o]) for o in self.outputs]

    def ap(self) -> float | None:
        return _exported_ap(self.path, self.data, self.split)


def _exported_ap(path, data: str | None, split: str | None) -> float | None:
    """AP of an exported file (or an ExportedDetector) through ``evaluate_exported``, whole images, no plots."""
    if data is None:
        return None
    from retinadet.detector import evaluate_exported

    with tempfile.TemporaryDirectory(prefix="retinadet-benchmark-val-") as out:
        metrics = evaluate_exported(path, data, split, tile=None, plots=False, save_dir=out, log=_quiet)
    return float(metrics["AP"])


# ----------------------------------------------------------------------------- preparing each backend (the parent)


class Preparer:
    """Builds each backend's spec in the parent: the exports (each written once to ``workdir``, the fp32 file shared
    by its INT8 variant) and the INT8 accuracy gate.

    INT8 is quantized with no AP limit (``math.inf``) so that a model the gate would refuse is still timed, and then
    judged against ``int8_max_drop`` here: ``refused``, with both APs of the gate in the note, instead of a row with no
    numbers, which would hide how fast it was and how much it lost."""

    def __init__(self, det, weights: str, workdir: Path, common: dict[str, Any], imgsz: int | None, batch: int,
                 data: str | None, int8_images: int, int8_max_drop: float, log: Callable[[str], None]):
        self.det, self.weights, self.workdir, self.common = det, weights, workdir, common
        self.imgsz, self.batch, self.data = imgsz, batch, data
        self.int8_images, self.int8_max_drop, self.log = int8_images, int8_max_drop, log
        self.files: dict[str, str] = {}

    def export(self, fmt: str) -> str:
        if fmt not in self.files:
            from retinadet.export.exporter import SUFFIX, export

            self.log(f"exporting {fmt}")
            out = export(self.det, fmt, self.workdir / f"model{SUFFIX[fmt]}", imgsz=self.imgsz, batch=self.batch,
                         bench=False, log=_quiet)
            self.files[fmt] = out["path"]
        return self.files[fmt]

    def quantize(self, fmt: str) -> tuple[str, str, str]:
        """(INT8 file, status, note) of the fp32 export ``fmt``, calibrated on the val split of --data (or of the
        dataset the weights record)."""
        from retinadet.export.int8 import quantize_gated

        fp32 = Path(self.export(fmt))
        self.log(f"quantizing {fmt} to INT8 ({self.int8_images} calibration images)")
        gate = quantize_gated(fp32, data=self.data, images=self.int8_images, max_drop=math.inf,
                              output=fp32.with_name(f"{fp32.stem}.int8{fp32.suffix}"), log=_quiet)
        drop = gate["ap_fp32"] - gate["ap_int8"]
        note = (f"gate on {gate['split']} ({gate['calibration_images']} calibration images): AP {gate['ap_fp32']:.4f} fp32 "
                f"-> {gate['ap_int8']:.4f} INT8")
        if drop <= self.int8_max_drop:
            return gate["int8_path"], "ok", note
        return gate["int8_path"], "refused", (f"{note}, a drop of {drop:.4f} > {self.int8_max_drop:g}: `retinadet export "
                                              "--int8` refuses it; timed anyway")

    def spec(self, name: str) -> BackendSpec:
        if name in ("eager", "channels_last", "bf16"):
            note = ""
            if name == "bf16" and native_bf16(cpu_info()) is False:
                note = "this CPU has no avx512_bf16 or amx_bf16: PyTorch emulates bf16, slower than fp32"
            return BackendSpec(name, "retinadet.benchmark:TorchRunner",
                               {"weights": self.weights, "imgsz": self.imgsz, "mode": name, **self.common}, note=note)
        if name == "torchscript":
            return BackendSpec(name, "retinadet.benchmark:TorchScriptRunner", {"path": self.export("torchscript"), **self.common})
        fmt = "onnx" if name.startswith("onnxruntime") else "openvino"
        factory = "retinadet.benchmark:" + ("OnnxRuntimeRunner" if fmt == "onnx" else "OpenVinoRunner")
        if name.endswith("-int8"):
            path, status, note = self.quantize(fmt)
            return BackendSpec(name, factory, {"path": path, **self.common}, status, note)
        return BackendSpec(name, factory, {"path": self.export(fmt), **self.common})


def benchmark(weights: str | os.PathLike, data: str | os.PathLike | None = None, *, split: str | None = None,
              imgsz: int | None = None, batch: int = 1, runs: int = 10, warmup: int = 2,
              backends: str | Sequence[str] | None = None, threads: int | None = None, ap: bool = True,
              int8_images: int = 100, int8_max_drop: float = 0.01, json_path: str | os.PathLike | None = None,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure ``backends`` (default: all) of ``weights`` side by side; prints the Markdown table and returns (and with
    ``json_path`` writes) the report: ``backends`` (name, ms_per_image, images_per_s, peak_mb, ap, status, note, ...),
    ``cpu``, ``threads`` and the run's settings. ``data``: real images (the first ``batch`` of ``split``) and, with
    ``ap``, the AP of every backend on that split; without it a fixed synthetic batch and no AP. INT8: calibrated on
    ``int8_images`` images of the val split of ``data`` (else of the dataset the weights record), ``refused`` (and
    still timed) when its AP falls more than ``int8_max_drop`` below fp32's, as ``retinadet export --int8`` would."""
    names = parse_backends(backends)
    batch, runs, warmup = int(batch), int(runs), int(warmup)
    for flag, value, low in (("--batch", batch, 1), ("--runs", runs, 1), ("--warmup", warmup, 0), ("--threads", threads, 1),
                             ("--int8-images", int8_images, 1), ("--int8-max-drop", int8_max_drop, 0)):
        if value is not None and value < low:
            raise ConfigError(f"{flag} must be >= {low}, got {value}")
    if data is not None and not Path(os.fspath(data)).exists():
        raise ConfigError(f"--data {data}: no such file or folder")
    import torch

    from retinadet.detector import load

    weights = os.fspath(weights)
    det = _at_size(load(weights, device="cpu"), imgsz)
    threads = int(threads or torch.get_num_threads())
    data = None if data is None else os.fspath(data)
    with tempfile.TemporaryDirectory(prefix="retinadet-benchmark-") as tmp:
        workdir = Path(tmp)
        shape, source = write_inputs(det, data, split, batch, imgsz, workdir / "inputs.npz")
        common = {"inputs": str(workdir / "inputs.npz"), "threads": threads, "data": data if ap else None, "split": split}
        preparer = Preparer(det, weights, workdir, common, imgsz, batch, data, int(int8_images), float(int8_max_drop), log)
        specs: list[BackendSpec] = []
        static: dict[str, BackendResult] = {}
        for name in names:
            backend = BACKENDS[name]
            missing = missing_packages(backend.packages)
            if missing:
                static[name] = BackendResult(name, batch, "missing", install_hint(backend, missing))
                log(f"{name}: missing ({static[name].note})")
                continue
            try:
                specs.append(preparer.spec(name))
            except Exception as exc:  # noqa: BLE001 - one backend's export failing must not stop the others
                note = str(exc) if isinstance(exc, RetinadetError) else one_line(exc)
                static[name] = BackendResult(name, batch, "failed", note)
                log(f"{name}: failed ({note})")
        measured = {r.name: r for r in measure(specs, batch=batch, runs=runs, warmup=warmup,
                                                 with_ap=bool(ap and data is not None), log=log)}
    results = [measured.get(n) or static[n] for n in names]
    cpu = {**cpu_info(), "torch_capability": torch.backends.cpu.get_cpu_capability()}
    context = {"cpu": cpu, "threads": threads, "weights": weights, "data": data, "split": (split or "val") if data else None,
               "imgsz": imgsz, "batch": batch, "input": shape, "inputs": source, "runs": runs,
               "warmup": warmup, "torch": torch.__version__, "preset": det.model.cfg.preset}
    out = report(results, **context)
    log(f"\nretinadet benchmark: {weights} ({det.model.cfg.preset}), input {'x'.join(map(str, shape))} from {source}, "
        f"median of {runs} run(s) after {warmup} warm-up, {threads} thread(s)")
    log(f"CPU: {cpu['model']} ({cpu['logical_cpus']} logical), {format_flags(cpu)}; torch {torch.__version__} "
        f"(kernels {cpu['torch_capability']})")
    log(format_table(results))
    if json_path is not None:
        write_json(json_path, out)
        log(f"saved {json_path}")
    return out
