"""SAHI as the oracle of the cross-tile merge: with every detection from its own tile (``group = arange(n)``, so
our rule of never comparing two detections of one tile is moot), ``merge_detections`` keeps what SAHI's
class-aware postprocess keeps (``sahi.postprocess.combine.batched_nms`` / ``batched_greedy_nmm`` and the
``NMSPostprocess`` / ``GreedyNMMPostprocess`` classes that ``get_sliced_prediction`` runs, ``class_agnostic=False``).

What agrees, and what is aligned by the draws:
- Both walk detections best score first; a suppressed (or absorbed) detection suppresses nothing.
- Both match a candidate against the keeper's *original* box (SAHI's keep-to-merge lists come from the pairwise
  matrix of the input boxes), so the kept detections are the same, and so is each keeper's merge list.
- SAHI matches at ``>=`` the threshold (torchvision's NMS kernel at ``>``), we at ``>``; SAHI computes the metric
  in float32, we in float64. Draws with a pair within 1e-4 of the threshold are redrawn, scores are distinct
  float32 values (SAHI breaks score ties by coordinates, we by input order) and boxes are float32 values.

What differs, and cannot be aligned: SAHI's ``_apply_merge`` then folds the merge list into the keeper one by one,
and folds a candidate only if it still matches (``has_match``) the *growing union*; one that no longer does is
dropped without enlarging the box. Our greedy-nmm box is the union of the keeper and its whole merge list. So
our box equals the union of SAHI's merge list always, equals SAHI's output box whenever SAHI folded its whole
list, and otherwise contains it (``test_growing_union_differs`` shows one such case).
"""

from __future__ import annotations

import numpy as np
import pytest

sahi_combine = pytest.importorskip("sahi.postprocess.combine", reason="SAHI is the merge oracle (the bench extra: pip install sahi)")

from sahi.postprocess._sparse_backend import should_use_sparse  # noqa: E402
from sahi.postprocess.backends import get_postprocess_backend, set_postprocess_backend  # noqa: E402
from sahi.postprocess.utils import has_match, merge_object_prediction_pair  # noqa: E402
from sahi.prediction import ObjectPrediction  # noqa: E402

from retinadet.utils.tiling import merge_detections, pair_overlaps  # noqa: E402

METRIC = {"iou": "IOU", "ios": "IOS"}
MARGIN = 1e-4


@pytest.fixture(params=["numpy", "torchvision"])
def backend(request):
    before = get_postprocess_backend()
    set_postprocess_backend(request.param)
    yield request.param
    set_postprocess_backend(before)


def draw(rng: np.random.Generator, objects: int, match: str, extent: float = 1000.0, classes: int = 3):
    """Objects each seen by 1-4 tiles (jittered copies, as neighbouring tiles report one object) of ``classes``
    classes, and a threshold no pair lies within ``MARGIN`` of."""
    centre = rng.uniform(40, extent - 40, (objects, 2))
    size = rng.uniform(8, 80, (objects, 2))
    copies = rng.integers(1, 5, objects)
    c, s = np.repeat(centre, copies, 0), np.repeat(size, copies, 0)
    c = c + rng.normal(0, 0.15, c.shape) * s
    s = s * rng.uniform(0.7, 1.3, s.shape)
    boxes = np.clip(np.concatenate([c - s / 2, c + s / 2], 1), 0, extent).astype(np.float32)
    n = len(boxes)
    labels = np.repeat(rng.integers(0, classes, objects), copies)
    labels = np.where(rng.random(n) < 0.1, rng.integers(0, classes, n), labels)  # a few copies called another class
    scores = (rng.permutation(n).astype(np.float32) + rng.uniform(0.05, 0.95, n).astype(np.float32)) / np.float32(n)
    assert len(np.unique(scores)) == n
    _, _, values = pair_overlaps(boxes.astype(np.float64), labels, np.arange(n), match)
    while True:
        t = float(rng.uniform(0.2, 0.8))
        if not values.size or np.abs(values - t).min() > MARGIN:
            return boxes, scores, labels, t


def predictions(boxes, scores, labels) -> np.ndarray:
    return np.concatenate([boxes, scores[:, None], labels[:, None].astype(np.float32)], 1)


def object_predictions(boxes, scores, labels) -> list[ObjectPrediction]:
    return [ObjectPrediction(bbox=b.tolist(), category_id=int(k), score=float(s), shift_amount=[0, 0], full_shape=None)
            for b, s, k in zip(boxes, scores, labels)]


def ours(boxes, scores, labels, method, match, t):
    return merge_detections(boxes.astype(np.float64), scores.astype(np.float64), labels, np.arange(len(boxes)),
                            method=method, match=match, threshold=t)


def union(boxes: np.ndarray) -> np.ndarray:
    return np.concatenate([boxes[:, :2].min(0), boxes[:, 2:].max(0)])


