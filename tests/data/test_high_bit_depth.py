"""Images of more than 8 bits: decoded without truncation, windowed by the model's rule, refused by 8-bit models."""

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from retinadet.data.images import image_bit_depth, read_image, to_image_tensor
from retinadet.errors import DataError
from retinadet.utils.window import apply_window, parse_window


def _full_range(h=96, w=128, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 65536, size=(h, w), dtype=np.uint16)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_full_range_16bit_keeps_4096_values(tmp_path, suffix):
    arr = _full_range()
    path = tmp_path / f"a{suffix}"
    Image.fromarray(arr).save(path) if suffix == ".png" else tifffile.imwrite(path, arr)
    assert image_bit_depth(path) == 16
    image = read_image(path, window="0,65535")
    assert image.dtype == torch.float32 and image.shape == (3, 96, 128)
    assert len(torch.unique(image[0])) >= 4096  # an 8-bit cut would leave at most 256
    assert torch.allclose(image[0], torch.from_numpy(arr.astype(np.float32) / 65535.0), atol=1e-6)


def test_values_within_8_bits_are_stretched_by_percentiles(tmp_path):
    arr = (np.arange(96 * 128) % 200).reshape(96, 128).astype(np.uint16)  # a 16-bit file whose values fit in 8 bits
    tifffile.imwrite(tmp_path / "low.tif", arr)
    image = read_image(tmp_path / "low.tif", window="p0,100")
    assert float(image.min()) == 0.0 and float(image.max()) == 1.0  # a fixed 0..65535 range would leave it black
    assert len(torch.unique(image[0])) == 200


def test_multichannel_tiff(tmp_path):
    planes = np.stack([_full_range(seed=1), _full_range(seed=2)])  # two fluorophores, channels first
    tifffile.imwrite(tmp_path / "c2.tif", planes, photometric="minisblack")
    image = read_image(tmp_path / "c2.tif", window="0,65535")
    assert torch.allclose(image[0], torch.from_numpy(planes[0] / 65535.0).float(), atol=1e-6)
    assert torch.allclose(image[1], torch.from_numpy(planes[1] / 65535.0).float(), atol=1e-6)
    assert float(image[2].abs().max()) == 0.0
    rgb16 = np.stack([_full_range(seed=k) for k in range(3)], axis=-1)
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb16, photometric="rgb")  # Pillow would read this as 8-bit
    assert len(torch.unique(read_image(tmp_path / "rgb16.tif", window="0,65535")[1])) >= 4096
    tifffile.imwrite(tmp_path / "c6.tif", np.zeros((6, 8, 8), np.uint16), photometric="minisblack")
    with pytest.raises(DataError, match="c6.tif: 6 channels"):
        read_image(tmp_path / "c6.tif", window="0,65535")


def test_8bit_model_refuses_16bit_image_naming_the_file(tmp_path):
    Image.fromarray(_full_range()).save(tmp_path / "scan.png")
    with pytest.raises(DataError, match=r"scan\.png: 16-bit image .*no windowing rule.*--window"):
        read_image(tmp_path / "scan.png")
    with pytest.raises(DataError, match="no windowing rule"):
        to_image_tensor(_full_range())
    assert to_image_tensor(_full_range(), window="p1,99")[0].dtype == torch.float32


def test_8bit_images_ignore_the_window(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png", window="p0.5,99.5")
    assert out.dtype == torch.uint8 and np.array_equal(out.permute(1, 2, 0).numpy(), rgb)


def test_window_rules_parse_and_fail_clearly():
    assert parse_window("auto").spec == "p0.5,99.5"
    assert parse_window("0, 4095").spec == "0,4095" and not parse_window("0,4095").percentile
    assert parse_window(None) is None and parse_window("none") is None
    for bad, why in [("4095,0", "LOW must be below HIGH"), ("p1,120", "0..100"), ("bright", "not a windowing rule")]:
        with pytest.raises(DataError, match=why):
            parse_window(bad)
    arr = np.array([[0, 1000, 4095, 8000]], dtype=np.uint16)
    assert np.allclose(apply_window(arr, parse_window("0,4095")), [[0, 1000 / 4095, 1, 1]])
