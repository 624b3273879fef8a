"""Training state in checkpoints (weights_only-safe): the run's position and counters, RNG states, EMA,
and finding a run's last.pt."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from retinadet.errors import CheckpointError


@dataclass
class TrainState:
    """Where a run stands: its position (the next step is ``iteration`` of epoch ``epoch``, both 0-based),
    its validation record, and the current epoch's running loss sums. Saved in last.pt as ``train_state``."""

    epoch: int = 0  # epochs done
    iteration: int = 0  # steps done in the current epoch
    best_fitness: float = -1.0  # best val AP so far
    best_epoch: int = 0  # the epoch (1-based) that reached best_fitness; 0: none yet
    bad_epochs: int = 0  # validations since best_fitness last improved (for --patience)
    skipped_steps: int = 0  # steps skipped for a non-finite loss, over the whole run
    finite_steps: int = 0  # steps of the current epoch that count in the sums below
    loss_cls_sum: float = 0.0
    loss_box_sum: float = 0.0
    loss_total_sum: float = 0.0
    epoch_time: float = 0.0  # seconds spent in the current epoch, over interruptions
    elapsed: float = 0.0  # seconds the run has taken (set-up, training, validation), over interruptions
    # A time-budget run's plan: its progressive-resizing epochs (-1: not planned yet), the seconds a validation
    # takes (0: not timed yet; a resumed run's reserve starts from it), and whether it ended complete (an epoch
    # run's end is ``epoch == epochs``).
    small_epochs: int = -1
    val_seconds: float = 0.0
    finished: bool = False

    def record_step(self, losses: dict[str, float] | None) -> None:
        """A step's losses (``cls``, ``box``, ``total``), or None for a step skipped as non-finite."""
        if losses is None:
            self.skipped_steps += 1
            return
        self.finite_steps += 1
        self.loss_cls_sum += losses["cls"]
        self.loss_box_sum += losses["box"]
        self.loss_total_sum += losses["total"]

    def mean_losses(self) -> dict[str, float]:
        """The current epoch's mean losses so far (NaN before its first finite step)."""
        n = self.finite_steps
        return {name: total / n if n else float("nan") for name, total in
                (("loss_total", self.loss_total_sum), ("loss_cls", self.loss_cls_sum), ("loss_box", self.loss_box_sum))}

    def close_epoch(self) -> dict[str, float]:
        """Moves to the start of the next epoch; returns the finished one's mean losses and time."""
        summary = {**self.mean_losses(), "epoch_time": self.epoch_time}
        self.epoch, self.iteration, self.epoch_time = self.epoch + 1, 0, 0.0
        self.finite_steps, self.loss_cls_sum, self.loss_box_sum, self.loss_total_sum = 0, 0.0, 0.0, 0.0
        return summary

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        if "iter" in data:  # the layout of last.pt files written before TrainState
            cls_sum, box_sum, total_sum, n = data["epoch_sums"]
            data = {"epoch": data["epoch"], "iteration": data["iter"], "best_fitness": data["best_fitness"],
                    "bad_epochs": data["bad_epochs"], "skipped_steps": data["skipped_total"], "finite_steps": n,
                    "loss_cls_sum": cls_sum, "loss_box_sum": box_sum, "loss_total_sum": total_sum,
                    "epoch_time": data["epoch_time"]}
        types = {f.name: type(f.default) for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(types))
        if unknown:
            raise CheckpointError(f"train_state has unknown field(s) {', '.join(unknown)}; written by a newer retinadet?")
        return cls(**{k: types[k](v) for k, v in data.items()})


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
        # The saved schedule: a time-budget run fits it to its plan, which a resumed call would estimate anew.
        self.decay, self.tau = float(state.get("decay", self.decay)), float(state.get("tau", self.tau))


def find_last(resume: str | os.PathLike) -> Path:
    """``--resume`` accepts a run folder or a last.pt path."""
    p = Path(resume)
    if p.is_dir():
        p = p / "weights" / "last.pt"
    if not p.is_file():
        raise CheckpointError(f"{resume}: nothing to resume (no such file: {p})")
    return p
