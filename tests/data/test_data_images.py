"""read_image: every common pixel layout becomes uint8 RGB [3, H, W]; bad files raise DataError naming them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from retinadet.data.images import image_size, read_image
from retinadet.errors import DataError


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)


def _hwc(t: torch.Tensor) -> np.ndarray:
    assert t.dtype == torch.uint8 and t.ndim == 3 and t.shape[0] == 3
    return t.permute(1, 2, 0).numpy()


def test_png_rgb_exact(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "a.png")
    assert np.array_equal(_hwc(read_image(tmp_path / "a.png")), rgb)


def test_jpeg_close(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=98)
    out = _hwc(read_image(tmp_path / "a.jpg")).astype(int)
    reference = np.asarray(Image.open(tmp_path / "a.jpg").convert("RGB")).astype(int)
    assert out.shape == rgb.shape and np.abs(out - reference).mean() < 1.0


def test_grayscale_rgba_palette_16bit(tmp_path, rgb):
    Image.fromarray(rgb[..., 0]).save(tmp_path / "g.png")
    g = _hwc(read_image(tmp_path / "g.png"))
    assert all(np.array_equal(g[..., c], rgb[..., 0]) for c in range(3))

    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(tmp_path / "rgba.png")
    assert np.array_equal(_hwc(read_image(tmp_path / "rgba.png")), rgb)

    pal = Image.fromarray(rgb).convert("P")
    pal.save(tmp_path / "p.png")
    assert np.array_equal(_hwc(read_image(tmp_path / "p.png")), np.asarray(pal.convert("RGB")))

    Image.fromarray(rgb[..., 1].astype(np.uint16) * 257).save(tmp_path / "16.png")
    sixteen = read_image(tmp_path / "16.png", window="0,65535")  # a fixed full range: exactly value / 65535
    assert sixteen.dtype == torch.float32
    assert np.allclose(sixteen[2].numpy(), rgb[..., 1].astype(np.float64) * 257 / 65535.0, atol=1e-6)

    Image.fromarray(rgb).save(tmp_path / "t.tif")  # PIL fallback path
    assert np.array_equal(_hwc(read_image(tmp_path / "t.tif")), rgb)


def test_exif_orientation_applied(tmp_path, rgb):
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW to display
    img.save(tmp_path / "rot.jpg", exif=exif, quality=98)
    out = read_image(tmp_path / "rot.jpg")
    assert tuple(out.shape[1:]) == (30, 20)
    assert image_size(tmp_path / "rot.jpg") == (20, 30)


@pytest.mark.parametrize("case", ["missing", "truncated", "garbage", "empty"])
def test_bad_files_raise_data_error_naming_the_file(tmp_path, rgb, case):
    path = tmp_path / f"{case}.jpg"
    if case == "truncated":
        Image.fromarray(rgb).save(tmp_path / "full.jpg")
        data = (tmp_path / "full.jpg").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "garbage":
        path.write_bytes(b"not an image at all")
    elif case == "empty":
        path.write_bytes(b"")
    with pytest.raises(DataError, match=str(path.name)):
        read_image(path)


def test_a_huge_image_is_announced_with_its_decode_memory(tmp_path):
    """Only the header is read (a PNG whose IHDR says 20000x20000, no pixel data): the note names the size and the
    memory its decode takes, and an ordinary image gets none."""
    import struct
    import zlib

    from PIL import Image

    from retinadet.data.images import decode_memory_note, image_size

    small = tmp_path / "small.png"
    Image.new("RGB", (64, 48)).save(small)
    png = bytearray(small.read_bytes())
    png[16:24] = struct.pack(">II", 20000, 20000)  # IHDR's width and height, then its CRC
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    path = tmp_path / "slide.png"
    path.write_bytes(bytes(png))
    limit = Image.MAX_IMAGE_PIXELS
    assert image_size(path) == (20000, 20000)
    assert Image.MAX_IMAGE_PIXELS == limit  # the decode's own guard is left as it was
    note = decode_memory_note(path)
    assert note is not None and "20000x20000 px" in note and "1.1 GiB" in note
    assert decode_memory_note(small) is None
