"""Checkpoint save/load, safetensors round trip, ImageNet backbone files and the `retinadet weights` CLI."""

import os

import pytest
import torch
from click.testing import CliRunner

from retinadet.cli import main
from retinadet.errors import CheckpointError
from retinadet.model.backbones import build_backbone
from retinadet.model.config import BackboneConfig
from retinadet.weights import (
    build_from_checkpoint,
    export_safetensors,
    load_checkpoint,
    load_safetensors_checkpoint,
    read_weights,
    save_checkpoint,
)


@pytest.fixture(scope="module")
def probe():
    g = torch.Generator().manual_seed(3)
    return torch.randn(1, 3, 128, 160, generator=g)


def _raw(ckpt, x):
    model, names = build_from_checkpoint(ckpt)
    with torch.no_grad():
        cls_logits, deltas, anchors, _ = model.forward_raw(x)
    return cls_logits, deltas, anchors, names


def test_checkpoint_save_is_atomic_and_loads_back(tmp_path, seed_ckpt):
    path = tmp_path / "sub" / "model.pt"
    save_checkpoint(path, {**seed_ckpt, "epoch": 7, "metrics": {"mAP": 0.5}})
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"], "no temp file left behind"
    ckpt = load_checkpoint(path)
    assert ckpt["format"] == "retinadet" and ckpt["format_version"] == 1 and ckpt["epoch"] == 7
    assert set(ckpt["versions"]) == {"retinadet", "torch", "torchvision"}
    assert ckpt["model_config"] == seed_ckpt["model_config"] and ckpt["class_names"] == ["a", "b", "c"]
    with pytest.raises(CheckpointError, match="lacks model_config"):
        save_checkpoint(tmp_path / "bad.pt", {"model": {}, "class_names": []})


def test_safetensors_round_trip_gives_identical_outputs(tmp_path, seed_ckpt, probe):
    out = export_safetensors({**seed_ckpt, "metrics": {"mAP": torch.tensor(0.25)}}, tmp_path / "m.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"], "written atomically, no temp file left behind"
    info = read_weights(out)
    assert info.kind == "retinadet" and info.container == "safetensors" and info.metrics == {"mAP": 0.25}
    back = load_safetensors_checkpoint(out)
    assert back["class_names"] == seed_ckpt["class_names"] and back["model_config"] == seed_ckpt["model_config"]
    a = _raw(seed_ckpt, probe)
    b = _raw(back, probe)
    for x, y in zip(a[:3], b[:3]):
        assert torch.equal(x, y)
    assert a[3] == b[3]


def test_backbone_file_loads_and_bad_keys_are_named(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    state = resnet18().state_dict()
    good = tmp_path / "resnet18.pth"
    torch.save(state, good)
    info = read_weights(good)
    assert info.kind == "backbone" and info.variant == "resnet18"
    backbone = build_backbone(BackboneConfig(name="resnet18", norm="bn", weights=str(good)))
    assert torch.equal(backbone.body.state_dict()["conv1.weight"], state["conv1.weight"])
    broken = dict(state)
    broken["layer2.0.conv1.weight_typo"] = broken.pop("layer2.0.conv1.weight")
    bad = tmp_path / "broken.pth"
    torch.save(broken, bad)
    with pytest.raises(CheckpointError, match=r"layer2\.0\.conv1\.weight") as exc:
        build_backbone(BackboneConfig(name="resnet18", norm="bn", weights=str(bad)))
    assert "broken.pth" in str(exc.value)


def test_cli_import_info_export(tmp_path, seed_dir, probe):
    runner = CliRunner()
    src = str(seed_dir / "seed_resnet18_module.pt")
    out = str(tmp_path / "seed.pt")

    result = runner.invoke(main, ["weights", "info", src])
    assert result.exit_code == 0, result.output
    assert "seed_module" in result.output and "seed_resnet18" in result.output and "classes:   3" in result.output

    result = runner.invoke(main, ["weights", "import", src, "--from", "seed", "--classes", "rbc,wbc,platelets", "-o", out])
    assert result.exit_code == 0, result.output
    assert "seed_resnet18" in result.output and os.path.isfile(out)

    result = runner.invoke(main, ["weights", "info", out])
    assert result.exit_code == 0, result.output
    assert "retinadet checkpoint" in result.output and "rbc, wbc, platelets" in result.output

    st = str(tmp_path / "seed.safetensors")
    result = runner.invoke(main, ["weights", "export", out, "--format", "safetensors", "-o", st])
    assert result.exit_code == 0, result.output
    a = _raw(load_checkpoint(out), probe)
    b = _raw(load_safetensors_checkpoint(st), probe)
    assert all(torch.equal(x, y) for x, y in zip(a[:3], b[:3])) and b[3] == ["rbc", "wbc", "platelets"]

    result = runner.invoke(main, ["weights", "import", src, "--from", "auto", "-o", str(tmp_path / "x.pt")])
    assert result.exit_code == 2 and "class names" in result.output
    result = runner.invoke(main, ["weights", "info", str(tmp_path / "nope.pt")])
    assert result.exit_code == 2 and "nope.pt: no such file" in result.output
