"""The one resize rule: torchvision's sizes, bounds, letterbox sides, padding (hypothesis properties)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from retinadet.utils.resize import padded_size, resize_scale, resized_size

sides = st.integers(min_value=1, max_value=6000)


def _torch_size(n: int, scale: float) -> int:
    """The output length torchvision's GeneralizedRCNNTransform gets (interpolate, recompute_scale_factor)."""
    if n * scale < 1:  # torch refuses an empty output; the rule keeps one pixel
        return 1
    x = torch.zeros(1, 1, n)
    return F.interpolate(x, scale_factor=scale, mode="nearest", recompute_scale_factor=True).shape[-1]


def test_torchvision_convention_on_the_example_that_used_to_differ():
    # 480x640 at 800/1333: torchvision gives 800x1066; the training rule used to round to 1067.
    assert resized_size(480, 640, 800, 1333) == (800, 1066)
    assert resized_size(100, 400, 0, 0, fixed_size=320) == (80, 320)


@settings(max_examples=200, deadline=None)
@given(h=sides, w=sides, min_size=st.integers(32, 1600), extra=st.integers(0, 1600))
def test_sizes_are_torchvisions_except_where_float_rounding_loses_a_pixel(h, w, min_size, extra):
    max_size = min_size + extra
    scale = resize_scale(h, w, min_size, max_size)
    ours = resized_size(h, w, min_size, max_size)
    for n, got in zip((h, w), ours):
        exact = n * scale
        expected = _torch_size(n, scale)
        if abs(exact - round(exact)) < 1e-6:  # e.g. 799.9999999 for a side the scale maps onto 800
            expected = max(1, round(exact))
        assert got == expected


@settings(max_examples=300, deadline=None)
@given(h=sides, w=sides, min_size=st.integers(16, 1600), extra=st.integers(0, 1600))
def test_min_max_rule_bounds(h, w, min_size, extra):
    max_size = min_size + extra
    oh, ow = resized_size(h, w, min_size, max_size)
    short, long = min(oh, ow), max(oh, ow)
    assert long <= max_size and short <= min_size
    # one of the two bounds is reached (within the pixel floor() may lose)
    assert long >= max_size - 1 or short >= min_size - 1 or min(oh, ow) == 1
    # the aspect ratio is kept to within the rounding of one pixel on each side
    assert abs(oh / ow - h / w) <= (1 / ow + 1 / oh) * max(h / w, 1) + 1e-9 or min(oh, ow) == 1


@settings(max_examples=300, deadline=None)
@given(h=sides, w=sides, fixed=st.integers(8, 2048))
def test_letterbox_long_side_is_exactly_the_canvas(h, w, fixed):
    oh, ow = resized_size(h, w, 800, 1333, fixed_size=fixed)
    assert max(oh, ow) == fixed and min(oh, ow) >= 1
    assert padded_size([(oh, ow)], 32, fixed) == (math.ceil(fixed / 32) * 32,) * 2


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.tuples(sides, sides), min_size=1, max_size=6), d=st.sampled_from([1, 8, 32, 128]))
def test_padded_canvas_holds_every_image_and_is_a_multiple_of_the_divisor(sizes, d):
    ph, pw = padded_size(sizes, d)
    assert ph % d == 0 and pw % d == 0
    assert ph >= max(s[0] for s in sizes) > ph - d and pw >= max(s[1] for s in sizes) > pw - d


def test_non_positive_image_size_is_refused():
    with pytest.raises(ValueError, match="must be positive"):
        resized_size(0, 10, 800, 1333)
