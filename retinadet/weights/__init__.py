"""Weights: our checkpoints, torchvision's RetinaNet, ImageNet backbones and seed imports."""

from retinadet.weights.checkpoint import (
    build_from_checkpoint,
    load_checkpoint,
    make_checkpoint,
    save_checkpoint,
)
from retinadet.weights.identify import WeightsInfo, format_info, read_weights
from retinadet.weights.finetune import load_for_finetune
from retinadet.weights.resolve import LoadedWeights, import_weights, load_weights, resolve_weights
from retinadet.weights.safetensors_io import export_safetensors, load_safetensors_checkpoint

__all__ = [
    "build_from_checkpoint", "load_checkpoint", "make_checkpoint", "save_checkpoint", "WeightsInfo", "format_info",
    "read_weights", "load_for_finetune", "import_weights", "LoadedWeights", "load_weights", "resolve_weights", "export_safetensors",
    "load_safetensors_checkpoint",
]
