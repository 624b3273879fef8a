"""The loop and its hooks on a toy trainer (no model): hook order, stops after a step or between epochs,
failures, the non-finite guard, signals, and TrainState's checkpoint round trip."""

from __future__ import annotations

import math
import os
import signal

import pytest
import torch

from retinadet.engine.distributed import DistInfo
from retinadet.engine.hooks import StopHook, TrainingStopped
from retinadet.engine.train_state import TrainState
from retinadet.engine.trainer import HookBase, TrainerBase
from retinadet.errors import CheckpointError


class Toy(TrainerBase):
    """Batches are the iteration indices; ``loss(epoch, iteration)`` gives each step's loss (NaN: non-finite)."""

    def __init__(self, epochs, ipe, hooks, loss=lambda e, i: 1.0, state=None):
        super().__init__(state or TrainState(), epochs, ipe, hooks)
        self.dist, self.device, self.loss, self.step_losses = DistInfo(), torch.device("cpu"), loss, None

    def batches(self, epoch, start):
        return range(start, self.iters_per_epoch)

    def run_step(self, batch):
        v = self.loss(self.state.epoch, batch)
        self.step_losses = {"cls": v, "box": 2 * v, "total": 3 * v} if math.isfinite(v) else None
        self.state.record_step(self.step_losses)


class Recorder(HookBase):
    def __init__(self, stop_at=None):
        self.events, self.stop_at = [], stop_at

    def before_train(self):
        self.events.append("before_train")

    def before_epoch(self):
        self.events.append(f"before_epoch {self.trainer.state.epoch}")

    def after_step(self):
        s = self.trainer.state
        self.events.append(f"step {s.epoch}.{s.iteration}")
        if (s.epoch, s.iteration) == self.stop_at:
            self.trainer.stop("asked", interrupted=True)

    def after_epoch(self):
        self.events.append(f"after_epoch {self.trainer.state.epoch} loss {self.trainer.metrics['loss_total']}")

    def after_train(self):
        self.events.append(f"after_train failed={self.trainer.failed}")


def test_loop_calls_hooks_in_order_and_closes_epochs():
    rec = Recorder()
    t = Toy(2, 2, [rec], loss=lambda e, i: float(e + i))
    t.train()
    assert rec.events == ["before_train", "before_epoch 0", "step 0.1", "step 0.2", "after_epoch 1 loss 1.5",
                          "before_epoch 1", "step 1.1", "step 1.2", "after_epoch 2 loss 4.5", "after_train failed=False"]
    assert (t.state.epoch, t.state.iteration, t.state.finite_steps) == (2, 0, 0) and t.metrics["loss_cls"] == 1.5
    assert not t.stop_reason and not t.interrupted


def test_stop_after_a_step_skips_the_epoch_end_and_resumes_from_the_position():
    rec = Recorder(stop_at=(0, 1))
    t = Toy(2, 3, [rec])
    t.train()
    assert rec.events == ["before_train", "before_epoch 0", "step 0.1", "after_train failed=False"]
    assert (t.state.epoch, t.state.iteration, t.stop_reason, t.interrupted) == (0, 1, "asked", True)
    again = Recorder()
    Toy(2, 3, [again], state=TrainState.from_dict(t.state.to_dict())).train()
    assert again.events[:4] == ["before_train", "before_epoch 0", "step 0.2", "step 0.3"]


def test_failure_still_runs_after_train():
    rec = Recorder()

    def boom(e, i):
        raise RuntimeError("step failed")

    t = Toy(1, 2, [rec], loss=boom)
    with pytest.raises(RuntimeError, match="step failed"):
        t.train()
    assert t.failed and rec.events[-1] == "after_train failed=True"


def _stop_hook(tmp_path, lines, **kw):
    opts = {"max_iters": None, "max_bad_steps": 3, **kw}
    return StopHook(last=tmp_path / "weights" / "last.pt", save_dir=tmp_path, log=lines.append, **opts)


