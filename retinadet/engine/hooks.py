"""The hooks of a training run, one concern each: stopping (signals, max_iters, non-finite losses), a time
budget (the plan, the end of training), validation with early stopping, checkpoints and resume, and the run's
records (train.log, results.csv, TensorBoard, the progress bar). ``retinadet.engine.train`` registers them in
this order."""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from retinadet.data.records import DatasetRecords
from retinadet.engine import distributed as D
from retinadet.engine.config import format_duration, validation_due
from retinadet.engine.evaluate import STAT_NAMES, EvalResult, evaluate, write_eval_outputs
from retinadet.engine.loaders import eval_loader
from retinadet.engine.plots import plot_results, prediction_grid
from retinadet.engine.schedule import TimeBudget, fit_epochs
from retinadet.engine.train_state import rng_state, set_rng_state
from retinadet.engine.trainer import HookBase, any_rank, max_over_ranks
from retinadet.errors import RetinadetError
from retinadet.utils.files import read_csv, write_csv
from retinadet.utils.tiling import TileOptions, TrainingScale, plan_tiles
from retinadet.weights import make_checkpoint, save_checkpoint

RESULT_COLUMNS = ["epoch", "loss_total", "loss_cls", "loss_box", "lr", *STAT_NAMES, "epoch_time", "skipped_steps"]
# Validation images are decoded once and kept between epochs when they take less than this (uint8, padded).
VAL_CACHE_BYTES = 256 * 2**20
# A time-budget run plans after this many steps of its first epoch (the first step, which starts the loader's
# workers and builds oneDNN's kernels, is timed apart from the others).
PLAN_STEPS = 5
# Until the run has timed them: the budget's reserve (last validation and outputs) as a share of the budget;
# a validation batch as a share of a full-size training step (forward only, plus decoding and COCO matching: the
# shapes recipe's 19 val batches took 4-5 s against 0.4 s steps); the checkpoints of an epoch end, in seconds.
RESERVE_PRIOR = 0.1
VAL_STEP_SHARE = 0.6
CHECKPOINT_SECONDS = 0.3
# The end-of-run outputs after the last validation (val/ metrics, predictions and figures, results.png): this share
# of a validation, plus the figures' seconds (1.4 s in all for a 4-image val split, matplotlib's import included).
OUTPUT_SHARE = 0.25
PLOT_SECONDS = 1.5
# An epoch end after which the run would finish at most this share of the budget early ends the run there, rather
# than start an epoch for a few steps and validate again.
END_EARLY_SHARE = 0.02
NONFINITE_HINT = ("likely causes: the learning rate is too high (try a smaller --lr or longer warm-up), AMP overflow "
                  "(try without --amp or with --amp bf16), or bad boxes in the data (run `retinadet data check`)")

Log = Callable[[str], None]


class TrainingStopped(RetinadetError):
    """The run cannot go on (e.g. the loss stayed non-finite); last.pt is kept."""


def input_size(preprocess: Any) -> int:
    return int(preprocess.fixed_size or preprocess.max_size)


class _Signals:
    """SIGINT/SIGTERM only note the signal, for the run to stop after the current step; a second SIGINT
    raises KeyboardInterrupt at once."""

    def __init__(self):
        self.name = ""
        self._old: dict[int, Any] = {}

    def _handler(self, signum, frame):
        if self.name and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.name = signal.Signals(signum).name

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


