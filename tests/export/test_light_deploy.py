"""`retinadet predict` with .onnx weights needs only numpy, Pillow and onnxruntime: run in a
subprocess where importing torch raises, and get the torch path's predictions.json and drawing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from export_support import CLASS_NAMES
from torch_free import BLOCK_TORCH

REPO = Path(__file__).resolve().parents[2]

BLOCKED_RUN = BLOCK_TORCH + textwrap.dedent("""
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the torch guard does not work")

    import retinadet
    import retinadet.export
    from retinadet.export.onnx_runtime import main

    weights, source, project = sys.argv[1:4]
    rc = main(["--weights", weights, "--source", source, "--conf", "0.05", "--batch", "2", "--project", project,
               "--name", "onnx", "--exist-ok"])
    assert rc == 0, rc
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
    assert not loaded, loaded
    print("TORCH-FREE OK")
""")


def test_onnx_predict_without_torch_matches_torch_path(models, exported, bccd_paths, tmp_path):
    import torch

    from retinadet.detector import Detector, predict

    source = tmp_path / "images"
    source.mkdir()
    for p in bccd_paths:
        os.symlink(p, source / Path(p).name)
    (source / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")  # skipped by both paths
    # torch path
    predict(Detector(models("fast"), CLASS_NAMES, device="cpu"), str(source), conf=0.05, batch=2,
            project=str(tmp_path / "runs"), name="torch", exist_ok=True, progress=False, log=lambda *_: None)
    # onnx path, torch blocked
    script = tmp_path / "run_blocked.py"
    script.write_text(BLOCKED_RUN)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, str(script), str(exported("fast", "onnx")), str(source), str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TORCH-FREE OK" in proc.stdout

    out_t, out_o = tmp_path / "runs" / "predict" / "torch", tmp_path / "runs" / "predict" / "onnx"
    ref = json.loads((out_t / "predictions.json").read_text())
    got = json.loads((out_o / "predictions.json").read_text())
    assert len(ref) == len(got) > 0
    for out in (out_t, out_o):
        assert "broken.jpg" in (out / "skipped.txt").read_text()
    assert "broken.jpg" not in {r["file_name"] for r in got}
    # Pair records by nearest box within (image, class): near-tied scores may be listed in either order.
    groups: dict = {}
    for g in got:
        groups.setdefault((g["image_id"], g["category_id"]), []).append(g)
    max_box = max_score = 0.0
    for r in ref:
        pool = groups.get((r["image_id"], r["category_id"]), [])
        assert pool, f"no ONNX detection for {r['file_name']} class {r['class_name']}"
        g = min(pool, key=lambda c: max(abs(a - b) for a, b in zip(r["bbox"], c["bbox"])))
        pool.remove(g)
        assert {k: r[k] for k in ("image_id", "file_name", "source", "category_id", "class_name")} == \
               {k: g[k] for k in ("image_id", "file_name", "source", "category_id", "class_name")}
        max_box = max(max_box, max(abs(a - b) for a, b in zip(r["bbox"], g["bbox"])))
        max_score = max(max_score, abs(r["score"] - g["score"]))
    print(f"predictions.json: {len(ref)} records, max |bbox| {max_box:.1e}, max |score| {max_score:.1e}")
    assert max_box <= 1e-2 and max_score <= 1e-4

    from PIL import Image

    for p in bccd_paths:
        png = Path(p).stem + ".png"
        a = np.asarray(Image.open(out_t / png))
        b = np.asarray(Image.open(out_o / png))
        assert a.shape == b.shape
        differing = (a != b).any(axis=2).mean()
        assert differing < 1e-3, f"{png}: {differing:.2%} of pixels differ"
        assert (a != np.asarray(Image.open(p).convert("RGB"))).any(), "boxes should be drawn"
    del torch
