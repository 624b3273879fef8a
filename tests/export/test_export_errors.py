"""Clear errors for opsets, backbones whose ops do not export or that fix sizes, and runner options."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from export_support import CLASS_NAMES, make_model
from torch import nn


@pytest.mark.parametrize("opset", [9, 10, 99])
def test_unsupported_opset(opset, models, tmp_path):
    from retinadet.export import ExportError
    from retinadet.export.exporter import export_onnx

    with pytest.raises(ExportError, match=r"opset .*--opset \d+.*supported: 11\.\.\d+"):
        export_onnx(models("fast"), tmp_path / "m.onnx", CLASS_NAMES, opset=opset)
    assert not (tmp_path / "m.onnx").exists()


class _ErfinvBackbone(nn.Module):
    """Wraps a backbone with an op that has no ONNX conversion (aten::erfinv)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.in_channels = inner.in_channels

    def forward(self, x):
        return self.inner(torch.erfinv(x.clamp(-0.5, 0.5)))


class _SizeBakingBackbone(nn.Module):
    """Reads the input size as a Python int, as some backbones do: a trace freezes it."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.in_channels = inner.in_channels

    def forward(self, x):
        w = int(x.shape[-1])
        feats = self.inner(x)
        return [f + (w % 7) * 0.5 for f in feats]


def test_backbone_with_unexportable_op(tmp_path):
    from retinadet.export import ExportError
    from retinadet.export.exporter import export_onnx

    model = make_model("fast")
    model.backbone = _ErfinvBackbone(model.backbone)
    with pytest.raises(ExportError, match=r"backbone 'timm:resnet18' cannot be exported to ONNX.*erfinv.*use a backbone"):
        export_onnx(model, tmp_path / "m.onnx", CLASS_NAMES, imgsz=64)
    assert not (tmp_path / "m.onnx").exists()


def test_backbone_that_fixes_a_size_is_refused(tmp_path):
    from retinadet.export import ExportError
    from retinadet.export.exporter import export_onnx

    model = make_model("fast")
    model.backbone = _SizeBakingBackbone(model.backbone)
    with pytest.raises(ExportError, match=r"does not reproduce PyTorch at input .*backbone 'timm:resnet18'"):
        export_onnx(model, tmp_path / "m.onnx", CLASS_NAMES, imgsz=96)
    assert not (tmp_path / "m.onnx").exists()


def test_runner_refuses_options_baked_into_the_graph(exported):
    from retinadet.export import ExportError
    from retinadet.export.onnx_runtime import OnnxDetector

    det = OnnxDetector(exported("fast", "onnx"))
    img = np.zeros((64, 80, 3), np.uint8)
    with pytest.raises(ExportError, match="below the score threshold 0.05.*--conf 0.01"):
        det.predict([img], conf=0.01)
    with pytest.raises(ExportError, match="IoU is fixed"):
        det.predict([img], iou=0.7)
    with pytest.raises(ExportError, match="exceeds the 100 detections"):
        det.predict([img], max_det=500)


def test_cli_opset_error_is_one_line(tmp_path, models):
    from click.testing import CliRunner

    from retinadet.cli import main
    from retinadet.weights.checkpoint import make_checkpoint, save_checkpoint

    weights = tmp_path / "w.pt"
    save_checkpoint(weights, make_checkpoint(models("fast"), CLASS_NAMES))
    res = CliRunner().invoke(main, ["export", "--weights", str(weights), "--opset", "10"])
    assert res.exit_code == 2
    assert "Error: opset 10 is too old" in res.output and "Traceback" not in res.output


def test_oldest_opset_with_uint8_input(models, tmp_path):
    """Opset 11 (the minimum) and a uint8 input export, load in onnxruntime and match eager
    (export_onnx verifies at a second batch and non-square size)."""
    import onnxruntime as ort

    from retinadet.export.exporter import export_onnx
    from retinadet.export.graph import ExportModule

    model = models("fast")
    path = export_onnx(model, tmp_path / "m.onnx", CLASS_NAMES, opset=11, imgsz=64, input_dtype="uint8")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].type == "tensor(uint8)"
    images = torch.randint(0, 256, (1, 3, 96, 64), dtype=torch.uint8)
    sizes = torch.tensor([[90, 60]])
    got = sess.run(None, {"images": images.numpy(), "image_sizes": sizes.numpy()})
    with torch.no_grad():
        ref = ExportModule(model, input_dtype="uint8")(images, sizes)
    n = int(ref[3][0])
    assert int(got[3][0]) == n > 0
    assert np.array_equal(got[2][0, :n], ref[2][0, :n].numpy())
    assert np.abs(got[1][0, :n] - ref[1][0, :n].numpy()).max() < 1e-4
    assert np.abs(got[0][0, :n] - ref[0][0, :n].numpy()).max() < 1e-2
