"""Export to ONNX, OpenVINO and TorchScript, INT8 quantization, and torch-free runners (onnxruntime, OpenVINO).

Kept light: nothing here imports torch until an exporter is used, so that
``retinadet.export.onnx_runtime`` and ``retinadet.export.openvino_runtime`` (numpy, Pillow and their engine only)
work without torch.

- :func:`export_onnx`, :func:`export_openvino`, :func:`export_torchscript`, :func:`export` (from a weights spec,
  with ``int8``) live in :mod:`retinadet.export.exporter` (needs torch, onnx); the INT8 gate in
  :mod:`retinadet.export.int8`.
- :class:`OnnxDetector` and :func:`predict_onnx` live in :mod:`retinadet.export.onnx_runtime`,
  :class:`OpenVinoDetector` and :func:`predict_openvino` in :mod:`retinadet.export.openvino_runtime`; what they
  share in :mod:`retinadet.export.runtime`.
- :func:`evaluate_exported` (``val`` of an exported model) lives in :mod:`retinadet.export.evaluate` (needs torch).
"""

__all__ = ["export", "export_onnx", "export_openvino", "export_torchscript", "OnnxDetector", "predict_onnx",
           "OpenVinoDetector", "predict_openvino", "evaluate_exported", "ExportError"]

_LAZY = {
    "export": "retinadet.export.exporter",
    "export_onnx": "retinadet.export.exporter",
    "export_openvino": "retinadet.export.exporter",
    "export_torchscript": "retinadet.export.exporter",
    "OnnxDetector": "retinadet.export.onnx_runtime",
    "predict_onnx": "retinadet.export.onnx_runtime",
    "OpenVinoDetector": "retinadet.export.openvino_runtime",
    "predict_openvino": "retinadet.export.openvino_runtime",
    "evaluate_exported": "retinadet.export.evaluate",
    "ExportError": "retinadet.export.errors",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'retinadet.export' has no attribute '{name}'")
    import importlib

    return getattr(importlib.import_module(module), name)
