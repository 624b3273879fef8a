"""Image-level screening: AUC against a pairwise count, image scores, flagging at the thresholds."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from retinadet.data.records import DatasetRecords, ImageRecord
from retinadet.engine.screening import image_scores, roc_auc, roc_curve, screening
from retinadet.structures import Detections


def _pairwise_auc(scores, positive, weights):
    """P(a positive image outscores a negative one), ties half, by counting every weighted pair."""
    num = den = 0.0
    for i in np.flatnonzero(positive):
        for j in np.flatnonzero(~positive):
            w = weights[i] * weights[j]
            num += w * (1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0.0)
            den += w
    return num / den


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.0, 0.2, 0.5, 0.7, 0.9]), st.booleans(), st.integers(0, 3)),
                min_size=2, max_size=40))
def test_auc_is_the_pairwise_probability_with_ties_and_weights(rows):
    scores = np.array([r[0] for r in rows])
    positive = np.array([r[1] for r in rows])
    weights = np.array([float(r[2]) for r in rows])
    if (weights * positive).sum() == 0 or (weights * ~positive).sum() == 0:
        assert np.isnan(roc_auc(scores, positive, weights))
        return
    assert abs(roc_auc(scores, positive, weights) - _pairwise_auc(scores, positive, weights)) < 1e-12


def test_roc_curve_runs_from_nothing_flagged_to_everything():
    scores, positive = np.array([0.9, 0.8, 0.8, 0.1]), np.array([True, False, True, False])
    fpr, tpr = roc_curve(scores, positive)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert tpr[1] == 0.5 and fpr[1] == 0.0  # 0.9: one positive of two


def _records():
    recs = []
    for i, (boxes, labels) in enumerate([([[0, 0, 10, 10]], [0]), ([], []), ([[5, 5, 20, 20]], [1]), ([], [])]):
        recs.append(ImageRecord(f"{i}.png", 32, 32, np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels),
                                np.zeros(len(labels), bool), i + 1))
    return DatasetRecords(recs, ["a", "b"], [1, 2])


def _dets(scores_labels):
    n = len(scores_labels)
    return Detections(torch.zeros(n, 4), torch.tensor([s for s, _ in scores_labels], dtype=torch.float32),
                      torch.tensor([lab for _, lab in scores_labels], dtype=torch.int64), torch.zeros(n, dtype=torch.int64),
                      torch.zeros(n, dtype=torch.int64), (32, 32), ["a", "b"])


def test_image_scores_flagging_and_the_metrics_section():
    data = _records()
    dets = {1: _dets([(0.9, 0), (0.3, 1)]), 2: _dets([(0.4, 0)]), 3: _dets([(0.6, 1)])}  # image 4: nothing
    scores, positive = image_scores(data, dets)
    np.testing.assert_allclose(scores, [[0.9, 0.3], [0.4, 0.0], [0.0, 0.6], [0.0, 0.0]], atol=1e-6)
    assert positive.tolist() == [[True, False], [False, False], [False, True], [False, False]]
    s = screening(data, dets, {"a": 0.5, "b": 0.5}, resamples=200)
    assert s["positives"] == 2 and s["negatives"] == 2 and s["auc"] == 1.0  # 0.9, 0.6 above 0.4, 0.0
    at = s["at_thresholds"]
    assert (at["sensitivity"], at["specificity"], at["flagged"]) == (1.0, 1.0, 2)
    assert s["per_class"]["a"]["auc"] == 1.0 and s["per_class"]["b"]["at_thresholds"]["flagged"] == 1
    assert 0.0 <= s["auc_ci95"][0] <= s["auc_ci95"][1] <= 1.0
