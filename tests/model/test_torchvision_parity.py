"""Our presets reproduce torchvision's RetinaNet v1 and v2 on the same preprocessed batch."""

import pytest
import torch
from torchvision.models.detection import retinanet_resnet50_fpn, retinanet_resnet50_fpn_v2

from retinadet.model import build_model
from retinadet.weights.keymaps import drop_unused_buffers, from_torchvision

BUILDERS = {"retinanet_resnet50_fpn": retinanet_resnet50_fpn, "retinanet_resnet50_fpn_v2": retinanet_resnet50_fpn_v2}


def _pair(preset):
    torch.manual_seed(0)
    tv = BUILDERS[preset](weights=None, weights_backbone=None, num_classes=91, min_size=256, max_size=400)
    # Class biases high enough that many anchors clear the 0.05 score threshold.
    with torch.no_grad():
        tv.head.classification_head.cls_logits.bias.uniform_(-3.5, -1.5)
        tv.head.regression_head.bbox_reg.bias.uniform_(-0.2, 0.2)
    # torchvision uses live BatchNorm when built without pretrained weights.
    ours = build_model(preset, overrides={"backbone.norm": "bn", "backbone.trainable_layers": 5})
    state, unmapped = from_torchvision(tv.state_dict())
    assert unmapped == []
    ours.load_state_dict(drop_unused_buffers(state, ours.state_dict().keys()), strict=True)
    return tv, ours


def _batch(tv):
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 240, 300, generator=g), torch.rand(3, 200, 330, generator=g)]
    targets = [
        {"boxes": torch.tensor([[20.0, 30.0, 120.0, 150.0], [150.0, 40.0, 290.0, 100.0], [60, 60, 90, 85.0]]),
         "labels": torch.tensor([3, 17, 3])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    image_list, targets = tv.transform(images, targets)
    return image_list, targets


def _torchvision_eval(tv, image_list):
    features = list(tv.backbone(image_list.tensors).values())
    head = tv.head(features)
    anchors = tv.anchor_generator(image_list, features)
    per_level = [f.shape[2] * f.shape[3] * tv.anchor_generator.num_anchors_per_location()[0] for f in features]
    split_head = {k: list(v.split(per_level, dim=1)) for k, v in head.items()}
    split_anchors = [list(a.split(per_level)) for a in anchors]
    return tv.postprocess_detections(split_head, split_anchors, image_list.image_sizes)


@pytest.mark.parametrize("preset", list(BUILDERS))
def test_detections_match_torchvision(preset):
    tv, ours = _pair(preset)
    tv.eval(), ours.eval()
    image_list, _ = _batch(tv)
    sizes = torch.tensor(image_list.image_sizes)
    with torch.no_grad():
        expected = _torchvision_eval(tv, image_list)
        got = ours(image_list.tensors, image_sizes=sizes)
    for e, g in zip(expected, got):
        assert len(e["boxes"]) > 10, "the test needs detections to compare"
        assert torch.equal(e["labels"], g.labels)
        torch.testing.assert_close(g.boxes, e["boxes"], atol=1e-3, rtol=0)
        torch.testing.assert_close(g.scores, e["scores"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("preset", list(BUILDERS))
def test_training_losses_match_torchvision(preset):
    tv, ours = _pair(preset)
    tv.train(), ours.train()
    image_list, targets = _batch(tv)
    features = list(tv.backbone(image_list.tensors).values())
    head = tv.head(features)
    anchors = tv.anchor_generator(image_list, features)
    expected = tv.compute_loss(targets, head, anchors)

    padded = {
        "boxes": torch.zeros(2, 3, 4),
        "labels": torch.full((2, 3), -1, dtype=torch.long),
    }
    padded["boxes"][0] = targets[0]["boxes"]
    padded["labels"][0] = targets[0]["labels"]
    got = ours(image_list.tensors, targets=padded)
    torch.testing.assert_close(got["cls"], expected["classification"], rtol=1e-5, atol=0)
    torch.testing.assert_close(got["box"], expected["bbox_regression"], rtol=1e-5, atol=0)
    got["total"].backward()
    assert ours.head.cls_logits.weight.grad is not None
