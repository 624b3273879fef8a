"""Weights: our checkpoints, torchvision's RetinaNet, ImageNet backbones and seed imports.

Modules import downward only: ``format`` and ``keymaps`` (no package imports), file IO
(``unpickler``, ``torch_io``, ``checkpoint``, ``safetensors_io``), ``identify``, loading into a
model and importers (``fit``, ``finetune``, ``seed``, ``torchvision_import``), then ``resolve``.
``tests/weights/test_layering.py`` keeps it so.
"""

from retinadet.weights.checkpoint import make_checkpoint, save_checkpoint
from retinadet.weights.finetune import load_for_finetune
from retinadet.weights.fit import build_from_checkpoint
from retinadet.weights.identify import WeightsInfo, format_info, read_weights
from retinadet.weights.resolve import (
    LoadedWeights,
    import_weights,
    load_checkpoint,
    load_safetensors_checkpoint,
    load_weights,
    resolve_weights,
)
from retinadet.weights.safetensors_io import export_safetensors

__all__ = [
    "build_from_checkpoint", "load_checkpoint", "make_checkpoint", "save_checkpoint", "WeightsInfo", "format_info",
    "read_weights", "load_for_finetune", "import_weights", "LoadedWeights", "load_weights", "resolve_weights", "export_safetensors",
    "load_safetensors_checkpoint",
]
