"""onnxruntime and TorchScript detections equal eager PyTorch's on real BCCD images.

Three images (two 480x640 frames and a 360x250 portrait crop); batch_size 2 runs a batch of
two different sizes (padded to the larger) and a batch of one, batch_size 3 all three.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from export_support import CLASS_NAMES
from export_testlib import match_detections

CASES = [("fast", 3), ("fast", 2), ("retinanet_resnet50_fpn", 2)]


@pytest.mark.parametrize("preset,batch_size", CASES)
def test_onnxruntime_matches_pytorch(preset, batch_size, exported, torch_reference, bccd_arrays):
    from retinadet.export.onnx_runtime import OnnxDetector

    ref = torch_reference(preset, batch_size)
    got = OnnxDetector(exported(preset, "onnx")).predict(bccd_arrays, batch_size=batch_size)
    assert len(ref) == len(got) == 3
    for r, g, arr in zip(ref, got, bccd_arrays):
        assert g.image_size == r.image_size == arr.shape[:2]
        max_box, max_score = match_detections((r.boxes.numpy(), r.scores.numpy(), r.labels.numpy()),
                                              (g.boxes, g.scores, g.labels))
        print(f"onnx {preset} batch={batch_size} {arr.shape[:2]}: {len(r)} dets, max |box| {max_box:.2e} px, "
              f"max |score| {max_score:.2e}")
    assert sum(len(r) for r in ref) > 0, "the seeded class biases should give detections"
    assert len({int(x) for r in ref for x in r.labels}) == len(CLASS_NAMES), "every class should be detected"


@pytest.mark.parametrize("preset", ["fast", "retinanet_resnet50_fpn"])
def test_torchscript_matches_pytorch(preset, exported, torch_reference, bccd_arrays):
    from retinadet.export.exporter import load_torchscript
    from retinadet.export.onnx_runtime import boxes_to_original, preprocess

    ts, meta = load_torchscript(exported(preset, "torchscript"))
    assert meta["class_names"] == CLASS_NAMES
    ref = torch_reference(preset, 2)
    for start in (0, 2):
        chunk = bccd_arrays[start:start + 2]
        batch, sizes = preprocess(chunk, meta["model_config"]["preprocess"])
        with torch.no_grad():
            boxes, scores, labels, num = ts(torch.from_numpy(batch), torch.from_numpy(sizes))
        assert boxes.shape == (len(chunk), meta["max_det"], 4) and num.shape == (len(chunk),)
        for i, arr in enumerate(chunk):
            n = int(num[i])
            assert (labels[i, n:] == -1).all() and (scores[i, n:] == 0).all()
            b = boxes_to_original(boxes[i, :n].numpy(), sizes[i].tolist(), arr.shape[:2])
            r = ref[start + i]
            max_box, max_score = match_detections((r.boxes.numpy(), r.scores.numpy(), r.labels.numpy()),
                                                  (b, scores[i, :n].numpy(), labels[i, :n].numpy()))
            print(f"torchscript {preset} {arr.shape[:2]}: {n} dets, max |box| {max_box:.2e} px, max |score| {max_score:.2e}")


def test_graph_is_dynamic_and_padded(exported):
    """Batch, height and width are symbolic in the ONNX graph, NMS/top-k are graph ops, the
    metadata carries class names and config, and outputs are padded to max_det."""
    import json

    import onnx
    import onnxruntime as ort

    path = exported("fast", "onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and isinstance(dims[2], str) and isinstance(dims[3], str) and dims[1] == 3
    assert {"NonMaxSuppression", "TopK", "NonZero"} <= {n.op_type for n in proto.graph.node}
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["retinadet.class_names"]) == CLASS_NAMES
    assert json.loads(meta["retinadet.model_config"])["preprocess"]["min_size"] == 256
    max_det = json.loads(meta["retinadet.max_det"])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    images = rng.random((2, 3, 96, 160), dtype=np.float32)
    boxes, scores, labels, num = sess.run(None, {"images": images, "image_sizes": np.array([[96, 160], [64, 64]])})
    assert boxes.shape == (2, max_det, 4) and scores.shape == (2, max_det) and labels.shape == (2, max_det)
    assert num.shape == (2,) and (num > 0).all()
    for i in range(2):
        n = int(num[i])
        assert (labels[i, n:] == -1).all() and (scores[i, n:] == 0).all()
        assert (scores[i, :n] > 0.05).all() and np.all(np.diff(scores[i, :n]) <= 0)
    assert boxes[1, : int(num[1]), 2:].max() <= 64  # clipped to the second image's own size


def test_no_detections_gives_empty_rows(models, tmp_path):
    """A threshold nothing passes: every stage runs on empty tensors and num_dets is 0."""
    import onnxruntime as ort

    from retinadet.export.exporter import export_onnx

    path = export_onnx(models("fast"), tmp_path / "empty.onnx", CLASS_NAMES, score_thresh=0.99, imgsz=64, verify=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    boxes, scores, labels, num = sess.run(None, {"images": np.full((2, 3, 64, 96), 0.5, np.float32),
                                                 "image_sizes": np.array([[64, 96], [64, 96]])})
    assert num.tolist() == [0, 0] and (labels == -1).all() and (scores == 0).all()
