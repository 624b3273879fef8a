import numpy as np
import pytest

from retinadet.model import resolve_model_config
from retinadet.model.input_fit import fit_input_size, scaled_rule

FAST = resolve_model_config("fast")
SMALLEST = FAST.anchors.sizes[0] * min(FAST.anchors.scales)  # 14 px


def _fit(sides, labels=None, max_area=2.0, cfg=FAST):
    sides = np.asarray(sides, dtype=float)
    labels = np.zeros(len(sides), int) if labels is None else np.asarray(labels)
    return fit_input_size(sides, labels, cfg.preprocess, cfg.anchors, max_area)


def test_objects_at_or_above_the_smallest_anchor_keep_the_preset_size():
    choice = _fit(np.linspace(20, 120, 200))
    assert choice.preprocess == FAST.preprocess and choice.factor == 1.0 and "at or above" in choice.reason


def test_small_objects_grow_the_input_until_they_reach_the_smallest_anchor():
    choice = _fit(np.linspace(10, 14, 200))  # 25th percentile 11 px
    need = SMALLEST / 11.0
    assert choice.size % 32 == 0 and choice.preprocess.min_size == choice.preprocess.max_size == choice.size
    assert choice.factor >= need and choice.size - 32 < 288 * need  # the next multiple of 32, no more
    assert choice.small_side >= SMALLEST and "reaches the smallest anchor" in choice.reason


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
