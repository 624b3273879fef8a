"""Backbones swap by name; taps, channels, norms and freezing behave as documented."""

import pytest
import torch

from retinadet.errors import ConfigError
from retinadet.model import build_model
from retinadet.model.backbones import build_backbone
from retinadet.model.config import BackboneConfig

HOT_SWAP = [
    "resnet18", "resnet50", "vgg16", "googlenet", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny",
    "timm:mobilenetv3_large_100", "timm:regnety_002",
]
SMALL_HEAD = {"fpn.channels": 32, "head.channels": 32, "head.num_convs": 1, "backbone.norm": "bn", "backbone.trainable_layers": 5}


@pytest.mark.parametrize("name", HOT_SWAP)
def test_hot_swap_forward_backward(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=3, overrides=SMALL_HEAD).train()
    x = torch.randn(2, 3, 256, 256)
    targets = {"boxes": torch.tensor([[[30.0, 40.0, 120.0, 150.0]], [[0.0, 0.0, 0.0, 0.0]]]), "labels": torch.tensor([[1], [-1]])}
    losses = model(x, targets=targets)
    losses["total"].backward()
    assert torch.isfinite(losses["total"])
    assert model.backbone.strides == [8, 16, 32]
    first = next(p for p in model.backbone.parameters() if p.requires_grad)
    assert first.grad is not None and first.grad.abs().sum() > 0, "gradient must reach the backbone's stem"
    model.eval()
    with torch.no_grad():
        dets = model(x)
    assert len(dets) == 2


def test_taps_are_stage_outputs_not_inner_block_convs():
    bb = build_backbone(BackboneConfig(name="resnet50", norm="bn"))
    assert bb.out_channels == [512, 1024, 2048]
    shapes = [tuple(f.shape[-2:]) for f in bb(torch.zeros(1, 3, 128, 160))]
    assert shapes == [(16, 20), (8, 10), (4, 5)]


def test_adaptive_pool_is_never_a_tap():
    bb = build_backbone(BackboneConfig(name="vgg16", norm="bn"))
    assert [tuple(f.shape[-2:]) for f in bb(torch.zeros(1, 3, 256, 256))] == [(32, 32), (16, 16), (8, 8)]


@pytest.mark.parametrize("layers,frozen_prefixes,trainable_prefixes", [
    (5, [], ["body.conv1", "body.layer1"]),
    (4, ["body.conv1"], ["body.layer1", "body.layer4"]),
    (3, ["body.conv1", "body.layer1."], ["body.layer2", "body.layer4"]),
    (1, ["body.layer3."], ["body.layer4"]),
])
def test_trainable_layers_follow_torchvision(layers, frozen_prefixes, trainable_prefixes):
    bb = build_backbone(BackboneConfig(name="resnet50", norm="frozen_bn", trainable_layers=layers))
    params = dict(bb.named_parameters())
    for prefix in frozen_prefixes:
        assert all(not p.requires_grad for n, p in params.items() if n.startswith(prefix)), prefix
    for prefix in trainable_prefixes:
        assert all(p.requires_grad for n, p in params.items() if n.startswith(prefix)), prefix


@pytest.mark.parametrize("norm,kind", [("frozen_bn", "FrozenBatchNorm2d"), ("gn", "GroupNorm"), ("syncbn", "SyncBatchNorm"),
                                       ("bn", "BatchNorm2d")])
def test_norm_options(norm, kind):
    bb = build_backbone(BackboneConfig(name="resnet18", norm=norm))
    kinds = {type(m).__name__ for m in bb.modules()}
    assert kind in kinds
    if norm != "bn":
        assert "BatchNorm2d" not in kinds


def test_builder_kwargs_reach_the_constructor():
    slim = build_backbone(BackboneConfig(name="timm:resnet18", norm="bn", kwargs={"channels": [16, 32, 64, 128], "stem_width": 16}))
    assert slim.out_channels == [32, 64, 128]
    assert [f.shape[1] for f in slim(torch.zeros(1, 3, 64, 64))] == [32, 64, 128]
    half = build_backbone(BackboneConfig(name="mobilenet_v2", norm="bn", kwargs={"width_mult": 0.5}))
    assert half.out_channels == [96, 288, 1280]  # expansion convs halve; the 1280 head conv never shrinks
    assert build_backbone(BackboneConfig(name="mobilenet_v2", norm="bn")).out_channels == [192, 576, 1280]
    with pytest.raises(ConfigError, match="rejected backbone.kwargs"):
        build_backbone(BackboneConfig(name="resnet18", kwargs={"not_an_option": 1}))
    with pytest.raises(ConfigError, match="rejected backbone.kwargs"):
        build_backbone(BackboneConfig(name="timm:resnet18", kwargs={"not_an_option": 1}))


def test_unknown_backbone_lists_close_names():
    with pytest.raises(ConfigError, match="resnet50"):
        build_backbone(BackboneConfig(name="resnet5O"))
    with pytest.raises(ConfigError, match="timm"):
        build_backbone(BackboneConfig(name="timm:not_a_model_xyz"))


def test_local_imagenet_weights_load_by_name(tmp_path):
    import torchvision

    torch.manual_seed(3)
    ref = torchvision.models.resnet18()
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    bb = build_backbone(BackboneConfig(name="resnet18", norm="bn", weights=str(path)))
    torch.testing.assert_close(bb.body.conv1.weight, ref.conv1.weight)


def test_swapping_the_backbone_drops_the_old_ones_kwargs():
    from retinadet.model import resolve_model_config

    fast = resolve_model_config("fast")
    assert fast.backbone.kwargs
    swapped = fast.replace({"backbone.name": "resnet18"})
    assert swapped.backbone.kwargs == {}
    kept = fast.replace({"backbone.name": "timm:resnet34", "backbone.kwargs": {"stem_width": 16}})
    assert kept.backbone.kwargs == {"stem_width": 16}
