"""Learning-rate schedule stepped per iteration: linear warm-up, then cosine or step decay."""

from __future__ import annotations

import math

import torch


def lr_factor(it: int, total: int, warmup: int, kind: str = "cosine", final: float = 0.01,
              milestones: tuple[float, ...] = (0.67, 0.89), gamma: float = 0.1, warmup_start: float = 0.001) -> float:
    """Multiplier of the base lr at iteration ``it`` (0-based) of ``total``."""
    if warmup > 0 and it < warmup:
        a = it / warmup
        return warmup_start + (1.0 - warmup_start) * a
    if kind == "cosine":
        span = max(1, total - warmup)
        t = min(1.0, (it - warmup) / span)
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * t))
    if kind == "step":
        passed = sum(1 for m in milestones if it >= m * total)
        return gamma ** passed
    if kind == "constant":
        return 1.0
    raise ValueError(f"unknown lr schedule '{kind}'")


def build_scheduler(optimizer: torch.optim.Optimizer, total: int, warmup: int, kind: str = "cosine",
                    final: float = 0.01) -> torch.optim.lr_scheduler.LambdaLR:
    # A closure (a plain function): LambdaLR then leaves it out of state_dict, which stays weights_only-safe.
    def fn(it: int) -> float:
        return lr_factor(it, total, warmup, kind, final)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