def test_non_finite_run_stops_with_the_hint(tmp_path):
    lines = []
    bad = {(0, 1), (0, 2), (1, 1), (1, 2), (2, 0)}  # the good step (1, 0) between starts the count again
    t = Toy(3, 3, [_stop_hook(tmp_path, lines)], loss=lambda e, i: float("nan") if (e, i) in bad else 1.0)
    with pytest.raises(TrainingStopped, match=r"non-finite for 3 steps in a row \(epoch 3, iteration 1\).*learning rate"):
        t.train()
    assert lines[0] == "epoch 1 iteration 1: non-finite loss, step skipped (1 in a row, 1 in all)"
    assert lines[-1] == "epoch 3 iteration 0: non-finite loss, step skipped (3 in a row, 5 in all)"
    assert len(lines) == 5 and t.state.skipped_steps == 5 and t.failed


def test_max_iters_stops_mid_epoch_or_at_the_epoch_boundary(tmp_path):
    lines = []
    t = Toy(3, 2, [_stop_hook(tmp_path, lines, max_iters=3)])
    t.train()
    assert (t.state.epoch, t.state.iteration, t.stop_reason, t.interrupted) == (1, 1, "max_iters=3 reached", True)
    assert lines == [f"max_iters=3 reached: stopped after epoch 2 iteration 1/2; saved {tmp_path / 'weights' / 'last.pt'}; "
                     f"resume with: retinadet train --resume {tmp_path}"]
    # A limit on an epoch's last step: the epoch is finished first (validation, last.pt), then the run stops.
    lines.clear()
    rec = Recorder()
    t = Toy(3, 2, [_stop_hook(tmp_path, lines, max_iters=2), rec])
    t.train()
    assert (t.state.epoch, t.state.iteration, t.interrupted) == (1, 0, True) and "after_epoch 1 loss 3.0" in rec.events
    assert lines == [f"max_iters=2 reached: stopped after epoch 1; resume with: retinadet train --resume {tmp_path}"]
    # At the end of the last epoch there is nothing to stop.
    t = Toy(1, 2, [_stop_hook(tmp_path, lines, max_iters=2)])
    t.train()
    assert (t.state.epoch, t.stop_reason, t.interrupted) == (1, "", False)


def test_sigint_stops_after_the_step_and_a_second_one_raises(tmp_path):
    before = signal.getsignal(signal.SIGINT)

    def sigint(times):
        def loss(e, i):
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGINT)
            return 1.0
        return loss

    lines = []
    t = Toy(2, 3, [_stop_hook(tmp_path, lines)], loss=sigint(1))
    t.train()
    assert (t.state.iteration, t.stop_reason, t.interrupted) == (1, "SIGINT received", True)
    assert signal.getsignal(signal.SIGINT) is before
    t = Toy(2, 3, [_stop_hook(tmp_path, lines)], loss=sigint(2))
    with pytest.raises(KeyboardInterrupt):
        t.train()
    assert t.failed and signal.getsignal(signal.SIGINT) is before


def test_train_state_round_trip_and_epoch_means():
    s = TrainState(epoch=1, iteration=2, best_fitness=0.25, best_epoch=1, bad_epochs=1, epoch_time=3.5)
    s.record_step({"cls": 1.0, "box": 2.0, "total": 3.0})
    s.record_step(None)
    s.record_step({"cls": 3.0, "box": 4.0, "total": 7.0})
    assert TrainState.from_dict(s.to_dict()) == s
    assert s.to_dict()["skipped_steps"] == 1 and s.mean_losses() == {"loss_total": 5.0, "loss_cls": 2.0, "loss_box": 3.0}
    summary = s.close_epoch()
    assert summary == {"loss_total": 5.0, "loss_cls": 2.0, "loss_box": 3.0, "epoch_time": 3.5}
    assert (s.epoch, s.iteration, s.finite_steps, s.loss_total_sum, s.epoch_time, s.skipped_steps) == (2, 0, 0, 0.0, 0.0, 1)
    assert all(math.isnan(v) for v in s.mean_losses().values())  # no finite step yet
    with pytest.raises(CheckpointError, match="unknown field"):
        TrainState.from_dict({"epoch": 1, "future": 2})


def test_train_state_reads_the_layout_before_it():
    old = {"epoch": 1, "iter": 1, "best_fitness": 0.5, "bad_epochs": 0, "skipped_total": 2,
           "epoch_sums": [1.0, 2.0, 3.0, 1], "epoch_time": 4.0}
    s = TrainState.from_dict(old)
    assert (s.epoch, s.iteration, s.best_fitness, s.skipped_steps, s.finite_steps, s.loss_total_sum, s.epoch_time) == \
        (1, 1, 0.5, 2, 1, 3.0, 4.0)
