"""Boxes follow pixels through every transform; presets keep boxes inside the image; drops are counted."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retinadet.data.transforms import PRESETS, TransformConfig, build_transform
from retinadet.utils.resize import resized_size

torch.set_num_threads(1)


@st.composite
def scenes(draw):
    h, w = draw(st.integers(24, 90)), draw(st.integers(24, 90))
    x1, y1 = draw(st.integers(0, w - 8)), draw(st.integers(0, h - 8))
    x2, y2 = draw(st.integers(x1 + 6, w)), draw(st.integers(y1 + 6, h))
    return h, w, (x1, y1, x2, y2)


def _pixel_box(image: torch.Tensor):
    ys, xs = torch.nonzero(image[0] > 127, as_tuple=True)
    if len(xs) == 0:
        return None
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scene=scenes(), hflip=st.booleans(), vflip=st.booleans(), rot=st.booleans(), crop=st.booleans(),
       size=st.integers(20, 120), seed=st.integers(0, 2**16))
def test_box_bounds_drawn_pixels(scene, hflip, vflip, rot, crop, size, seed):
    h, w, (x1, y1, x2, y2) = scene
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    image[:, y1:y2, x1:x2] = 255
    cfg = TransformConfig(min_size=size, max_size=2 * size, hflip=float(hflip), vflip=float(vflip),
                          rot90=float(rot), iou_crop=float(crop))
    torch.manual_seed(seed)
    out, boxes, labels, crowd, stats = build_transform(cfg)(
        image, torch.tensor([[x1, y1, x2, y2]], dtype=torch.float32), torch.tensor([3]), torch.tensor([True]))
    pixels = _pixel_box(out)
    assert stats.boxes == 1 and stats.dropped + len(boxes) == 1
    if len(boxes) == 0:
        # Dropped only when (almost) nothing of the object is left in the image.
        assert pixels is None or min(pixels[2] - pixels[0], pixels[3] - pixels[1]) <= 2
        return
    assert labels.tolist() == [3] and crowd.tolist() == [True]
    assert pixels is not None
    assert max(abs(a - b) for a, b in zip(boxes[0].tolist(), pixels)) <= 1.0 + 1e-4, (boxes, pixels)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_keep_boxes_inside_and_count_clipping(preset):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    t = build_transform(preset, min_size=64, max_size=96)
    clipped = 0
    for _ in range(25):
        h, w = int(torch.randint(40, 120, (1,), generator=g)), int(torch.randint(40, 120, (1,), generator=g))
        image = torch.randint(0, 255, (3, h, w), dtype=torch.uint8, generator=g)
        xy = torch.rand(6, 2, generator=g) * torch.tensor([w, h]) - 5
        boxes = torch.cat([xy, xy + 5 + torch.rand(6, 2, generator=g) * 40], 1)  # some reach outside
        out, b, labels, crowd, stats = t(image, boxes, torch.arange(6), torch.zeros(6, dtype=torch.bool))
        H, W = out.shape[-2:]
        assert out.dtype == torch.uint8 and out.shape[0] == 3
        assert max(H, W) <= 96 * 1.5 + 1
        assert torch.all(b[:, 0] >= 0) and torch.all(b[:, 1] >= 0)
        assert torch.all(b[:, 2] <= W) and torch.all(b[:, 3] <= H)
        assert torch.all(b[:, 2] > b[:, 0]) and torch.all(b[:, 3] > b[:, 1])
        assert len(b) == len(labels) == len(crowd) == 6 - stats.dropped
        clipped += stats.clipped
    assert clipped > 0  # boxes reaching outside the image were counted


def test_zero_size_and_outside_boxes_are_counted_as_dropped():
    t = build_transform("none", min_size=32, max_size=32)
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    boxes = torch.tensor([[1.0, 1, 10, 10], [5, 5, 5, 9], [40, 40, 50, 50]])
    out, b, labels, _, stats = t(image, boxes, torch.tensor([0, 1, 2]), torch.zeros(3, dtype=torch.bool))
    assert labels.tolist() == [0] and stats.dropped == 2 and stats.boxes == 3


def test_training_resize_follows_the_one_rule():
    assert resized_size(480, 640, 320, 320) == (240, 320)
    t = build_transform("none", min_size=320, max_size=320, fixed_size=None)
    out, b, *_ = t(torch.zeros(3, 480, 640, dtype=torch.uint8), torch.tensor([[64.0, 48, 640, 480]]),
                   torch.tensor([0]), torch.tensor([False]))
    assert tuple(out.shape[-2:]) == (240, 320)
    torch.testing.assert_close(b, torch.tensor([[32.0, 24, 320, 240]]))


def test_unknown_preset_or_option_is_a_config_error():
    from retinadet.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown augmentation preset"):
        build_transform("extreme")
    with pytest.raises(ConfigError, match="unknown transform option"):
        build_transform("default", hflipp=0.5)


def test_default_turns_images_upright_keeps_their_up():
    """``default`` flips vertically and rotates (images without an up); ``upright`` never moves the top edge."""
    image = torch.zeros(3, 40, 60, dtype=torch.uint8)
    image[:, :8] = 255  # a bright band along the top
    box, label, crowd = torch.tensor([[0.0, 0.0, 60.0, 8.0]]), torch.tensor([0]), torch.tensor([False])
    where: dict[str, set[str]] = {}
    for preset in ("upright", "default"):
        transform = build_transform(preset, min_size=40, max_size=60, photometric=0.0, scale_range=(1.0, 1.0))
        torch.manual_seed(0)
        for _ in range(40):
            out, boxes = transform(image, box, label, crowd)[:2]
            x1, y1, x2, y2 = boxes[0].tolist()
            h, w = out.shape[-2:]
            side = "top" if y1 < 1 and x2 - x1 > y2 - y1 else "bottom" if y2 > h - 1 and x2 - x1 > y2 - y1 else \
                "left" if x1 < 1 else "right"
            assert _pixel_box(out) == [round(v) for v in (x1, y1, x2, y2)]
            where.setdefault(preset, set()).add(side)
    assert where["upright"] == {"top"}
    assert where["default"] == {"top", "bottom", "left", "right"}
