"""Training options end to end: --trainable-layers (and its deprecated alias --freeze / freeze=), and
early stopping on val AP (--patience)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import retinadet.engine.hooks as hooks
from retinadet.engine.config import FREEZE_DEPRECATED, resolve_config
from retinadet.engine.train import train
from retinadet.errors import ConfigError
from retinadet.utils.files import read_csv

ONE_STEP = dict(batch=4, imgsz=64, workers=0, max_iters=1, plots=False, progress=False)
DEPRECATED = "--freeze is deprecated"


def _optimized_and_layers(last) -> tuple[int, int]:
    """How many parameter tensors the optimizer updates, and the model's backbone.trainable_layers."""
    ck = torch.load(last, weights_only=True)
    return sum(len(g["params"]) for g in ck["optimizer"]["param_groups"]), ck["model_config"]["backbone"]["trainable_layers"]


def test_trainable_layers_flag_and_the_freeze_alias(cli, tiny_data, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"max_iters": 1, "plots": False, "progress": False}))
    base = ["train", "--config", str(config), "--data", str(tiny_data), "--batch", "4", "--imgsz", "64", "--workers", "0",
            "--project", str(tmp_path)]
    new = cli([*base, "--trainable-layers", "2", "--name", "new"])
    assert new.exit_code == 0, new.output
    assert DEPRECATED not in new.output
    old = cli([*base, "--freeze", "2", "--name", "old"])
    assert old.exit_code == 0, old.output
    assert old.output.count(DEPRECATED) == 1 and "--trainable-layers" in old.output
    py = train(data=str(tiny_data), project=str(tmp_path), name="py", freeze=2, **ONE_STEP)
    assert capsys.readouterr().err.count(DEPRECATED) == 1
    full = train(data=str(tiny_data), project=str(tmp_path), name="full", **ONE_STEP)
    assert DEPRECATED not in capsys.readouterr().err

    frozen = _optimized_and_layers(tmp_path / "train" / "new" / "weights" / "last.pt")
    assert frozen[1] == 2
    assert _optimized_and_layers(tmp_path / "train" / "old" / "weights" / "last.pt") == frozen
    assert _optimized_and_layers(py.last) == frozen
    everything = _optimized_and_layers(full.last)
    assert everything[1] == 5 and everything[0] > frozen[0]  # the frozen stages are not optimized


def test_freeze_in_yaml_is_renamed_once(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"freeze": 3}))
    assert resolve_config(config).trainable_layers == 3
    assert capsys.readouterr().err == FREEZE_DEPRECATED + "\n"
    assert resolve_config(config, trainable_layers=4).trainable_layers == 4  # the flag wins over the file
    with pytest.raises(ConfigError, match="disagree"):
        resolve_config(freeze=3, trainable_layers=4)
    with pytest.raises(ConfigError, match="max_iters must be >= 1"):
        resolve_config(max_iters=0)


def test_patience_stops_after_validations_without_gain(tiny_data, tmp_path, monkeypatch):
    real = hooks.evaluate
    aps = iter([0.5, 0.4, 0.3])

    def scripted(*args, **kwargs):
        result = real(*args, **kwargs)
        result.stats = {**result.stats, "AP": next(aps)}
        return result

    monkeypatch.setattr(hooks, "evaluate", scripted)
    res = train(data=str(tiny_data), project=str(tmp_path), epochs=3, patience=1, batch=4, imgsz=64, workers=0,
                plots=False, progress=False)
    reason = "early stop: val AP did not improve for 1 validations"
    assert (res.epochs_completed, res.interrupted, res.stop_reason, res.best_fitness) == (2, False, reason, 0.5)
    log = (res.save_dir / "train.log").read_text().splitlines()
    at = log.index(reason)
    assert log[at - 1].startswith("epoch 2/3:") and log[at + 1] == f"done: 2 epochs; best val AP 0.5000; results in {res.save_dir}"
    assert "*best*" in next(line for line in log if line.startswith("epoch 1/3:"))
    assert torch.load(res.best, weights_only=True)["epoch"] == 1 and torch.load(res.last, weights_only=True)["epoch"] == 2
    header, rows = read_csv(res.save_dir / "results.csv")
    assert [r[0] for r in rows] == ["1", "2"] and [float(r[header.index("AP")]) for r in rows] == [0.5, 0.4]
    assert json.loads((res.save_dir / "val" / "metrics.json").read_text())["AP"] == 0.4  # the last validation
