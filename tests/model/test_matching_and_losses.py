import torch
from hypothesis import given, settings
from hypothesis import strategies as st

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
            cfg = LossConfig(box_loss=box_loss, normalize=norm)
            losses = detection_losses(logits, deltas, ANCHORS, matched, gt, labels, BoxCoder(), cfg)
            assert torch.isfinite(losses["cls"]) and torch.isfinite(losses["box"])
    # The same losses computed image by image.
    cfg = LossConfig(normalize="per_image")
    batched = detection_losses(logits, deltas, ANCHORS, matched, gt, labels, BoxCoder(), cfg)
    singles = [detection_losses(logits[i:i + 1], deltas[i:i + 1], ANCHORS, matched[i:i + 1], gt[i:i + 1], labels[i:i + 1],
                                BoxCoder(), cfg) for i in range(2)]
    torch.testing.assert_close(batched["cls"], (singles[0]["cls"] + singles[1]["cls"]) / 2)
    torch.testing.assert_close(batched["box"], (singles[0]["box"] + singles[1]["box"]) / 2)
    assert singles[1]["box"] == 0 and singles[1]["cls"] > 0
    batched["cls"].backward()
    assert logits.grad[1].abs().sum() > 0, "the empty image must contribute background loss"


def _atss_reference(anchors, per_level, boxes, topk):
    """ATSS (Zhang et al., 2020) for one image, box by box, as the paper states it."""
    from torchvision.ops import box_iou

    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    best = torch.full((anchors.shape[0],), -1.0)
    owner = torch.full((anchors.shape[0],), BACKGROUND, dtype=torch.long)
    for g, box in enumerate(boxes):
        iou = box_iou(box[None], anchors)[0]
        dist = (centres - (box[:2] + box[2:]) / 2).norm(dim=1)
        cand, start = [], 0
        for count in per_level:
            order = sorted(range(start, start + count), key=lambda i: (float(dist[i]), i))
            cand += order[:topk]
            start += count
        cand_iou = iou[cand]
        threshold = cand_iou.mean() + cand_iou.std()
        for i in cand:
            cx, cy = centres[i]
            inside = min(cx - box[0], cy - box[1], box[2] - cx, box[3] - cy) > 0.01
            if iou[i] >= threshold and inside and iou[i] > best[i]:
                best[i], owner[i] = iou[i], g
    return owner


def _grid_anchors(strides=(8, 16), size=64):
    out, per_level = [], []
    for s in strides:
        c = torch.arange(s / 2, size, s)
        cy, cx = torch.meshgrid(c, c, indexing="ij")
        level = []
        for side in (1.5 * s, 2.5 * s):  # two anchors per location: distances tie, as with real anchors
            h = side / 2
            level.append(torch.stack([cx - h, cy - h, cx + h, cy + h], -1).reshape(-1, 4))
        level = torch.stack(level, 1).reshape(-1, 4)
        out.append(level)
        per_level.append(level.shape[0])
    return torch.cat(out), per_level


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 54), st.floats(0, 54), st.floats(3, 40), st.floats(3, 40)), min_size=1, max_size=4),
       st.sampled_from([2, 4, 8]))
def test_atss_matches_a_per_box_reference(raw, topk):
    anchors, per_level = _grid_anchors()
    # topk is a whole number of locations (2 anchors each), and the odd offsets keep a box centre from lying
    # exactly between two locations: ties there may be broken either way.
    boxes = torch.tensor([[x + 0.0371, y + 0.0173, min(64.0, x + w) + 0.0371, min(64.0, y + h) + 0.0173] for x, y, w, h in raw])
    pad = torch.zeros(2, 4)  # padding rows must never match
    gt = torch.cat([boxes, pad])[None]
    valid = torch.tensor([[True] * len(boxes) + [False, False]])
    cfg = MatcherConfig(kind="atss", topk=topk)
    matched = match_anchors(anchors, gt, valid, torch.zeros_like(valid), cfg, per_level)[0]
    expected = _atss_reference(anchors, per_level, boxes, topk)
    assert torch.equal(matched, expected)


