"""Learning-rate schedule stepped per iteration: linear warm-up, then cosine or step decay; over iterations
(a run of N epochs), or over elapsed time (a run trained to a time budget, whose scheduler reads a clock)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

# The clock of a time-budget run: train() hands it to the trainer, its hooks and the lr schedule (tests replace it).
CLOCK: Callable[[], float] = time.perf_counter
# With a time budget the warm-up is this share of the training time, and of the steps it plans (--warmup-epochs 0:
# none); the default recipe's one warm-up epoch in 14 is 7%.
WARMUP_SHARE = 0.05
WARMUP_START = 0.001  # the warm-up's first lr, as a share of the base lr


def lr_factor(it: int, total: int, warmup: int, kind: str = "cosine", final: float = 0.01,
              milestones: tuple[float, ...] = (0.67, 0.89), gamma: float = 0.1, warmup_start: float = WARMUP_START) -> float:
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


def progress_factor(p: float, warmup: float, kind: str = "cosine", final: float = 0.01,
                    milestones: tuple[float, ...] = (0.67, 0.89), gamma: float = 0.1, warmup_start: float = WARMUP_START) -> float:
    """:func:`lr_factor`'s curve over a run's progress ``p`` (0..1) instead of its iterations; the first
    ``warmup`` share of it warms up."""
    p = min(1.0, max(0.0, p))
    if warmup > 0 and p < warmup:
        return warmup_start + (1.0 - warmup_start) * p / warmup
    if kind == "cosine":
        t = min(1.0, (p - warmup) / (1.0 - warmup)) if warmup < 1.0 else 1.0
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * t))
    if kind == "step":
        return gamma ** sum(1 for m in milestones if p >= m)
    if kind == "constant":
        return 1.0
    raise ValueError(f"unknown lr schedule '{kind}'")


def build_scheduler(optimizer: torch.optim.Optimizer, total: int, warmup: int, kind: str = "cosine",
                    final: float = 0.01) -> torch.optim.lr_scheduler.LambdaLR:
    # A closure (a plain function): LambdaLR then leaves it out of state_dict, which stays weights_only-safe.
    def fn(it: int) -> float:
        return lr_factor(it, total, warmup, kind, final)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


class TimeBudget:
    """The clock of a run trained for ``seconds`` and where its training ends.

    The budget covers the whole run: set-up, training, validations and the end-of-run outputs, over resumes
    (``spent``: what the earlier calls used; ``started``: ``clock()`` when this call began). Training stops at
    ``train_end``, ``reserve`` seconds before the budget's end: the time kept for the last validation and the
    outputs, set by the plan from measured times. The lr follows the elapsed share of ``train_end``; with
    ``shared`` (DDP) the share the ranks last agreed on (:meth:`agree`, after each step), so that every rank
    steps with the same lr.

    The warm-up is the first ``warmup`` share of that time and no fewer than ``warmup_steps`` steps (the same
    share of the steps the plan expects): the lr is the lower of the two ramps, so that a slow start (set-up,
    kernels built on the first steps) does not leave the warm-up behind in a few steps."""

    def __init__(self, seconds: float, *, started: float, spent: float = 0.0, reserve: float = 0.0,
                 clock: Callable[[], float] | None = None, warmup: float = WARMUP_SHARE, warmup_steps: int = 0,
                 kind: str = "cosine", final: float = 0.01, shared: bool = False):
        self.seconds, self.started, self.spent, self.reserve = float(seconds), float(started), float(spent), float(reserve)
        self.clock = clock if clock is not None else CLOCK
        self.warmup, self.warmup_steps, self.kind, self.final = float(warmup), int(warmup_steps), kind, float(final)
        # Shared: no rank reads its own clock, not even for the first step's lr (set when the scheduler is built).
        self.shared = bool(shared)
        self._progress = 0.0

    def elapsed(self) -> float:
        """Seconds of the budget used so far, earlier calls included."""
        return self.spent + self.clock() - self.started

    @property
    def train_end(self) -> float:
        """The elapsed time at which training steps stop."""
        return max(0.0, self.seconds - self.reserve)

    def fraction(self) -> float:
        """The share of the training time elapsed now (0..1)."""
        return min(1.0, self.elapsed() / self.train_end) if self.train_end > 0 else 1.0

    def progress(self) -> float:
        """The share of the training time the lr follows. It never decreases: a smaller reserve measured later
        moves the end out, and the lr must not climb back up the cosine for it."""
        if not self.shared:
            self._progress = max(self._progress, self.fraction())
        return self._progress

    def agree(self, share: float) -> None:
        """The share every rank uses from now on (the furthest of theirs)."""
        self._progress = max(self._progress, min(1.0, share))

    def lr_factor(self, step: int) -> float:
        """The lr multiplier for optimizer step ``step`` (0-based, over the whole run) at the current time."""
        factor = progress_factor(self.progress(), self.warmup, self.kind, self.final)
        if self.warmup > 0 and step < self.warmup_steps:
            factor = min(factor, WARMUP_START + (1.0 - WARMUP_START) * step / self.warmup_steps)
        return factor


def build_time_scheduler(optimizer: torch.optim.Optimizer, budget: TimeBudget) -> torch.optim.lr_scheduler.LambdaLR:
    """A scheduler whose every step sets the lr of the budget's elapsed time (its step count only holds the
    warm-up back: see :class:`TimeBudget`)."""
    def fn(it: int) -> float:
        return budget.lr_factor(it)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


def fit_epochs(seconds: float, epoch: int, iteration: int, iters: int, step: Callable[[int], float],
               boundary: Callable[[int], float], limit: int = 100_000) -> float:
    """How far (in epochs from the run's start, fractional) training gets in ``seconds`` from ``iteration`` of
    ``epoch`` (both 0-based): epoch ``e``'s steps take ``step(e)`` seconds each, and the end of the ``e``-th epoch
    (1-based: validation, checkpoint) ``boundary(e)``."""
    left, e, it = float(seconds), int(epoch), int(iteration)
    while left > 0 and e < limit:
        per = max(1e-9, step(e))
        need = (iters - it) * per
        if need >= left:
            return e + (it + left / per) / iters
        left -= need
        e, it = e + 1, 0
        left -= boundary(e)
    return float(e)
