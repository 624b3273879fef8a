"""The training loop, after detectron2's TrainerBase/HookBase: ``TrainerBase.train`` runs epochs of
``run_step`` and calls the hooks (checkpoints, validation, logging, stopping) at fixed points;
``Trainer`` is the RetinaNet optimisation step."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from retinadet.engine.distributed import DistInfo
from retinadet.engine.train_state import ModelEMA, TrainState
from retinadet.utils.device import autocast_context


def any_rank(flag: bool, dist: DistInfo, device: torch.device) -> bool:
    """True when ``flag`` is true on any rank: under DDP every rank must take the same branch at a step."""
    if not dist.enabled:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device if device.type == "cuda" else "cpu")
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


class HookBase:
    """One concern of a run. ``trainer`` is set when the hook is registered; hooks run in registration order."""

    trainer: TrainerBase

    def before_train(self) -> None:
        """Before the first step of this call (a resumed run included)."""

    def before_epoch(self) -> None:
        """Before an epoch's first step (or the first step left in it, when resuming mid-epoch)."""

    def after_step(self) -> None:
        """After a step; ``state.iteration`` counts the epoch's steps done, this one included."""

    def after_epoch(self) -> None:
        """After an epoch's last step: ``state.epoch`` counts the epochs done, ``trainer.metrics`` is the epoch's."""

    def after_train(self) -> None:
        """Always, also when the run failed (``trainer.failed``): release what the hook holds."""


class TrainerBase:
    """Epochs of ``run_step`` from ``state``'s position until ``max_epochs`` or until a hook calls ``stop``."""

    def __init__(self, state: TrainState, max_epochs: int, iters_per_epoch: int, hooks: Sequence[HookBase] = ()):
        self.state = state
        self.max_epochs, self.iters_per_epoch = int(max_epochs), int(iters_per_epoch)
        self.metrics: dict[str, Any] = {}  # the last finished epoch's (losses, lr, time; val metrics once validated)
        self.stop_reason, self.interrupted, self.failed = "", False, False
        self.hooks: list[HookBase] = []
        for hook in hooks:
            hook.trainer = self
            self.hooks.append(hook)

    def stop(self, reason: str, interrupted: bool) -> None:
        """Ends the run after the current step, or before the next epoch; ``interrupted``: it can be resumed.
        The first reason given is the one kept."""
        if not self.stop_reason:
            self.stop_reason, self.interrupted = reason, interrupted

    def train(self) -> None:
        state = self.state
        try:
            self._call("before_train")
            while state.epoch < self.max_epochs and not self.stop_reason:
                self._call("before_epoch")
                if self.stop_reason:
                    break
                start = time.perf_counter() - state.epoch_time  # a resumed epoch keeps counting its time
                for batch in self.batches(state.epoch, state.iteration):
                    self.run_step(batch)
                    state.iteration += 1
                    state.epoch_time = time.perf_counter() - start
                    self._call("after_step")
                    if self.stop_reason:
                        break
                else:
                    self.metrics = self.close_epoch()
                    self._call("after_epoch")
        except BaseException:
            self.failed = True
            raise
        finally:
            self._call("after_train")

    def _call(self, event: str) -> None:
        for hook in self.hooks:
            getattr(hook, event)()

    def batches(self, epoch: int, start: int) -> Iterable[Any]:
        """Epoch ``epoch``'s batches from index ``start``."""
        raise NotImplementedError

    def run_step(self, batch: Any) -> None:
        """One optimisation step; records its losses in ``state``."""
        raise NotImplementedError

    def close_epoch(self) -> dict[str, Any]:
        return self.state.close_epoch()


class Trainer(TrainerBase):
    """The RetinaNet step: forward under autocast, a guard against non-finite losses, backward through the AMP
    scaler, gradient clipping, optimizer, per-iteration lr schedule, weight EMA. Under DDP ``ddp`` wraps ``model``."""

    def __init__(self, model: nn.Module, loader: Any, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, *, state: TrainState, max_epochs: int,
                 device: torch.device, dist: DistInfo, amp: Any = False, clip_grad: float | None = None,
                 ema: ModelEMA | None = None, hooks: Sequence[HookBase] = ()):
        super().__init__(state, max_epochs, len(loader), hooks)
        self.model, self.loader, self.optimizer, self.scheduler, self.ema = model, loader, optimizer, scheduler, ema
        self.device, self.dist, self.amp, self.clip_grad = device, dist, amp, clip_grad
        # fp16 needs loss scaling; bf16 has float32's range and CPU autocast is bf16.
        self.scaler = torch.amp.GradScaler(device.type, enabled=bool(amp) and device.type == "cuda" and amp != "bf16")
        self.ddp = model
        if dist.enabled:
            self.ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        self.step_losses: dict[str, float] | None = None  # the last step's; None: it was skipped (non-finite)

    @property
    def eval_model(self) -> nn.Module:
        """What validation and the checkpoints' ``model`` use: the EMA weights when kept."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def batches(self, epoch: int, start: int) -> Iterable[dict]:
        self.ddp.train()  # validation leaves the model in eval mode
        return self.loader.epoch(epoch, start)

    def close_epoch(self) -> dict[str, Any]:
        return {**super().close_epoch(), "lr": self.lr}

    def run_step(self, batch: dict) -> None:
        dev = self.device
        images = batch["images"].to(dev, non_blocking=True)
        targets = {k: batch[k].to(dev) for k in ("boxes", "labels", "crowd")}
        with autocast_context(dev, self.amp):
            losses = self.ddp(self.model.normalize(images, batch["image_sizes"].to(dev)), targets)
        loss = losses["total"]
        # All ranks skip together: a rank that stepped alone would wait forever in DDP's gradient all-reduce.
        finite = not any_rank(not bool(torch.isfinite(loss).item()), self.dist, dev)
        self.optimizer.zero_grad(set_to_none=True)
        if finite:
            self.scaler.scale(loss).backward()
            if self.clip_grad:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update(self.model)
        self.scheduler.step()
        self.step_losses = {k: float(losses[k].detach()) for k in ("cls", "box", "total")} if finite else None
        self.state.record_step(self.step_losses)
