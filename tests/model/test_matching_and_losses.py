import torch

from retinadet.model.box_coder import BoxCoder
from retinadet.model.config import LossConfig, MatcherConfig
from retinadet.model.losses import detection_losses
from retinadet.model.matching import BACKGROUND, IGNORE, match_anchors

ANCHORS = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 8.0], [0.0, 0.0, 10.0, 4.5], [50.0, 50.0, 60.0, 60.0]])


def test_thresholds_padding_and_empty_images():
    gt = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [0, 0, 0, 0]], [[0, 0, 0, 0], [0, 0, 0, 0]]])
    valid = torch.tensor([[True, False], [False, False]])
    crowd = torch.zeros_like(valid)
    cfg = MatcherConfig(allow_low_quality=False)
    matched = match_anchors(ANCHORS, gt, valid, crowd, cfg)
    # IoU 1.0 -> fg, 0.8 -> fg, 0.45 -> ignored, 0 -> background; image 2 has no boxes.
    assert matched[0].tolist() == [0, 0, IGNORE, BACKGROUND]
    assert (matched[1] == BACKGROUND).all()


def test_low_quality_matches_keep_the_best_anchor():
    gt = torch.tensor([[[50.0, 50.0, 70.0, 70.0]]])  # IoU 0.25 with the last anchor only
    one = torch.ones(1, 1, dtype=torch.bool)
    strict = match_anchors(ANCHORS, gt, one, ~one, MatcherConfig(allow_low_quality=False))
    loose = match_anchors(ANCHORS, gt, one, ~one, MatcherConfig(allow_low_quality=True))
    assert strict[0, 3] == BACKGROUND and loose[0, 3] == 0


def test_crowd_boxes_are_ignored_not_learned():
    gt = torch.tensor([[[0.0, 0.0, 10.0, 10.0]]])
    one = torch.ones(1, 1, dtype=torch.bool)
    matched = match_anchors(ANCHORS, gt, one, one, MatcherConfig())
    assert matched[0].tolist() == [IGNORE, IGNORE, IGNORE, BACKGROUND]


def test_losses_are_batched_and_an_empty_image_gives_background_loss_only():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, requires_grad=True)
    deltas = torch.randn(2, 4, 4, requires_grad=True)
    gt = torch.tensor([[[0.0, 0.0, 10.0, 10.0]], [[0.0, 0.0, 0.0, 0.0]]])
    labels = torch.tensor([[2], [-1]])
    matched = match_anchors(ANCHORS, gt, labels >= 0, torch.zeros_like(labels, dtype=torch.bool), MatcherConfig())
    for box_loss in ["l1", "smooth_l1", "giou"]:
        for norm in ["per_image", "batch"]:
            losses = detection_losses(logits, deltas, ANCHORS, matched, gt, labels, BoxCoder(), LossConfig(box_loss=box_loss, normalize=norm))
            assert torch.isfinite(losses["cls"]) and torch.isfinite(losses["box"])
    # The same losses computed image by image.
    cfg = LossConfig(normalize="per_image")
    batched = detection_losses(logits, deltas, ANCHORS, matched, gt, labels, BoxCoder(), cfg)
    singles = [detection_losses(logits[i:i + 1], deltas[i:i + 1], ANCHORS, matched[i:i + 1], gt[i:i + 1], labels[i:i + 1], BoxCoder(), cfg) for i in range(2)]
    torch.testing.assert_close(batched["cls"], (singles[0]["cls"] + singles[1]["cls"]) / 2)
    torch.testing.assert_close(batched["box"], (singles[0]["box"] + singles[1]["box"]) / 2)
    assert singles[1]["box"] == 0 and singles[1]["cls"] > 0
    batched["cls"].backward()
    assert logits.grad[1].abs().sum() > 0, "the empty image must contribute background loss"
