"""INT8 post-training quantization behind the AP gate: an accepted model is written with both APs measured, and only
its network is quantized; a model calibrated on black images loses its AP and is refused (non-zero exit, one line
naming both APs, the fp32 file kept, no INT8 file)."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from deploy_support import TRACE, tiny_model
from export_support import CLASS_NAMES

KEYS = {"path", "fp32_path", "int8_path", "ap_fp32", "ap_int8", "ap_drop", "accepted", "calibration_images", "message"}


def _network(name: str) -> bool:
    from retinadet.export.int8 import NETWORK_NODE

    return bool(NETWORK_NODE.match(name))


def _copy_ir(xml, folder):
    shutil.copy(xml, folder / "model.xml")
    shutil.copy(xml.with_suffix(".bin"), folder / "model.bin")
    return folder / "model.xml"


def test_openvino_int8_accepted_quantizes_only_the_network(deployed, tmp_path):
    import openvino as ov

    from retinadet.export.int8 import quantize_gated
    from retinadet.export.openvino_runtime import OpenVinoDetector, read_metadata

    fp32 = _copy_ir(deployed["xml"], tmp_path)
    lines = []
    result = quantize_gated(fp32, max_drop=1.0, log=lines.append)  # the dataset from the metadata; a generous gate
    assert KEYS <= set(result) and result["accepted"] and result["calibration_images"] == 8  # 100 asked, 8 in the split
    int8 = tmp_path / "model.int8.xml"
    assert result["path"] == result["int8_path"] == str(int8) and result["fp32_path"] == str(fp32)
    assert int8.is_file() and int8.with_suffix(".bin").is_file() and fp32.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "model.int8.bin", "model.int8.xml", "model.xml"]
    assert f"{result['ap_fp32']:.4f} (fp32) -> {result['ap_int8']:.4f} (int8)" in lines[-1]
    # Real calibration keeps most of the AP; black images lose nearly all of it (test_int8_refused_...: 0.68 -> 0.001).
    # How much depends on the CPU's INT8 kernels: a drop under 0.25 on AVX-512 hosts, 0.68 -> 0.41 on an AVX2-only
    # one (no VNNI), where the u8 x s8 products saturate in 16 bits.
    assert result["ap_fp32"] > 0.3 and result["ap_int8"] > 0.5 * result["ap_fp32"] and result["ap_int8"] != result["ap_fp32"]
    meta = read_metadata(int8)
    assert meta["class_names"] == CLASS_NAMES and meta["quantization"]["calibration_images"] == 8

    model = ov.Core().read_model(str(int8))
    fq = [op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]
    assert len(fq) > 20
    consumers = {t.get_node() for op in fq for out in op.outputs() for t in out.get_target_inputs()}
    # Post-processing stays float32: every quantized tensor feeds the network (or only its shape is read).
    outside = [c.get_friendly_name() for c in consumers if not _network(c.get_friendly_name()) and c.get_type_name() != "ShapeOf"]
    assert not outside, outside
    assert any(c.get_type_name() == "Convolution" for c in consumers)
    assert len(OpenVinoDetector(int8).predict([np.zeros((120, 160, 3), np.uint8)])) >= 0


def test_onnx_int8_through_the_export_api_with_data(deployed, tmp_path):
    import onnx

    from retinadet.export.exporter import export
    from retinadet.weights.checkpoint import make_checkpoint, save_checkpoint

    weights = tmp_path / "bare.pt"  # records no dataset: --data (int8_data) names it
    save_checkpoint(weights, make_checkpoint(deployed["model"], CLASS_NAMES))
    result = export(str(weights), "onnx", tmp_path / "m.onnx", imgsz=TRACE, bench=False, int8=True,
                    int8_data=deployed["data"], int8_images=4, int8_max_drop=1.0, log=lambda *_: None)
    assert KEYS <= set(result) and result["accepted"] and result["calibration_images"] == 4
    assert result["path"] == str(tmp_path / "m.int8.onnx") and result["fp32_path"] == str(tmp_path / "m.onnx")
    assert result["ap_fp32"] > 0.3 and result["ap_drop"] < 0.25

    proto = onnx.load(result["path"])
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["retinadet.class_names"]) == CLASS_NAMES
    assert json.loads(meta["retinadet.quantization"])["backend"].startswith("onnxruntime")
    dq = {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    weights_q = [n for n in proto.graph.node if n.op_type == "Conv" and any(i in dq for i in n.input)]
    assert len(weights_q) > 20
    # Post-processing stays float32: every dequantized tensor feeds the network (the exporter passes the head's
    # weights, shared by the levels, through Identity nodes; only its shape is read elsewhere).
    passed = set(dq)
    for n in proto.graph.node:
        if n.op_type == "Identity" and n.input[0] in passed:
            passed.add(n.output[0])
    readers = [n for n in proto.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear", "Identity")
               and set(n.input) & passed]
    outside = [n.name for n in readers if not _network(n.name) and n.op_type != "Shape"]
    assert not outside, outside


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_int8_refused_when_calibrated_on_black_images(fmt, deployed, tmp_path, monkeypatch):
    """Black calibration images give activation ranges of a black image; real ones fall outside them, AP collapses and
    the default gate (0.01) refuses. Without the gate the INT8 file would be written and the command succeed."""
    import retinadet.export.int8 as int8_mod
    from retinadet.cli import main
    from retinadet.export.evaluate import exported_ap, exported_records
    from retinadet.export.runners import open_runner

    real = int8_mod.calibration_images
    monkeypatch.setattr(int8_mod, "calibration_images", lambda *a, **k: [np.zeros_like(x) for x in real(*a, **k)])
    suffix = ".onnx" if fmt == "onnx" else ".xml"
    out = tmp_path / f"model{suffix}"
    stale = tmp_path / f"model.int8{suffix}"  # an earlier export's INT8 file must not pass for this one's
    stale.write_text("stale")
    res = CliRunner().invoke(main, ["export", "--weights", str(deployed["pt"]), "--format", fmt, "-o", str(out),
                                    "--imgsz", str(TRACE), "--no-bench", "--int8"])
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and res.output.count("INT8 refused") == 1, res.output
    m = re.search(r"Error: INT8 refused: AP on val fell from ([\d.]+) \(fp32\) to ([\d.]+) \(int8\), a drop of [\d.]+ > "
                  r"--int8-max-drop 0.01; kept the fp32 .*wrote no INT8 file$", errors[0])
    assert m, errors[0]
    ap_fp32, ap_int8 = map(float, m.groups())
    fp32 = open_runner(out)  # kept, and it is the model whose AP the message names
    assert abs(ap_fp32 - exported_ap(fp32, exported_records(fp32))) < 1e-4
    assert ap_fp32 > 0.3 and ap_int8 < ap_fp32 - 0.1
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == (["model.onnx"] if fmt == "onnx" else ["model.bin", "model.xml"]), left


def test_int8_options_fail_in_one_line(deployed, tmp_path):
    from retinadet.cli import main
    from retinadet.weights.checkpoint import make_checkpoint, save_checkpoint

    bare = tmp_path / "bare.pt"
    save_checkpoint(bare, make_checkpoint(tiny_model(), CLASS_NAMES))
    cases = [
        (["--weights", deployed["pt"], "--format", "torchscript", "--int8"], "--int8 quantizes ONNX or OpenVINO models"),
        (["--weights", deployed["pt"], "--int8", "--int8-images", "0"], "--int8-images must be at least 1"),
        (["--weights", deployed["pt"], "--int8", "--int8-max-drop", "-0.1"], "--int8-max-drop must be a non-negative"),
        (["--weights", bare, "--int8", "-o", tmp_path / "b.onnx"], "these weights record none; pass --data"),
        (["--weights", deployed["pt"], "--data", deployed["data"]], "--data apply to --int8"),
    ]
    for args, message in cases:
        res = CliRunner().invoke(main, ["export", *map(str, args), "--no-bench"])
        assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, (args, res.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare.pt"]
