"""state_dict key translations from other RetinaNet layouts to ours (pure functions, no imports from the package)."""

from __future__ import annotations

import re

from torch import Tensor

# torchvision RetinaNet (v1 and v2) -> retinadet.
_TORCHVISION_RULES = [
    (r"^backbone\.body\.", "backbone.body."),
    (r"^backbone\.fpn\.inner_blocks\.", "fpn.lateral."),
    (r"^backbone\.fpn\.layer_blocks\.", "fpn.output."),
    (r"^backbone\.fpn\.extra_blocks\.p6\.", "fpn.p6."),
    (r"^backbone\.fpn\.extra_blocks\.p7\.", "fpn.p7."),
    (r"^head\.classification_head\.conv\.", "head.cls_tower."),
    (r"^head\.classification_head\.cls_logits\.", "head.cls_logits."),
    (r"^head\.regression_head\.conv\.", "head.box_tower."),
    (r"^head\.regression_head\.bbox_reg\.", "head.box_pred."),
]

# The seed pipeline (ResNet + FPN RetinaNet in plain PyTorch) -> retinadet.
_SEED_RULES = [
    (r"^(conv1|bn1|layer[1-4])\.", r"backbone.body.\1."),
    (r"^fpn\.P3_1\.", "fpn.lateral.0.0."),
    (r"^fpn\.P4_1\.", "fpn.lateral.1.0."),
    (r"^fpn\.P5_1\.", "fpn.lateral.2.0."),
    (r"^fpn\.P3_2\.", "fpn.output.0.0."),
    (r"^fpn\.P4_2\.", "fpn.output.1.0."),
    (r"^fpn\.P5_2\.", "fpn.output.2.0."),
    (r"^fpn\.P6\.", "fpn.p6."),
    (r"^fpn\.P7_2\.", "fpn.p7."),
    (r"^classificationModel\.conv([1-9])\.", lambda m: f"head.cls_tower.{int(m.group(1)) - 1}.0."),
    (r"^classificationModel\.output\.", "head.cls_logits."),
    (r"^regressionModel\.conv([1-9])\.", lambda m: f"head.box_tower.{int(m.group(1)) - 1}.0."),
    (r"^regressionModel\.output\.", "head.box_pred."),
]

# Buffers that some layouts carry and ours (frozen BN) does not need.
_DROPPED_SUFFIXES = (".num_batches_tracked",)


def _translate(state: dict[str, Tensor], rules) -> tuple[dict[str, Tensor], list[str]]:
    out, unmapped = {}, []
    for key, value in state.items():
        for pattern, repl in rules:
            new, n = re.subn(pattern, repl, key)
            if n:
                out[new] = value
                break
        else:
            unmapped.append(key)
    return out, unmapped


def from_torchvision(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Maps a torchvision RetinaNet state_dict; returns (mapped, keys that had no rule)."""
    return _translate(state, _TORCHVISION_RULES)


def from_seed(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Maps a seed-pipeline state_dict (a ``module.`` DataParallel prefix is removed)."""
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    return _translate(state, _SEED_RULES)


def strip_module(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Removes the ``module.`` prefix that DataParallel adds, when every key has it."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def drop_unused_buffers(state: dict[str, Tensor], target_keys) -> dict[str, Tensor]:
    """Removes buffers like ``num_batches_tracked`` that the target model does not hold."""
    target_keys = set(target_keys)
    return {k: v for k, v in state.items() if k in target_keys or not k.endswith(_DROPPED_SUFFIXES)}
