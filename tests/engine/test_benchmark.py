"""`retinadet benchmark`: the round-robin harness (fake backends in real child processes) and the command on a
tiny trained model (eager, channels_last, TorchScript and onnxruntime, tiny inputs)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retinadet.benchmark import BACKENDS
from retinadet.engine.benchmark import BackendResult, BackendSpec, format_table, measure

FAKE = f"{__name__}:FakeRunner"


class FakeRunner:
    """A backend that sleeps ``sleep_s`` a run, holds ``hold_mb`` of resident memory, and writes when each run
    started (a system-wide clock) to ``stamps``; ``fail`` breaks it at 'start', ends its process in 'run' (or
    'kill's it), or raises in 'ap'."""

    def __init__(self, stamps: str, sleep_s: float = 0.02, hold_mb: int = 0, fail: str | None = None, ap: float = 0.5):
        if fail == "start":
            raise ValueError("no such engine here")
        self.held = b"\x01" * (hold_mb * 2**20)  # written, so resident (a zeroed buffer may stay unmapped)
        self.stamps, self.sleep_s, self.fail, self.value = stamps, sleep_s, fail, ap

    def run(self) -> None:
        with open(self.stamps, "a") as fh:
            fh.write(f"{time.monotonic()}\n")
        if self.fail == "run":
            os._exit(3)
        if self.fail == "kill":  # as the kernel's out-of-memory killer does
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(self.sleep_s)

    def ap(self) -> float:
        if self.fail == "ap":
            raise RuntimeError("no labels")
        return self.value


def _stamps(path: Path) -> list[float]:
    return [float(line) for line in path.read_text().split()]


def test_round_robin_timing_and_each_childs_own_peak(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    specs = [BackendSpec("small", FAKE, {"stamps": str(a), "ap": 0.25}),
             BackendSpec("big", FAKE, {"stamps": str(b), "hold_mb": 200, "sleep_s": 0.06}, status="refused", note="gate")]
    small, big = measure(specs, batch=2, runs=3, warmup=1, with_ap=True, log=lambda *_: None)
    # Warm-up and timed runs alternate between the children: a b a b ...
    events = sorted([(t, "a") for t in _stamps(a)] + [(t, "b") for t in _stamps(b)])
    assert "".join(k for _, k in events) == "ab" * 4
    assert len(small.times) == len(big.times) == 3
    assert all(0.02 <= t < 1.0 for t in small.times) and all(0.06 <= t < 1.0 for t in big.times)
    assert big.ms_per_image > small.ms_per_image >= 10.0  # 20 ms a batch of 2
    assert small.images_per_s == pytest.approx(1000.0 / small.ms_per_image)
    # Each child's own peak: the 200 MB one shows them, the other does not carry them.
    assert big.peak_mb - small.peak_mb > 150
    assert (small.ap, big.ap) == (0.25, 0.5)
    assert (small.status, big.status, big.note) == ("ok", "refused", "gate")


def test_a_failing_backend_is_reported_and_the_others_still_run(tmp_path):
    specs = [BackendSpec("broken", FAKE, {"stamps": str(tmp_path / "x.txt"), "fail": "start"}),
             BackendSpec("dies", FAKE, {"stamps": str(tmp_path / "y.txt"), "fail": "run"}),
             BackendSpec("killed", FAKE, {"stamps": str(tmp_path / "v.txt"), "fail": "kill"}),
             BackendSpec("no_ap", FAKE, {"stamps": str(tmp_path / "w.txt"), "fail": "ap"}),
             BackendSpec("fine", FAKE, {"stamps": str(tmp_path / "z.txt")})]
    broken, dies, killed, no_ap, fine = measure(specs, batch=1, runs=2, warmup=0, with_ap=True, log=lambda *_: None)
    assert broken.status == "failed" and "ValueError: no such engine here" in broken.note
    assert dies.status == "failed" and dies.note == "in a timed run: its process died (exit code 3)" and dies.times == []
    assert killed.note == "in a timed run: its process was killed by signal 9 (out of memory?)"
    # Broken after its runs: the timing stays, the reason is given.
    assert no_ap.status == "failed" and no_ap.note == "measuring AP: RuntimeError: no labels" and len(no_ap.times) == 2
    assert no_ap.ap is None and no_ap.peak_mb > 0
    assert fine.status == "ok" and len(fine.times) == 2 and fine.ap == 0.5 and fine.peak_mb > 0
    table = format_table([broken, dies, killed, no_ap, fine], reference="fine")
    assert "| fine |" in table and "1.00x" in table and "failed: to start: ValueError" in table


def test_table_speedup_is_relative_to_eager():
    eager = BackendResult("eager", 1, times=[0.2, 0.1, 0.3])
    fast = BackendResult("fast", 1, times=[0.05])
    missing = BackendResult("onnxruntime", 1, "missing", "needs onnxruntime")
    lines = format_table([eager, fast, missing]).splitlines()
    assert lines[2].startswith("| eager | 200.0 | 5.00 | 1.00x |")
    assert lines[3].startswith("| fast | 50.0 | 20.00 | 4.00x |")
    assert lines[4] == "| onnxruntime | - | - | - | - | - | missing: needs onnxruntime |"


def test_the_command_and_the_exported_children_do_not_import_torch():
    code = ("import sys, retinadet.cli.benchmark, retinadet.benchmark, retinadet.engine.benchmark; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- the command on a tiny model

TINY = ["--imgsz", "64", "--runs", "2", "--warmup", "1"]


@pytest.mark.slow
def test_benchmark_on_data_times_and_scores_each_backend(cli, trained_run, tiny_data, tmp_path):
    from retinadet.detector import load

    weights = trained_run / "weights" / "best.pt"
    out = tmp_path / "bench.json"
    res = cli(["benchmark", "--weights", str(weights), "--data", str(tiny_data), *TINY, "--batch", "2",
               "--backends", "eager,channels_last,torchscript,onnxruntime,onnxruntime-int8", "--threads", "1",
               "--int8-images", "2", "--int8-max-drop", "0", "--json", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    report = json.loads(out.read_text())
    assert set(report) >= {"backends", "cpu", "threads"} and report["threads"] == 1 and report["input"][:2] == [2, 3]
    assert report["inputs"].startswith("the first 2 image(s) of val")
    assert {"avx512_bf16", "amx_bf16"} <= set(report["cpu"]["flags"]) and report["cpu"]["model"]
    rows = {b["name"]: b for b in report["backends"]}
    assert list(rows) == ["eager", "channels_last", "torchscript", "onnxruntime", "onnxruntime-int8"]
    for b in rows.values():
        assert set(b) >= {"name", "ms_per_image", "images_per_s", "peak_mb", "ap", "status", "note"}
        assert b["status"] in (("ok", "refused") if b["name"].endswith("-int8") else ("ok",)), b
        assert b["ms_per_image"] > 0 and b["images_per_s"] == pytest.approx(1000.0 / b["ms_per_image"])
        # The median of the two runs of a batch of two.
        assert b["ms_per_image"] == pytest.approx(1000.0 * sum(b["runs_s"]) / 2 / 2)
        assert b["peak_mb"] > 30 and 0.0 <= b["ap"] <= 1.0
    assert rows["eager"]["x_eager"] == 1.0
    assert rows["channels_last"]["x_eager"] == pytest.approx(rows["eager"]["ms_per_image"] / rows["channels_last"]["ms_per_image"])
    # AP is Detector.val's on the split at this size; channels_last and the exported graphs agree with it.
    direct = load(weights, device="cpu").val(str(tiny_data), imgsz=64, tile=None, plots=False, save_dir=tmp_path / "val",
                                             log=lambda *_: None)["AP"]
    assert rows["eager"]["ap"] == pytest.approx(direct, rel=1e-2)
    assert rows["channels_last"]["ap"] == pytest.approx(direct, rel=1e-2)
    assert rows["torchscript"]["ap"] == pytest.approx(direct, rel=1e-2)
    assert rows["onnxruntime"]["ap"] == pytest.approx(direct, rel=1e-2)
    # INT8: timed whatever the gate says (here: no drop allowed), judged by the gate's two APs, scored on the file timed.
    int8 = rows["onnxruntime-int8"]
    m = re.fullmatch(r"gate on val \(2 calibration images\): AP (\S+) fp32 -> (\S+) INT8(.*)", int8["note"])
    assert m, int8["note"]
    ap_fp32, ap_int8 = float(m[1]), float(m[2])
    assert ap_fp32 == pytest.approx(rows["onnxruntime"]["ap"], abs=1e-4) and ap_int8 == pytest.approx(int8["ap"], abs=1e-4)
    if abs(ap_int8 - ap_fp32) > 1e-4:  # the note rounds; a tie there may be either side of zero
        assert int8["status"] == ("ok" if ap_int8 > ap_fp32 else "refused")
    assert int8["ms_per_image"] > 0
    assert (int8["status"] == "refused") == m[3].endswith("refuses it; timed anyway")
    # The torch children hold torch; the onnxruntime one does not.
    assert rows["onnxruntime"]["peak_mb"] < rows["eager"]["peak_mb"]
    assert "| backend | ms/img | img/s | x eager | peak MB | AP |" in res.output and "| channels_last |" in res.output
    assert "1 thread(s)" in res.output and "CPU:" in res.output


@pytest.mark.slow
def test_missing_and_failing_backends_are_listed_and_the_rest_run(cli, trained_run, tmp_path, monkeypatch):
    from retinadet.export import exporter
    from retinadet.export.errors import ExportError

    def refuse(weights, fmt, *args, **kwargs):
        raise ExportError(f"backbone 'x' cannot be exported to {fmt}")

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # an import that fails, as where it is not installed
    monkeypatch.setattr(exporter, "export", refuse)
    out = tmp_path / "bench.json"
    res = cli(["benchmark", "--weights", str(trained_run / "weights" / "best.pt"), *TINY,
               "--backends", "eager,torchscript,onnxruntime", "--json", str(out)])
    assert res.exit_code == 1, res.output  # a backend failed
    assert "1 backend(s) failed: torchscript" in res.output
    rows = {b["name"]: b for b in json.loads(out.read_text())["backends"]}
    assert rows["eager"]["status"] == "ok" and rows["eager"]["ap"] is None and rows["eager"]["ms_per_image"] > 0
    assert rows["torchscript"] == {**rows["torchscript"], "status": "failed", "ms_per_image": None,
                                   "note": "backbone 'x' cannot be exported to torchscript"}
    ort = rows["onnxruntime"]
    assert ort["status"] == "missing" and ort["ms_per_image"] is None and ort["peak_mb"] is None
    assert "pip install onnxruntime" in ort["note"] and "retinadet[export]" in ort["note"]
    assert "onnx," not in ort["note"]  # only what is missing is named


def test_int8_is_quantized_without_limit_and_judged_by_the_gate(tmp_path, monkeypatch):
    """The benchmark times an INT8 model the export would refuse, and says so with both APs."""
    from retinadet.benchmark import Preparer
    from retinadet.export import int8

    calls = []

    def gate(fp32_path, **options):
        calls.append({"fp32": Path(fp32_path).name, **options})
        return {"int8_path": str(tmp_path / "model.int8.onnx"), "ap_fp32": 0.5, "ap_int8": 0.45, "split": "val",
                "calibration_images": 7, "accepted": True}

    monkeypatch.setattr(int8, "quantize_gated", gate)
    for max_drop, status in ((0.01, "refused"), (0.06, "ok")):
        prep = Preparer(None, "w.pt", tmp_path, {"threads": 1}, None, 1, "data", 7, max_drop, lambda *_: None)
        prep.files["onnx"] = str(tmp_path / "model.onnx")  # the fp32 export, already written
        spec = prep.spec("onnxruntime-int8")
        assert (spec.status, spec.options) == (status, {"path": str(tmp_path / "model.int8.onnx"), "threads": 1})
        assert spec.factory == "retinadet.benchmark:OnnxRuntimeRunner"
        assert spec.note.startswith("gate on val (7 calibration images): AP 0.5000 fp32 -> 0.4500 INT8")
        assert ("a drop of 0.0500 > 0.01: `retinadet export --int8` refuses it; timed anyway" in spec.note) == (status == "refused")
    assert calls == [{"fp32": "model.onnx", "data": "data", "images": 7, "max_drop": float("inf"),
                      "output": tmp_path / "model.int8.onnx", "log": calls[0]["log"]}] * 2


def test_bad_input_fails_with_one_line(cli, tmp_path):
    res = cli(["benchmark", "--weights", str(tmp_path / "w.pt"), "--backends", "eager,tensorrt"])
    assert res.exit_code == 2 and res.output.strip().splitlines() == [
        "Error: unknown backend 'tensorrt'; use one or more of " + ", ".join(BACKENDS)]
    res = cli(["benchmark", "--weights", str(tmp_path / "w.pt"), "--backends", "eager"])
    assert res.exit_code == 2 and res.output.strip() == f"Error: {tmp_path / 'w.pt'}: no such file"
    res = cli(["benchmark", "--weights", str(tmp_path / "w.pt"), "--runs", "0"])
    assert res.exit_code == 2 and res.output.strip() == "Error: --runs must be >= 1, got 0"
