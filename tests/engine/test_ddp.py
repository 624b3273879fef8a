"""torchrun --nproc_per_node 2 (gloo, CPU): identical weights on both ranks, files only from rank 0."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys

import pytest
import torch


@pytest.mark.skipif(importlib.util.find_spec("torch.distributed.run") is None or not torch.distributed.is_available(),
                    reason="torch.distributed / torchrun is not available")
def test_torchrun_two_processes(tiny_data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "retinadet", "train", "--data", str(tiny_data), "--epochs", "1", "--batch", "2", "--imgsz", "64",
           "--workers", "0", "--device", "cpu", "--project", str(tmp_path), "--no-plots"]
    # Own process group: on a timeout the launcher and both workers are killed together.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=200)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail("torchrun did not finish in 200 s:\n" + out[-2000:] + err[-2000:])
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    runs = sorted(p.name for p in (tmp_path / "train").iterdir())
    assert runs == ["exp"]  # one run folder: rank 1 created none
    run = tmp_path / "train" / "exp"
    log = (run / "train.log").read_text()
    assert "DDP: final weights (parameters) identical on all 2 ranks" in log, log
    assert log.count("epoch 1/1:") == 1  # one writer
    # 8 images over 2 ranks x batch 2 = 2 iterations per epoch.
    assert "1 epochs x 2 iterations" in log
    ck = torch.load(run / "weights" / "last.pt", weights_only=True)
    assert len(ck["rng"]) == 2  # both ranks' RNG states were gathered
    assert ck["metrics"]["num_detections"] >= 0 and "AP" in ck["metrics"]
