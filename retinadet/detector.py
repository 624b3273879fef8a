"""The public API: :class:`Detector` (a model with its class names, run on raw images), :func:`load`
and :func:`predict` (files, folders and videos, through torch or an exported ONNX model)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from retinadet.data.images import ImageSource, to_image_tensor
from retinadet.engine import evaluate as evaluate_mod
from retinadet.engine import predict as predict_mod
from retinadet.errors import ConfigError, DataError
from retinadet.explain import Explanation, explain
from retinadet.export import onnx_runtime
from retinadet.model import ModelConfig, RetinaNet, resolve_model_config
from retinadet.model.inference import detect_images
from retinadet.structures import Detections
from retinadet.utils.device import resolve_device
from retinadet.utils.sentinels import FROM_CONFIG, FromConfig
from retinadet.weights.resolve import load_weights


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

    def predict(self, sources: ImageSource | Sequence[ImageSource], conf: float | None = None, iou: float | None = None,
                max_det: int | None | FromConfig = FROM_CONFIG, batch_size: int = 4, amp: bool | str = False,
                channels_last: bool | None = None) -> Detections | list[Detections]:
        """Detections per image, boxes in original pixels; a single input gives a single ``Detections``.

        ``conf``/``iou`` None and ``max_det`` FROM_CONFIG take the model's values (``max_det=None``
        keeps all). ``channels_last`` switches the model's memory format (faster convolutions on
        CPU); None keeps the current one."""
        items, many = _as_list(sources)
        if not items:
            raise DataError("no images to predict on")
        if channels_last is not None and channels_last != self.model.channels_last:
            self.model.use_channels_last(channels_last)
        results: list[Detections] = []
        step = max(1, int(batch_size))
        for start in range(0, len(items), step):
            tensors, names = zip(*(to_image_tensor(s) for s in items[start:start + step]))
            dets = detect_images(self.model, tensors, conf=conf, iou=iou, max_det=max_det, amp=amp,
                                 class_names=self.class_names)
            for d, name in zip(dets, names):
                d.source = name
                results.append(d.cpu())
        return results if many else results[0]

    def explain(self, image: ImageSource, **options) -> Explanation:
        """Grad-CAM / Grad-CAM++ / EigenCAM heatmaps for this image's detections; see
        :func:`retinadet.explain.explain` for the options."""
        return explain(self, image, **options)

    def val(self, data=None, split=None, **options) -> dict:
        """COCO metrics on a dataset split (default: the val split recorded in the checkpoint);
        see :func:`retinadet.engine.evaluate.evaluate_detector` for the options."""
        return evaluate_mod.evaluate_detector(self, data, split, **options)

    def __repr__(self) -> str:
        return f"Detector(preset={self.cfg.preset}, classes={self.class_names}, device={self.device})"


def load(spec: str | os.PathLike, class_names: Sequence[str] | str | None = None, device=None) -> Detector:
    """A ready :class:`Detector` from any weights spec: our .pt or safetensors, a torchvision or seed
    file (seed files need ``class_names``), or ``torchvision:retinanet_resnet50_fpn[_v2]_coco``."""
    w = load_weights(spec, class_names)
    return Detector(w.model, w.class_names, device, category_ids=w.category_ids, checkpoint=w.checkpoint)


def predict(weights: str | os.PathLike | Detector, source: str | os.PathLike, *, device: str | None = None,
            **options: Any) -> dict[str, Any]:
    """``retinadet predict``: a weights spec (an exported ``.onnx`` runs through onnxruntime, without
    torch) or a :class:`Detector`, over an image, folder, glob, list file or video. ``options``: see
    :func:`retinadet.engine.predict.predict`. Returns counts and the output folder."""
    if isinstance(weights, (str, os.PathLike)) and os.fspath(weights).lower().endswith(".onnx"):
        return onnx_runtime.predict_onnx(weights, source, **options)
    predict_mod.list_sources(source)  # a bad source fails before the weights are loaded
    det = weights if isinstance(weights, Detector) else load(weights)
    if device is not None:
        det.to(device)
    return predict_mod.predict(det, source, **options)
