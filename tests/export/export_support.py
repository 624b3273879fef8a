"""Shared fixtures: small seeded models (class biases set so detections exist), exports, BCCD images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

CLASS_NAMES = ["RBC", "WBC", "Platelets"]
SMALL = {"preprocess.min_size": 256, "preprocess.max_size": 384, "preprocess.fixed_size": None}
# ResNet-50 is ~8x the compute of the fast model: smaller inputs keep the folder under 3 minutes.
SIZES = {"fast": SMALL, "retinanet_resnet50_fpn": {"preprocess.min_size": 192, "preprocess.max_size": 288}}
PRESETS = ["fast", "retinanet_resnet50_fpn"]
# Traced at 96x96, run on 352x256 and 256x192 batches: the graphs must not keep the trace size.
TRACE_SIZE = 96


def make_model(preset: str, seed: int = 0):
    from retinadet.model import build_model

    torch.manual_seed(seed)
    model = build_model(preset, num_classes=len(CLASS_NAMES), overrides=SIZES.get(preset, SMALL)).eval()
    a, k = model.cfg.anchors.num_anchors, model.cfg.num_classes
    with torch.no_grad():
        # uniform(-3.5, -1.5) per anchor shape, with a small per-class spread, so that every
        # class has detections (and no two classes tie exactly).
        per_anchor = torch.empty(a, 1).uniform_(-3.5, -1.5)
        model.head.cls_logits.bias.copy_((per_anchor + torch.empty(a, k).uniform_(-0.1, 0.1)).reshape(-1))
    return model


@pytest.fixture(scope="session")
def bccd_paths(shared_dir):
    paths = sorted((shared_dir / "datasets" / "bccd" / "JPEGImages").glob("*.jpg"))[:3]
    if len(paths) < 3:
        pytest.skip("BCCD images not found under shared/datasets/bccd/JPEGImages")
    return [str(p) for p in paths]


@pytest.fixture(scope="session")
def bccd_arrays(bccd_paths):
    """Three uint8 HxWx3 images: two full BCCD frames (480x640) and a portrait crop (360x250)."""
    from retinadet.export.onnx_runtime import read_image

    a, b, c = (read_image(p) for p in bccd_paths)
    return [a, np.ascontiguousarray(b[100:460, 50:300]), c]


@pytest.fixture(scope="session")
def models():
    cache = {}

    def get(preset):
        if preset not in cache:
            cache[preset] = make_model(preset)
        return cache[preset]

    return get


@pytest.fixture(scope="session")
def exported(models, tmp_path_factory):
    """(preset, format) -> path of the exported file, exported once per session."""
    from retinadet.export.exporter import export_onnx, export_torchscript

    root = tmp_path_factory.mktemp("exports")
    cache = {}

    def get(preset, fmt):
        key = (preset, fmt)
        if key not in cache:
            model = models(preset)
            if fmt == "onnx":
                cache[key] = export_onnx(model, root / f"{preset}.onnx", CLASS_NAMES, imgsz=TRACE_SIZE, verify=False)
            else:
                cache[key] = export_torchscript(model, root / f"{preset}.torchscript", CLASS_NAMES, imgsz=TRACE_SIZE, verify=False)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def torch_reference(models, bccd_arrays):
    """(preset, batch_size) -> eager Detector.predict results on the three images (cached)."""
    from retinadet.detector import Detector

    cache = {}

    def get(preset, batch_size):
        if (preset, batch_size) not in cache:
            det = Detector(models(preset), CLASS_NAMES, device="cpu")
            images = [torch.from_numpy(a).permute(2, 0, 1).contiguous() for a in bccd_arrays]
            cache[preset, batch_size] = det.predict(images, batch_size=batch_size)
        return cache[preset, batch_size]

    return get
