"""torchvision RetinaNet weights: import, named weights from torch's cache, end-to-end parity, fine-tuning."""

import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from retinadet.cli import main
from retinadet.errors import CheckpointError
from retinadet.model import build_model
from retinadet.weights import load_checkpoint, load_for_finetune, read_weights, resolve_weights
from retinadet.weights.torchvision_import import named_weights_path

BCCD_IMAGE = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "bccd" / "JPEGImages" / "BloodImage_00000.jpg"


def test_imported_checkpoint_keeps_coco_label_space_and_torchvision_preprocessing(tv_ckpt):
    cfg = tv_ckpt["model_config"]
    assert cfg["preset"] == "retinanet_resnet50_fpn" and cfg["num_classes"] == 91
    pre = cfg["preprocess"]
    assert (pre["min_size"], pre["max_size"], pre["size_divisible"]) == (800, 1333, 32)
    assert pre["mean"] == [0.485, 0.456, 0.406] and pre["std"] == [0.229, 0.224, 0.225]
    names = tv_ckpt["class_names"]
    assert len(names) == 91 and names[0] == "__background__" and names[1] == "person" and names[12] == "N/A"
    assert tv_ckpt["category_ids"] == list(range(91))


@pytest.fixture(scope="module")
def bccd_at_input_size(tmp_path_factory):
    """A BCCD image resized to the imported model's input size (800 x 1066) by retinadet's resampler, as a PNG.

    torchvision resizes in float without antialiasing; retinadet resizes as its training loader does
    (antialiased, on uint8). At the input size neither resizes, so both pipelines see the same pixels
    and everything after the resampler (normalisation, padding, network, decoding, the way back to the
    image's pixels) must agree."""
    if not BCCD_IMAGE.is_file():
        pytest.skip(f"BCCD image not found at {BCCD_IMAGE}")
    from PIL import Image

    from retinadet.data.images import read_image
    from retinadet.model.config import PreprocessConfig
    from retinadet.model.preprocess import resize_image, resized_size

    image = read_image(BCCD_IMAGE)
    size = resized_size(*image.shape[-2:], PreprocessConfig(min_size=800, max_size=1333))
    assert size == (800, 1066)
    resized = resize_image(image, size)
    path = tmp_path_factory.mktemp("bccd") / "bccd_800.png"
    Image.fromarray(resized.permute(1, 2, 0).numpy()).save(path)
    return path, resized.float() / 255.0


@pytest.fixture(scope="module")
def torchvision_detections(tv_file, bccd_at_input_size):
    tv, _ = tv_file
    with torch.no_grad():
        out = tv([bccd_at_input_size[1]])[0]
    assert len(out["boxes"]) > 10, "the test needs detections to compare"
    return out


def test_retinadet_load_predict_matches_torchvision(tv_file, tv_ckpt, tmp_path, torchvision_detections, bccd_at_input_size):
    """torchvision end to end vs retinadet.load(imported).predict(path), on an image at the input size."""
    import retinadet
    from retinadet.weights import save_checkpoint

    path = save_checkpoint(tmp_path / "coco.pt", tv_ckpt)
    det = retinadet.load(path).predict(str(bccd_at_input_size[0]))
    expected = torchvision_detections
    assert len(det) == len(expected["scores"])
    assert torch.equal(det.labels, expected["labels"])
    torch.testing.assert_close(det.scores, expected["scores"], atol=1e-4, rtol=0)
    # Boxes compared where scores are not near-tied: tied ones may come out in either order.
    gaps = torch.cat([expected["scores"][:-1] - expected["scores"][1:], torch.tensor([1.0])])
    distinct = (gaps > 1e-4) & torch.cat([torch.tensor([True]), gaps[:-1] > 1e-4])
    assert distinct.sum() > 10
    torch.testing.assert_close(det.boxes[distinct], expected["boxes"][distinct], atol=0.5, rtol=0)