def test_atss_gives_a_small_box_more_positives_than_fixed_iou():
    from retinadet.model.anchors import grid_anchors
    from retinadet.model.presets import get_preset

    # The fast preset's anchors on its 288 px canvas, and a 10x11 px object: the size that recall lacked.
    levels = grid_anchors(get_preset("fast").anchors, (288, 288), [(36, 36), (18, 18), (9, 9), (5, 5), (3, 3)])
    anchors, per_level = torch.cat(levels).float(), [lv.shape[0] for lv in levels]
    gt = torch.tensor([[[100.0, 100.0, 110.0, 111.0]]])
    one = torch.ones(1, 1, dtype=torch.bool)
    fixed = match_anchors(anchors, gt, one, ~one, MatcherConfig(fg_iou=0.4, bg_iou=0.3), per_level)
    atss = match_anchors(anchors, gt, one, ~one, MatcherConfig(kind="atss", topk=9), per_level)
    assert int((atss == 0).sum()) > int((fixed == 0).sum()) >= 1
    assert (atss != IGNORE).all(), "ATSS leaves no ignore band without crowd boxes"


def test_unknown_matcher_kind_is_a_config_error():
    import pytest

    from retinadet.errors import ConfigError
    from retinadet.model.presets import get_preset

    with pytest.raises(ConfigError, match="matcher.kind must be 'iou' or 'atss', got 'atts'"):
        get_preset("fast", {"matcher.kind": "atts"})
    assert get_preset("fast", {"matcher.kind": "atss"}).matcher.kind == "atss"


def _one_positive(target_box):
    """One image, one object at anchor 0 whose deltas are zero, so the decoded box is anchor 0 itself."""
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [40.0, 40.0, 60.0, 60.0]])
    gt = torch.tensor([[target_box]])
    matched = torch.tensor([[0, BACKGROUND]])
    return anchors, gt, torch.tensor([[1]]), matched


def test_quality_focal_loss_is_focal_loss_at_hard_targets():
    from torchvision.ops import sigmoid_focal_loss

    from retinadet.model.losses import quality_focal_loss

    logits = torch.linspace(-4, 4, 17)
    for hard in (0.0, 1.0):
        target = torch.full_like(logits, hard)
        # With alpha off and beta = gamma = 2, QFL at a 0/1 target is the focal loss.
        torch.testing.assert_close(quality_focal_loss(logits, target, 2.0),
                                   sigmoid_focal_loss(logits, target, alpha=-1, gamma=2.0, reduction="none"))


def test_qfl_trains_a_positive_score_towards_its_box_iou():
    # The decoded box (anchor 0, 10x10) against an object of 10x20: IoU 0.5, so the class score's loss is
    # smallest at sigmoid 0.5 (logit 0): zero gradient there, and a push up from below, down from above.
    anchors, gt, labels, matched = _one_positive([0.0, 0.0, 10.0, 20.0])
    cfg = LossConfig(cls_loss="qfl", box_loss="giou", normalize="batch")
    grads = []
    for value in (-2.0, 0.0, 2.0):
        logits = torch.full((1, 2, 2), -9.0)
        logits[0, 0, 1] = value
        logits.requires_grad_(True)
        detection_losses(logits, torch.zeros(1, 2, 4), anchors, matched, gt, labels, BoxCoder(), cfg)["cls"].backward()
        grads.append(float(logits.grad[0, 0, 1]))
    assert grads[0] < -1e-3 and abs(grads[1]) < 1e-6 and grads[2] > 1e-3
    # Focal loss instead pushes the same score up at every value (its target is 1).
    logits = torch.zeros(1, 2, 2, requires_grad=True)
    detection_losses(logits, torch.zeros(1, 2, 4), anchors, matched, gt, labels, BoxCoder(), LossConfig())["cls"].backward()
    assert float(logits.grad[0, 0, 1]) < -1e-3


