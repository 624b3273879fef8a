"""Sliced inference through the one inference path: boxes map back exactly, one tile is the whole image,
empty tiles, batching, the cap after merging, and Detector.predict(tile=...)."""

from __future__ import annotations

import pytest
import torch

from retinadet.detector import Detector
from retinadet.model import RetinaNet, resolve_model_config
from retinadet.model.inference import TilingReport, detect_images
from retinadet.utils.tiling import TileOptions, tile_grid


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    # Untrained, with a threshold below its prior: every region yields detections, deterministically.
    cfg = resolve_model_config("fast").replace({"num_classes": 2, "inference.score_thresh": 0.001})
    return RetinaNet(cfg).eval()


@pytest.fixture(scope="module")
def image():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (3, 500, 700), dtype=torch.uint8, generator=g)


def _rows(d) -> list[tuple]:
    return sorted(zip(d.scores.tolist(), *(d.boxes[:, i].tolist() for i in range(4)), d.labels.tolist()))


def _missing(a, b, atol: float) -> int:
    """Rows (score, box, label) of ``a`` with no row of ``b`` within ``atol``: order-free, since near-equal
    scores of an untrained model sort by their last bits."""
    ta, tb = torch.tensor(_rows(a)), torch.tensor(_rows(b))
    return int(((ta[:, None] - tb[None]).abs().amax(-1).amin(1) > atol).sum())


def _unmatched(a, b, atol: float) -> int:
    return _missing(a, b, atol) + _missing(b, a, atol)


def test_boxes_map_back_exactly(model, image):
    # Tiles that do not overlap cut nothing whole elsewhere and share no box: the sliced result is the union of
    # each tile's own detections, moved by the tile's origin.
    tiling = TileOptions.parse("350x250", overlap=0.0)  # 2x2 tiles meeting edge to edge
    sliced = detect_images(model, [image], tiling=tiling, batch_size=1)[0]  # each tile's forward as run alone below
    expected = []
    for x1, y1, x2, y2 in tile_grid(500, 700, (250, 350), 0).tolist():
        d = detect_images(model, [image[:, y1:y2, x1:x2]])[0]
        d.boxes = d.boxes + torch.tensor([x1, y1, x1, y1], dtype=d.boxes.dtype)
        expected += _rows(d)
    assert len(sliced) == len(expected) > 0
    assert _rows(sliced) == sorted(expected)
    assert sliced.image_size == (500, 700) and sliced.tiles.shape == (len(sliced), 4)
    assert ((sliced.boxes[:, :2] >= sliced.tiles[:, :2]) & (sliced.boxes[:, 2:] <= sliced.tiles[:, 2:])).all()


@pytest.mark.parametrize("tile", [700, 2000])
def test_one_tile_is_the_whole_image(model, image, tile):
    whole = detect_images(model, [image])[0]
    sliced = detect_images(model, [image], tiling=TileOptions.parse(tile))[0]
    assert len(sliced) == len(whole) > 0
    assert torch.equal(sliced.boxes, whole.boxes) and torch.equal(sliced.scores, whole.scores)
    assert torch.equal(sliced.labels, whole.labels) and torch.equal(sliced.anchor_index, whole.anchor_index)


def test_empty_tiles(image):
    torch.manual_seed(0)
    cfg = resolve_model_config("fast").replace({"num_classes": 2, "inference.score_thresh": 0.9})
    quiet = RetinaNet(cfg).eval()
    d = detect_images(quiet, [image], tiling=TileOptions.parse(200))[0]
    assert len(d) == 0 and d.image_size == (500, 700) and d.boxes.shape == (0, 4) and d.tiles.shape == (0, 4)


def test_batching_and_images_together_change_nothing(model, image):
    other = torch.flip(image, dims=[-1])[:, :300, :]
    tiling = TileOptions.parse(200)
    one_by_one = [detect_images(model, [img], tiling=tiling, batch_size=1)[0] for img in (image, other)]
    together = detect_images(model, [image, other], tiling=tiling, batch_size=5)
    for a, b in zip(one_by_one, together):  # batched convolutions may differ in the last bits
        assert len(a) == len(b)
        assert _unmatched(a, b, atol=1e-3) == 0


def test_cap_applies_after_the_merge(model, image):
    tiling = TileOptions.parse(200)
    full = detect_images(model, [image], tiling=tiling)[0]
    capped = detect_images(model, [image], tiling=tiling, max_det=7)[0]
    assert len(full) > 100  # more than one tile's cap: the image is not cut to the model's 100
    # The seven best of the merged list (a tie at the seventh may pick either of its rows).
    assert len(capped) == 7 and _missing(capped, full, atol=1e-6) == 0
    assert torch.allclose(capped.scores.sort(descending=True).values, full.scores.sort(descending=True).values[:7],
                          atol=1e-6)


def test_detector_predict_slices_and_says_so(model, image):
    det = Detector(model, ["a", "b"])
    lines = []
    out = det.predict([image, image[:, :100, :100]], tile=256, log=lines.append)
    assert out[0].tiles is not None and out[1].tiles is not None
    assert any("sliced into 12 tiles of 256 px (overlap 51 px); as asked (--tile 256)" in line for line in lines), lines
    assert det.predict(image, tile=None).tiles is None
    # auto: no recorded training scale (an untrained model), so the whole image
    assert det.predict(image).tiles is None


def test_report_counts():
    report = TilingReport()
    report.note("k", "x")
    report.note("k", "x")
    assert report.said == {"k"} and "none of 0" in report.summary()
