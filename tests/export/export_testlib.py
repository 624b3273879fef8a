"""Helpers for the export tests."""

from __future__ import annotations

import numpy as np


def match_detections(ref, got, box_tol=1e-2, score_tol=1e-4):
    """Max |box| and |score| differences between two detection lists of one image, matched as sets
    (same label, scores within tolerance); asserts every detection has a partner."""
    rb, rs, rl = (np.asarray(v, dtype=np.float64) for v in ref)
    gb, gs, gl = (np.asarray(v, dtype=np.float64) for v in got)
    assert len(rs) == len(gs), f"{len(rs)} vs {len(gs)} detections"
    used = np.zeros(len(gs), dtype=bool)
    max_box = max_score = 0.0
    for i in range(len(rs)):
        cand = np.nonzero(~used & (gl == rl[i]) & (np.abs(gs - rs[i]) <= score_tol))[0]
        assert cand.size, f"detection {i} (label {rl[i]}, score {rs[i]:.5f}) has no partner"
        box_err = np.abs(gb[cand] - rb[i]).max(axis=1)
        j = cand[np.argmin(box_err)]
        assert box_err.min() <= box_tol, f"detection {i}: boxes differ by {box_err.min():.3e} px"
        used[j] = True
        max_box = max(max_box, float(box_err.min()))
        max_score = max(max_score, float(abs(gs[j] - rs[i])))
    return max_box, max_score
