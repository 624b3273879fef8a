"""Training to a time budget (``--time``): durations, the clock-driven lr schedule, the plan and the end of a run on
a fake clock (toy loops and the real one), a resumed run's remaining budget, and one short real run."""

from __future__ import annotations

import importlib.util
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import retinadet.engine.hooks as hooks
import retinadet.engine.schedule as schedule
from retinadet.engine.config import format_duration, parse_duration, resolve_config
from retinadet.engine.distributed import DistInfo
from retinadet.engine.hooks import TimeBudgetHook
from retinadet.engine.schedule import TimeBudget, build_time_scheduler, fit_epochs, progress_factor
from retinadet.engine.train_state import TrainState
from retinadet.engine.trainer import HookBase, TrainerBase
from retinadet.errors import ConfigError
from retinadet.utils.files import read_csv


class FakeClock:
    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_durations_parse_and_bad_ones_name_the_flag(cli):
    assert [parse_duration(v) for v in ("90s", "10m", "2h", "1h30m", "1.5h", "1h30m15s", 600)] == \
        [90, 600, 7200, 5400, 5400, 5415, 600]
    assert [format_duration(s) for s in (20, 245, 600, 5400)] == ["20s", "4m05s", "10m", "1h30m"]
    for bad in ("abc", "10", "30m1h", "-5s", ""):
        with pytest.raises(ConfigError, match=f"--time must be a duration such as 90s, 10m, 2h or 1h30m, got '{bad}'"):
            parse_duration(bad)
    with pytest.raises(ConfigError, match="--time must be more than 0 seconds, got '0s'"):
        parse_duration("0s")
    with pytest.raises(ConfigError, match="exclude each other"):
        resolve_config(time="10m", epochs=3)
    assert resolve_config(time="10m").time_budget == 600
    for args, message in ((["--time", "abc"], "Error: --time must be a duration such as 90s, 10m, 2h or 1h30m, got 'abc'"),
                          (["--time", "0"], "Error: --time must be a duration"),
                          (["--time", "0s"], "Error: --time must be more than 0 seconds, got '0s'"),
                          (["--time", "1m", "--epochs", "2"], "Error: --time 1m and --epochs 2 exclude each other")):
        res = cli(["train", *args])
        assert res.exit_code == 2 and res.output.startswith(message) and res.output.count("\n") == 1, res.output


def test_the_lr_follows_elapsed_time_not_iterations():
    clock = FakeClock()
    budget = TimeBudget(100.0, started=0.0, clock=clock, warmup=0.05, kind="cosine", final=0.05)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = build_time_scheduler(opt, budget)

    def lr_at(t: float, steps: int = 1) -> float:
        clock.now = t
        for _ in range(steps):
            opt.step()
            sched.step()
        return opt.param_groups[0]["lr"]

    assert lr_at(0.0) == pytest.approx(0.001)
    assert lr_at(2.5) == pytest.approx(0.001 + 0.999 * 0.5)  # half of the 5% warm-up
    assert lr_at(5.0) == pytest.approx(1.0)
    assert lr_at(52.5, steps=1) == lr_at(52.5, steps=500) == pytest.approx(0.05 + 0.95 * 0.5)  # cosine's middle
    assert lr_at(100.0) == pytest.approx(0.05) and lr_at(130.0) == pytest.approx(0.05)  # the end, at the budget
    # With 20 s kept for the last validation and the outputs, training ends at 80 s: the cosine ends there.
    reserved = TimeBudget(100.0, started=0.0, reserve=20.0, clock=FakeClock(80.0), warmup=0.05, final=0.05)
    assert reserved.lr_factor(10**6) == pytest.approx(0.05)
    assert TimeBudget(100.0, started=0.0, reserve=20.0, clock=FakeClock(40.0), warmup=0.05, final=0.05).lr_factor(
        10**6) == pytest.approx(progress_factor(0.5, 0.05, "cosine", 0.05))
    # A reserve that shrinks (a faster validation measured) never turns the lr back up the curve.
    late = TimeBudget(100.0, started=0.0, reserve=50.0, clock=FakeClock(40.0), warmup=0.05)
    first = late.lr_factor(10**6)
    late.reserve = 0.0
    assert late.lr_factor(10**6) == first
    # Slow first steps use up the warm-up's time: the step ramp holds the lr back for its steps.
    slow = TimeBudget(100.0, started=0.0, clock=FakeClock(10.0), warmup=0.05, warmup_steps=20)
    assert slow.lr_factor(5) == pytest.approx(0.001 + 0.999 * 5 / 20) and slow.lr_factor(20) == pytest.approx(
        progress_factor(0.1, 0.05, "cosine", 0.01))
    assert progress_factor(0.7, 0.0, "step") == pytest.approx(0.1) and progress_factor(0.5, 0.0, "constant") == 1.0


