"""The high-level detector: a model plus everything needed to run it on raw images."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence, Union

import torch
from torch import Tensor

from retinadet.data.images import to_image_tensor
from retinadet.errors import ConfigError, DataError
from retinadet.model import ModelConfig, RetinaNet, resolve_model_config
from retinadet.model.preprocess import boxes_to_original, preprocess_batch
from retinadet.utils.device import autocast_context, resolve_device
from retinadet.weights.resolve import load_weights


@dataclass
class Detections:
    """Detections for one image, in that image's original pixel coordinates."""

    boxes: Tensor  # [D, 4] xyxy
    scores: Tensor  # [D]
    labels: Tensor  # [D], contiguous 0..K-1
    class_names: list[str]
    image_size: tuple[int, int]  # (h, w) of the original image
    source: Optional[str] = None
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.scores.numel())

    @property
    def names(self) -> list[str]:
        return [self.class_names[i] for i in self.labels.tolist()]

    def to_records(self) -> list[dict]:
        """One dict per detection: box as COCO [x, y, w, h], score, label and class name."""
        out = []
        for (x1, y1, x2, y2), s, lb in zip(self.boxes.tolist(), self.scores.tolist(), self.labels.tolist()):
            out.append({"bbox": [x1, y1, x2 - x1, y2 - y1], "score": s, "label": lb, "class_name": self.class_names[lb]})
        return out


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

    def __init__(self, model: RetinaNet, class_names: Optional[Sequence[str]] = None, device=None,
                 category_ids: Optional[Sequence[int]] = None, checkpoint: Optional[dict] = None):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        k = model.cfg.num_classes
        self.class_names = list(class_names) if class_names is not None else [f"class{i}" for i in range(k)]
        if len(self.class_names) != k:
            raise ConfigError(f"{len(self.class_names)} class names given for a model with {k} classes")
        self.category_ids = list(category_ids) if category_ids is not None else None
        self.checkpoint = checkpoint or {}

    @classmethod
    def from_config(cls, spec: Union[str, ModelConfig], class_names: Sequence[str], device=None, overrides=None) -> "Detector":
        cfg = spec if isinstance(spec, ModelConfig) else resolve_model_config(spec, overrides)
        cfg = cfg.replace({"num_classes": len(class_names)})
        return cls(RetinaNet(cfg), class_names, device)

    @property
    def cfg(self) -> ModelConfig:
        return self.model.cfg

    def predict(
        self,
        sources,
        conf: Optional[float] = None,
        iou: Optional[float] = None,
        max_det: Optional[int] = -1,
        batch_size: int = 4,
        amp: Union[bool, str] = False,
        channels_last: Optional[bool] = None,
    ) -> Union[Detections, list[Detections]]:
        """Detections per image; a single input gives a single ``Detections``.

        ``channels_last`` switches the model's memory format (faster convolutions on CPU);
        None keeps the current one."""
        items, many = _as_list(sources)
        if not items:
            raise DataError("no images to predict on")
        if channels_last is not None and channels_last != self.model.channels_last:
            self.model.use_channels_last(channels_last)
        results: list[Detections] = []
        for start in range(0, len(items), max(1, batch_size)):
            results.extend(self._predict_batch(items[start:start + batch_size], conf, iou, max_det, amp))
        return results if many else results[0]

    @torch.no_grad()
    def _predict_batch(self, items: Iterable, conf, iou, max_det, amp) -> list[Detections]:
        tensors, names = zip(*(to_image_tensor(s) for s in items))
        batch, sizes = preprocess_batch(tensors, self.cfg.preprocess, self.device)
        with autocast_context(self.device, amp):
            cls_logits, box_deltas, anchors, per_level = self.model.forward_raw(batch)
        dets = self.model.postprocess(cls_logits.float(), box_deltas.float(), anchors, per_level, sizes, batch.shape[-2:],
                                      score_thresh=conf, nms_iou=iou, max_det=max_det)
        out = []
        for det, tensor, name, size in zip(dets, tensors, names, sizes.tolist()):
            orig = tuple(tensor.shape[-2:])
            boxes = boxes_to_original(det["boxes"], size, orig)
            out.append(Detections(boxes.cpu(), det["scores"].cpu(), det["labels"].cpu(), self.class_names, orig, name))
        return out

    def explain(self, image, **kw):
        """Grad-CAM / Grad-CAM++ / EigenCAM heatmaps for this image's detections; see
        :func:`retinadet.explain.explain` for the options. Returns an ``Explanation``."""
        from retinadet.explain import explain

        return explain(self, image, **kw)

    def val(self, data=None, split=None, **kwargs) -> dict:
        """COCO metrics on a dataset split (default: the val split recorded in the checkpoint);
        see :func:`retinadet.engine.evaluate.evaluate_detector` for the options."""
        from retinadet.engine.evaluate import evaluate_detector

        return evaluate_detector(self, data, split, **kwargs)

    def __repr__(self) -> str:
        return f"Detector(preset={self.cfg.preset}, classes={self.class_names}, device={self.device})"


def load(spec: Union[str, os.PathLike], class_names: Optional[Sequence[str] | str] = None, device=None) -> Detector:
    """A ready :class:`Detector` from any weights spec: our .pt or safetensors, a torchvision or seed
    file (seed files need ``class_names``), or ``torchvision:retinanet_resnet50_fpn[_v2]_coco``."""
    w = load_weights(spec, class_names)
    return Detector(w.model, w.class_names, device, category_ids=w.category_ids, checkpoint=w.checkpoint)
