"""FROC against MONAI's implementation (the CAMELYON16 evaluation code), both hit rules, negative images included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retinadet.data.records import DatasetRecords, ImageRecord
from retinadet.engine.froc import FPPI_POINTS, HitRule, froc, match_lesions
from retinadet.errors import ConfigError, DataError
from retinadet.structures import Detections

monai_metrics = pytest.importorskip("monai.metrics", reason="MONAI is the FROC oracle (dev dependency)")

H, W = 96, 128


def _scene(seed: int):
    """Images with non-overlapping integer boxes (two classes), two of them empty, and detections: some on
    lesions (centres at pixel centres, jittered boxes), some duplicates, some anywhere, some lesions missed."""
    rng = np.random.default_rng(seed)
    records, dets = [], {}
    for i in range(8):
        boxes, labels = [], []
        if i not in (2, 5):  # two images without objects
            for cell in rng.choice(12, size=int(rng.integers(1, 6)), replace=False):
                cy, cx = divmod(int(cell), 4)
                x1, y1 = cx * 32 + int(rng.integers(1, 8)), cy * 32 + int(rng.integers(1, 8))
                boxes.append([x1, y1, x1 + int(rng.integers(8, 22)), y1 + int(rng.integers(8, 22))])
                labels.append(int(rng.integers(0, 2)))
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        records.append(ImageRecord(f"img{i}.png", W, H, boxes, np.asarray(labels), np.zeros(len(boxes), bool), i + 1))
        out_boxes, out_labels = [], []
        for b, lab in zip(boxes, labels):
            for _ in range(int(rng.integers(0, 3))):  # 0: missed, 2: a duplicate
                shift = rng.integers(-3, 4, size=2)
                cx, cy = np.floor((b[0] + b[2]) / 2) + shift[0] + 0.5, np.floor((b[1] + b[3]) / 2) + shift[1] + 0.5
                cx, cy = np.clip(cx, b[0] + 0.5, b[2] - 0.5), np.clip(cy, b[1] + 0.5, b[3] - 0.5)
                hw, hh = (b[2] - b[0]) / 2 * rng.uniform(0.7, 1.3), (b[3] - b[1]) / 2 * rng.uniform(0.7, 1.3)
                out_boxes.append([cx - hw, cy - hh, cx + hw, cy + hh])
                out_labels.append(lab if rng.random() > 0.15 else 1 - lab)
        for _ in range(int(rng.integers(0, 5))):  # background
            cx, cy = int(rng.integers(0, W)) + 0.5, int(rng.integers(0, H)) + 0.5
            out_boxes.append([cx - 6, cy - 6, cx + 6, cy + 6])
            out_labels.append(int(rng.integers(0, 2)))
        n = len(out_boxes)
        scores = torch.from_numpy(rng.uniform(0.05, 1.0, n).astype(np.float32))
        dets[i + 1] = Detections(torch.tensor(out_boxes, dtype=torch.float32).reshape(-1, 4), scores,
                                 torch.tensor(out_labels, dtype=torch.int64), torch.zeros(n, dtype=torch.int64),
                                 torch.zeros(n, dtype=torch.int64), (H, W), ["a", "b"])
    return DatasetRecords(records, ["a", "b"], [1, 2], split="val"), dets


def _monai_center(data, dets, label):
    """MONAI's matching for one class: a detection hits the lesion whose mask holds its centre pixel."""
    fps, tps, targets = [], [], 0
    for r in data.records:
        mask = np.zeros((H, W), dtype=np.int64)
        for k, (x1, y1, x2, y2) in enumerate(r.boxes[r.labels == label].astype(int), start=1):
            mask[y1:y2, x1:x2] = k
        d = dets[r.image_id]
        d = d[d.labels == label]
        c = ((d.boxes[:, :2] + d.boxes[:, 2:]) / 2).numpy()
        if mask.max() == 0:  # MONAI needs a lesion in the mask; without one every detection is a false positive
            fps.append(d.scores.numpy())
            continue
        fp, tp, n = monai_metrics.compute_fp_tp_probs(d.scores.numpy(), c[:, 1], c[:, 0], mask)
        fps.append(fp)
        tps.append(tp)
        targets += n
    return np.concatenate(fps), np.concatenate(tps), targets


