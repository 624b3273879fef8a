"""Whole-slide images: pyramid levels and microns per pixel, region reads at any level equal to crops of the
array, the OpenSlide reader (where openslide-bin installs) agreeing with tifffile's, the tissue mask, and one-line
errors for a corrupt slide, a missing level, an mpp the slide lacks and a deep slide without a window."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

tifffile = pytest.importorskip("tifffile", reason="slides need tifffile (the tiff extra)")
pytest.importorskip("zarr", reason="slides need zarr (the tiff extra)")

from retinadet.data.regions import OpenSlideRegions, TiffRegions, open_slide  # noqa: E402
from retinadet.errors import DataError  # noqa: E402
from retinadet.utils.tissue import tissue_fraction, tissue_mask  # noqa: E402

MPP = 0.25


def write_slide(path, array, mpp=MPP, tile=128, levels=3):
    """A pyramidal tiled TIFF with its resolution, each reduced level a page after level 0 (the layout OpenSlide's
    generic TIFF reader and tifffile both read; tests/data/test_regions.py covers levels in SubIFDs)."""
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        kw = dict(tile=(tile, tile), compression="zlib", photometric="rgb" if array.ndim == 3 else "minisblack")
        res = dict(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER") if mpp else {}
        tw.write(array, **res, **kw)
        for k in range(1, levels):
            tw.write(array[:: 2**k, :: 2**k], subfiletype=1, **kw)
    return path


def tissue_slide(seed=0, h=1400, w=1800):
    """White glass with two blocks of stained 'tissue' (coloured noise)."""
    rng = np.random.default_rng(seed)
    array = np.full((h, w, 3), 242, np.uint8)
    array[150:650, 200:800] = rng.integers(40, 200, (500, 600, 3), dtype=np.uint8)
    array[800:1300, 1000:1700] = rng.integers(40, 200, (500, 700, 3), dtype=np.uint8)
    return array


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    array = tissue_slide()
    return write_slide(tmp_path_factory.mktemp("slides") / "slide.tif", array), array


def test_levels_and_mpp(slide):
    path, array = slide
    image = open_slide(path)
    assert [(lv.width, lv.height) for lv in image.levels] == [(1800, 1400), (900, 700), (450, 350)]
    assert image.mpp == pytest.approx((MPP, MPP)) and image.level == 0 and image.shape == (3, 1400, 1800)
    image.close()
    image = open_slide(path, mpp=0.5)  # level 1 exactly
    assert (image.level, image.resample, image.downsample) == (1, 1.0, 2.0) and image.mpp == pytest.approx((0.5, 0.5))
    image.close()
    image = open_slide(path, mpp=0.75)  # between levels: level 1, resampled by 1.5
    assert image.level == 1 and image.resample == pytest.approx(1.5) and image.shape == (3, 466, 600)
    assert image.downsample == pytest.approx(3.0)
    image.close()


def test_region_reads_equal_crops_at_every_level(slide):
    path, array = slide
    rng = np.random.default_rng(1)
    for level in range(3):
        image = open_slide(path, level=level)
        full = array[:: 2**level, :: 2**level]
        h, w = full.shape[:2]
        for _ in range(10):
            y1, x1 = int(rng.integers(0, h - 2)), int(rng.integers(0, w - 2))
            y2, x2 = int(rng.integers(y1 + 1, min(h, y1 + 300) + 1)), int(rng.integers(x1 + 1, min(w, x1 + 300) + 1))
            assert torch.equal(image[:, y1:y2, x1:x2], torch.from_numpy(full[y1:y2, x1:x2]).permute(2, 0, 1))
        image.close()


def test_openslide_reads_the_same_slide(slide):
    pytest.importorskip("openslide", reason="OpenSlide (openslide-bin + openslide-python, the slide extra) not installed")
    path, array = slide
    ours, theirs = open_slide(path), open_slide(path, backend="openslide")
    assert isinstance(theirs, OpenSlideRegions) and isinstance(ours, TiffRegions)
    assert [(lv.width, lv.height) for lv in theirs.levels] == [(lv.width, lv.height) for lv in ours.levels]
    assert theirs.mpp == pytest.approx(ours.mpp, rel=1e-3)
    for box in [(0, 0, 300, 200), (1000, 700, 1500, 1100), (1650, 1300, 1800, 1400)]:
        x1, y1, x2, y2 = box
        assert torch.equal(theirs[:, y1:y2, x1:x2], torch.from_numpy(array[y1:y2, x1:x2]).permute(2, 0, 1))
    at1 = open_slide(path, level=1, backend="openslide")
    assert torch.equal(at1[:, 100:300, 200:500], torch.from_numpy(array[::2, ::2][100:300, 200:500]).permute(2, 0, 1))
    for image in (ours, theirs, at1):
        image.close()


def test_tissue_mask_finds_the_stained_blocks(slide):
    path, array = slide
    image = open_slide(path)
    thumb, per_px = image.thumbnail(min_side=400)
    assert per_px == 4.0 and thumb.shape == (350, 450, 3)
    mask = tissue_mask(thumb)
    truth = np.zeros(array.shape[:2], bool)
    truth[150:650, 200:800] = truth[800:1300, 1000:1700] = True
    truth_small = truth[::4, ::4]
    assert (mask & truth_small).sum() / truth_small.sum() > 0.99  # all tissue found
    assert (mask & ~truth_small).sum() / (~truth_small).sum() < 0.02  # little glass taken for tissue
    boxes = np.array([[0, 0, 150, 140], [300, 300, 500, 500], [1100, 900, 1200, 1000]])
    frac = tissue_fraction(mask, boxes, scale=4.0)
    assert frac[0] == 0 and frac[1] > 0.9 and frac[2] > 0.9
    fluorescence = 255 - thumb.mean(axis=2, keepdims=True).repeat(3, axis=2).astype(np.uint8)  # bright tissue, dark glass
    assert (tissue_mask(fluorescence) & truth_small).sum() / truth_small.sum() > 0.95
    image.close()


def test_slide_errors_are_one_line_naming_the_file(slide, tmp_path):
    path, array = slide
    with pytest.raises(DataError, match=r"slide\.tif: no level 5; the slide has levels 0-2 \(0: 1800x1400"):
        open_slide(path, level=5)
    plain = write_slide(tmp_path / "nompp.tif", array[:256, :256], mpp=None, levels=1)
    with pytest.raises(DataError, match=r"nompp\.tif: --mpp 0.5 asked, but the slide records no microns per pixel"):
        open_slide(plain, mpp=0.5)
    with pytest.raises(DataError, match=r"slide\.tif: --mpp 0.1 is finer than the slide's level 0"):
        open_slide(path, mpp=0.1)
    broken = tmp_path / "broken.svs"
    broken.write_bytes(b"II*\x00" + b"\x00" * 64)
    message = "broken.svs: (unreadable slide|reading this slide needs OpenSlide)"
    with pytest.raises(DataError, match=message):
        open_slide(broken)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(DataError, match="cut.tif: unreadable TIFF"):
        open_slide(cut)
    deep = write_slide(tmp_path / "deep.tif", array[:256, :256].astype(np.uint16) * 257, levels=1)
    with pytest.raises(DataError, match="deep.tif: 16-bit image.*no windowing rule"):
        open_slide(deep)
    windowed = open_slide(deep, window="0,65535")
    assert torch.allclose(windowed[:, :4, :4], torch.from_numpy(array[:4, :4] / 255.0).permute(2, 0, 1).float(), atol=1e-6)
    windowed.close()


def test_predict_on_a_slide_equals_sliced_inference_on_the_array(slide, tmp_path):
    from retinadet.detector import Detector, predict
    from retinadet.model import RetinaNet, resolve_model_config

    path, array = slide
    torch.manual_seed(0)
    det = Detector(RetinaNet(resolve_model_config("fast").replace({"num_classes": 2})), ["a", "b"])
    lines: list[str] = []
    # level 1 (0.5 µm/px): boxes come back in level-0 pixels and µm
    out = predict(det, path, level=1, tile=256, conf=0.001, tissue=False, save_csv=True, project=str(tmp_path), name="s",
                  progress=False, log=lines.append)
    rows = json.loads((tmp_path / "predict" / "s" / "predictions.json").read_text())
    expected = det.predict(torch.from_numpy(np.ascontiguousarray(array[::2, ::2])).permute(2, 0, 1), tile=256, conf=0.001)
    assert out["images"] == 1 and len(rows) == len(expected) > 0
    got = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in rows)])
    assert torch.allclose(got, expected.boxes * 2, atol=2e-3)  # level-1 pixels x 2 = level 0
    assert [r["score"] for r in rows] == pytest.approx(expected.scores.tolist(), abs=1e-5)
    entry = json.loads((tmp_path / "predict" / "s" / "predictions.jsonl").read_text().splitlines()[0])
    assert entry["image_size"] == [1400, 1800] and entry["mpp"] == pytest.approx([MPP, MPP])
    csv = (tmp_path / "predict" / "s" / "predictions.csv").read_text().splitlines()
    assert csv[0].endswith("x1_um,y1_um,x2_um,y2_um")
    first = csv[1].split(",")
    assert float(first[8]) == pytest.approx(float(first[4]) * MPP, abs=1e-2)
    assert (tmp_path / "predict" / "s" / "slide_overview.png").is_file()

    # With the tissue mask: the glass tiles are skipped, and the detections are those of the tissue tiles.
    out = predict(det, path, level=1, tile=256, conf=0.001, project=str(tmp_path), name="t", progress=False, log=lines.append)
    import re

    held = [re.search(r"; (\d+) of (\d+) tiles hold some and run", line) for line in lines]
    held = [m for m in held if m]
    assert held and 0 < int(held[-1].group(1)) < int(held[-1].group(2))
    assert 0 < out["detections"] <= len(rows)


def test_a_tile_that_fails_to_decode_skips_its_slide_and_the_run_goes_on(slide, tmp_path):
    from retinadet.detector import Detector, predict
    from retinadet.model import RetinaNet, resolve_model_config

    path, array = slide
    folder = tmp_path / "in"
    folder.mkdir()
    good = write_slide(folder / "good.tif", array[:600, :700])
    bad = folder / "bad.tif"
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[40], tif.pages[0].databytecounts[40]  # a tile inside the tissue
    data[offset:offset + count] = b"\xff" * count  # not a zlib stream any more
    bad.write_bytes(bytes(data))
    torch.manual_seed(0)
    det = Detector(RetinaNet(resolve_model_config("fast").replace({"num_classes": 2})), ["a", "b"])
    lines: list[str] = []
    out = predict(det, folder, level=0, tile=256, conf=0.001, tissue=False, project=str(tmp_path), name="p", progress=False,
                  log=lines.append)
    assert out["images"] == 1 and out["skipped"] == 1
    assert any(line.startswith(f"skipped: {bad}: cannot read the tile at row") for line in lines), lines
    assert str(bad) in (tmp_path / "predict" / "p" / "skipped.txt").read_text()
    assert str(good) in (tmp_path / "predict" / "p" / "predictions.jsonl").read_text()


def test_tissue_mask_keeps_a_pale_blood_smear(bccd):
    """The plasma between blood cells is pale: it is specimen, and only the grey glass around the field is not."""
    from retinadet.data.images import read_image

    field = read_image(sorted((bccd / "JPEGImages").glob("*.jpg"))[0]).permute(1, 2, 0).numpy()
    canvas = np.full((960, 1280, 3), 242, np.uint8)
    canvas[240:720, 320:960] = field
    truth = np.zeros(canvas.shape[:2], bool)
    truth[240:720, 320:960] = True
    mask = tissue_mask(canvas)
    assert (mask & truth).sum() / truth.sum() > 0.99 and (mask & ~truth).sum() / (~truth).sum() < 0.01
