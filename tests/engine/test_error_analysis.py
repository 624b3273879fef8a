"""TIDE-style error kinds on hand-built cases, one per kind, and AP50 against pycocotools."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retinadet.data.records import DatasetRecords, ImageRecord
from retinadet.engine.error_analysis import KINDS, error_analysis
from retinadet.engine.evaluate import coco_eval
from retinadet.structures import Detections

GT = [[10, 10, 50, 50], [100, 100, 140, 140]]  # class 0, class 1


def _case(boxes, labels, scores=None):
    data = DatasetRecords([ImageRecord("a.png", 200, 200, np.asarray(GT, np.float32), np.array([0, 1]),
                                       np.zeros(2, bool), 1)], ["a", "b"], [1, 2])
    n = len(boxes)
    scores = scores or [0.9 - 0.1 * i for i in range(n)]
    d = Detections(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(scores, dtype=torch.float32),
                   torch.tensor(labels, dtype=torch.int64), torch.zeros(n, dtype=torch.int64),
                   torch.zeros(n, dtype=torch.int64), (200, 200), ["a", "b"])
    return data, {1: d}


FOUND_B = ([100, 100, 140, 140], 1)  # box b found exactly, so only the case under test is wrong


@pytest.mark.parametrize("kind,box,label", [
    ("classification", [10, 10, 50, 50], 1),     # box a's place, box b's class
    ("localisation", [10, 10, 50, 110], 0),      # box a's class, IoU 1600 / 4000 = 0.4
    ("both", [10, 10, 50, 110], 1),              # another class, IoU 0.4 with box a
    ("background", [160, 10, 190, 40], 0),       # nowhere near a box
])
def test_each_kind_of_false_positive(kind, box, label):
    data, dets = _case([FOUND_B[0], box], [FOUND_B[1], label])  # box b found exactly
    e = error_analysis(data, dets, conf=0.0)
    assert e["counts"] == {**dict.fromkeys(KINDS, 0), kind: 1, "missed": 1}  # box a is never found with its class
    if kind in ("classification", "localisation"):
        assert e["AP50"] + e["AP50_gain"][kind] == pytest.approx(1.0)  # the fix finds box a
    else:
        assert e["AP50_gain"][kind] >= 0


def test_duplicates_and_missed_boxes():
    data, dets = _case([GT[0], [11, 11, 51, 51]], [0, 0])  # a found twice; b missed
    e = error_analysis(data, dets, conf=0.0)
    assert e["counts"] == {**dict.fromkeys(KINDS, 0), "duplicate": 1, "missed": 1}
    assert e["AP50_gain"]["missed"] == pytest.approx(0.5)  # class b's AP goes from 0 (never found) to nothing to find
    assert e["most_missed"][0]["missed"] == 1


def test_fixing_a_classification_error_makes_it_a_true_positive():
    data, dets = _case([FOUND_B[0], [10, 10, 50, 50]], [1, 1])
    e = error_analysis(data, dets, conf=0.0)
    assert e["AP50"] == pytest.approx(0.5) and e["AP50"] + e["AP50_gain"]["classification"] == pytest.approx(1.0)


def test_ap50_is_cocos():
    rng = np.random.default_rng(0)
    recs, dets = [], {}
    for i in range(6):
        gt = rng.uniform(0, 150, (5, 2))
        boxes = np.concatenate([gt, gt + rng.uniform(10, 40, (5, 2))], 1).astype(np.float32)
        labels = rng.integers(0, 3, 5)
        recs.append(ImageRecord(f"{i}.png", 200, 200, boxes, labels, np.zeros(5, bool), i + 1))
        pred = boxes + rng.normal(0, 4, boxes.shape).astype(np.float32)
        extra = rng.uniform(0, 150, (4, 4)).astype(np.float32)
        extra[:, 2:] = extra[:, :2] + 20
        allb = np.concatenate([pred, extra])
        lab = np.concatenate([np.where(rng.random(5) < 0.8, labels, (labels + 1) % 3), rng.integers(0, 3, 4)])
        n = len(allb)
        dets[i + 1] = Detections(torch.from_numpy(allb), torch.from_numpy(rng.uniform(0.05, 1, n).astype(np.float32)),
                                 torch.from_numpy(lab.astype(np.int64)), torch.zeros(n, dtype=torch.int64),
                                 torch.zeros(n, dtype=torch.int64), (200, 200), ["a", "b", "c"])
    data = DatasetRecords(recs, ["a", "b", "c"], [1, 2, 3])
    stats, _ = coco_eval(data, dets)
    assert error_analysis(data, dets)["AP50"] == pytest.approx(stats["AP50"], abs=1e-4)
