import numpy as np
import pytest

from retinadet.model import resolve_model_config
from retinadet.model.input_fit import fit_input_size, scaled_rule

FAST = resolve_model_config("fast")
TARGET = FAST.anchors.sizes[0] * 2 ** (1 / 3)  # 17.6 px: 14 px times the middle of the scales 1, 2^(1/3), 2^(2/3)


def _fit(sides, labels=None, max_area=2.0, cfg=FAST, native=None):
    sides = np.asarray(sides, dtype=float)
    labels = np.zeros(len(sides), int) if labels is None else np.asarray(labels)
    native = None if native is None else np.full(len(sides), float(native))
    return fit_input_size(sides, labels, cfg.preprocess, cfg.anchors, max_area, native=native)


def test_objects_at_or_above_the_smallest_anchors_middle_scale_keep_the_preset_size():
    choice = _fit(np.linspace(18, 120, 200))
    assert choice.preprocess == FAST.preprocess and choice.factor == 1.0 and "at or above" in choice.reason


def test_small_objects_grow_the_input_until_they_reach_the_middle_of_the_smallest_anchors():
    choice = _fit(np.linspace(12, 16, 200))  # 25th percentile 13 px
    need = TARGET / 13.0
    assert choice.size % 32 == 0 and choice.preprocess.min_size == choice.preprocess.max_size == choice.size
    assert choice.factor >= need and choice.size - 32 < 288 * need  # the next multiple of 32, no more
    assert choice.small_side >= TARGET and "reaches the smallest anchors' middle scale" in choice.reason


def test_objects_at_the_bottom_anchor_scale_still_grow_to_its_middle():
    # 16 px objects already match the 14 px anchor; aiming them at the 17.6 px one (1.10x) gains the scale above.
    choice = _fit(np.full(200, 16.0))
    assert choice.size == 320 and choice.small_side == pytest.approx(16.0 * 320 / 288)


def test_past_the_images_own_resolution_only_the_bottom_anchor_is_reached():
    sides = np.full(200, 13.0)  # 14 px needs 1.08x, the 17.6 px middle scale 1.36x
    assert _fit(sides).size == 416 and _fit(sides, native=2.0).size == 416  # the images have the detail
    at_own = _fit(sides, native=1.1)  # 320 px images: upsampling past 1.1x would add no detail
    assert at_own.size == 320 and "as far as the images' own resolution" in at_own.reason
    bottom = _fit(np.full(200, 10.0), native=1.0)  # 10 px: the bottom anchor needs 1.4x even so
    assert bottom.size == 416 and bottom.small_side >= 14.0 and "the smallest anchor (14 px" in bottom.reason
    assert _fit(sides, native=np.nan).size == 416  # images of unknown size do not bound it


def test_the_time_budget_caps_the_growth():
    tiny = np.full(100, 4.0)
    assert _fit(tiny, max_area=2.0).size == 416  # sqrt(2) * 288 = 407, up to a multiple of 32
    capped = _fit(tiny, max_area=1.0)
    assert capped.size == 288 and "time budget" in capped.reason and "--tile" in capped.reason
    assert _fit(tiny, max_area=4.0).size == 576


def test_the_largest_objects_bound_the_growth():
    largest = FAST.anchors.sizes[-1] * max(FAST.anchors.scales)
    sides = np.r_[np.full(100, 10.0), np.full(5, largest / 1.1)]  # growing by more than 1.1x would outgrow it
    choice = _fit(sides, max_area=4.0)
    assert choice.factor < 1.2 and "outgrow the largest anchor" in choice.reason


def test_a_rare_class_of_small_objects_counts_and_a_handful_of_boxes_does_not():
    common = np.full(1000, 60.0)
    rare = _fit(np.r_[common, np.full(40, 10.0)], np.r_[np.zeros(1000, int), np.ones(40, int)])
    assert rare.size > 288, "the small class's own percentile decides, not the pooled one"
    few = _fit(np.r_[common, np.full(5, 10.0)], np.r_[np.zeros(1000, int), np.ones(5, int)])
    assert few.size == 288


def test_no_boxes_keep_the_preset_and_every_rule_scales():
    assert _fit([]).preprocess == FAST.preprocess and _fit([]).small_side is None
    r50 = resolve_model_config("retinanet_resnet50_fpn").preprocess
    scaled = scaled_rule(r50, 1.5)
    assert (scaled.min_size, scaled.max_size, scaled.fixed_size) == (1216, 2016, None)
    assert _fit(np.full(50, 8.0), cfg=resolve_model_config("retinanet_resnet50_fpn")).to_dict()["factor"] == pytest.approx(
        1.44, abs=0.01)  # 800 -> 1152: the cap of 2x the pixels, rounded up to 32


def test_native_factors_must_match_the_boxes():
    with pytest.raises(ValueError, match="one factor per box expected \\(3 boxes\\), got 2"):
        fit_input_size(np.full(3, 10.0), np.zeros(3, int), FAST.preprocess, FAST.anchors, native=np.ones(2))
