"""`retinadet export`: files beside the weights or at -o, a benchmark table, metadata."""

from __future__ import annotations

import json
import re

import numpy as np
from click.testing import CliRunner
from export_support import CLASS_NAMES


def _weights(tmp_path, models):
    from retinadet.weights.checkpoint import make_checkpoint, save_checkpoint

    path = tmp_path / "model.pt"
    save_checkpoint(path, make_checkpoint(models("fast"), CLASS_NAMES))
    return path


def test_cli_export_onnx_prints_benchmark(tmp_path, models):
    import onnx
    import onnxruntime as ort

    from retinadet.cli import main

    weights = _weights(tmp_path, models)
    out = tmp_path / "out" / "det.onnx"
    res = CliRunner().invoke(main, ["export", "--weights", str(weights), "--format", "onnx", "-o", str(out),
                                    "--imgsz", "96", "--batch", "2", "--opset", "18", "--bench-runs", "2"])
    assert res.exit_code == 0, res.output
    assert out.is_file()
    row = re.search(r"2x3x96x96 \|\s+([\d.]+) \|\s+([\d.]+) \|\s+([\d.]+)x", res.output)
    assert row, res.output
    eager_ms, onnx_ms, speedup = map(float, row.groups())
    assert eager_ms > 0 and onnx_ms > 0 and abs(speedup - eager_ms / onnx_ms) < 0.02 * speedup + 0.01
    proto = onnx.load(str(out))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 18
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert meta["retinadet.class_names"] == CLASS_NAMES and meta["retinadet.opset"] == 18
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    num = sess.run(None, {"images": np.random.default_rng(0).random((3, 3, 64, 128), dtype=np.float32),
                          "image_sizes": np.array([[64, 128]] * 3)})[3]
    assert num.shape == (3,)


def test_cli_export_torchscript_beside_weights(tmp_path, models):
    import torch

    from retinadet.cli import main
    from retinadet.export.exporter import load_torchscript

    weights = _weights(tmp_path, models)
    res = CliRunner().invoke(main, ["export", "--weights", str(weights), "--format", "torchscript", "--imgsz", "64",
                                    "--no-bench", "--max-det", "7"])
    assert res.exit_code == 0, res.output
    path = tmp_path / "model.torchscript"
    assert path.is_file() and "ms/img" not in res.output
    ts, meta = load_torchscript(path)
    assert meta["class_names"] == CLASS_NAMES and meta["max_det"] == 7
    boxes, scores, labels, num = ts(torch.rand(1, 3, 96, 128), torch.tensor([[96, 128]]))
    assert boxes.shape == (1, 7, 4) and int(num[0]) <= 7


def test_cli_predict_with_onnx_weights_matches_pt(tmp_path, models):
    from PIL import Image

    from retinadet.cli import main

    weights = _weights(tmp_path, models)
    onnx_path = tmp_path / "model.onnx"
    res = CliRunner().invoke(main, ["export", "--weights", str(weights), "--format", "onnx", "-o", str(onnx_path),
                                    "--imgsz", "96", "--no-bench"])
    assert res.exit_code == 0, res.output
    src = tmp_path / "images"
    src.mkdir()
    rng = np.random.default_rng(1)
    for i, (h, w) in enumerate([(120, 160), (90, 200)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(src / f"img{i}.png")
    outputs = {}
    for kind, path in [("pt", weights), ("onnx", onnx_path)]:
        res = CliRunner().invoke(main, ["predict", "--weights", str(path), "--source", str(src), "--conf", "0.05",
                                        "--device", "cpu", "--project", str(tmp_path), "--name", kind])
        assert res.exit_code == 0, res.output
        outputs[kind] = json.loads((tmp_path / "predict" / kind / "predictions.json").read_text())
    assert len(outputs["pt"]) == len(outputs["onnx"]) > 0
    # Pair by nearest box within (file, class): near-tied scores may be listed in either order.
    pool = list(outputs["onnx"])
    for a in outputs["pt"]:
        same = [b for b in pool if b["file_name"] == a["file_name"] and b["category_id"] == a["category_id"]]
        assert same, a
        b = min(same, key=lambda c: max(abs(x - y) for x, y in zip(a["bbox"], c["bbox"])))
        pool.remove(b)
        assert abs(a["score"] - b["score"]) < 1e-3
        np.testing.assert_allclose(a["bbox"], b["bbox"], atol=0.05)