@pytest.mark.parametrize("match", ["iou", "ios"])
def test_nms_keeps_what_sahi_keeps(backend, match):
    rng = np.random.default_rng(0)
    for objects in [1, 2, 5, 20, 60] * 12:
        boxes, scores, labels, t = draw(rng, objects, match)
        keep, merged = ours(boxes, scores, labels, "nms", match, t)
        expected = sahi_combine.batched_nms(predictions(boxes, scores, labels), METRIC[match], t)
        assert keep.tolist() == list(expected)  # the same detections, best first
        assert np.array_equal(merged, boxes[keep].astype(np.float64))  # NMS moves no box
        post = sahi_combine.NMSPostprocess(t, METRIC[match], class_agnostic=False)(object_predictions(boxes, scores, labels))
        assert sorted(p.score.value for p in post) == sorted(scores[keep].tolist())


@pytest.mark.parametrize("match", ["iou", "ios"])
def test_greedy_nmm_keeps_what_sahi_keeps_and_unions_its_merge_list(backend, match):
    rng = np.random.default_rng(1)
    folded_all = partial = 0
    for objects in [1, 2, 5, 20, 60] * 12:
        boxes, scores, labels, t = draw(rng, objects, match)
        keep, merged = ours(boxes, scores, labels, "greedy-nmm", match, t)
        lists = sahi_combine.batched_greedy_nmm(predictions(boxes, scores, labels), METRIC[match], t)
        assert sorted(keep.tolist()) == sorted(lists)
        ours_box = {int(k): m for k, m in zip(keep, merged)}
        for k, absorbed in lists.items():
            assert np.array_equal(ours_box[k], union(boxes[[k, *absorbed]]).astype(np.float64))
        # SAHI's own postprocess: its box folds the merge list one by one while each still matches the growing box.
        ops = object_predictions(boxes, scores, labels)
        post = sahi_combine.GreedyNMMPostprocess(t, METRIC[match], class_agnostic=False)(list(ops))
        assert len(post) == len(keep)
        by_score = {float(scores[k]): int(k) for k in keep}
        for p in post:
            k = by_score[p.score.value]  # a merged prediction keeps its keeper's (the highest) score and class
            assert p.category.id == labels[k]
            sahi_box = np.asarray(p.bbox.to_xyxy(), dtype=np.float64)
            grown, every = ops[k], True
            for m in lists[k]:
                if has_match(grown, ops[m], METRIC[match], t):
                    grown = merge_object_prediction_pair(grown, ops[m])
                else:
                    every = False
            assert np.array_equal(sahi_box, np.asarray(grown.bbox.to_xyxy(), dtype=np.float64))
            if every:
                assert np.array_equal(ours_box[k], sahi_box)
                folded_all += bool(lists[k])
            else:
                assert (ours_box[k][:2] <= sahi_box[:2]).all() and (ours_box[k][2:] >= sahi_box[2:]).all()
                partial += 1
    assert folded_all > 10 * max(partial, 1)  # the difference is the exception on tile-like duplicates


def test_large_inputs_take_sahis_sparse_path_and_agree(backend):
    """From 2000 predictions of a class SAHI switches to a sparse (tree) backend; the kept sets still agree."""
    rng = np.random.default_rng(2)
    for method, match in [("nms", "iou"), ("greedy-nmm", "ios")]:
        boxes, scores, labels, t = draw(rng, 1000, match, extent=6000.0, classes=1)
        assert should_use_sparse(len(boxes), t)
        keep, merged = ours(boxes, scores, labels, method, match, t)
        preds = predictions(boxes, scores, labels)
        if method == "nms":
            assert keep.tolist() == list(sahi_combine.batched_nms(preds, METRIC[match], t))
        else:
            lists = sahi_combine.batched_greedy_nmm(preds, METRIC[match], t)
            assert sorted(keep.tolist()) == sorted(lists)
            for k, m in zip(keep.tolist(), merged):
                assert np.array_equal(m, union(boxes[[k, *lists[k]]]).astype(np.float64))


def test_growing_union_differs():
    """Keeper A absorbs B and C (IoU 0.54 each with A). SAHI folds B first; the grown box [10, 23] then meets C at
    IoU 0.44, so SAHI drops C without widening the box. Ours is the union of all three."""
    boxes = np.array([[10, 0, 20, 10], [13, 0, 23, 10], [7, 0, 17, 10]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7], dtype=np.float32)
    labels = np.zeros(3, dtype=np.int64)
    keep, merged = ours(boxes, scores, labels, "greedy-nmm", "iou", 0.5)
    assert keep.tolist() == [0] and merged.tolist() == [[7, 0, 23, 10]]
    assert sahi_combine.batched_greedy_nmm(predictions(boxes, scores, labels), "IOU", 0.5) == {0: [1, 2]}
    post = sahi_combine.GreedyNMMPostprocess(0.5, "IOU", class_agnostic=False)(object_predictions(boxes, scores, labels))
    assert [p.bbox.to_xyxy() for p in post] == [[10, 0, 23, 10]]
