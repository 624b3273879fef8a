"""The public API: :class:`Detector` (a model with its class names, run on raw images), :func:`load`
and :func:`predict` (files, folders and videos, through torch or an exported ONNX or OpenVINO model), and
:func:`evaluate_exported` (``val`` of an exported model)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from retinadet.data.images import ImageSource, to_image_tensor
from retinadet.engine import distributed
from retinadet.engine import evaluate as evaluate_mod
from retinadet.engine import predict as predict_mod
from retinadet.errors import ConfigError, DataError
from retinadet.explain import Explanation, explain
from retinadet.export import runners
from retinadet.export.evaluate import evaluate_exported  # noqa: F401 - the public API of val for exported models
from retinadet.model import ModelConfig, RetinaNet, resolve_model_config
from retinadet.model.inference import detect_images
from retinadet.structures import Detections, DetectionsList
from retinadet.utils.device import resolve_device
from retinadet.utils.sentinels import FROM_CONFIG, FromConfig
from retinadet.utils.tiling import TileOptions, TilingReport, TrainingScale, tile_options
from retinadet.weights.checkpoint import save_checkpoint
from retinadet.weights.resolve import load_checkpoint, load_weights


def _as_list(sources) -> tuple[list, bool]:
    if isinstance(sources, Tensor) and sources.dim() == 4:
        return list(sources.unbind(0)), True
    if isinstance(sources, (list, tuple)):
        return list(sources), True
    return [sources], False


class Detector:
    """A RetinaNet with its class names and preprocessing.

    ``predict`` takes paths, PIL images, numpy arrays or tensors, singly or in lists, and
    returns boxes in each original image's coordinates.
    """

    def __init__(self, model: RetinaNet, class_names: Sequence[str] | None = None, device=None,
                 category_ids: Sequence[int] | None = None, checkpoint: dict | None = None):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        k = model.cfg.num_classes
        self.class_names = list(class_names) if class_names is not None else [f"class{i}" for i in range(k)]
        if len(self.class_names) != k:
            raise ConfigError(f"{len(self.class_names)} class names given for a model with {k} classes")
        self.category_ids = list(category_ids) if category_ids is not None else None
        self.checkpoint = checkpoint or {}
        self.path: str | None = None  # the weights file, when loaded from one

    @classmethod
    def from_config(cls, spec: str | ModelConfig, class_names: Sequence[str], device=None, overrides=None) -> Detector:
        cfg = spec if isinstance(spec, ModelConfig) else resolve_model_config(spec, overrides)
        cfg = cfg.replace({"num_classes": len(class_names)})
        return cls(RetinaNet(cfg), class_names, device)

    @property
    def cfg(self) -> ModelConfig:
        return self.model.cfg

    def to(self, device) -> Detector:
        """Move the model to ``device`` (auto, cpu, cuda[:N], mps); returns self."""
        self.device = resolve_device(device)
        self.model.to(self.device)
        return self

    @property
    def scale(self) -> TrainingScale | None:
        """The scale the model was trained at, from its checkpoint (None: not recorded, e.g. imported weights)."""
        return TrainingScale.from_dict(self.checkpoint.get("scale"))

    def predict(self, sources: ImageSource | Sequence[ImageSource], conf: float | None = None, iou: float | None = None,
                max_det: int | None | FromConfig = FROM_CONFIG, batch_size: int = 4, amp: bool | str = False,
                channels_last: bool | None = None, skip_errors: bool = False, imgsz: int | None = None,
                tile: TileOptions | int | str | None = "auto", tile_overlap: float = 0.2, tile_merge: str = "nms",
                tile_match: str = "iou", tile_threshold: float | None = None, full_image: bool = False,
                log=None) -> Detections | DetectionsList:
        """Detections per image, boxes in original pixels; a single input gives a single ``Detections``.

        ``conf``/``iou`` None and ``max_det`` FROM_CONFIG take the model's values (``max_det=None``
        keeps all; a sliced image's cap applies after merging its tiles). ``imgsz``: another input size.
        ``tile``: sliced inference (see :class:`retinadet.utils.tiling.TileOptions`): ``"auto"`` slices an
        image the whole-image resize would shrink below the model's training scale, a size (640, or
        "640x480") always slices, None never; ``log`` hears what it did. ``channels_last`` switches the
        model's memory format (faster convolutions on CPU); None keeps the current one. An input that
        cannot be read raises a :class:`DataError` naming it; with ``skip_errors`` a list of inputs gives
        the others' detections, and the failures in the result's ``skipped`` ((input, reason) pairs)."""
        tiling = tile_options(tile, tile_overlap, tile_merge, tile_match, tile_threshold, full_image)
        pre = self.cfg.preprocess.at_size(imgsz)
        report = TilingReport(log)
        items, many = _as_list(sources)
        if not items:
            raise DataError("no images to predict on")
        if channels_last is not None and channels_last != self.model.channels_last:
            self.model.use_channels_last(channels_last)
        results, skipped = DetectionsList(), []
        step = max(1, int(batch_size))
        for start in range(0, len(items), step):
            tensors, names = [], []
            for item in items[start:start + step]:
                try:
                    tensor, name = to_image_tensor(item, self.model.cfg.preprocess.window)
                except DataError as exc:
                    if not (skip_errors and many):
                        raise
                    skipped.append((str(item) if isinstance(item, (str, os.PathLike)) else type(item).__name__, str(exc)))
                    continue
                tensors.append(tensor)
                names.append(name)
            dets = detect_images(self.model, tensors, pre, tiling=tiling, scale=self.scale, batch_size=step, report=report,
                                 conf=conf, iou=iou, max_det=max_det, amp=amp, class_names=self.class_names) if tensors else []
            for d, name in zip(dets, names):
                d.source = name
                results.append(d.cpu())
        results.skipped = skipped
        return results if many else results[0]

    def explain(self, image: ImageSource, **options) -> Explanation:
        """Grad-CAM / Grad-CAM++ / EigenCAM heatmaps for this image's detections; see
        :func:`retinadet.explain.explain` for the options."""
        return explain(self, image, **options)

    def val(self, data=None, split=None, save_thresholds: bool = False, **options) -> dict:
        """COCO metrics, FROC and operating points on a dataset split (default: the val split recorded in the
        checkpoint); see :func:`retinadet.engine.evaluate.evaluate_detector` for the options.
        ``save_thresholds`` stores the per-class thresholds of ``operating_point`` in the checkpoint file, where
        ``predict`` and the ONNX export find them."""
        if save_thresholds and not options.get("operating_point"):
            raise ConfigError("--save-thresholds needs --operating-point (fppi=F, sensitivity=S or f1)")
        if save_thresholds and not (self.path and self.path.endswith(".pt")):
            raise ConfigError(f"--save-thresholds writes into a retinadet .pt checkpoint, not {self.path or 'an in-memory model'}")
        metrics = evaluate_mod.evaluate_detector(self, data, split, **options)
        if save_thresholds:
            chosen = metrics["operating_point"]
            self.checkpoint["thresholds"] = {"spec": chosen["spec"], "split": chosen["split"], "hit": chosen["hit"],
                                             "per_class": {k: v["threshold"] for k, v in chosen["per_class"].items()}}
            ckpt = load_checkpoint(self.path)
            ckpt["thresholds"] = self.checkpoint["thresholds"]
            save_checkpoint(self.path, ckpt)
            options.get("log", print)(f"thresholds ({chosen['spec']} on {chosen['split']}) saved in {self.path}")
        return metrics

    def __repr__(self) -> str:
        return f"Detector(preset={self.cfg.preset}, classes={self.class_names}, device={self.device})"


def load(spec: str | os.PathLike, class_names: Sequence[str] | str | None = None, device=None) -> Detector:
    """A ready :class:`Detector` from any weights spec: our .pt or safetensors, a torchvision or seed
    file (seed files need ``class_names``), or ``torchvision:retinanet_resnet50_fpn[_v2]_coco``."""
    w = load_weights(spec, class_names)
    det = Detector(w.model, w.class_names, device, category_ids=w.category_ids, checkpoint=w.checkpoint)
    det.path = os.fspath(spec)
    return det


# What a predict run records in its args.json, to be resumed with the same options.
_RESUMABLE = ("conf", "iou", "max_det", "batch", "imgsz", "amp", "save", "save_txt", "save_csv", "save_geojson", "strict", "tile",
              "window", "tile_overlap", "tile_merge", "tile_match", "tile_threshold", "full_image", "save_labelstudio", "save_cvat",
              "level", "mpp", "tissue")


def predict(weights: str | os.PathLike | Detector | None = None, source: str | os.PathLike | None = None, *,
            device: str | None = None, resume: str | os.PathLike | None = None, **options: Any) -> dict[str, Any]:
    """``retinadet predict``: a weights spec (an exported ``.onnx`` or OpenVINO ``.xml`` runs through its runner,
    without torch) or a :class:`Detector`, over an image, folder, glob, list file or video. ``options``: see
    :func:`retinadet.engine.predict.predict`. Returns counts and the output folder.

    ``resume``: the folder of an interrupted run; it continues with the inputs not done yet, with the
    weights, source and options the run recorded (``weights`` is needed again when it was a Detector)."""
    if resume is not None:
        weights, source, options = _resumed(resume, weights, source, options)
    if weights is None or source is None:
        raise ConfigError("predict needs weights and a source (or resume=RUN_DIR)")
    run_args = None
    if isinstance(weights, (str, os.PathLike)):
        run_args = {"weights": os.fspath(weights), "source": os.fspath(source),
                    "options": {k: ("FROM_CONFIG" if v is FROM_CONFIG else v) for k, v in options.items() if k in _RESUMABLE}}
    if runners.is_exported(weights):
        return runners.predict_runner(weights, source, resume=resume, run_args=run_args, **options)
    predict_mod.list_sources(source)  # a bad source fails before the weights are loaded
    # Under torchrun: a process group (gloo on CPU, NCCL with a GPU each), each process a share of the sources.
    info, device = distributed.setup(device)
    try:
        det = weights if isinstance(weights, Detector) else load(weights)
        if device is not None:
            det.to(device)
        return predict_mod.predict(det, source, resume=resume, run_args=run_args, dist_info=info, **options)
    finally:
        if info.enabled:
            distributed.cleanup()


def _resumed(run_dir, weights, source, options: dict) -> tuple[Any, Any, dict]:
    """Weights, source and options of the interrupted run in ``run_dir``; those given now must agree."""
    path = Path(run_dir) / "args.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{run_dir}: not a predict run folder to resume (no args.json)") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: unreadable ({exc})") from None
    recorded = {k: (FROM_CONFIG if v == "FROM_CONFIG" else v) for k, v in saved.get("options", {}).items()}
    for key, value in options.items():
        if key in recorded and recorded[key] != value:
            raise ConfigError(f"--resume {run_dir}: the run was started with {key}={recorded[key]!r}, not {value!r}")
    if source is not None and os.fspath(source) != saved["source"]:
        raise ConfigError(f"--resume {run_dir}: the run predicts {saved['source']}, not {os.fspath(source)}")
    return weights if weights is not None else saved["weights"], saved["source"], {**options, **recorded}
