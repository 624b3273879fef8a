"""Inference backends measured side by side: one child process per backend, timed in alternating rounds.

Each backend is built in a process of its own (``multiprocessing`` spawn), so the peak resident memory
it reports (``VmHWM``) is its own and not the parent's or another backend's. The children stay up together
and the parent asks each for one run in turn, round after round, so drift in machine load (another job,
a host taking back CPU, thermal limits) hits every backend alike instead of whichever ran last. A child
times its own run, so the pipe's round trip is not counted.

What a backend is (how it is built, what one run does, how its AP is measured) is the caller's: a factory
named ``"module:function"``, imported in the child, returning an object with ``run()`` and ``ap()``.
This module imports neither torch nor any runtime, so a child of a torch-free backend stays torch-free.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

STATUSES = ("ok", "missing", "refused", "failed")
# The instruction-set flags that decide which backend wins on a CPU (bf16 and int8 kernels).
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


@dataclass
class BackendSpec:
    """A backend to measure: ``factory`` (``"module:function"``) is called in the child with ``options``.
    ``status``/``note`` are kept when it runs (an INT8 model the accuracy gate refuses is still timed)."""

    name: str
    factory: str
    options: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"
    note: str = ""


@dataclass
class BackendResult:
    name: str
    batch: int
    status: str = "ok"
    note: str = ""
    times: list[float] = field(default_factory=list)  # seconds per timed run (one batch each)
    peak_mb: float | None = None
    ap: float | None = None

    def fail(self, message: str, keep_timing: bool = False) -> None:
        """Failed: with ``keep_timing`` (it broke after its runs, e.g. measuring AP) the times and peak stay."""
        self.status, self.note, self.ap = "failed", message, None
        if not keep_timing:
            self.times.clear()
            self.peak_mb = None

    @property
    def ms_per_image(self) -> float | None:
        return 1000.0 * statistics.median(self.times) / self.batch if self.times else None

    @property
    def images_per_s(self) -> float | None:
        ms = self.ms_per_image
        return 1000.0 / ms if ms else None

    def to_dict(self, reference_ms: float | None = None) -> dict[str, Any]:
        ms = self.ms_per_image
        return {"name": self.name, "ms_per_image": ms, "images_per_s": self.images_per_s, "peak_mb": self.peak_mb,
                "ap": self.ap, "status": self.status, "note": self.note,
                "x_eager": reference_ms / ms if ms and reference_ms else None, "runs_s": list(self.times)}


class WorkerError(RuntimeError):
    """A backend's child raised (the message is its one-line reason) or died."""


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__


def peak_rss_mb() -> float | None:
    """This process's own peak resident memory (VmHWM), in MB. Not ``ru_maxrss``: Linux carries it across fork
    and exec, so a child would report its parent's peak. None where /proc is not there (macOS, Windows)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def cpu_info() -> dict[str, Any]:
    """The CPU's model name, whether it has each flag of :data:`CPU_FLAGS` (None where /proc/cpuinfo is not there to
    say), and its logical CPUs."""
    model, flags = "", None
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and flags is None:
                    flags = set(value.split())
    except OSError:
        pass
    return {"model": model or platform.processor() or platform.machine(),
            "flags": None if flags is None else {f: f in flags for f in CPU_FLAGS}, "logical_cpus": os.cpu_count()}


def native_bf16(cpu: dict[str, Any]) -> bool | None:
    """Whether the CPU runs bf16 matrix math natively (AVX512-BF16 or AMX-BF16); None: unknown."""
    flags = cpu.get("flags")
    return None if flags is None else bool(flags.get("avx512_bf16") or flags.get("amx_bf16"))


def format_flags(cpu: dict[str, Any]) -> str:
    flags = cpu.get("flags")
    if flags is None:
        return "flags unknown"
    has, lacks = [f for f, v in flags.items() if v], [f for f, v in flags.items() if not v]
    return f"flags: {' '.join(has) or 'none of interest'}" + (f" (no {', '.join(lacks)})" if lacks else "")


# ----------------------------------------------------------------------------- the child


def _child_main(conn, factory: str, options: dict[str, Any]) -> None:
    """Build the backend, then answer the parent's commands: run (seconds it took), peak (MB), ap, stop."""
    try:
        module, _, attr = factory.partition(":")
        runner = getattr(importlib.import_module(module), attr)(**options)
    except BaseException as exc:  # noqa: BLE001 - every failure to build is reported, not raised in a child
        conn.send(("error", one_line(exc)))
        return
    conn.send(("ok", None))
    while True:
        command = conn.recv()
        try:
            if command == "run":
                t0 = time.perf_counter()
                runner.run()
                conn.send(("ok", time.perf_counter() - t0))
            elif command == "peak":
                conn.send(("ok", peak_rss_mb()))
            elif command == "ap":
                conn.send(("ok", runner.ap()))
            else:
                conn.send(("ok", None))
                return
        except BaseException as exc:  # noqa: BLE001
            conn.send(("error", one_line(exc)))


