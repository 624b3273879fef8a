"""The training loop, after detectron2's TrainerBase/HookBase: ``TrainerBase.train`` runs epochs of
``run_step`` and calls the hooks (checkpoints, validation, logging, stopping) at fixed points;
``Trainer`` is the RetinaNet optimisation step."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from retinadet.engine.distributed import DistInfo
from retinadet.engine.train_state import ModelEMA, TrainState
from retinadet.utils.device import autocast_context, resolve_amp


def any_rank(flag: bool, dist: DistInfo, device: torch.device) -> bool:
    """True when ``flag`` is true on any rank: under DDP every rank must take the same branch at a step."""
    if not dist.enabled:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device if device.type == "cuda" else "cpu")
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def max_over_ranks(values: Sequence[float], dist: DistInfo, device: torch.device) -> list[float]:
    """Each value's maximum over the ranks (the values themselves without DDP): one all-reduce for them all."""
    if not dist.enabled:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device if device.type == "cuda" else "cpu")
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return [float(v) for v in t.tolist()]


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
    """Epochs of ``run_step`` from ``state``'s position until ``max_epochs`` or until a hook calls ``stop`` (or
    ``finish``). ``clock`` (seconds) times the epochs and the run; ``started``: its reading when this call began
    (default: when ``train`` is called), so that ``state.elapsed`` counts the call's set-up too."""

    def __init__(self, state: TrainState, max_epochs: int, iters_per_epoch: int, hooks: Sequence[HookBase] = (),
                 clock: Callable[[], float] | None = None, started: float | None = None):
        self.state = state
        self.max_epochs, self.iters_per_epoch = int(max_epochs), int(iters_per_epoch)
        self.epochs_text: str | None = None  # how logs show max_epochs when it is an estimate (a time budget's)
        self.metrics: dict[str, Any] = {}  # the last finished epoch's (losses, lr, time; val metrics once validated)
        self.stop_reason, self.interrupted, self.failed = "", False, False
        self.finishing = ""  # why the current epoch is the run's last and ends after this step (see finish)
        self.clock = clock if clock is not None else time.perf_counter
        self.started, self._spent = started, state.elapsed
        self.hooks: list[HookBase] = []
        for hook in hooks:
            hook.trainer = self
            self.hooks.append(hook)

    def stop(self, reason: str, interrupted: bool) -> None:
        """Ends the run after the current step, or before the next epoch; ``interrupted``: it can be resumed.
        The first reason given is the one kept."""
        if not self.stop_reason:
            self.stop_reason, self.interrupted = reason, interrupted

    def finish(self, reason: str) -> None:
        """Makes the current epoch the last and ends it after this step, short: it closes as a full one would
        (validation, checkpoints), then the run ends, complete (a time budget's end)."""
        if not self.stop_reason and not self.finishing:
            self.finishing, self.max_epochs, self.epochs_text = reason, self.state.epoch + 1, None

    def elapsed(self) -> float:
        """Seconds the run has taken, over interruptions (as ``state.elapsed`` saves them)."""
        return self._spent + self.clock() - self.started

    def train(self) -> None:
        state = self.state
        if self.started is None:
            self.started = self.clock()
        try:
            self._call("before_train")
            while state.epoch < self.max_epochs and not self.stop_reason:
                self._call("before_epoch")
                if self.stop_reason:
                    break
                start = self.clock() - state.epoch_time  # a resumed epoch keeps counting its time
                for batch in self.batches(state.epoch, state.iteration):
                    self.run_step(batch)
                    state.iteration += 1
                    state.epoch_time = self.clock() - start
                    self._call("after_step")
                    if self.stop_reason or self.finishing:
                        break
                if not self.stop_reason:  # the epoch ran out, or finish() ended it here
                    self.metrics = self.close_epoch()
                    self._call("after_epoch")
            if self.finishing:
                self.stop(self.finishing, interrupted=False)
        except BaseException:
            self.failed = True
            raise
        finally:
            self._call("after_train")

    def _call(self, event: str) -> None:
        for hook in self.hooks:
            self.state.elapsed = self.elapsed()  # what a checkpoint written by this hook records
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
                 ema: ModelEMA | None = None, hooks: Sequence[HookBase] = (), clock: Callable[[], float] | None = None,
                 started: float | None = None):
        super().__init__(state, max_epochs, len(loader), hooks, clock=clock, started=started)
        self.model, self.loader, self.optimizer, self.scheduler, self.ema = model, loader, optimizer, scheduler, ema
        self.device, self.dist, self.clip_grad = device, dist, clip_grad
        self.amp = resolve_amp(amp, device)  # False, "bf16" or "fp16" ("auto" resolved for this device)
        # fp16 needs loss scaling; bf16 has float32's range and CPU autocast is bf16.
        self.scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and self.amp == "fp16")
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
