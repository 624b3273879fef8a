"""Devices and mixed precision: the one place that decides where and in what precision a model runs."""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

from retinadet.errors import ConfigError

# What ``amp`` may be, everywhere (train, val, predict, the Python API). "auto": see :func:`choose_amp`.
AMP_MODES = (False, True, "bf16", "fp16", "auto")
# The x86 instructions that make bf16 convolutions faster than float32 (oneDNN uses them), best first.
# Without them oneDNN emulates bf16 with AVX-512 conversions: a bf16 training step was 2.4x slower than
# float32 on such a Xeon, about 2x faster with AVX512-BF16 (AMD EPYC) or AMX.
_NATIVE_BF16 = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"))


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{device}' requested but CUDA is not available; use --device cpu")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"device '{device}' requested but MPS is not available; use --device cpu")
    return dev


@functools.lru_cache(maxsize=1)
def cpu_flags() -> tuple[frozenset[str], str]:
    """This CPU's feature flags and where they were read ("": nowhere; then the set is empty).

    torch's cpuinfo first (cpuid, on every OS; the flags oneDNN dispatches on); /proc/cpuinfo on Linux where
    torch has no such query. Not oneDNN's own ``_is_mkldnn_bf16_supported``: it is true on any AVX-512 CPU,
    where bf16 is emulated, and says nothing about speed."""
    query = getattr(torch.cpu, "get_capabilities", None)
    if query is not None:
        try:
            return frozenset(k for k, v in query().items() if v is True), "torch.cpu.get_capabilities"
        except (RuntimeError, AttributeError):
            pass
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    if line.startswith(("flags", "Features")):
                        return frozenset(line.partition(":")[2].split()), "/proc/cpuinfo"
        except OSError:
            pass
    return frozenset(), ""


def native_bf16(flags: frozenset[str]) -> str | None:
    """The name of the native bf16 instructions among ``flags`` (x86), None without any."""
    return next((name for flag, name in _NATIVE_BF16 if flag in flags), None)


@dataclass(frozen=True)
class AmpChoice:
    """What autocast runs: ``mode`` False (float32), "bf16" or "fp16"; ``reason`` says why (for "auto")."""

    mode: bool | str
    reason: str = ""

    @property
    def line(self) -> str:
        return f"amp auto: {self.mode or 'fp32'} ({self.reason})"


def choose_amp(amp: bool | str, device: torch.device) -> AmpChoice:
    """The precision ``amp`` means on ``device``: off for a falsy value; on CPU bf16 for any other (CPU autocast
    has no fast fp16); on CUDA fp16 for True/"fp16", bf16 for "bf16". ``"auto"``: bf16 on a CPU with native bf16
    (AMX-BF16, AVX512-BF16), float32 on other CPUs (where bf16 is slower than float32) and on MPS; on CUDA bf16
    where the GPU supports it, else fp16."""
    if amp not in AMP_MODES:
        raise ConfigError(f"--amp must be off, on, bf16, fp16 or auto, got {amp!r}")
    if amp != "auto":
        if not amp:
            return AmpChoice(False)
        return AmpChoice("bf16" if device.type == "cpu" or amp == "bf16" else "fp16")
    if device.type == "cuda":
        with torch.cuda.device(device):
            name = torch.cuda.get_device_name()
            # Not counting emulation: a pre-Ampere GPU runs bf16 autocast, but slower than fp16.
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        return AmpChoice("bf16", f"{name} supports bf16") if native else AmpChoice("fp16", f"{name} has no native bf16")
    if device.type != "cpu":
        return AmpChoice(False, f"{device.type}: autocast is not known to be faster there; --amp on to try")
    flags, source = cpu_flags()
    if not source:
        return AmpChoice(False, "this CPU's features could not be read; --amp bf16 to force bf16")
    if not torch.backends.mkldnn.is_available():
        return AmpChoice(False, "this torch has no oneDNN, whose kernels make CPU bf16 fast")
    name = native_bf16(flags)
    if name is None and flags & {"bf16", "sve_bf16"}:  # Arm's BF16 extension: how fast oneDNN runs it is unmeasured
        return AmpChoice(False, "this Arm CPU's bf16 is not known to beat fp32; --amp bf16 to try it")
    if name is None:
        return AmpChoice(False, "no native bf16 on this CPU: bf16 would be slower")
    return AmpChoice("bf16", f"this CPU has {name}")


def resolve_amp(amp: bool | str, device: torch.device, log: Callable[[str], None] | None = None) -> bool | str:
    """``amp`` as the mode autocast runs on ``device`` (False, "bf16" or "fp16"); for "auto", ``log`` hears the
    choice and why, in one line."""
    choice = choose_amp(amp, device)
    if amp == "auto" and log is not None:
        log(choice.line)
    return choice.mode


def autocast_context(device: torch.device, amp: bool | str):
    """Autocast in the precision :func:`choose_amp` gives ``amp`` on ``device``; none when that is float32."""
    mode = choose_amp(amp, device).mode
    if not mode:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if mode == "bf16" else torch.float16)
