"""The inference path: a padded input batch -> :class:`Detections` in each original image's pixels.

One function for ``Detector.predict``, evaluation, prediction over folders and videos, and (with
the tiling and serving to come) everything else that turns images into detections. Grad-CAM
runs its own grad-enabled forward pass and decodes it with the same ``RetinaNet.postprocess``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from retinadet.model.config import PreprocessConfig
from retinadet.model.preprocess import InputBatch, prepare_batch
from retinadet.model.retinanet import RetinaNet
from retinadet.structures import Detections
from retinadet.utils.device import autocast_context
from retinadet.utils.sentinels import FROM_CONFIG, FromConfig


@torch.no_grad()
def detect_batch(model: RetinaNet, batch: InputBatch, *, conf: float | None = None, iou: float | None = None,
                 max_det: int | None | FromConfig = FROM_CONFIG, amp: bool | str = False,
                 class_names: Sequence[str] = ()) -> list[Detections]:
    """Detections per image of ``batch``, boxes in original pixels (``batch.orig_sizes``).

    ``conf``/``iou`` None and ``max_det`` FROM_CONFIG take the model config's values; ``max_det=None``
    keeps every detection. The model runs in eval mode; its previous mode is restored."""
    was_training = model.training
    model.eval()
    try:
        x = model.normalize(batch.images, batch.image_sizes)
        with autocast_context(x.device, amp):
            cls_logits, box_deltas, anchors, per_level = model.forward_raw(x)
        return model.postprocess(cls_logits.float(), box_deltas.float(), anchors, per_level, batch.image_sizes,
                                 x.shape[-2:], score_thresh=conf, nms_iou=iou, max_det=max_det,
                                 output_sizes=batch.orig_sizes, class_names=class_names)
    finally:
        model.train(was_training)


def detect_images(model: RetinaNet, images: Sequence[torch.Tensor], preprocess: PreprocessConfig | None = None,
                  **options) -> list[Detections]:
    """:func:`detect_batch` on uint8 (or [0, 1] float) images [3, h, w] of any sizes, resized by the
    model's rule (or by ``preprocess``'s, e.g. another input size)."""
    device = next(model.parameters()).device
    return detect_batch(model, prepare_batch(images, preprocess or model.cfg.preprocess, device), **options)
