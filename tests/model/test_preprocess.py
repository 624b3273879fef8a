"""One resize rule and one resampler for training, validation, prediction and the ONNX runner."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retinadet.data.transforms import build_transform
from retinadet.export.onnx_runtime import preprocess as numpy_preprocess
from retinadet.model.config import PreprocessConfig
from retinadet.model.preprocess import prepare_batch, resize_image

ODD_SIZES = [(333, 517), (517, 333), (97, 1001), (1, 640), (640, 1), (288, 288), (1999, 1283)]
PREPROCESS = {
    "min/max": PreprocessConfig(min_size=320, max_size=480),
    "letterbox": PreprocessConfig(fixed_size=288),
    "upscale": PreprocessConfig(min_size=800, max_size=1333),
}


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # smooth content plus noise, so that a wrong kernel shows on edges and flat areas alike
    y, x = np.mgrid[0:h, 0:w]
    base = (127 + 100 * np.sin(x / 7.0) * np.cos(y / 11.0))[..., None]
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", list(PREPROCESS))
def test_prediction_sees_the_pixels_validation_sees(name):
    """The validation loader resizes with the training transform (preset none); predict with prepare_batch."""
    pre = PREPROCESS[name]
    transform = build_transform("none", pre)
    for h, w in ODD_SIZES:
        img = torch.from_numpy(_image(h, w)).permute(2, 0, 1)
        val_img, *_ = transform(img, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.bool))
        batch = prepare_batch([img], pre)
        rh, rw = batch.image_sizes[0].tolist()
        assert (rh, rw) == tuple(val_img.shape[-2:]), (h, w)
        assert torch.equal(batch.images[0, :, :rh, :rw], val_img)
        assert batch.orig_sizes[0].tolist() == [h, w]


@pytest.mark.parametrize("name", list(PREPROCESS))
def test_onnx_runner_computes_the_same_sizes_and_pixels(name):
    pre = PREPROCESS[name]
    arrays = [_image(h, w, seed=i) for i, (h, w) in enumerate(ODD_SIZES)]
    for group in (arrays[:3], arrays[3:5], arrays[5:]):  # batches of mixed sizes
        ours = prepare_batch([torch.from_numpy(a).permute(2, 0, 1) for a in group], pre)
        batch, sizes = numpy_preprocess(group, pre.__dict__, input_dtype="uint8")
        assert sizes.tolist() == ours.image_sizes.tolist()
        assert batch.shape == tuple(ours.images.shape)
        assert np.array_equal(batch, ours.images.numpy())  # bit-exact, padding included
        as_float, _ = numpy_preprocess(group, pre.__dict__, input_dtype="float32")
        np.testing.assert_allclose(as_float, batch / 255.0, atol=1e-7)


def test_float_images_go_through_the_same_kernel():
    img = torch.from_numpy(_image(333, 517)).permute(2, 0, 1)
    u8 = resize_image(img, (161, 250))
    f = resize_image(img.float() / 255.0, (161, 250))
    assert u8.dtype == torch.uint8 and f.dtype == torch.float32
    assert float((f * 255 - u8.float()).abs().max()) <= 1.0
    assert resize_image(img, (333, 517)) is img  # no resampling at the same size
