import torch

from retinadet.model.anchors import AnchorGenerator, anchors_for_image_size, base_anchors
from retinadet.model.config import AnchorConfig


def test_base_anchor_order_is_ratio_major_and_shapes_follow_ratio():
    cfg = AnchorConfig(round_base=False, truncate_sizes=False)
    base = base_anchors(cfg, 32.0)
    w, h = base[:, 2] - base[:, 0], base[:, 3] - base[:, 1]
    # a = ratio * 3 + scale; ratio is h / w, the scale multiplies the side of a square of equal area.
    for r_idx, ratio in enumerate(cfg.ratios):
        for s_idx, scale in enumerate(cfg.scales):
            a = r_idx * 3 + s_idx
            assert torch.isclose(h[a] / w[a], torch.tensor(ratio, dtype=h.dtype), rtol=1e-6)
            assert torch.isclose((w[a] * h[a]).sqrt(), torch.tensor(32.0 * scale, dtype=h.dtype), rtol=1e-6)


def test_centres_offsets_and_count():
    cfg = AnchorConfig(center_offset=0.5, stride_mode="nominal")
    anchors = anchors_for_image_size(cfg, (64, 96))
    expected = sum(-(-64 // s) * -(-96 // s) * 9 for s in (8, 16, 32, 64, 128))
    assert anchors.shape == (expected, 4)
    first = anchors[:9]
    centres = (first[:, :2] + first[:, 2:]) / 2
    assert torch.allclose(centres, torch.tensor([4.0, 4.0]).expand(9, 2))
    second_cell = anchors[9:18]
    assert torch.allclose((second_cell[:, 0] + second_cell[:, 2]) / 2, torch.tensor(12.0))


def test_generator_caches_per_geometry():
    gen = AnchorGenerator(AnchorConfig())
    grids = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    a1, n1 = gen((64, 64), grids, torch.device("cpu"), torch.float32)
    a2, _ = gen((64, 64), grids, torch.device("cpu"), torch.float32)
    assert a1 is a2
    assert n1 == [g[0] * g[1] * 9 for g in grids]
    a3, _ = gen((96, 64), [(12, 8), (6, 4), (3, 2), (2, 1), (1, 1)], torch.device("cpu"), torch.float32)
    assert a3 is not a1 and a3.shape[0] != a1.shape[0]
