"""Export to ONNX and TorchScript, and a torch-free onnxruntime runner.

Kept light: nothing here imports torch until an exporter is used, so that
``retinadet.export.onnx_runtime`` (numpy, Pillow, onnxruntime only) works without torch.

- :func:`export_onnx`, :func:`export_torchscript`, :func:`export` (from a weights spec)
  live in :mod:`retinadet.export.exporter` (needs torch, onnx).
- :class:`OnnxDetector` and :func:`predict_onnx` live in :mod:`retinadet.export.onnx_runtime`.
"""

__all__ = ["export", "export_onnx", "export_torchscript", "OnnxDetector", "predict_onnx", "ExportError"]

_LAZY = {
    "export": "retinadet.export.exporter",
    "export_onnx": "retinadet.export.exporter",
    "export_torchscript": "retinadet.export.exporter",
    "OnnxDetector": "retinadet.export.onnx_runtime",
    "predict_onnx": "retinadet.export.onnx_runtime",
    "ExportError": "retinadet.export.errors",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'retinadet.export' has no attribute '{name}'")
    import importlib

    return getattr(importlib.import_module(module), name)