class StopHook(HookBase):
    """Stops a run cleanly: on SIGINT/SIGTERM or after ``max_iters`` steps of this call, resumably (the
    checkpoint hook saves the position); after ``max_bad_steps`` non-finite losses in a row, with
    TrainingStopped (last.pt stays the last good one). Logs why the run stopped."""

    def __init__(self, *, max_iters: int | None, max_bad_steps: int, last: Path, save_dir: Path, log: Log):
        self.max_iters, self.max_bad_steps, self.last, self.save_dir, self.log = max_iters, max_bad_steps, last, save_dir, log
        self.signals = _Signals()
        self.steps = 0  # in this call: a resumed call does not inherit the interrupted one's max_iters
        self.bad_in_row = 0

    def _reason(self) -> str:
        """Why the run must stop now ("": it goes on); every rank stops at the same point."""
        limit = self.max_iters is not None and self.steps >= self.max_iters
        if not any_rank(bool(self.signals.name) or limit, self.trainer.dist, self.trainer.device):
            return ""
        if self.signals.name:
            return f"{self.signals.name} received"
        return f"max_iters={self.max_iters} reached" if limit else "another rank received a stop signal"

    def before_train(self) -> None:
        self.signals.install()

    def before_epoch(self) -> None:
        # A signal during the last validation stops the run here, at the epoch boundary last.pt holds.
        # Not before this call's first step: a fresh run has no last.pt to resume from yet.
        if self.steps and (reason := self._reason()):
            self.trainer.stop(reason, interrupted=True)

    def after_step(self) -> None:
        t, s = self.trainer, self.trainer.state
        self.steps += 1
        if t.step_losses is not None:
            self.bad_in_row = 0
        else:
            self.bad_in_row += 1
            self.log(f"epoch {s.epoch + 1} iteration {s.iteration - 1}: non-finite loss, step skipped "
                     f"({self.bad_in_row} in a row, {s.skipped_steps} in all)")
            if self.bad_in_row >= self.max_bad_steps:
                raise TrainingStopped(
                    f"the loss was non-finite for {self.bad_in_row} steps in a row (epoch {s.epoch + 1}, iteration {s.iteration}); "
                    f"stopped. {NONFINITE_HINT}. The last good checkpoint is kept: {self.last}")
        # After an epoch's last step the epoch is finished first (validation, last.pt); before_epoch stops then.
        if s.iteration < t.iters_per_epoch and (reason := self._reason()):
            t.stop(reason, interrupted=True)

    def after_train(self) -> None:
        self.signals.restore()
        t, s = self.trainer, self.trainer.state
        if t.failed or not t.stop_reason:
            return
        if not t.interrupted:
            self.log(t.stop_reason)
            return
        where = f"epoch {s.epoch + 1} iteration {s.iteration}/{t.iters_per_epoch}; saved {self.last}" if s.iteration else f"epoch {s.epoch}"
        self.log(f"{t.stop_reason}: stopped after {where}; resume with: retinadet train --resume {self.save_dir}")


