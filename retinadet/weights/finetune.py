"""Loading weights for fine-tuning on a different class count."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from retinadet.errors import CheckpointError
from retinadet.weights.fit import state_dict_problems
from retinadet.weights.format import is_checkpoint
from retinadet.weights.keymaps import drop_unused_buffers

log = logging.getLogger(__name__)
CLASS_LAYER_PREFIX = "head.cls_logits."


def load_for_finetune(
    model: nn.Module,
    state: dict[str, Any],
    where: str = "weights",
    report: Callable[[str], None] | None = None,
) -> list[str]:
    """Loads ``state`` (a state_dict, or our checkpoint dict) into ``model``.

    The last class layer (``head.cls_logits.*``) is re-initialised (weights normal with
    std 0.01, bias from ``cfg.head.prior_prob``) when its shape differs; every other key
    must load strictly. Returns the re-initialised keys, and reports them through
    ``report`` (default: the module logger).
    """
    if is_checkpoint(state):
        state = state["model"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: expected a state_dict, got {type(state).__name__}")
    target = model.state_dict()
    state = drop_unused_buffers(state, target.keys())
    reinit = [k for k in target if k.startswith(CLASS_LAYER_PREFIX) and k in state
              and tuple(state[k].shape) != tuple(target[k].shape)]
    problems = state_dict_problems(state, target, skip=tuple(reinit))
    if problems:
        raise CheckpointError(f"{where}: cannot fine-tune from these weights: " + "; ".join(problems))
    merged: dict[str, Tensor] = {k: (target[k] if k in reinit else state[k]) for k in target}
    model.load_state_dict(merged, strict=True)
    if reinit:
        with torch.no_grad():
            nn.init.normal_(model.head.cls_logits.weight, std=0.01)
            model.head.reset_class_bias(model.cfg.head.prior_prob)
        old = state[CLASS_LAYER_PREFIX + "weight"].shape[0] // model.head.num_anchors
        message = (f"{where}: class layer re-initialised for {model.cfg.num_classes} classes "
                   f"(weights had {old}): {', '.join(reinit)}")
        (report or log.warning)(message)
    return reinit