def test_fit_epochs_counts_steps_and_epoch_ends():
    one = lambda e: 1.0  # noqa: E731
    assert fit_epochs(10, 0, 0, 4, one, one) == 2.0  # 4 + 1 + 4 + 1
    assert fit_epochs(7, 0, 0, 4, one, one) == 1.5  # 4 + 1, then 2 of 4 steps
    assert fit_epochs(1.5, 2, 2, 4, one, one) == pytest.approx(2.875)  # from iteration 2 of epoch 2: 1.5 more steps
    assert fit_epochs(10, 0, 0, 4, lambda e: 0.5 if e < 1 else 1.0, lambda e: 0.0) == pytest.approx(3.0)  # 2 + 4 + 4


class Toy(TrainerBase):
    """No model: each step advances the fake clock by ``step_seconds(epoch, small epochs)`` and steps a real LambdaLR."""

    def __init__(self, ipe, hooks_, clock, budget, step_seconds=lambda e, small: 1.0, state=None):
        super().__init__(state or TrainState(), 10**9, ipe, hooks_, clock=clock, started=clock())
        self.dist, self.device, self.step_losses = DistInfo(), torch.device("cpu"), None
        self.fake, self.step_seconds = clock, step_seconds
        self.loader = type("Loader", (), {"small_epochs": 0})()
        self.param = torch.nn.Parameter(torch.zeros(1))
        self.optimizer = torch.optim.SGD([self.param], lr=1.0)
        self.scheduler = build_time_scheduler(self.optimizer, budget)
        self.steps: list[tuple[int, int, float, float]] = []  # (epoch, iteration, clock after, lr used)

    def batches(self, epoch, start):
        return range(start, self.iters_per_epoch)

    def run_step(self, batch):
        lr = self.optimizer.param_groups[0]["lr"]
        self.fake.now += self.step_seconds(self.state.epoch, self.loader.small_epochs)
        self.optimizer.step()
        self.scheduler.step()
        self.step_losses = {"cls": 1.0, "box": 1.0, "total": 2.0}
        self.state.record_step(self.step_losses)
        self.steps.append((self.state.epoch, self.state.iteration + 1, self.fake.now, lr))


class FakeValidation(HookBase):
    """Validates as EvalHook does (every epoch and after the last), taking ``seconds`` on the fake clock."""

    def __init__(self, clock, seconds):
        self.clock, self.seconds, self.validated = clock, seconds, []

    def after_epoch(self):
        self.clock.now += self.seconds
        self.validated.append(self.trainer.state.epoch)


def toy_run(budget_s, ipe=10, val_s=3.0, step_seconds=lambda e, small: 1.0, progressive=None):
    clock = FakeClock()
    budget = TimeBudget(budget_s, started=0.0, clock=clock, warmup=0.05, final=0.05)
    lines: list[str] = []
    hook = TimeBudgetHook(budget, log=lines.append, val_every=1, val_batches=1, plots=False, progressive=progressive)
    val = FakeValidation(clock, val_s)
    toy = Toy(ipe, [hook, val], clock, budget, step_seconds)
    toy.train()
    return toy, val, budget, lines


