"""Exact resume: stop mid-epoch, resume from last.pt, end with the same weights as an uninterrupted run."""

from __future__ import annotations

import pytest
import torch

from retinadet.engine.train import train
from retinadet.errors import ConfigError, RetinadetError

OPTS = dict(epochs=2, batch=4, imgsz=64, workers=0, deterministic=True, seed=5, ema=True, plots=False, progress=False)


def _weights(path):
    ck = torch.load(path, weights_only=True)
    return ck["model"], ck.get("train_model")


def test_interrupted_then_resumed_equals_uninterrupted(tiny_data, tmp_path):
    full = train(data=str(tiny_data), project=str(tmp_path), name="full", **OPTS)
    assert not full.interrupted and full.epochs_completed == 2

    # 8 images / batch 4 = 2 iterations per epoch: stop after 3 steps = epoch 2, iteration 1.
    part = train(data=str(tiny_data), project=str(tmp_path), name="part", max_iters=3, **OPTS)
    assert part.interrupted
    state = torch.load(part.last, weights_only=True)["train_state"]
    assert (state["epoch"], state["iteration"]) == (1, 1)
    assert not torch.equal(_weights(part.last)[1]["head.cls_logits.weight"], _weights(full.last)[1]["head.cls_logits.weight"])

    resumed = train(resume=str(part.save_dir), workers=0, progress=False)
    assert resumed.save_dir == part.save_dir and not resumed.interrupted and resumed.epochs_completed == 2
    (ema_a, raw_a), (ema_b, raw_b) = _weights(full.last), _weights(resumed.last)
    for a, b in ((ema_a, ema_b), (raw_a, raw_b)):
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    # The resumed run's val metrics match too, and results.csv has one row per epoch.
    assert resumed.metrics["AP"] == full.metrics["AP"]
    rows = (part.save_dir / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 3
    log = (part.save_dir / "train.log").read_text()
    assert (f"max_iters=3 reached: stopped after epoch 2 iteration 1/2; saved {part.last}; "
            f"resume with: retinadet train --resume {part.save_dir}") in log
    assert f"resuming {part.save_dir} at epoch 2, iteration 1/2" in log
    with pytest.raises(ConfigError, match="already finished"):
        train(resume=str(full.save_dir))
    with pytest.raises(RetinadetError, match="not a last.pt"):
        train(resume=str(full.best))


def test_sigterm_finishes_step_and_saves_position(tiny_data, tmp_path, monkeypatch):
    import os
    import signal

    from retinadet.engine.trainer import Trainer

    real = Trainer.run_step
    calls = {"n": 0}

    def step_then_signal(self, batch):
        real(self, batch)
        calls["n"] += 1
        if calls["n"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-run, as from a job scheduler

    monkeypatch.setattr(Trainer, "run_step", step_then_signal)
    before = signal.getsignal(signal.SIGTERM)
    res = train(data=str(tiny_data), project=str(tmp_path), name="sig", **OPTS)
    assert res.interrupted and "SIGTERM" in res.stop_reason and calls["n"] == 1
    ck = torch.load(res.last, weights_only=True)
    assert (ck["train_state"]["epoch"], ck["train_state"]["iteration"]) == (0, 1)
    assert not (res.save_dir / "weights" / "best.pt").exists()
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is restored


def test_progressive_resizing_is_resumed_exactly(tiny_data, tmp_path):
    # Epoch 1 of 2 trains at 64 px (96 * 0.67), epoch 2 at 96 px; the run stops inside the small epoch.
    opts = {**OPTS, "imgsz": 96, "ema": False, "progressive": 0.5, "progressive_scale": 0.67}
    full = train(data=str(tiny_data), project=str(tmp_path), name="full", **opts)
    assert "progressive resizing: epochs 1-1 train at 64px, then 96px" in (full.save_dir / "train.log").read_text()
    part = train(data=str(tiny_data), project=str(tmp_path), name="part", max_iters=1, **opts)
    assert part.interrupted
    resumed = train(resume=str(part.save_dir), workers=0, progress=False)
    # The interrupted call's max_iters=1 is not inherited: the resumed call runs to the end.
    assert not resumed.interrupted and resumed.epochs_completed == 2
    a, b = _weights(full.last)[0], _weights(resumed.last)[0]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    plain = train(data=str(tiny_data), project=str(tmp_path), name="plain", **{**opts, "progressive": 0.0})
    assert not torch.equal(_weights(plain.last)[0]["head.cls_logits.weight"], a["head.cls_logits.weight"])
