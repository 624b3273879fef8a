"""Training state in checkpoints (weights_only-safe): RNG states, EMA, and finding a run's last.pt."""

from __future__ import annotations

import copy
import math
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from retinadet.errors import CheckpointError


def rng_state() -> dict[str, Any]:
    """torch, CUDA, numpy and python RNG states as tensors, lists and numbers only."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": [int(version), list(internal), gauss],
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


class ModelEMA:
    """Exponential moving average of a model's weights (and a copy of its buffers), with a warm-up
    of the decay, ``d = decay * (1 - exp(-updates / tau))``, so early averages are not stuck at init."""

    def __init__(self, model: nn.Module, decay: float = 0.9998, tau: float = 2000.0, updates: int = 0):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = float(decay), float(tau), int(updates)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1.0 - math.exp(-self.updates / self.tau))
        src = model.state_dict()
        floats_e, floats_m = [], []
        for k, v in self.module.state_dict().items():
            if v.dtype.is_floating_point:
                floats_e.append(v)
                floats_m.append(src[k].detach())
            else:
                v.copy_(src[k])
        torch._foreach_mul_(floats_e, d)
        torch._foreach_add_(floats_e, floats_m, alpha=1.0 - d)

    def state_dict(self) -> dict[str, Any]:
        return {"model": {k: v.detach().cpu() for k, v in self.module.state_dict().items()}, "updates": self.updates,
                "decay": self.decay, "tau": self.tau}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        self.updates = int(state["updates"])


def find_last(resume: str | os.PathLike) -> Path:
    """``--resume`` accepts a run folder or a last.pt path."""
    p = Path(resume)
    if p.is_dir():
        p = p / "weights" / "last.pt"
    if not p.is_file():
        raise CheckpointError(f"{resume}: nothing to resume (no such file: {p})")
    return p