def test_the_budget_ends_training_mid_epoch_and_validates_the_short_epoch():
    # 10 steps of 1 s an epoch, each epoch end validates in 3 s. Reserve: 3 s + a quarter for the outputs = 3.75 s,
    # so training must stop at 60 - 3.75 = 56.25 s. Epochs end at 10, 23, 36, 49 s (+3 s each); epoch 5 starts at
    # 52 s: its step that ends at 57 s (iteration 5) is the first at or past 56.25 s.
    toy, val, budget, lines = toy_run(60.0)
    assert len(toy.steps) == 45 and toy.steps[-1][:3] == (4, 5, 57.0)
    assert toy.stop_reason == "time budget 1m reached: epoch 5 ended at iteration 5/10" and not toy.interrupted
    assert toy.state.epoch == 5 and toy.max_epochs == 5 and toy.state.finished
    assert val.validated == [1, 2, 3, 4, 5]  # the short last epoch too
    assert toy.clock() == 60.0 and budget.reserve == pytest.approx(3.75)
    assert lines[0].startswith("time budget 1m: ~") and "of 10 iterations at 1 s/iteration, validation ~" in lines[0]
    # The lr follows elapsed time: once the validation time is known (epoch 2 on), each step's lr is the curve's value
    # at the elapsed share of 56.25 s when the previous step ended, whatever the iteration; it ends at the cosine's end.
    for (e, _, _, lr), (_, _, t_prev, _) in zip(toy.steps[11:], toy.steps[10:]):
        assert lr == pytest.approx(progress_factor(t_prev / 56.25, 0.05, "cosine", 0.05)), e
    assert toy.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    warm = [lr for _, _, t, lr in toy.steps if t <= 0.05 * 56.25 + 1]
    assert warm == sorted(warm) and warm[0] < 0.01 and max(lr for *_, lr in toy.steps) == pytest.approx(1.0, abs=0.01)


def test_an_epoch_end_near_the_budget_is_the_last():
    # Budget 53 s: training may go on to 49.25 s. Epoch 4 ends at 49 s, 0.25 s short: ending there (its validation
    # the last) leaves under 2% of the budget unused, so no epoch is started for a quarter of a step.
    toy, val, budget, _ = toy_run(53.0)
    assert len(toy.steps) == 40 and toy.state.epoch == 4 and val.validated == [1, 2, 3, 4]
    assert toy.stop_reason == "time budget 53s reached at the end of epoch 4" and toy.state.finished
    assert abs(toy.clock() - 53.0) <= 0.05 * 53.0


def test_progressive_split_is_planned_once_and_never_the_last_epoch():
    # Small epochs take half the step time (the cost given); the split is fixed at the plan, in the TrainState.
    toy, val, _, lines = toy_run(120.0, step_seconds=lambda e, small: 0.5 if e < small else 1.0,
                                 progressive=(0.5, 0.5, "32px"))
    small = toy.state.small_epochs
    assert small >= 1 and toy.loader.small_epochs == small and small < toy.state.epoch
    assert abs(small - 0.5 * toy.state.epoch) <= 1
    assert f"epochs 1-{small} at 32px (progressive resizing)" in lines[0]


@pytest.fixture
def fake_time(monkeypatch):
    """The run's clock, advanced 1 s by each training step and 3 s by each validation."""
    from retinadet.engine.trainer import Trainer

    clock = FakeClock(1000.0)
    monkeypatch.setattr(schedule, "CLOCK", clock)
    real_step, real_evaluate = Trainer.run_step, hooks.evaluate

    def step(self, batch):  # the step's second passes before its scheduler reads the clock, as in a real step
        clock.now += 1.0
        real_step(self, batch)

    def evaluate(*args, **kwargs):
        clock.now += 3.0
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(Trainer, "run_step", step)
    monkeypatch.setattr(hooks, "evaluate", evaluate)
    return clock


OPTS = dict(batch=4, imgsz=64, workers=0, deterministic=True, seed=2, plots=False, progress=False)


