"""The exported-model runners read images of more than 8 bits as the torch path does: windowed, at full depth."""

import numpy as np
import pytest
import tifffile
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from retinadet.data.images import read_image as torch_read
from retinadet.errors import DataError
from retinadet.export.runtime import read_image, resize_image


@pytest.mark.parametrize("kind", ["png16", "tif16", "rgb16", "c2"])
def test_runner_reads_deep_images_as_the_torch_path(tmp_path, kind):
    rng = np.random.default_rng(0)
    if kind == "png16":
        path = tmp_path / "a.png"
        Image.fromarray(rng.integers(0, 65536, (40, 50), dtype=np.uint16)).save(path)
    elif kind == "tif16":
        path = tmp_path / "a.tif"
        tifffile.imwrite(path, rng.integers(0, 4096, (40, 50), dtype=np.uint16))
    elif kind == "rgb16":  # Pillow alone would read this as 8-bit
        path = tmp_path / "a.tif"
        tifffile.imwrite(path, rng.integers(0, 65536, (40, 50, 3), dtype=np.uint16), photometric="rgb")
    else:
        path = tmp_path / "a.tif"
        tifffile.imwrite(path, rng.integers(0, 65536, (2, 40, 50), dtype=np.uint16), photometric="minisblack")
    ours = read_image(path, "p1,99")
    assert ours.dtype == np.float32 and ours.shape == (40, 50, 3)
    assert np.allclose(ours, torch_read(path, "p1,99").permute(1, 2, 0).numpy(), atol=1e-6)
    with pytest.raises(DataError, match="no windowing rule"):
        read_image(path)


def test_float_resize_matches_torch():
    image = np.random.default_rng(1).random((97, 131, 3), dtype=np.float32)
    for h, w in [(50, 70), (150, 170), (97, 60)]:
        expected = TF.resize(torch.from_numpy(image).permute(2, 0, 1), [h, w], antialias=True).permute(1, 2, 0).numpy()
        assert np.abs(resize_image(image, h, w) - expected).max() < 1e-5
