"""``amp="auto"``: the choice from the CPU's flags (faked), the line that says it, and that the choice reaches
autocast in training, validation during training, ``Detector.val``, ``predict`` and ``Detector.predict``."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest
import torch

import retinadet.engine.hooks as hooks
import retinadet.utils.device as device_mod
from retinadet.engine.config import TrainConfig
from retinadet.errors import ConfigError
from retinadet.utils.device import autocast_context, choose_amp, cpu_flags, native_bf16, resolve_amp

CPU = torch.device("cpu")
BF16_LINE = "amp auto: bf16 (this CPU has AVX512-BF16)"
FP32_LINE = "amp auto: fp32 (no native bf16 on this CPU: bf16 would be slower)"


def fake_cpu(monkeypatch, *flags: str, source: str = "test") -> None:
    monkeypatch.setattr(device_mod, "cpu_flags", lambda: (frozenset(flags), source))


def test_auto_is_bf16_only_where_the_cpu_has_native_bf16(monkeypatch):
    fake_cpu(monkeypatch, "avx2", "avx512f", "avx512bw", "avx512_bf16")
    assert choose_amp("auto", CPU).mode == "bf16" and choose_amp("auto", CPU).line == BF16_LINE
    fake_cpu(monkeypatch, "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
    assert choose_amp("auto", CPU).line == "amp auto: bf16 (this CPU has AMX-BF16)"
    # Plain AVX-512 (bf16 emulated by conversions: slower than float32), AVX2 only, an Arm CPU without BF16.
    for flags in (("avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq"), ("avx2", "fma"), ("neon", "asimd")):
        fake_cpu(monkeypatch, *flags)
        assert choose_amp("auto", CPU).mode is False and choose_amp("auto", CPU).line == FP32_LINE, flags
    fake_cpu(monkeypatch, "asimd", "bf16", "i8mm")  # Arm's BF16 extension: float32 until measured, and how to try
    assert choose_amp("auto", CPU).line == "amp auto: fp32 (this Arm CPU's bf16 is not known to beat fp32; --amp bf16 to try it)"
    fake_cpu(monkeypatch, source="")  # nothing could be read: float32, and how to force bf16
    assert choose_amp("auto", CPU).line == "amp auto: fp32 (this CPU's features could not be read; --amp bf16 to force bf16)"
    fake_cpu(monkeypatch, "avx512_bf16")
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert choose_amp("auto", CPU).mode is False and "no oneDNN" in choose_amp("auto", CPU).reason


def test_explicit_values_keep_their_meaning_and_bad_ones_fail(monkeypatch):
    fake_cpu(monkeypatch)  # no bf16: an explicit bf16 is still bf16 (the user asked for it)
    assert [choose_amp(a, CPU).mode for a in (False, True, "bf16", "fp16")] == [False, "bf16", "bf16", "bf16"]
    with pytest.raises(ConfigError, match="--amp must be off, on, bf16, fp16 or auto, got 'fast'"):
        choose_amp("fast", CPU)
    assert TrainConfig.from_dict({"amp": "auto"}).amp == "auto"
    with pytest.raises(ConfigError, match="or auto, got 'fast'"):
        TrainConfig.from_dict({"amp": "fast"})


def test_auto_on_cuda_is_bf16_where_supported_else_fp16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Test GPU")
    gpu = torch.device("cuda", 0)
    for native, line in ((True, "amp auto: bf16 (Test GPU supports bf16)"), (False, "amp auto: fp16 (Test GPU has no native bf16)")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True, n=native: n and not including_emulation)
        assert choose_amp("auto", gpu).line == line
    assert choose_amp(True, gpu).mode == "fp16" and choose_amp("bf16", gpu).mode == "bf16"
    assert choose_amp("auto", torch.device("mps")).mode is False


def test_the_flags_come_from_torch_or_proc_cpuinfo(monkeypatch):
    flags, source = cpu_flags()
    assert source and flags, "this machine's CPU features should be readable"
    if not (sys.platform.startswith("linux") and Path("/proc/cpuinfo").is_file()):
        pytest.skip("/proc/cpuinfo is Linux's")
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)  # a torch without the query
    proc, where = cpu_flags.__wrapped__()
    assert where == "/proc/cpuinfo" and proc
    if "avx2" in proc:  # x86: the kernel's flags and cpuid agree on what decides
        assert native_bf16(proc) == native_bf16(flags)


def test_the_line_is_logged_for_auto_only_and_autocast_follows(monkeypatch):
    fake_cpu(monkeypatch, "avx512_bf16")
    heard: list[str] = []
    assert resolve_amp("auto", CPU, heard.append) == "bf16" and heard == [BF16_LINE]
    assert resolve_amp(False, CPU, heard.append) is False and resolve_amp("bf16", CPU, heard.append) == "bf16"
    assert heard == [BF16_LINE]
    ctx = autocast_context(CPU, "auto")
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16
    fake_cpu(monkeypatch, "avx512f")
    assert isinstance(autocast_context(CPU, "auto"), contextlib.nullcontext)
    assert resolve_amp("auto", CPU, heard.append) is False and heard[-1] == FP32_LINE


@pytest.fixture
def autocasts(monkeypatch) -> list[tuple[str, torch.dtype]]:
    """Every autocast entered: (device type, dtype)."""
    calls: list[tuple[str, torch.dtype]] = []
    real = torch.autocast

    def spy(device_type, dtype=None, **kwargs):
        calls.append((device_type, dtype))
        return real(device_type, dtype=dtype, **kwargs)

    monkeypatch.setattr(torch, "autocast", spy)
    return calls


def test_auto_reaches_autocast_in_every_path(tiny_data, tmp_path, monkeypatch, autocasts):
    from retinadet.detector import load, predict
    from retinadet.engine.train import train

    fake_cpu(monkeypatch, "avx512_bf16")
    val_amp: list = []
    real_evaluate = hooks.evaluate

    def evaluate(*args, **kwargs):
        val_amp.append(kwargs["amp"])
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(hooks, "evaluate", evaluate)
    res = train(data=str(tiny_data), project=str(tmp_path), epochs=1, batch=4, imgsz=64, workers=0, amp="auto",
                plots=False, progress=False)
    assert BF16_LINE in (res.save_dir / "train.log").read_text().splitlines()
    assert autocasts.count(("cpu", torch.bfloat16)) >= 2 and set(autocasts) == {("cpu", torch.bfloat16)}  # the 2 steps
    assert val_amp == ["bf16"]  # validation during training runs the resolved choice

    def heard_and_cast(run) -> tuple[list[str], int]:
        autocasts.clear()
        heard: list[str] = []
        run(heard.append)
        return heard, autocasts.count(("cpu", torch.bfloat16))

    det = load(res.last)
    heard, casts = heard_and_cast(lambda log: det.val(amp="auto", plots=False, save_dir=tmp_path / "val", log=log))
    assert BF16_LINE in heard and casts >= 1
    images = tiny_data / "test"
    heard, casts = heard_and_cast(lambda log: predict(res.last, images, amp="auto", save=False, progress=False,
                                                      project=str(tmp_path), log=log))
    assert heard.count(BF16_LINE) == 1 and casts >= 1
    one = next(images.glob("*.jpg"))
    assert heard_and_cast(lambda log: det.predict(one, amp="auto"))[1] == 1
    fake_cpu(monkeypatch, "avx512f")  # without native bf16 the same call runs in float32
    assert heard_and_cast(lambda log: det.predict(one, amp="auto"))[1] == 0


def test_cli_amp_choices(cli):
    for command in ("train", "val", "predict"):
        res = cli([command, "--amp", "fast", "--weights", "x.pt"] if command != "train" else [command, "--amp", "fast"])
        assert res.exit_code == 2 and "'auto'" in res.output, res.output