def test_budget_run_on_a_fake_clock_then_resumed_with_what_is_left(tiny_data, tmp_path, fake_time):
    from retinadet.engine.train import train

    # 8 images / batch 4 = 2 steps an epoch, 1 s each, and a 3 s validation: epochs end at 2, 7 and 12 s (+3 s).
    # Training stops at 19 - 3.75 = 15.25 s: at the first step of epoch 4 (16 s); its validation ends at 19 s.
    full = train(data=str(tiny_data), project=str(tmp_path), name="full", time="19s", **OPTS)
    assert (full.epochs_completed, full.interrupted) == (4, False)
    assert full.stop_reason == "time budget 19s reached: epoch 4 ended at iteration 1/2"
    assert full.elapsed == pytest.approx(19.0)
    header, rows = read_csv(full.save_dir / "results.csv")
    assert [r[0] for r in rows] == ["1", "2", "3", "4"] and all(r[header.index("AP")] for r in rows)
    assert float(rows[-1][header.index("lr")]) == pytest.approx(0.003 * 0.05)  # the cosine's end, at the budget
    log = (full.save_dir / "train.log").read_text()
    assert "time budget 19s: ~" in log and "of 2 iterations at 1 s/iteration" in log
    assert log.rstrip().endswith("time budget 19s: took 19s (+0.0%)")
    assert (full.save_dir / "val" / "metrics.json").is_file()  # the last validation's outputs
    ck = torch.load(full.last, weights_only=True)
    assert ck["train_state"]["finished"] and ck["train_state"]["elapsed"] == pytest.approx(19.0)
    with pytest.raises(ConfigError, match=r"already finished \(time budget 19s\)"):
        train(resume=str(full.save_dir))

    # The same run stopped after 3 steps (epoch 2, iteration 1, at 6 s), resumed on a clock far ahead: it has
    # 13 s left and ends where the uninterrupted run did, with the same weights.
    part = train(data=str(tiny_data), project=str(tmp_path), name="part", time="19s", max_iters=3, **OPTS)
    assert part.interrupted and part.elapsed == pytest.approx(6.0)
    state = torch.load(part.last, weights_only=True)["train_state"]
    assert (state["epoch"], state["iteration"], state["elapsed"]) == (1, 1, pytest.approx(6.0))
    fake_time.now += 5000.0
    resumed = train(resume=str(part.save_dir), workers=0, progress=False)
    assert (resumed.epochs_completed, resumed.stop_reason) == (4, full.stop_reason)
    assert resumed.elapsed == pytest.approx(19.0)
    log = (part.save_dir / "train.log").read_text()
    assert "time budget 19s: 6.0s used, 13s left for the resumed run" in log
    assert "time budget 19s (12s left): ~" in log  # planned after the resumed epoch's last step
    a, b = torch.load(full.last, weights_only=True)["model"], torch.load(resumed.last, weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)


def test_a_short_real_run_ends_near_its_budget(cli, tiny_data, tmp_path):
    start = time.perf_counter()
    res = cli(["train", "--data", str(tiny_data), "--time", "20s", "--imgsz", "64", "--batch", "4", "--workers", "0",
               "--project", str(tmp_path), "--name", "t"])
    wall = time.perf_counter() - start
    assert res.exit_code == 0, res.output
    # Generous: a shared CPU stalls for seconds at a time, and the budget ends where its estimates said.
    assert 0.6 * 20 <= wall <= 1.6 * 20, wall
    log = (tmp_path / "train" / "t" / "train.log").read_text()
    took = next(line for line in log.splitlines() if line.startswith("time budget 20s: took"))
    assert math.isfinite(float(took.split("(")[1].rstrip("%)")))
    assert "time budget 20s: ~" in log and (tmp_path / "train" / "t" / "weights" / "best.pt").is_file()


@pytest.mark.skipif(importlib.util.find_spec("torch.distributed.run") is None or not torch.distributed.is_available(),
                    reason="torch.distributed / torchrun is not available")
def test_ddp_ranks_share_one_lr_and_one_end(tiny_data, tmp_path):
    """Each rank has its own clock: the lr and the end of training must still be the same on both (rank 0's plan, the
    furthest progress), or the weights drift apart and a rank waits forever in a collective."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "-m", "retinadet",
           "train", "--data", str(tiny_data), "--time", "10s", "--batch", "2", "--imgsz", "64", "--workers", "0",
           "--device", "cpu", "--project", str(tmp_path), "--no-plots"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail("torchrun did not finish in 120 s:\n" + out[-2000:] + err[-2000:])
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    log = (tmp_path / "train" / "exp" / "train.log").read_text()
    assert "DDP: final weights (parameters) identical on all 2 ranks" in log, log
    assert "time budget 10s reached" in log and "time budget 10s: took" in log
