"""A missing openvino, nncf, onnxruntime or onnx fails `export`, the runners, `predict` and `val` in one line that
names the package and the extra to install, before any work (imports made to fail through sys.modules)."""

from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner
from deploy_support import tiny_model
from export_support import CLASS_NAMES


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from retinadet.weights.checkpoint import make_checkpoint, save_checkpoint

    path = tmp_path_factory.mktemp("missing") / "model.pt"
    save_checkpoint(path, make_checkpoint(tiny_model(), CLASS_NAMES))
    return path


def _one_error_line(res, message: str) -> None:
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], res.output


@pytest.mark.parametrize("blocked, args, message", [
    ("openvino", ["--format", "openvino"], "OpenVINO export needs the 'openvino' package, which is not installed: "
                                           "pip install 'retinadet[openvino]'"),
    ("nncf", ["--format", "openvino", "--int8"], "INT8 quantization of OpenVINO models needs the 'nncf' package, which is "
                                                 "not installed: pip install 'retinadet[openvino]'"),
    ("onnx", ["--format", "onnx"], "exporting to ONNX (and to OpenVINO, which converts the ONNX graph) needs the 'onnx' "
                                   "package, which is not installed: pip install 'retinadet[export]'"),
    ("onnx", ["--format", "openvino"], "needs the 'onnx' package, which is not installed: pip install 'retinadet[export]'"),
    ("onnxruntime", ["--format", "onnx"], "needs the 'onnxruntime' package, which is not installed: "
                                          "pip install 'retinadet[export]'"),
    ("onnxruntime.quantization", ["--format", "onnx", "--int8"],
     "INT8 quantization of ONNX models needs the 'onnxruntime' package, which is not installed: pip install 'retinadet[export]'"),
], ids=["openvino", "nncf", "onnx", "onnx-for-openvino", "onnxruntime", "onnxruntime-quantization"])
def test_export_names_the_missing_package(blocked, args, message, weights, monkeypatch):
    from retinadet.cli import main

    monkeypatch.setitem(sys.modules, blocked, None)  # `import blocked` now raises ImportError
    res = CliRunner().invoke(main, ["export", "--weights", str(weights), *args, "--no-bench"])
    _one_error_line(res, message)
    assert sorted(p.name for p in weights.parent.iterdir()) == ["model.pt"]


def test_runners_name_the_missing_package(monkeypatch, tmp_path):
    from retinadet.cli import main
    from retinadet.export import ExportError
    from retinadet.export.onnx_runtime import OnnxDetector
    from retinadet.export.openvino_runtime import OpenVinoDetector

    monkeypatch.setitem(sys.modules, "openvino", None)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ExportError, match=r"running OpenVINO models \(.xml\) needs openvino: pip install 'retinadet\[openvino\]'"):
        OpenVinoDetector(tmp_path / "model.xml")
    with pytest.raises(ExportError, match=r"running .onnx models needs onnxruntime: pip install 'retinadet\[onnx\]'"):
        OnnxDetector(tmp_path / "model.onnx")
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"")
    _one_error_line(CliRunner().invoke(main, ["predict", "--weights", str(tmp_path / "model.xml"), "--source", str(images),
                                              "--project", str(tmp_path)]), "pip install 'retinadet[openvino]'")
    _one_error_line(CliRunner().invoke(main, ["val", "--weights", str(tmp_path / "model.onnx"), "--project", str(tmp_path)]),
                    "pip install 'retinadet[onnx]'")
