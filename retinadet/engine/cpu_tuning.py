"""Settings that speed up CPU training, applied when a CPU run starts (``cpu_tuned``).

- Flush denormals to zero. Training from scratch fills gradients and optimizer moments with
  values below float32's normal range (tiny focal-loss gradients decayed by Adam's moments);
  x86 handles those in microcode, tens of times slower. A step slowed from 0.68 s to 1.1 s over a
  few epochs without it. Values that small carry no signal. It is the calling thread's floating-point
  state, so the run puts it back when it ends: the caller's own code (a test, a notebook) keeps IEEE
  arithmetic.
- Keep freed memory in the heap. glibc serves blocks above its mmap threshold (at most 32 MiB)
  with fresh mmap calls and returns them on free, so every step of a CPU model whose activations
  exceed that re-faults its pages in the kernel. A high threshold reuses them instead; the cost is
  a process that keeps its peak memory, as CUDA's caching allocator does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_heap: list[str] = []  # the heap setting, made once per process


def flushes_denormals() -> bool:
    """Whether this thread flushes float32 denormals to zero now (torch has no getter for it)."""
    return float(torch.tensor([1e-39]) * 1.0) == 0.0


def tune_cpu_process() -> list[str]:
    """Applies the settings (the heap's once per process); returns what is in effect (for the run log)."""
    applied = ["denormals flushed to zero"] if torch.set_flush_denormal(True) else []
    if not _heap and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # musl and other libcs have no mallopt
            mallopt = None
        if mallopt is not None and mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1 and mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1) == 1:
            _heap.append("large blocks kept in the heap")
    return applied + _heap


@contextmanager
def cpu_tuned(enabled: bool = True) -> Iterator[list[str]]:
    """``tune_cpu_process`` for the length of a run (nothing when not ``enabled``); denormal flushing is put back
    as it was on the way out."""
    if not enabled:
        yield []
        return
    flushed = flushes_denormals()
    try:
        yield tune_cpu_process()
    finally:
        torch.set_flush_denormal(flushed)
