"""RetinaNet model: backbones, FPN, anchors, heads, losses and the detector module."""

from retinadet.model.config import ModelConfig
from retinadet.model.presets import DEFAULT_PRESET, get_preset, list_presets, resolve_model_config
from retinadet.model.retinanet import RetinaNet

__all__ = ["ModelConfig", "RetinaNet", "DEFAULT_PRESET", "get_preset", "list_presets", "resolve_model_config", "build_model"]


def build_model(spec="fast", num_classes=None, overrides=None) -> RetinaNet:
    """A model from a preset name, a backbone name or a ``ModelConfig``."""
    cfg = spec if isinstance(spec, ModelConfig) else resolve_model_config(spec, overrides)
    if num_classes is not None:
        cfg = cfg.replace({"num_classes": int(num_classes)})
    return RetinaNet(cfg)
