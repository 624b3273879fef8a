"""`retinadet rank`: uncertainty first, duplicates once, the budget kept, the same list every run; the list reads
back as a predict source and as an unlabelled dataset (`data convert ranking.txt --to coco`)."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from retinadet.data.discover import load_splits
from retinadet.detector import Detector
from retinadet.engine.rank import class_thresholds, detection_floor, detection_uncertainty, rank_images, select
from retinadet.model import resolve_model_config
from retinadet.structures import Detections
from retinadet.utils.sources import list_sources
from retinadet.weights.checkpoint import make_checkpoint, save_checkpoint

CLASSES = ["cell", "debris"]


@pytest.fixture(scope="module")
def detector() -> Detector:
    torch.manual_seed(0)
    # Untrained, with a threshold below its prior, so that every image has detections; few per image.
    cfg = resolve_model_config("fast").replace({"num_classes": 2, "inference.score_thresh": 0.001, "inference.max_det": 20})
    return Detector.from_config(cfg, CLASSES, device="cpu")


def _write(path, seed: int, size=(96, 128)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three distinct images and five copies of a fourth."""
    root = tmp_path_factory.mktemp("unlabelled")
    for k in range(3):
        _write(root / f"distinct{k}.png", seed=k)
    _write(root / "copy0.png", seed=10)
    for k in range(1, 5):
        shutil.copy(root / "copy0.png", root / f"copy{k}.png")
    return root


def test_uncertainty_rule():
    scores = torch.tensor([0.25, 0.30, 0.10, 0.95, 0.60])
    labels = torch.tensor([0, 0, 0, 0, 1])
    u = detection_uncertainty(scores, labels, [0.25, 0.6])
    assert u.tolist() == pytest.approx([1.0, 1 - 0.05 / 0.15, 0.0, 0.0, 1.0])
    assert class_thresholds(CLASSES, None) == [0.25, 0.25]
    assert class_thresholds(CLASSES, {"per_class": {"debris": 0.4}}) == [0.25, 0.4]
    assert detection_floor(0.05, [0.25, 0.4]) == 0.05 and detection_floor(0.2, [0.25]) == pytest.approx(0.1)


def test_select_uncertain_first_and_duplicates_last():
    feats = np.eye(4)[[0, 1, 2, 2, 3]]  # rows 2 and 3 are the same image
    u = np.array([0.0, 3.0, 2.0, 2.0, 0.5])
    picks = [i for i, _, _ in select(u, feats, 5)]
    assert picks[:2] == [1, 2] and picks[-1] == 3  # most uncertain first; the copy only after every other image
    assert [i for i, _, _ in select(u, feats, 2)] == [1, 2]


class _Stub:
    """A detector whose detections are set per image (told apart by their first pixel), with a real model for the
    features: the ranking must follow the scores, not the untrained model's noise."""

    def __init__(self, detector, scores_by_pixel):
        self.model, self.class_names, self.checkpoint = detector.model, detector.class_names, {}
        self.scores = scores_by_pixel

    def predict(self, images, conf=None, batch_size=4):
        out = []
        for img in images:
            s = torch.tensor(self.scores[int(img[0, 0, 0])], dtype=torch.float32)
            boxes = torch.tensor([[4.0, 4.0, 40.0, 40.0]]).repeat(len(s), 1)
            idx = torch.zeros(len(s), dtype=torch.long)
            out.append(Detections(boxes, s, idx, idx, idx, tuple(img.shape[-2:]), CLASSES))
        return out


def test_uncertain_image_before_confident_one(detector, tmp_path):
    paths = []
    for k, first in enumerate((10, 20, 30)):
        arr = np.random.default_rng(k).integers(0, 256, (96, 128, 3), dtype=np.uint8)
        arr[0, 0, 0] = first
        paths.append(tmp_path / f"{k}.png")
        Image.fromarray(arr).save(paths[-1])
    # 0: confident (far from 0.25); 1: two detections at the threshold; 2: one near it.
    stub = _Stub(detector, {10: [0.97, 0.95], 20: [0.25, 0.26], 30: [0.2]})
    ranked = rank_images(stub, [str(p) for p in paths], budget=3, log=lambda m: None)
    assert [r.path for r in ranked] == [str(paths[1]), str(paths[2]), str(paths[0])]
    assert ranked[0].uncertainty == pytest.approx(2 - 0.01 / 0.15, abs=1e-5) and ranked[-1].uncertainty == 0.0
    assert ranked[0].diversity == 1.0 and 0 < ranked[1].diversity < 1


def test_budget_determinism_and_duplicates(detector, folder):
    first = rank_images(detector, folder, budget=4, log=lambda m: None)
    again = rank_images(detector, folder, budget=4, log=lambda m: None)
    assert [(r.path, r.score) for r in first] == [(r.path, r.score) for r in again]
    names = [r.path.rsplit("/", 1)[-1] for r in first]
    assert len(names) == 4
    assert sum(n.startswith("copy") for n in names) == 1  # one of the five copies, and every distinct image
    assert {n for n in names if n.startswith("distinct")} == {"distinct0.png", "distinct1.png", "distinct2.png"}
    assert len(rank_images(detector, folder, budget=50, log=lambda m: None)) == 8  # a budget above the count lists all


def test_cli_writes_a_list_predict_and_convert_read(detector, folder, tmp_path, cli):
    weights = tmp_path / "w.pt"
    save_checkpoint(weights, make_checkpoint(detector.model, CLASSES))
    out = folder / "ranking.txt"
    res = cli(["rank", "--weights", str(weights), "--source", str(folder), "--budget", "3", "-o", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    lines = out.read_text().splitlines()
    assert len(lines) == 3 and all("/" not in line for line in lines)  # relative to the list's folder: bare names
    assert list_sources(out) == [str(folder / line) for line in lines]
    with open(folder / "ranking.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["path"] for r in rows] == lines and {"score", "uncertainty", "diversity"} <= set(rows[0])
    # The list as a dataset: its images, no boxes, written as COCO.
    split = load_splits(out)["all"]
    assert [r.path.name for r in split.records] == lines and all(r.num_boxes == 0 for r in split.records)
    res = cli(["data", "convert", str(out), "--to", "coco", "-o", str(tmp_path / "coco")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    back = load_splits(tmp_path / "coco")["all"]
    assert sorted(r.path.name for r in back.records) == sorted(lines) and all(r.width == 128 for r in back.records)
    res = cli(["rank", "--weights", str(weights), "--source", str(folder), "--budget", "0"])
    assert res.exit_code != 0 and "--budget" in res.output
