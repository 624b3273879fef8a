"""``train --autoanchor``: low anchor coverage of the training boxes refits the anchors, recorded in the checkpoint;
fine-tuning from --weights keeps the weights' anchors unless asked; a resumed run keeps its checkpoint's."""

from __future__ import annotations

import torch

from retinadet.engine.config import TrainConfig
from retinadet.engine.datasets import train_val_splits
from retinadet.engine.train import _model_config, train
from retinadet.model import resolve_model_config

TINY = dict(epochs=1, batch=4, imgsz=64, workers=0, plots=False, progress=False)


def _anchors(path) -> dict:
    return torch.load(path, weights_only=True)["model_config"]["anchors"]


def test_low_coverage_refits_and_the_checkpoint_records_it(tiny_data, tmp_path, cli):
    res = train(data=str(tiny_data), project=str(tmp_path), name="fit", **TINY)
    line = next(x for x in (res.save_dir / "train.log").read_text().splitlines() if x.startswith("autoanchor:"))
    assert "training boxes with ratios" in line and " -> " in line, line
    before, after = (float(v.rstrip("%")) for v in line.split(" for ")[1].split(" of ")[0].split(" -> "))
    assert after > before
    saved = _anchors(res.last)
    preset = resolve_model_config("fast").anchors
    assert (saved["ratios"], saved["scales"]) != (preset.ratios, preset.scales)
    assert len(saved["ratios"]) * len(saved["scales"]) == preset.num_anchors and f"{saved['ratios']}" in line

    # Fine-tuning from those weights (through the CLI) keeps them and says why in one line.
    out = cli(["train", "--data", str(tiny_data), "--weights", str(res.last), "--epochs", "1", "--batch", "4",
               "--imgsz", "64", "--workers", "0", "--project", str(tmp_path), "--name", "ft", "--no-plots"])
    assert out.exit_code == 0, out.output + repr(out.exception)
    log = (tmp_path / "train" / "ft" / "train.log").read_text()
    assert "autoanchor: off when fine-tuning from --weights" in log
    assert _anchors(tmp_path / "train" / "ft" / "weights" / "last.pt") == saved


def test_the_decision_rules(tiny_data):
    train_data = train_val_splits(str(tiny_data), None, 0)[0]
    preset = resolve_model_config("fast")
    weights = {"model_config": preset.to_dict()}
    fitted, notes, _ = _model_config(TrainConfig(data=str(tiny_data), imgsz=64), 3, None, train_data)
    assert fitted.anchors.ratios != preset.anchors.ratios and notes[-1].startswith("autoanchor:")
    # Off: the preset's anchors, no line.
    off, notes, _ = _model_config(TrainConfig(data=str(tiny_data), imgsz=64, autoanchor=False), 3, None, train_data)
    assert off.anchors == preset.anchors and not any("autoanchor" in n for n in notes)
    # Fine-tuning: kept by default, fitted when asked explicitly.
    kept, notes, _ = _model_config(TrainConfig(data=str(tiny_data), imgsz=64), 3, weights, train_data)
    assert kept.anchors == preset.anchors and any("off when fine-tuning" in n for n in notes)
    asked, _, _ = _model_config(TrainConfig(data=str(tiny_data), imgsz=64, autoanchor=True), 3, weights, train_data)
    assert asked.anchors == fitted.anchors
    # Asked, but the weights' heads have another anchor count: not applied.
    other = preset.replace({"anchors.ratios": [1.0]}).to_dict()
    mismatch, notes, _ = _model_config(TrainConfig(data=str(tiny_data), model="fast", imgsz=64, autoanchor=True), 3,
                                    {"model_config": other}, train_data)
    assert mismatch.anchors == preset.anchors and any("anchors per location" in n for n in notes)
    # Resumed: the checkpoint's anchors, whatever a fit would give now.
    resumed, _, _ = _model_config(TrainConfig(data=str(tiny_data), imgsz=64), 3, None, train_data, preset.to_dict())
    assert resumed.anchors == preset.anchors
    # Covered at the full input size: kept, with the coverage in the line.
    full, notes, _ = _model_config(TrainConfig(data=str(tiny_data)), 3, None, train_data)
    assert full.anchors == preset.anchors and any("anchors kept" in n for n in notes)
