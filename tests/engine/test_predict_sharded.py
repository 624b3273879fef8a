"""Sharded prediction under torchrun (gloo, CPU): two processes give the output of one, and a run killed mid-way
and resumed holds every source exactly once."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch.distributed.run") is None
                                or not torch.distributed.is_available(), reason="torch.distributed / torchrun is not available")

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _torchrun(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "-m", "retinadet", *args]


def _run(cmd: list[str], cwd: Path, timeout: int = 240) -> str:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV, cwd=cwd,
                            start_new_session=True)  # on a timeout the launcher and its workers go together
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(cmd[:6])} did not finish in {timeout} s:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-4000:]
    return out


def _results(run: Path) -> list[tuple]:
    rows = json.loads((run / "predictions.json").read_text())
    return sorted((r["source"], r["class_name"], round(r["score"], 4), *[round(v, 2) for v in r["bbox"]]) for r in rows)


@pytest.fixture(scope="module")
def images(tiny_data, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sources") / "images"
    folder.mkdir()
    for k, src in enumerate(sorted((tiny_data / "train").glob("*.jpg")) * 3):  # 24 sources
        shutil.copy(src, folder / f"{k:03d}_{src.name}")
    return folder


def _predict_args(weights: Path, source: Path, name: str) -> list[str]:
    return ["predict", "--weights", str(weights), "--source", str(source), "--conf", "0.01", "--batch", "1", "--nosave",
            "--save-csv", "--device", "cpu", "--project", "runs", "--name", name]


@pytest.fixture(scope="module")
def one(trained_run, images, tmp_path_factory) -> Path:
    """The run of one process over every source, which the sharded runs must reproduce."""
    cwd = tmp_path_factory.mktemp("single")
    _run([sys.executable, "-m", "retinadet", *_predict_args(trained_run / "weights" / "last.pt", images, "one")], cwd)
    return cwd / "runs" / "predict" / "one"


def test_two_processes_equal_one(trained_run, images, one, tmp_path):
    weights = trained_run / "weights" / "last.pt"
    out = _run(_torchrun(_predict_args(weights, images, "two")), tmp_path)
    two = tmp_path / "runs" / "predict" / "two"
    assert sorted(p.name for p in (tmp_path / "runs" / "predict").iterdir()) == ["two"]  # one folder for both ranks
    assert _results(two) == _results(one) and len(_results(one)) > 0
    lines = [json.loads(x) for x in (two / "predictions.jsonl").read_text().splitlines()]
    assert sorted(e["source"] for e in lines) == sorted(str(p) for p in images.iterdir())  # each source once
    assert not list(two.glob("predictions.rank*.jsonl"))  # merged into one
    assert (two / "predictions.csv").read_text().count("\n") == (one / "predictions.csv").read_text().count("\n")
    assert out.count("results saved to") == 1  # the first process speaks for the run


def test_killed_sharded_run_resumes_with_every_source_once(trained_run, images, one, tmp_path):
    weights = trained_run / "weights" / "last.pt"
    run = tmp_path / "runs" / "predict" / "cut"
    proc = subprocess.Popen(_torchrun(_predict_args(weights, images, "cut")), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=ENV, cwd=tmp_path, start_new_session=True)
    deadline = time.monotonic() + 200
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        done = sum(len(p.read_text().splitlines()) for p in run.glob("predictions.rank*.jsonl")) if run.is_dir() else 0
        if done >= 4:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # kill -9: no handler runs, lines may be cut mid-write
    proc.wait()
    assert 4 <= done < 24, f"the run was not caught mid-way ({done} of 24 lines)"
    assert not (run / "predictions.json").exists()
    out = _run(_torchrun(["predict", "--resume", str(run)]), tmp_path)
    assert "input(s) already done" in out
    lines = [json.loads(x) for x in (run / "predictions.jsonl").read_text().splitlines()]
    sources = [e["source"] for e in lines]
    assert sorted(sources) == sorted(str(p) for p in images.iterdir())  # every source exactly once
    assert _results(run) == _results(one)