def test_named_weights_come_from_torch_cache_without_network(tv_file, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("RETINADET_OFFLINE", "1")
    target = named_weights_path("retinanet_resnet50_fpn_coco")
    assert target.startswith(str(tmp_path / "torch-home")) and target.endswith("retinanet_resnet50_fpn_coco-eeacb38b.pth")
    with pytest.raises(CheckpointError, match="retinanet_resnet50_fpn_coco-eeacb38b.pth") as exc:
        resolve_weights("torchvision:retinanet_resnet50_fpn_coco")
    assert target in str(exc.value)
    import os
    import shutil

    os.makedirs(os.path.dirname(target))
    shutil.copy(tv_file[1], target)
    ckpt = resolve_weights("torchvision:retinanet_resnet50_fpn_coco")
    assert ckpt["model_config"]["preset"] == "retinanet_resnet50_fpn"
    assert torch.equal(ckpt["model"]["head.cls_logits.bias"], tv_file[0].head.classification_head.cls_logits.bias)
    with pytest.raises(CheckpointError, match="unknown torchvision weights"):
        resolve_weights("torchvision:nope")
    runner = CliRunner()
    out = tmp_path / "named.pt"
    result = runner.invoke(main, ["weights", "import", "torchvision:retinanet_resnet50_fpn_coco", "-o", str(out)])
    assert result.exit_code == 0 and "preset retinanet_resnet50_fpn, 91 classes" in result.output, result.output
    assert torch.equal(load_checkpoint(out)["model"]["head.cls_logits.bias"], ckpt["model"]["head.cls_logits.bias"])
    result = runner.invoke(main, ["weights", "import", "torchvision:retinanet_resnet50_fpn_coco", "--from", "seed", "-o", str(out)])
    assert result.exit_code == 2 and "named weights are torchvision's; use --from torchvision or auto" in result.output


def test_v2_is_detected(tmp_path):
    from torchvision.models.detection import retinanet_resnet50_fpn_v2

    torch.manual_seed(0)
    path = tmp_path / "v2.pth"
    torch.save(retinanet_resnet50_fpn_v2(weights=None, weights_backbone=None).state_dict(), path)
    info = read_weights(path)
    assert info.kind == "torchvision" and info.variant == "v2" and info.preset == "retinanet_resnet50_fpn_v2"
    assert info.num_classes == 91


def test_finetune_from_coco_checkpoint_to_three_classes(tv_ckpt):
    model = build_model("retinanet_resnet50_fpn", num_classes=3)
    reports = []
    reinit = load_for_finetune(model, tv_ckpt, where="coco.pt", report=reports.append)
    assert reinit == ["head.cls_logits.weight", "head.cls_logits.bias"]
    assert len(reports) == 1 and "head.cls_logits.weight" in reports[0] and "3 classes" in reports[0]
    state = model.state_dict()
    assert state["head.cls_logits.weight"].shape[0] == 9 * 3
    prior = -math.log((1 - 0.01) / 0.01)
    torch.testing.assert_close(state["head.cls_logits.bias"], torch.full((27,), prior))
    assert 0.005 < state["head.cls_logits.weight"].std().item() < 0.015
    for key in ("head.box_pred.weight", "backbone.body.conv1.weight", "fpn.p6.weight", "head.cls_tower.0.0.weight"):
        assert torch.equal(state[key], tv_ckpt["model"][key]), key
    # Training starts: one loss and backward pass on a small batch.
    model.train()
    targets = {"boxes": torch.tensor([[[10.0, 20.0, 90.0, 100.0]]]), "labels": torch.tensor([[2]])}
    losses = model(torch.randn(1, 3, 128, 160), targets=targets)
    losses["total"].backward()
    assert torch.isfinite(losses["total"]) and model.head.cls_logits.weight.grad is not None


def test_finetune_same_classes_reinitialises_nothing_and_bad_keys_are_named(seed_ckpt):
    model = build_model("seed_resnet18", num_classes=3)
    assert load_for_finetune(model, seed_ckpt["model"]) == []
    assert torch.equal(model.state_dict()["head.cls_logits.weight"], seed_ckpt["model"]["head.cls_logits.weight"])
    broken = dict(seed_ckpt["model"])
    broken["fpn.p6.weightx"] = broken.pop("fpn.p6.weight")
    with pytest.raises(CheckpointError, match=r"fpn\.p6\.weightx") as exc:
        load_for_finetune(model, broken)
    assert "fpn.p6.weight" in str(exc.value)
