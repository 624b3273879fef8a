"""A tiny model with a dataset it scores well on, exported once per session to ONNX and OpenVINO.

The model is random (seeded, class biases set so that it detects), so no dataset labels fit it; its val split's
labels are its own top detections, moved by a few pixels: the fp32 AP is well above zero and sensitive to
boxes and scores, so the AP of an exported or quantized model says whether it still detects the same things.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from export_support import CLASS_NAMES

__all__ = ["deployed"]  # what `from deploy_support import *` brings a test module: the session fixture

# Small inputs keep every export and evaluation of the session to a few seconds.
TINY = {"preprocess.min_size": 128, "preprocess.max_size": 160, "preprocess.fixed_size": None}
TRACE = 64
IMAGES = 8
TOP = 12  # labels per image
JITTER = 3.0  # px


def tiny_model(seed: int = 0):
    import torch

    from retinadet.model import build_model

    torch.manual_seed(seed)
    model = build_model("fast", num_classes=len(CLASS_NAMES), overrides=TINY).eval()
    a, k = model.cfg.anchors.num_anchors, model.cfg.num_classes
    with torch.no_grad():
        per_anchor = torch.empty(a, 1).uniform_(-3.5, -1.5)
        model.head.cls_logits.bias.copy_((per_anchor + torch.empty(a, k).uniform_(-0.1, 0.1)).reshape(-1))
    return model


def write_dataset(root: Path, model, shared_dir: Path) -> Path:
    """A Roboflow COCO dataset (train and valid, the same images) of BCCD crops labelled by ``model``."""
    import torch
    from PIL import Image

    from retinadet.detector import Detector

    paths = sorted((shared_dir / "datasets" / "bccd" / "JPEGImages").glob("*.jpg"))[:IMAGES]
    if len(paths) < IMAGES:
        pytest.skip("BCCD images not found under shared/datasets/bccd/JPEGImages")
    arrays = [np.asarray(Image.open(p).convert("RGB"))[:288, :352].copy() for p in paths]
    dets = Detector(model, CLASS_NAMES, device="cpu").predict([torch.from_numpy(a).permute(2, 0, 1) for a in arrays])
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i, (a, d) in enumerate(zip(arrays, dets)):
        images.append({"id": i + 1, "file_name": f"img{i}.png", "width": a.shape[1], "height": a.shape[0]})
        for b, label in zip(d.boxes[:TOP].tolist(), d.labels[:TOP].tolist()):
            x1, y1, x2, y2 = (v + rng.uniform(-JITTER, JITTER) for v in b)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": label + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": k + 1, "name": n} for k, n in enumerate(CLASS_NAMES)]}
    for split in ("train", "valid"):
        (root / split).mkdir(parents=True)
        for i, a in enumerate(arrays):
            Image.fromarray(a).save(root / split / f"img{i}.png")
        (root / split / "_annotations.coco.json").write_text(json.dumps(coco))
    return root


@pytest.fixture(scope="session")
def deployed(tmp_path_factory, shared_dir):
    """{"pt", "onnx", "xml", "data", "model"}: a checkpoint recording its dataset (as training records it), and its
    fp32 ONNX and OpenVINO exports."""
    from retinadet.export.exporter import export
    from retinadet.weights.checkpoint import make_checkpoint, save_checkpoint

    root = tmp_path_factory.mktemp("deploy")
    model = tiny_model()
    data = write_dataset(root / "data", model, shared_dir)
    pt = root / "model.pt"
    info = {"path": str(data), "train_split": "train", "val_split": "val", "carved_ids": None}
    save_checkpoint(pt, make_checkpoint(model, CLASS_NAMES, data=info))
    quiet = dict(imgsz=TRACE, bench=False, log=lambda *_: None)
    onnx = export(str(pt), "onnx", root / "model.onnx", **quiet)["path"]
    xml = export(str(pt), "openvino", root / "model.xml", **quiet)["path"]
    return {"pt": pt, "onnx": Path(onnx), "xml": Path(xml), "data": data, "model": model, "root": root}


def pair_predictions(ref: list[dict], got: list[dict], conf: float, score_tol: float, box_tol: float) -> int:
    """Pair two predictions.json lists by file, class and nearest box; every detection scored clearly above ``conf``
    (by more than ``score_tol``: near it, rounding may put it either side) must have a partner within the
    tolerances. Returns the number paired."""
    pool: dict = {}
    for g in got:
        pool.setdefault((g["file_name"], g["category_id"]), []).append(g)
    paired = 0
    for r in ref:
        cands = [g for g in pool.get((r["file_name"], r["category_id"]), []) if abs(g["score"] - r["score"]) <= score_tol]
        if r["score"] <= conf + score_tol and not cands:
            continue
        assert cands, f"{r['file_name']}: no partner for {r['class_name']} {r['score']:.4f} {r['bbox']}"
        g = min(cands, key=lambda c: max(abs(a - b) for a, b in zip(r["bbox"], c["bbox"])))
        assert max(abs(a - b) for a, b in zip(r["bbox"], g["bbox"])) <= box_tol, (r, g)
        pool[(r["file_name"], r["category_id"])].remove(g)
        paired += 1
    unpaired = [g for v in pool.values() for g in v if g["score"] > conf + score_tol]
    assert not unpaired, f"{len(unpaired)} detections without a partner, e.g. {unpaired[0]}"
    return paired
