"""Network input: resize by the one rule, pad into a batch. Training, validation, prediction,
Grad-CAM and export all go through these functions.

The size rule lives in :mod:`retinadet.utils.resize` (torch-free, shared with the ONNX runner);
the resampler is antialiased bilinear, on uint8 images as the training loader decodes them, so a
model sees the same pixels in ``predict`` as in ``val``. Normalisation happens inside the model
(:meth:`RetinaNet.normalize`), on the padded uint8 or [0, 1] float batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from retinadet.model.config import PreprocessConfig
from retinadet.utils import resize as rule


def resized_size(height: int, width: int, cfg: PreprocessConfig) -> tuple[int, int]:
    """(h, w) of an image of this size at the network input."""
    return rule.resized_size(height, width, cfg.min_size, cfg.max_size, cfg.fixed_size)


def padded_size(sizes: Sequence[Sequence[int]], cfg: PreprocessConfig) -> tuple[int, int]:
    """(H, W) of the zero-padded canvas of a batch of resized images."""
    return rule.padded_size(sizes, cfg.size_divisible, cfg.fixed_size)


def resize_image(image: Tensor, size: Sequence[int]) -> Tensor:
    """The one resampler: antialiased bilinear, uint8 in, uint8 out (or float in, float out)."""
    size = [int(size[0]), int(size[1])]
    if list(image.shape[-2:]) == size:
        return image
    return TF.resize(image, size, antialias=True)


@dataclass
class InputBatch:
    """Resized images zero-padded bottom-right into one canvas, with the sizes to undo it."""

    images: Tensor  # [B, 3, H, W] uint8 (or float in [0, 1] when a float image was given)
    image_sizes: Tensor  # [B, 2] int64 (h, w) after resizing, before padding
    orig_sizes: Tensor  # [B, 2] int64 (h, w) of the images as given

    def __len__(self) -> int:
        return int(self.images.shape[0])


def prepare_batch(images: Sequence[Tensor], cfg: PreprocessConfig, device: torch.device | str = "cpu") -> InputBatch:
    """uint8 (or [0, 1] float) images [3, h, w] of any sizes -> one padded :class:`InputBatch`."""
    device = torch.device(device)
    floating = any(img.is_floating_point() for img in images)
    resized = []
    for img in images:  # images differ in size, so each is resized on its own
        x = resize_image(img.to(device), resized_size(img.shape[-2], img.shape[-1], cfg))
        resized.append(x.float() / 255.0 if floating and x.dtype == torch.uint8 else x)
    sizes = [tuple(r.shape[-2:]) for r in resized]
    h, w = padded_size(sizes, cfg)
    batch = torch.zeros(len(resized), 3, h, w, dtype=resized[0].dtype, device=device)
    for i, r in enumerate(resized):
        batch[i, :, : r.shape[-2], : r.shape[-1]] = r
    orig = [tuple(img.shape[-2:]) for img in images]
    return InputBatch(batch, torch.tensor(sizes, dtype=torch.int64, device=device),
                      torch.tensor(orig, dtype=torch.int64, device=device))
