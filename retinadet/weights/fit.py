"""Putting a state_dict into a RetinaNet strictly, with every mismatch named, and rebuilding the
model a checkpoint describes."""

from __future__ import annotations

from typing import Any

from torch import nn

from retinadet.errors import CheckpointError, ConfigError
from retinadet.model.config import ModelConfig
from retinadet.model.retinanet import RetinaNet
from retinadet.weights.format import validate_checkpoint
from retinadet.weights.keymaps import drop_unused_buffers


def state_dict_problems(state: dict, target: dict, skip: tuple = ()) -> list[str]:
    """Missing, unexpected and mis-shaped keys of ``state`` against ``target``, by name."""
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
              for k in target if k in state and k not in skip and tuple(state[k].shape) != tuple(target[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s): {', '.join(missing[:10])}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): {', '.join(unexpected[:10])}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {'; '.join(shapes[:5])}")
    return problems


def load_state_strict(model: nn.Module, state: dict, where: str) -> None:
    """``load_state_dict(strict=True)`` with missing/unexpected/mis-shaped keys named."""
    target = model.state_dict()
    state = drop_unused_buffers(state, target.keys())
    problems = state_dict_problems(state, target)
    if problems:
        raise CheckpointError(f"{where}: weights do not fit the model: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def model_config_of(ckpt: dict[str, Any], where: str = "checkpoint") -> ModelConfig:
    try:
        cfg = ModelConfig.from_dict(ckpt["model_config"]).validate()
    except ConfigError as exc:
        raise CheckpointError(f"{where}: invalid model_config: {exc}") from exc
    # The state_dict holds every weight; never fetch ImageNet weights again when rebuilding.
    cfg.backbone.weights = None
    return cfg


def build_from_checkpoint(ckpt: dict[str, Any], where: str = "checkpoint") -> tuple[RetinaNet, list[str]]:
    """``(RetinaNet in eval mode, class_names)`` from a checkpoint dict."""
    validate_checkpoint(ckpt, where)
    cfg = model_config_of(ckpt, where)
    names = [str(c) for c in ckpt["class_names"]]
    if len(names) != cfg.num_classes:
        raise CheckpointError(f"{where}: {len(names)} class_names for model_config.num_classes={cfg.num_classes}")
    model = RetinaNet(cfg)
    load_state_strict(model, ckpt["model"], where)
    model.eval()
    return model, names
