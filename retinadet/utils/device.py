"""Devices and mixed precision: the one place that decides where and in what precision a model runs."""

from __future__ import annotations

import contextlib

import torch

from retinadet.errors import ConfigError


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


def autocast_context(device: torch.device, amp: bool | str):
    """bf16 autocast on CPU (fast on AVX512-BF16/AMX), fp16 or bf16 on CUDA; off when amp is falsy."""
    if not amp:
        return contextlib.nullcontext()
    if device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)