class Worker:
    """The parent's handle on one backend's child process."""

    def __init__(self, spec: BackendSpec, ctx):
        self.name = spec.name
        self.conn, child = ctx.Pipe()
        # Daemonic: the children die with the parent (Ctrl-C, a crash) instead of holding memory.
        self.proc = ctx.Process(target=_child_main, args=(child, spec.factory, spec.options), daemon=True,
                                name=f"retinadet-benchmark-{spec.name}")
        self.proc.start()
        child.close()

    def _died(self) -> WorkerError:
        self.proc.join(5)
        code = self.proc.exitcode
        if code is not None and code < 0:  # killed by a signal: SIGKILL is what the kernel's OOM killer sends
            return WorkerError(f"its process was killed by signal {-code}" + (" (out of memory?)" if code == -9 else ""))
        return WorkerError(f"its process died (exit code {code})")

    def receive(self) -> Any:
        while not self.conn.poll(0.2):
            if not self.proc.is_alive() and not self.conn.poll(0):
                raise self._died()
        try:
            kind, value = self.conn.recv()
        except EOFError as exc:  # the pipe closed with nothing in it: the process is gone
            raise self._died() from exc
        if kind == "error":
            raise WorkerError(value)
        return value

    def call(self, command: str) -> Any:
        try:
            self.conn.send(command)
        except (BrokenPipeError, OSError) as exc:
            raise self._died() from exc
        return self.receive()

    def close(self) -> None:
        if self.proc.is_alive():
            try:
                self.conn.send("stop")
            except (BrokenPipeError, OSError):
                pass
            self.proc.join(10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
        self.conn.close()


def measure(specs: Sequence[BackendSpec], *, batch: int, runs: int, warmup: int, with_ap: bool,
            log: Callable[[str], None] = print) -> list[BackendResult]:
    """Each spec's timed runs, peak memory and (``with_ap``) AP, in the order given. The children start one at a
    time (a slow start of one does not overlap another's), all stay up, and every round asks each for one run;
    the warm-up runs alternate the same way. A backend whose child fails is reported failed; the rest go on."""
    results = {s.name: BackendResult(s.name, batch, s.status, s.note) for s in specs}
    ctx = mp.get_context("spawn")  # fork after torch's OpenMP threads started can deadlock the child
    workers: dict[str, Worker] = {}

    def failed(name: str, stage: str, exc: WorkerError, keep_timing: bool = False) -> None:
        results[name].fail(f"{stage}: {exc}", keep_timing)
        log(f"{name}: failed {stage}: {exc}")
        workers.pop(name).close()

    try:
        for spec in specs:
            log(f"starting {spec.name}")
            workers[spec.name] = Worker(spec, ctx)
            try:
                workers[spec.name].receive()
            except WorkerError as exc:
                failed(spec.name, "to start", exc)
        for phase, count in (("warm-up", warmup), ("timed", runs)):
            for i in range(count):
                if phase == "timed":
                    log(f"round {i + 1}/{count}: {', '.join(workers)}")
                for name in list(workers):
                    try:
                        seconds = workers[name].call("run")
                    except WorkerError as exc:
                        failed(name, f"in a {phase} run", exc)
                        continue
                    if phase == "timed":
                        results[name].times.append(float(seconds))
        for name in list(workers):
            try:
                results[name].peak_mb = workers[name].call("peak")
            except WorkerError as exc:
                failed(name, "reading its memory", exc)
        if with_ap:
            for name in list(workers):
                log(f"AP of {name}")
                try:
                    ap = workers[name].call("ap")
                except WorkerError as exc:
                    failed(name, "measuring AP", exc, keep_timing=True)
                    continue
                results[name].ap = None if ap is None else float(ap)
    finally:
        for worker in workers.values():
            worker.close()
    return [results[s.name] for s in specs]


# ----------------------------------------------------------------------------- the report


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(results: Sequence[BackendResult], reference: str | None = "eager") -> str:
    """A Markdown table: backend, ms/img, img/s, x eager (eager's ms / this one's: above 1 is faster), peak MB, AP,
    and the status with its note where there is one."""
    ref = next((r.ms_per_image for r in results if r.name == reference), None)
    lines = ["| backend | ms/img | img/s | x eager | peak MB | AP | status |", "|---|---|---|---|---|---|---|"]
    for r in results:
        ms = r.ms_per_image
        status = r.status + (f": {r.note}" if r.note else "")
        lines.append(f"| {r.name} | {_num(ms, '.1f')} | {_num(r.images_per_s, '.2f')} | "
                     f"{_num(ref / ms if ms and ref else None, '.2f')}{'x' if ms and ref else ''} | "
                     f"{_num(r.peak_mb, '.0f')} | {_num(r.ap, '.4f')} | {status.replace('|', '/')} |")
    return "\n".join(lines)


def report(results: Sequence[BackendResult], reference: str | None = "eager", **context: Any) -> dict[str, Any]:
    """The JSON form: ``backends`` (one dict per result) and the run's ``context`` (cpu, threads, input, ...)."""
    ref = next((r.ms_per_image for r in results if r.name == reference), None)
    return {"backends": [r.to_dict(ref) for r in results], **context}