def _reference_iou(data, dets, t, label):
    """A per-detection reference of the IoU rule for one class, for MONAI's curve functions."""
    from torchvision.ops import box_iou

    fps, tps = [], []
    for r in data.records:
        d = dets[r.image_id]
        gt = torch.from_numpy(r.boxes[r.labels == label]).double()
        best = np.zeros(len(gt))
        for j in np.flatnonzero(d.labels.numpy() == label):
            iou = box_iou(d.boxes[j:j + 1].double(), gt)[0].numpy() if len(gt) else np.zeros(0)
            if (iou >= t).any():
                best[iou >= t] = np.maximum(best[iou >= t], float(d.scores[j]))
            else:
                fps.append(float(d.scores[j]))
        tps += best.tolist()
    return np.asarray(fps, np.float32), np.asarray(tps, np.float32), len(tps)


def _oracle(data, dets, hit, label):
    """Per class, or over all classes: every class's false positives and lesions together."""
    if label is None:
        parts = [_oracle(data, dets, hit, k) for k in range(len(data.class_names))]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), sum(p[2] for p in parts)
    if hit == "center":
        return _monai_center(data, dets, label)
    return _reference_iou(data, dets, HitRule.parse(hit).threshold, label)


def _monai_score(fp, tp, targets, images):
    fps, sens = monai_metrics.compute_froc_curve_data(fp, tp, targets, images)
    return monai_metrics.compute_froc_score(fps, sens, eval_thresholds=FPPI_POINTS), fps, sens


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("hit", ["center", "iou:0.5", "iou:0.3"])
def test_froc_matches_monai(seed, hit):
    data, dets = _scene(seed)
    ours = froc(data, dets, hit=hit, resamples=200, seed=0)
    for label, part in [(None, ours), *((k, ours["per_class"][n]) for k, n in enumerate(data.class_names))]:
        fp, tp, targets = _oracle(data, dets, hit, label)
        assert (tp == 0).any(), "the scene must miss a lesion (MONAI's curve starts at the lowest probability)"
        score, fps, sens = _monai_score(fp, tp, targets, len(data.records))
        assert part["score"] == pytest.approx(float(score), abs=1e-6)
        assert part["lesions"] == targets and part["images"] == 8  # empty images count
        expected = np.interp(FPPI_POINTS, fps[::-1], sens[::-1])
        np.testing.assert_allclose(part["sensitivity"], expected, atol=1e-6)
        assert part["ci95"][0] <= part["score"] <= part["ci95"][1]


def test_bootstrap_is_seeded_and_widens_with_fewer_images():
    data, dets = _scene(0)
    a, b = froc(data, dets, resamples=300, seed=7), froc(data, dets, resamples=300, seed=7)
    assert a["ci95"] == b["ci95"] and a["ci95"][0] < a["ci95"][1]
    assert froc(data, dets, resamples=300, seed=8)["ci95"] != a["ci95"]


def test_crowd_boxes_are_neither_lesions_nor_false_positives():
    data, dets = _scene(0)
    r = data.records[0]
    r.crowd[:] = True
    match = match_lesions(data, dets, HitRule.parse("iou:0.3"))
    assert not (match.lesion_image == 0).any()
    plain = match_lesions(_scene(0)[0], dets, HitRule.parse("iou:0.3"))
    assert (match.fp_image == 0).sum() <= (plain.fp_image == 0).sum()


def test_bad_hit_rules_and_splits_without_ground_truth_are_one_line_errors():
    for bad in ("iou:0", "iou:1.5", "iou:x", "centre", "center:0.5", ""):
        with pytest.raises(ConfigError, match="--froc-hit"):
            HitRule.parse(bad)
    data, dets = _scene(0)
    empty = DatasetRecords([ImageRecord("e.png", W, H, np.zeros((0, 4)), np.zeros(0), np.zeros(0, bool), 1)],
                           ["a", "b"], [1, 2])
    with pytest.raises(DataError, match="no \\(non-crowd\\) boxes"):
        froc(empty, {1: dets[1]})
