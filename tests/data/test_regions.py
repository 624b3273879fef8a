"""Large tiled TIFFs read region by region: regions equal crops of the full array, and sliced inference over the
file equals sliced inference over the decoded image."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

tifffile = pytest.importorskip("tifffile", reason="region reading needs tifffile (the tiff extra)")
pytest.importorskip("zarr", reason="region reading needs zarr (the tiff extra)")

from retinadet.data import regions  # noqa: E402
from retinadet.data.regions import RegionImage, open_regions  # noqa: E402
from retinadet.errors import DataError  # noqa: E402


def _pyramid(path, array, tile=(128, 128)):
    """A pyramidal tiled TIFF as slide scanners write them: level 0 and two reduced levels, zlib-compressed."""
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        kw = dict(tile=tile, compression="zlib", photometric="rgb" if array.ndim == 3 else "minisblack")
        tw.write(array, subifds=2, **kw)
        tw.write(array[::2, ::2], subfiletype=1, **kw)
        tw.write(array[::4, ::4], subfiletype=1, **kw)
    return path


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (700, 1100, 3), dtype=np.uint8)
    return _pyramid(tmp_path_factory.mktemp("slide") / "slide.tif", array), array


def test_regions_equal_crops_of_the_full_array(slide):
    path, array = slide
    image = open_regions(path, min_bytes=0)
    assert isinstance(image, RegionImage) and image.shape == (3, 700, 1100)
    rng = np.random.default_rng(1)
    for _ in range(20):
        y1, x1 = int(rng.integers(0, 690)), int(rng.integers(0, 1090))
        y2, x2 = int(rng.integers(y1 + 1, 701)), int(rng.integers(x1 + 1, 1101))
        region = image[:, y1:y2, x1:x2]
        assert region.dtype == torch.uint8
        assert torch.equal(region, torch.from_numpy(array[y1:y2, x1:x2]).permute(2, 0, 1))
    image.close()


def test_which_files_are_read_by_region(slide, tmp_path):
    path, array = slide
    assert open_regions(path) is None  # below the size worth it: decoded whole
    gray = _pyramid(tmp_path / "gray.tif", array[..., 0])
    image = open_regions(gray, min_bytes=0)
    assert torch.equal(image[:, 5:9, 7:12], torch.from_numpy(array[5:9, 7:12, 0])[None].expand(3, -1, -1))
    image.close()
    tifffile.imwrite(tmp_path / "strips.tif", array)  # not tiled
    assert open_regions(tmp_path / "strips.tif", min_bytes=0) is None
    deep = array.astype(np.uint16) * 257
    tifffile.imwrite(tmp_path / "deep.tif", deep, tile=(128, 128), photometric="rgb")
    with pytest.raises(DataError, match="deep.tif: 16-bit image.*no windowing rule"):  # an 8-bit model
        open_regions(tmp_path / "deep.tif", min_bytes=0)
    image = open_regions(tmp_path / "deep.tif", min_bytes=0, window="0,65535")  # 16-bit regions, windowed
    assert torch.allclose(image[:, 5:9, 7:12], torch.from_numpy(deep[5:9, 7:12] / 65535.0).permute(2, 0, 1).float())
    image.close()
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    assert open_regions(tmp_path / "broken.tif", min_bytes=0) is None  # read_image then names the problem


def test_sliced_inference_reads_the_same_pixels(slide):
    from retinadet.model import RetinaNet, resolve_model_config
    from retinadet.model.inference import detect_images
    from retinadet.utils.tiling import TileOptions

    path, array = slide
    torch.manual_seed(0)
    model = RetinaNet(resolve_model_config("fast").replace({"num_classes": 2, "inference.score_thresh": 0.001})).eval()
    tiling = TileOptions.parse(256)
    image = open_regions(path, min_bytes=0)
    lazy = detect_images(model, [image], tiling=tiling, batch_size=4)[0]
    whole = detect_images(model, [torch.from_numpy(array).permute(2, 0, 1)], tiling=tiling, batch_size=4)[0]
    image.close()
    assert len(lazy) == len(whole) > 0
    assert torch.equal(lazy.boxes, whole.boxes) and torch.equal(lazy.scores, whole.scores)


def test_predict_reads_a_large_tiff_by_region(slide, tmp_path, monkeypatch):
    from retinadet.detector import Detector, predict
    from retinadet.model import RetinaNet, resolve_model_config

    path, array = slide
    monkeypatch.setattr(regions, "REGION_BYTES", 0)
    torch.manual_seed(0)
    det = Detector(RetinaNet(resolve_model_config("fast").replace({"num_classes": 2})), ["a", "b"])
    lines: list[str] = []
    out = predict(det, path, tile=256, conf=0.001, project=str(tmp_path), name="p", progress=False, log=lines.append)
    assert any("1100x700 px slide at level 0 (1100x700 px), no µm/px recorded, read by region" in line for line in lines), lines
    assert (tmp_path / "predict" / "p" / "slide_overview.png").is_file()  # the thumbnail with its detections
    rows = json.loads((tmp_path / "predict" / "p" / "predictions.json").read_text())
    expected = det.predict(torch.from_numpy(array).permute(2, 0, 1), tile=256, conf=0.001)
    assert out["images"] == 1 and len(rows) == len(expected) > 0
