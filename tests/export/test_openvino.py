"""OpenVINO export and runner: the .xml carries the ONNX metadata, `predict --weights model.xml` gives the .pt's and
the .onnx's detections, `val --weights model.xml` (and .onnx) the .pt's AP, and the runner needs no torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from deploy_support import pair_predictions
from export_support import CLASS_NAMES
from torch_free import BLOCK_TORCH

REPO = Path(__file__).resolve().parents[2]
CONF = 0.23  # 20 to 40 detections per image, below the graph's cap of 100 (whose last place near-ties could swap)


def _cli(args):
    from retinadet.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def test_openvino_export_carries_the_onnx_metadata(deployed):
    import onnx

    from retinadet.export.openvino_runtime import OpenVinoDetector, read_metadata

    xml = deployed["xml"]
    assert xml.with_suffix(".bin").is_file()
    assert not [p.name for p in xml.parent.iterdir() if p.name.startswith(".")], "temporary files left behind"
    meta = read_metadata(xml)
    onnx_meta = {p.key[len("retinadet."):]: json.loads(p.value) for p in onnx.load(str(deployed["onnx"])).metadata_props}
    for key in ("class_names", "model_config", "score_thresh", "nms_iou", "max_det", "input_dtype", "data", "inputs"):
        assert meta[key] == onnx_meta[key], key
    assert meta["class_names"] == CLASS_NAMES and meta["data"]["path"] == str(deployed["data"])
    assert "openvino.convert_model" in meta["exporter"] and meta["openvino_version"]
    det = OpenVinoDetector(xml)
    assert det.class_names == CLASS_NAMES and det.preprocess_cfg["min_size"] == 128 and det.device == "CPU"


def test_predict_xml_matches_pt_and_onnx(deployed, tmp_path):
    out = {}
    for kind in ("pt", "onnx", "xml"):
        res = _cli(["predict", "--weights", deployed[kind], "--source", deployed["data"] / "valid", "--conf", CONF,
                    "--device", "cpu", "--project", tmp_path, "--name", kind, "--nosave"])
        assert res.exit_code == 0, res.output
        out[kind] = json.loads((tmp_path / "predict" / kind / "predictions.json").read_text())
    assert 8 * 15 < len(out["pt"]) < 8 * 100
    # OpenVINO's float32 convolutions round otherwise than PyTorch's (scores ~1e-4 apart); onnxruntime's agree to 1e-6.
    assert pair_predictions(out["pt"], out["xml"], CONF, score_tol=1e-3, box_tol=0.05) >= 0.95 * len(out["pt"])
    assert pair_predictions(out["onnx"], out["xml"], CONF, score_tol=1e-3, box_tol=0.05) >= 0.95 * len(out["onnx"])
    assert pair_predictions(out["pt"], out["onnx"], CONF, score_tol=1e-4, box_tol=0.01) == len(out["pt"])


def test_val_xml_and_onnx_give_the_pt_ap(deployed, tmp_path):
    aps = {}
    for kind in ("pt", "onnx", "xml"):
        # No --data: the dataset recorded in the checkpoint, carried into the exports' metadata.
        res = _cli(["val", "--weights", deployed[kind], "--project", tmp_path, "--name", kind, "--no-plots"])
        assert res.exit_code == 0, res.output
        metrics = json.loads((tmp_path / "val" / kind / "metrics.json").read_text())
        assert (tmp_path / "val" / kind / "predictions.json").is_file() and "froc" in metrics
        aps[kind] = metrics["AP"]
    assert aps["pt"] > 0.3, aps  # the labels are the model's own detections, jittered
    assert abs(aps["onnx"] - aps["pt"]) < 1e-3 and abs(aps["xml"] - aps["pt"]) < 2e-3, aps


def test_evaluate_exported_api(deployed, tmp_path):
    from retinadet.detector import evaluate_exported

    metrics = evaluate_exported(deployed["xml"], deployed["data"], "val", tile=None, plots=False, save_dir=tmp_path,
                                log=lambda *_: None)
    assert 0.3 < metrics["AP"] <= 1 and metrics["save_dir"] == str(tmp_path) and (tmp_path / "metrics.json").is_file()


BLOCKED_RUN = BLOCK_TORCH + textwrap.dedent("""
    from retinadet.export.openvino_runtime import main

    weights, source, project = sys.argv[1:4]
    rc = main(["--weights", weights, "--source", source, "--conf", "0.23", "--project", project, "--name", "ov",
               "--nosave"])
    assert rc == 0, rc
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
    assert not loaded, loaded
    print("TORCH-FREE OK")
""")


def test_openvino_runner_without_torch(deployed, tmp_path):
    script = tmp_path / "run_blocked.py"
    script.write_text(BLOCKED_RUN)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, str(script), str(deployed["xml"]), str(deployed["data"] / "valid"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TORCH-FREE OK" in proc.stdout
    records = json.loads((tmp_path / "predict" / "ov" / "predictions.json").read_text())
    assert {r["file_name"] for r in records} == {f"img{i}.png" for i in range(8)}


def test_openvino_bad_inputs_fail_in_one_line(deployed, tmp_path):
    import shutil

    from retinadet.export import ExportError
    from retinadet.export.openvino_runtime import OpenVinoDetector

    lonely = tmp_path / "lonely.xml"
    shutil.copy(deployed["xml"], lonely)
    with pytest.raises(ExportError, match=r"lonely.xml: its weights file lonely.bin is missing"):
        OpenVinoDetector(lonely)
    with pytest.raises(ExportError, match="precision must be one of f32, bf16, f16"):
        OpenVinoDetector(deployed["xml"], precision="int4")
    res = _cli(["export", "--weights", deployed["pt"], "--format", "openvino", "-o", tmp_path / "m.onnx", "--no-bench"])
    assert res.exit_code == 2 and "Error: -o" in res.output and "a .xml file" in res.output, res.output
    res = _cli(["val", "--weights", deployed["onnx"], "--device", "cuda", "--project", tmp_path])
    assert res.exit_code == 2 and "the ONNX runner runs on the CPU" in res.output, res.output
    res = _cli(["predict", "--weights", tmp_path / "missing.xml", "--source", deployed["data"] / "valid"])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "OpenVINO model file not found" in res.output, res.output


def test_openvino_export_refuses_a_graph_that_fixed_a_size(tmp_path):
    """The check after conversion is not a formality: a backbone that reads the input size as a Python int traces
    to a graph that is wrong at any other size, and the OpenVINO export says so and leaves nothing behind."""
    from deploy_support import tiny_model
    from test_export_errors import _SizeBakingBackbone

    from retinadet.export import ExportError
    from retinadet.export.exporter import export_openvino

    model = tiny_model()
    model.backbone = _SizeBakingBackbone(model.backbone)
    with pytest.raises(ExportError, match=r"exported OpenVINO model does not reproduce PyTorch at input .*timm:resnet18"):
        export_openvino(model, tmp_path / "m.xml", CLASS_NAMES, imgsz=96)
    assert list(tmp_path.iterdir()) == []
