"""Inputs a user gets wrong: exit code 2, one "Error:" line, no traceback, nothing half-written left as valid."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from retinadet.model import RetinaNet


def _one_error_line(res, *needles: str) -> str:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1, res.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _no_weights(project):
    return not list(project.rglob("*.pt"))


def test_missing_dataset_path(cli, tmp_path):
    res = cli(["train", "--data", str(tmp_path / "nope"), "--project", str(tmp_path / "runs")])
    _one_error_line(res, "nope", "not found")
    assert not (tmp_path / "runs").exists()  # checked before the run folder is made


def test_empty_dataset(cli, tmp_path):
    for split in ("train", "valid"):
        (tmp_path / "ds" / split).mkdir(parents=True)
        (tmp_path / "ds" / split / "_annotations.coco.json").write_text(json.dumps(
            {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    res = cli(["train", "--data", str(tmp_path / "ds"), "--project", str(tmp_path / "runs")])
    _one_error_line(res, "empty")
    assert not (tmp_path / "runs").exists()


def test_unknown_preset(cli, tiny_data, tmp_path):
    res = cli(["train", "--data", str(tiny_data), "--model", "fastt", "--project", str(tmp_path / "runs")])
    _one_error_line(res, "unknown preset 'fastt'", "fast")
    assert not (tmp_path / "runs").exists()


def test_no_images_at_source(cli, trained_run, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    res = cli(["predict", "--weights", str(trained_run / "weights" / "best.pt"), "--source", str(tmp_path / "empty"),
               "--project", str(tmp_path / "out")])
    _one_error_line(res, "no images found")
    assert not (tmp_path / "out").exists()


def test_class_count_mismatch(cli, trained_run, tiny_data, tmp_path):
    ds = tmp_path / "two"
    shutil.copytree(tiny_data / "valid", ds / "valid")
    ann = json.loads((ds / "valid" / "_annotations.coco.json").read_text())
    ann["categories"] = ann["categories"][:2]
    ann["annotations"] = [a for a in ann["annotations"] if a["category_id"] <= 2]
    (ds / "valid" / "_annotations.coco.json").write_text(json.dumps(ann))
    res = cli(["val", "--weights", str(trained_run / "weights" / "best.pt"), "--data", str(ds),
               "--project", str(tmp_path / "out")])
    _one_error_line(res, "class-count mismatch", "5 classes", "2")
    assert not list((tmp_path / "out").rglob("metrics.json"))


def test_foreign_checkpoint(cli, tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, path)
    res = cli(["val", "--weights", str(path), "--project", str(tmp_path / "out")])
    _one_error_line(res, "retinadet weights import")


def test_out_of_memory(cli, tiny_data, tmp_path, monkeypatch):
    def oom(self, *a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(RetinaNet, "forward", oom)
    res = cli(["train", "--data", str(tiny_data), "--imgsz", "64", "--batch", "4", "--workers", "0",
               "--project", str(tmp_path / "runs")])
    _one_error_line(res, "out of memory", "--batch", "--imgsz")
    assert _no_weights(tmp_path / "runs")


def test_non_finite_loss_stops_and_keeps_last(cli, tiny_data, tmp_path, monkeypatch):
    """One good epoch, then NaN losses: the run stops naming the likely causes; last.pt is the good one
    and no best.pt from the failed epoch appears."""
    real = RetinaNet.compute_loss
    calls = {"n": 0}

    def flaky(self, *a, **k):
        out = real(self, *a, **k)
        calls["n"] += 1
        if calls["n"] > 2:  # epoch 1 (2 iterations) is fine
            out = {k: v * float("nan") for k, v in out.items()}
        return out

    monkeypatch.setattr(RetinaNet, "compute_loss", flaky)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"max_bad_steps": 2, "plots": False, "progress": False}))
    res = cli(["train", "--config", str(cfg), "--data", str(tiny_data), "--imgsz", "64", "--batch", "4", "--workers", "0",
               "--epochs", "3", "--project", str(tmp_path / "runs")])
    line = _one_error_line(res, "non-finite", "learning rate", "AMP", "bad boxes")
    run = tmp_path / "runs" / "train" / "exp"
    last = torch.load(run / "weights" / "last.pt", weights_only=True)
    assert last["epoch"] == 1 and all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    best = torch.load(run / "weights" / "best.pt", weights_only=True)
    assert best["epoch"] == 1
    assert "last.pt" in line
    assert "non-finite loss, step skipped" in (run / "train.log").read_text()


@pytest.mark.parametrize("bad", [["--epochs", "0"], ["--batch", "0"], ["--freeze", "7"], ["--trainable-layers", "6"],
                                 ["--progressive", "1.5"], ["--progressive-scale", "0"]])
def test_bad_flags(cli, tmp_path, bad):
    res = cli(["train", *bad, "--project", str(tmp_path / "runs")])
    _one_error_line(res)
    assert not (tmp_path / "runs").exists()