def test_iou_box_losses_are_zero_for_a_perfect_box_and_rank_worse_boxes():
    def box_loss_for(target, cfg):
        anchors, gt, labels, matched = _one_positive(target)
        return float(detection_losses(torch.zeros(1, 2, 2), torch.zeros(1, 2, 4), anchors, matched, gt, labels,
                                      BoxCoder(), cfg)["box"])

    for name in ("giou", "diou", "ciou"):
        losses = [box_loss_for(box, LossConfig(box_loss=name))
                  for box in ([0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 14.0], [3.0, 3.0, 13.0, 17.0])]
        assert losses[0] < 1e-6 < losses[1] < losses[2], (name, losses)


def test_unknown_loss_names_are_config_errors():
    import pytest

    from retinadet.errors import ConfigError
    from retinadet.model.presets import get_preset

    for key, value in (("loss.cls_loss", "softmax"), ("loss.box_loss", "eiou")):
        with pytest.raises(ConfigError, match=key.split(".")[1]):
            get_preset("fast", {key: value})


def _grid_case(preset: str, height: int, width: int, seed: int, count: int):
    from retinadet.model.anchors import feature_sizes_for, grid_anchors
    from retinadet.model.presets import PRESETS

    cfg = PRESETS[preset]().anchors
    levels = grid_anchors(cfg, (height, width), feature_sizes_for((height, width)))
    g = torch.Generator().manual_seed(seed)
    corner = torch.rand(count, 2, generator=g) * torch.tensor([width, height]) - 10
    boxes = torch.cat([corner, corner + 0.5 + torch.rand(count, 2, generator=g) * 120], dim=1)
    return torch.cat(levels), [lv.shape[0] for lv in levels], cfg.num_anchors, boxes


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(["fast", "retinanet_resnet50_fpn", "seed_resnet18"]), st.integers(40, 420), st.integers(40, 420),
       st.integers(0, 2**16), st.integers(1, 40))
def test_grid_iou_is_box_iou_bit_for_bit(preset, height, width, seed, count):
    from torchvision.ops import box_iou

    from retinadet.model.matching import _grid, anchor_iou

    anchors, per_level, shapes, boxes = _grid_case(preset, height, width, seed, count)
    assert all(_grid(level, shapes) is not None for level in anchors.split(per_level))  # the fast path ran
    assert torch.equal(anchor_iou(boxes, anchors, per_level, shapes), box_iou(boxes, anchors))


def test_anchors_off_the_grid_take_box_iou():
    from torchvision.ops import box_iou

    from retinadet.model.matching import _grid, anchor_iou

    anchors, per_level, shapes, boxes = _grid_case("fast", 96, 128, 3, 12)
    first = anchors[: per_level[0]]
    shuffled = first[torch.randperm(first.shape[0], generator=torch.Generator().manual_seed(0))]
    nudged = first.clone()
    nudged[5, 0] += 0.25  # one anchor off its column
    for level in (shuffled, nudged):
        assert _grid(level, shapes) is None
        mixed = torch.cat([level, anchors[per_level[0]:]])
        assert torch.equal(anchor_iou(boxes, mixed, per_level, shapes), box_iou(boxes, mixed))


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**16), st.sampled_from(["iou", "atss"]), st.booleans())
def test_matching_on_the_grid_path_equals_the_plain_path(seed, kind, low_quality):
    anchors, per_level, shapes, boxes = _grid_case("fast", 160, 224, seed, 24)
    g = torch.Generator().manual_seed(seed)
    boxes = boxes.view(3, 8, 4)
    valid = torch.rand(3, 8, generator=g) > 0.25
    crowd = torch.rand(3, 8, generator=g) > 0.8
    cfg = MatcherConfig(kind=kind, fg_iou=0.4, bg_iou=0.3, allow_low_quality=low_quality)
    plain = match_anchors(anchors, boxes, valid, crowd, cfg, per_level)
    assert torch.equal(match_anchors(anchors, boxes, valid, crowd, cfg, per_level, shapes), plain)
    assert (plain >= 0).any()