class TimeBudgetHook(HookBase):
    """Trains to a time budget: ``budget`` is the run's clock and where its training ends (the lr schedule reads it).

    After the first few steps it times them, fits the epochs to the budget and logs the plan; with progressive
    resizing (``progressive``: the share of the epochs, the cost of a small step against a full-size one, and the
    small inputs' name) it fixes then how many epochs train small, in the TrainState for a resume. At each epoch end
    it re-plans from the measured epoch and validation times and sets the budget's reserve (the last validation
    and the end-of-run outputs) from them. Training ends when only the reserve is left: mid-epoch through
    ``trainer.finish`` (the short epoch is validated and saved as the last one), or at an epoch end when another
    epoch would be a few steps long. Decisions are rank 0's, or agreed by all ranks, so DDP ranks stay in step."""

    def __init__(self, budget: TimeBudget, *, log: Log, val_every: int, val_batches: int, plots: bool,
                 progressive: tuple[float, float, str] | None = None,
                 ema_schedule: Callable[[int], tuple[float, float]] | None = None):
        self.budget, self.log, self.val_every, self.val_batches, self.plots = budget, log, val_every, val_batches, plots
        self.progressive, self.ema_schedule = progressive, ema_schedule
        self.small = 0  # epochs that train on small inputs (the loader's and the TrainState's, once planned)
        self.rate: dict[bool, float] = {}  # seconds a step, epoch start included, by whether the epoch trains small
        self._timed: dict[bool, tuple[float, int]] = {}  # (seconds, steps) of this call's epochs, by the same key
        self.vals: list[float] = []  # this call's epoch ends with a validation (and checkpoints, log line), in seconds
        self.plain_time: float | None = None  # the last epoch end without
        self.planned = False
        self._mark: tuple[float, bool] | None = None  # (clock, validated) when the last epoch end began
        self._t0, self._steps, self._first = 0.0, 0, 0.0

    # -- estimates ---------------------------------------------------------------------------------------------
    def _step(self, small: bool) -> float:
        """Seconds a step at either input size: measured, else from the other size's by the cost ratio."""
        if small in self.rate:
            return self.rate[small]
        cost = self.progressive[1] if self.progressive else 1.0
        return self.rate[not small] * cost if small else self.rate[not small] / cost

    def _val(self) -> float:
        """Seconds an epoch end with a validation takes: the median of the recent ones (the first fills the image
        cache: left out once there are others), else estimated from the step time."""
        if self.vals:
            recent = sorted(self.vals[1:][-5:] or self.vals)
            return recent[len(recent) // 2]
        return self.val_batches * self._step(False) * VAL_STEP_SHARE + CHECKPOINT_SECONDS

    def _boundary(self, done: int) -> float:
        """Seconds the end of the ``done``-th epoch takes when it is not the last."""
        if validation_due(done, self.trainer.max_epochs, self.val_every):
            return self._val()
        return self.plain_time if self.plain_time is not None else CHECKPOINT_SECONDS

    def _reserve(self) -> float:
        v = self._val()
        return v + OUTPUT_SHARE * v + (PLOT_SECONDS if self.plots else 0.0)

    def _fit(self, seconds: float, small: int) -> float:
        s = self.trainer.state
        return fit_epochs(seconds, s.epoch, s.iteration, self.trainer.iters_per_epoch, lambda e: self._step(e < small),
                          self._boundary)

    def _set_small(self, n: int) -> None:
        self.small = n
        loader = getattr(self.trainer, "loader", None)
        if loader is not None:
            loader.small_epochs = n

    # -- events ------------------------------------------------------------------------------------------------
    def before_train(self) -> None:
        s, b = self.trainer.state, self.budget
        # Until the plan, the first epoch trains small (the loader was built so): the plan fixes how many follow.
        self._set_small(0 if self.progressive is None else s.small_epochs if s.small_epochs >= 0 else 1)
        if s.val_seconds > 0:  # resumed: the interrupted call's validation time, for the same reserve
            self.vals = [s.val_seconds]
        b.reserve = self._reserve() if self.vals else RESERVE_PRIOR * b.seconds
        if b.shared and b.train_end > 0:  # a resumed DDP run's first lr: where the saved run stood, on every rank
            b.agree(b.spent / b.train_end)
        self.trainer.epochs_text = "?"

    def before_epoch(self) -> None:
        now = self.budget.clock()
        if self._mark is not None:
            start, validated = self._mark
            if validated:
                self.vals.append(now - start)
                self.trainer.state.val_seconds = self._val()
            else:
                self.plain_time = now - start
            self._mark = None
            self.budget.reserve = self._reserve()
        self._t0, self._steps = now, 0

    def after_step(self) -> None:
        t, s, b = self.trainer, self.trainer.state, self.budget
        now = b.clock()
        self._steps += 1
        if self._steps == 1:
            self._first = now
        if not self.planned and (self._steps >= PLAN_STEPS or s.iteration == t.iters_per_epoch):
            self._plan(now)
        spent = b.elapsed() >= b.train_end
        if t.dist.enabled:  # one lr and one end for every rank: the furthest progress, any rank's end
            flag, progress = max_over_ranks([float(spent), b.fraction()], t.dist, t.device)
            spent = bool(flag)
            b.agree(progress)
        if spent and s.iteration < t.iters_per_epoch:
            s.finished = True
            t.finish(f"time budget {format_duration(b.seconds)} reached: epoch {s.epoch + 1} ended at iteration "
                     f"{s.iteration}/{t.iters_per_epoch}")

    def _plan(self, now: float) -> None:
        """The first plan: the step time so far, the progressive split, the epochs that fit; logged."""
        t, s, b = self.trainer, self.trainer.state, self.budget
        if self._steps >= 2:  # the first step apart, its extra time (loader start, kernels) as once an epoch
            steady = (now - self._first) / (self._steps - 1)
            rate = steady + max(0.0, self._first - self._t0 - steady) / t.iters_per_epoch
        else:
            rate = now - self._t0
        self.rate.setdefault(s.epoch < self.small, rate)  # the epochs timed whole, if any, know better
        b.reserve = self._reserve()
        left = b.train_end - b.elapsed()
        small = self.small
        if self.progressive is not None and s.small_epochs < 0:
            for _ in range(4):  # the split changes what fits: settle both
                fit = self._fit(left, small)
                again = max(s.epoch + 1, min(int(self.progressive[0] * fit + 0.5), math.ceil(fit) - 1))
                if again == small:
                    break
                small = again
        small, fit = D.broadcast_object((small, self._fit(left, small)), t.dist)
        self._set_small(small)
        if self.progressive is not None:
            s.small_epochs = small
        t.max_epochs = max(s.epoch + 1, math.ceil(fit))
        t.epochs_text = f"~{t.max_epochs}"
        steps = max(1, round(fit * t.iters_per_epoch))
        b.warmup_steps = max(1, round(b.warmup * steps))
        ema = getattr(t, "ema", None)
        if ema is not None and self.ema_schedule is not None and b.spent == 0:  # a resumed EMA keeps its schedule
            ema.decay, ema.tau = self.ema_schedule(steps)
        self.planned = True
        resumed = f" ({format_duration(b.seconds - b.elapsed())} left)" if b.spent > 0 else ""
        progressive = (f"; epochs 1-{small} at {self.progressive[2]} (progressive resizing)"
                       if self.progressive is not None and small else "")
        self.log(f"time budget {format_duration(b.seconds)}{resumed}: ~{fit:.1f} epochs of {t.iters_per_epoch} iterations "
                 f"at {rate:.3g} s/iteration, validation ~{self._val():.1f} s{progressive}")

    def after_epoch(self) -> None:
        t, s, b = self.trainer, self.trainer.state, self.budget
        now = b.clock()
        if self._steps:  # the mean over this call's epochs: one slow step (a busy machine) moves the plan little
            key = s.epoch - 1 < self.small
            seconds, steps = self._timed.get(key, (0.0, 0))
            self._timed[key] = seconds + now - self._t0, steps + self._steps
            self.rate[key] = self._timed[key][0] / self._timed[key][1]
        if not t.finishing:
            b.reserve = self._reserve()
            left = b.train_end - b.elapsed()  # the training time left, this epoch end's included
            after = left - self._boundary(s.epoch)  # what another epoch would get
            # Ending here, this epoch end validates and the outputs follow: the run finishes ``left`` early.
            end = after <= 0 or left <= END_EARLY_SHARE * b.seconds
            end, fit = D.broadcast_object((end, None if end else self._fit(after, self.small)), t.dist)
            if end:
                s.finished = True
                t.max_epochs, t.epochs_text = s.epoch, None
                t.stop(f"time budget {format_duration(b.seconds)} reached at the end of epoch {s.epoch}", interrupted=False)
            else:
                t.max_epochs = max(s.epoch + 1, math.ceil(fit))
                t.epochs_text = f"~{t.max_epochs}"
        self._mark = (now, validation_due(s.epoch, t.max_epochs, self.val_every))


def plot_prediction_grid(first: dict | None, class_names: Sequence[str], conf: float, path: Path) -> None:
    """The first validation batch: its labels beside the predictions scored ``conf`` or more."""
    if not first:
        return
    dets = [d[d.scores >= conf] for d in first["dets"]]
    prediction_grid(first["images"], first["image_sizes"], first["boxes"], first["labels"], dets, class_names, path)


class EvalHook(HookBase):
    """Validates when :func:`~retinadet.engine.config.validation_due` says (every ``every``-th epoch, or by its
    schedule) and after the last epoch; val AP is the fitness behind best.pt and
    ``patience`` (validations without improvement before an early stop; 0: off). The run's val/ outputs
    (metrics, predictions, figures) are written once, for the last validation, when the run ends: per epoch
    they cost about a tenth of the validation, and results.csv and the checkpoints hold every epoch."""

    def __init__(self, data: DatasetRecords, *, batch_size: int, workers: int, conf: float, every: int | None, patience: int,
                 amp: Any, plots: bool, save_dir: Path, scale: TrainingScale | None = None):
        self.data, self.batch_size, self.workers, self.conf = data, batch_size, workers, conf
        self.every, self.patience, self.amp, self.plots, self.save_dir = every, patience, amp, plots, save_dir
        # Val images larger than the training inputs are sliced at the training scale (as `val` and `predict` do).
        self.scale, self.tiling = scale, TileOptions()
        self._cache: Any = None  # the decoded val batches; None: not built yet; False: too large to keep
        self._last: EvalResult | None = None  # rank 0's last validation

    def _batches(self) -> list | None:
        """The validation batches, decoded once and kept when they fit in VAL_CACHE_BYTES (None: stream them)."""
        if self._cache is None:
            pre, dist = self.trainer.model.cfg.preprocess, self.trainer.dist
            per_rank = math.ceil(len(self.data) / dist.world_size)
            sliced = any(plan_tiles(r.height, r.width, pre, self.scale, self.tiling) for r in self.data.records)
            if sliced or per_rank * 3 * input_size(pre) ** 2 > VAL_CACHE_BYTES:  # sliced: read whole each time
                self._cache = False
            else:
                self._cache = list(eval_loader(self.data, pre, self.batch_size, self.workers, dist.rank, dist.world_size))
        return self._cache or None

    def after_epoch(self) -> None:
        t, s = self.trainer, self.trainer.state
        if not validation_due(s.epoch, t.max_epochs, self.every):
            return
        main = t.dist.is_main
        result = evaluate(t.eval_model, self.data, batch_size=self.batch_size, workers=self.workers, device=t.device,
                          amp=self.amp, dist_info=t.dist, matrix_conf=self.conf, keep_first_batch=main and self.plots,
                          batches=self._batches(), with_confusion=False, tiling=self.tiling, scale=self.scale)
        metrics = D.broadcast_object(result.metrics() if result is not None else None, t.dist)
        t.metrics.update(metrics)
        if float(metrics["AP"]) > s.best_fitness:
            s.best_fitness, s.best_epoch, s.bad_epochs = float(metrics["AP"]), s.epoch, 0
        else:
            s.bad_epochs += 1
        if result is not None:
            self._last = result
        if self.patience and s.bad_epochs >= self.patience:
            t.stop(f"early stop: val AP did not improve for {self.patience} validations", interrupted=False)

    def after_train(self) -> None:
        if self.trainer.failed or self._last is None:
            return
        write_eval_outputs(self._last, self.data, self.save_dir / "val", self.conf, plots=self.plots)
        if self.plots:
            plot_prediction_grid(self._last.first_batch, self.data.class_names, self.conf,
                                 self.save_dir / "val_batch0_labels_vs_pred.png")


class CheckpointHook(HookBase):
    """last.pt after every epoch and when the run stops mid-epoch, with all that an exact resume needs
    (optimizer, scheduler, scaler, EMA, every rank's RNG states, the TrainState); best.pt when val AP improves.
    ``resume``: a last.pt to restore before the first step (the trainer's state comes from it already)."""

    def __init__(self, wdir: Path, *, class_names: Sequence[str], category_ids: Sequence[int], meta: dict[str, Any],
                 log: Log, resume: dict | None = None):
        self.wdir, self.class_names, self.category_ids, self.meta, self.log = wdir, class_names, category_ids, meta, log
        self.resume = resume

    def before_train(self) -> None:
        if self.resume is None:
            return
        t, ck = self.trainer, self.resume
        t.model.load_state_dict(ck.get("train_model") or ck["model"])
        t.optimizer.load_state_dict(ck["optimizer"])
        t.scheduler.load_state_dict(ck["scheduler"])
        if ck.get("scaler"):
            t.scaler.load_state_dict(ck["scaler"])
        if t.ema is not None and ck.get("ema"):
            t.ema.load_state_dict(ck["ema"])
        rng = ck["rng"]
        set_rng_state(rng[t.dist.rank] if isinstance(rng, list) and len(rng) > t.dist.rank else rng)
        self.log(f"resuming {self.wdir.parent} at epoch {t.state.epoch + 1}, iteration {t.state.iteration}/{t.iters_per_epoch}")

    def after_step(self) -> None:
        if self.trainer.stop_reason:  # the run ends after this step: keep its position
            self._save_last()

    def after_epoch(self) -> None:
        t = self.trainer
        self._save_last()
        if t.dist.is_main and t.state.best_epoch == t.state.epoch:
            save_checkpoint(self.wdir / "best.pt", self._checkpoint())

    def _checkpoint(self, **extra: Any) -> dict:
        t = self.trainer
        return make_checkpoint(t.eval_model, self.class_names, self.category_ids, t.state.epoch, t.metrics, **self.meta, **extra)

    def _save_last(self) -> None:
        t = self.trainer
        rngs = D.all_gather_objects(rng_state(), t.dist)  # a collective: every rank takes part
        if not t.dist.is_main:
            return
        extra: dict[str, Any] = dict(
            optimizer=t.optimizer.state_dict(), scheduler=t.scheduler.state_dict(),
            scaler=t.scaler.state_dict() if t.scaler.is_enabled() else None,
            ema=t.ema.state_dict() if t.ema is not None else None,
            rng=rngs if t.dist.enabled else rngs[0], train_state=t.state.to_dict())
        if t.ema is not None:  # ``model`` holds the EMA weights; resume needs the trained ones too
            extra["train_model"] = {k: v.detach().cpu() for k, v in t.model.state_dict().items()}
        save_checkpoint(self.wdir / "last.pt", self._checkpoint(**extra))


class LoggingHook(HookBase):
    """The run's records on rank 0: a results.csv row and a train.log line per epoch, TensorBoard scalars
    (per step and per validation), the per-epoch progress bar, and results.png when the run ends."""

    def __init__(self, save_dir: Path, log: Log, *, progress: bool, plots: bool):
        self.save_dir, self.log, self.progress, self.plots = save_dir, log, progress, plots
        self.bar: tqdm | None = None
        self.tb: Any = None

    def before_train(self) -> None:
        if not self.trainer.dist.is_main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional dependency
        except ImportError:
            self.log("tensorboard not installed; no TensorBoard scalars")
        else:
            self.tb = SummaryWriter(str(self.save_dir))

    def before_epoch(self) -> None:
        t, s = self.trainer, self.trainer.state
        self.bar = tqdm(total=t.iters_per_epoch, initial=s.iteration, desc=f"epoch {s.epoch + 1}/{t.epochs_text or t.max_epochs}",
                        leave=False,
                        disable=not (t.dist.is_main and self.progress), dynamic_ncols=True)

    def after_step(self) -> None:
        t, s = self.trainer, self.trainer.state
        if t.dist.is_main:
            means = s.mean_losses()
            self.bar.set_postfix(loss=f"{means['loss_total']:.3f}", cls=f"{means['loss_cls']:.3f}",
                                 box=f"{means['loss_box']:.3f}", lr=f"{t.lr:.2e}", refresh=False)
            self.bar.update(1)
            if self.tb is not None and t.step_losses is not None:
                step = s.epoch * t.iters_per_epoch + s.iteration
                for tag, key in (("train/loss", "total"), ("train/loss_cls", "cls"), ("train/loss_box", "box")):
                    self.tb.add_scalar(tag, t.step_losses[key], step)
                self.tb.add_scalar("train/lr", t.lr, step)
        if s.iteration == t.iters_per_epoch or t.finishing:
            self.bar.close()  # before validation and the epoch line

    def after_epoch(self) -> None:
        t, s, m = self.trainer, self.trainer.state, self.trainer.metrics
        if not t.dist.is_main:
            return
        path = self.save_dir / "results.csv"
        rows = read_csv(path)[1] if path.is_file() else []
        row = [s.epoch, m["loss_total"], m["loss_cls"], m["loss_box"], m["lr"], *[m.get(k, "") for k in STAT_NAMES],
               round(m["epoch_time"], 3), s.skipped_steps]
        # A run resumed from an older last.pt replays epochs: their rows are replaced, not repeated.
        rows = [r for r in rows if int(r[0]) != s.epoch] + [[f"{v:.6g}" if isinstance(v, float) else str(v) for v in row]]
        write_csv(path, RESULT_COLUMNS, rows)
        validated = "AP" in m
        ap = f" | AP {m['AP']:.4f} AP50 {m['AP50']:.4f}{' *best*' if s.best_epoch == s.epoch else ''}" if validated else ""
        total = t.epochs_text or t.max_epochs
        self.log(f"epoch {s.epoch}/{total}: loss {m['loss_total']:.4f} (cls {m['loss_cls']:.4f}, box {m['loss_box']:.4f}) "
                 f"lr {m['lr']:.2e}{ap} | {m['epoch_time']:.1f}s | {t.loader.counters.reset().summary()}")
        if self.tb is not None and validated:
            for k in STAT_NAMES:
                self.tb.add_scalar(f"val/{k}", m[k], s.epoch)

    def after_train(self) -> None:
        if self.bar is not None:
            self.bar.close()  # also on errors, so that the error message starts on its own line
        if self.tb is not None:
            self.tb.close()
        path = self.save_dir / "results.csv"
        if self.trainer.failed or not self.trainer.dist.is_main or not self.plots or not path.is_file():
            return
        header, rows = read_csv(path)
        if rows:
            plot_results(header, rows, self.save_dir / "results.png")
