"""Grad-CAM against a direct computation; the anchor and level postprocess reports for each detection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from explain_support import network_input, slim_model

from retinadet.detector import Detector
from retinadet.errors import ConfigError
from retinadet.explain import (
    NoDetectionsError,
    compute_cams,
    eigencam,
    forward_with_maps,
    gradcam_plus_plus,
    norm_stats_mode,
    to_original,
)
from retinadet.model.preprocess import prepare_batch


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(3)
    model = slim_model(seed=3).eval()
    rng = np.random.default_rng(5)
    # Not square and not the input size: exercises resize, padding and the way back.
    image = rng.integers(0, 255, (70, 110, 3), dtype=np.uint8)
    return model, image


def test_postprocess_reports_the_anchor_and_level_of_each_detection(small):
    model, _ = small
    rng = np.random.default_rng(0)
    imgs = [torch.from_numpy(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).permute(2, 0, 1) for h, w in [(70, 110), (96, 64)]]
    batch = prepare_batch(imgs, model.cfg.preprocess)
    x = model.normalize(batch.images, batch.image_sizes)
    with torch.no_grad():
        raw = model.forward_raw(x)
    for thresh, max_det in [(0.005, 100), (0.0101, 7), (0.5, 100)]:
        dets = model.postprocess(*raw, batch.image_sizes, x.shape[-2:], score_thresh=thresh, max_det=max_det)
        original = model.postprocess(*raw, batch.image_sizes, x.shape[-2:], score_thresh=thresh, max_det=max_det,
                                     output_sizes=batch.orig_sizes)
        for img, (d, o) in enumerate(zip(dets, original)):
            assert len(d) <= max_det and tuple(d.image_size) == tuple(batch.image_sizes[img].tolist())
            # the recorded anchor and class reproduce the score, and the level matches the anchor
            got = torch.sigmoid(raw[0][img, d.anchor_index, d.labels])
            assert torch.allclose(got, d.scores, rtol=1e-6, atol=0)
            starts = torch.tensor([0, *np.cumsum(raw[3]).tolist()])
            assert torch.equal(torch.bucketize(d.anchor_index, starts[1:], right=True), d.level)
            # the same detections mapped to the original image, per axis
            assert torch.equal(o.anchor_index, d.anchor_index) and tuple(o.image_size) == tuple(imgs[img].shape[-2:])
            torch.testing.assert_close(o.boxes, d.rescaled(o.image_size).boxes)


def _direct(model, image, anchor, label, level, layer_map, target="cls"):
    """Grad-CAM from scratch: own forward through the modules, autograd.grad, weighting,
    ReLU, upsampling by the map's stride, crop of padding, resize to the image."""
    x, sizes = network_input(model, image)
    with torch.enable_grad():
        x = x.requires_grad_(True)
        c = model.backbone(x)
        p = model.fpn(c)
        cls, box = model.head(p)
        maps = {"fpn": (p[level], 2 ** (level + 3)), "c3": (c[0], 8), "c4": (c[1], 16), "c5": (c[2], 32)}
        act, stride = maps[layer_map]
        score = cls[0, anchor, label] if target == "cls" else box[0, anchor].sum()
        (grad,) = torch.autograd.grad(score, act)
    a, g = act[0].detach(), grad[0]
    cam = torch.relu((g.mean(dim=(1, 2))[:, None, None] * a).sum(0))
    h, w = cam.shape
    up = F.interpolate(cam[None, None], size=(h * stride, w * stride), mode="bilinear", align_corners=False)[0, 0]
    rh, rw = sizes[0].tolist()
    up = up[: x.shape[-2], : x.shape[-1]][:rh, :rw]
    return F.interpolate(up[None, None], size=image.shape[:2], mode="bilinear", align_corners=False)[0, 0]


@pytest.mark.parametrize("layer,target", [("fpn", "cls"), ("c4", "cls"), ("fpn", "box"), ("c3", "box")])
def test_gradcam_equals_direct_computation(small, layer, target):
    model, image = small
    x, sizes = network_input(model, image)
    record = forward_with_maps(model, x, "exact")
    # the strongest anchor of every pyramid level, so each level's stride and crop is exercised
    starts = np.concatenate([[0], np.cumsum(record.per_level)])
    picks = []
    for lvl in range(len(record.per_level)):
        a = int(record.cls_logits[0, starts[lvl]:starts[lvl + 1], 0].argmax()) + int(starts[lvl])
        picks.append((a, 0, lvl))
    cams = compute_cams(record, 0, *zip(*picks), method="gradcam", layer=layer, target=target)
    nonzero = 0
    for (a, k, lvl), heat in zip(picks, cams.heatmaps):
        ours = to_original(heat, sizes[0].tolist(), image.shape[:2])
        ref = _direct(model, image, a, k, lvl, layer, target)
        assert ours.shape == ref.shape == image.shape[:2]
        scale = float(ref.abs().max())
        nonzero += scale > 0
        assert float((ours - ref).abs().max()) <= 1e-5 * scale if scale > 0 else float(ours.abs().max()) == 0.0
    assert nonzero >= 2, "the comparison needs maps that are not all zero"
    # and through Detector.explain: the best detection's map is the direct map of its anchor
    exp = Detector(model, ["shape"], "cpu").explain(image, method="gradcam", layer=layer, target=target, conf=0.005,
                                                    topk=1, norm_stats="exact")
    d = exp.detections
    ref = _direct(model, image, int(d.anchor_index[0]), int(d.labels[0]), int(d.level[0]), layer, target)
    assert float((exp.heatmaps[0] - ref).abs().max()) <= 1e-5 * max(float(ref.abs().max()), 1e-30)


def test_detached_norm_stats_keep_forward_values_and_only_change_gradients(small):
    model, image = small
    x, _ = network_input(model, image)
    exact = forward_with_maps(model, x, "exact")
    detached = forward_with_maps(model, x, "detach")
    assert torch.equal(exact.cls_logits, detached.cls_logits) and torch.equal(exact.box_deltas, detached.box_deltas)
    assert not any("forward" in m.__dict__ for m in model.modules()), "GroupNorm patch not undone"
    a = int(exact.cls_logits[0, :, 0].argmax())
    lvl = int(torch.bucketize(torch.tensor(a), torch.tensor(np.cumsum(exact.per_level)), right=True))
    g_exact = torch.autograd.grad(exact.cls_logits[0, a, 0], exact.pyramid[lvl])[0]
    g_det = torch.autograd.grad(detached.cls_logits[0, a, 0], detached.pyramid[lvl])[0]
    assert not torch.allclose(g_exact, g_det)
    # the detached-statistics gradient is the gradient of a GroupNorm whose mean and var are constants
    with norm_stats_mode(model, "detach"):
        assert all("forward" in m.__dict__ for m in model.modules() if isinstance(m, torch.nn.GroupNorm))
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_gradcam_plus_plus_and_eigencam_formulas():
    torch.manual_seed(0)
    act = torch.rand(6, 5, 7, dtype=torch.float64)
    grad = torch.randn(6, 5, 7, dtype=torch.float64)
    # Grad-CAM++ (Chattopadhay et al., eq. 19 with exp(score)), written element by element
    ref = torch.zeros(5, 7, dtype=torch.float64)
    for k in range(6):
        s = act[k].sum()
        w = 0.0
        for i in range(5):
            for j in range(7):
                g = grad[k, i, j]
                den = 2 * g ** 2 + s * g ** 3
                alpha = g ** 2 / den if den != 0 else 0.0
                w += alpha * max(float(g), 0.0)
        ref += w * act[k]
    assert torch.allclose(gradcam_plus_plus(act, grad), torch.relu(ref), atol=1e-12)
    # EigenCAM: projection on the first right-singular vector of the centred [hw, C] matrix
    a = act.reshape(6, -1).T.numpy()
    centred = a - a.mean(0)
    v = np.linalg.svd(centred, full_matrices=False)[2][0]
    proj = centred @ v
    if np.corrcoef(proj, a.mean(1))[0, 1] < 0:
        proj = -proj
    assert np.allclose(eigencam(act).numpy().ravel(), np.maximum(proj, 0), atol=1e-10)


def test_whole_image_methods_and_targets(small):
    model, image = small
    det = Detector(model, ["shape"], "cpu")
    for method in ("gradcam++", "eigencam"):
        for layer in ("fpn", "all-fpn", "c5"):
            exp = det.explain(image, method=method, layer=layer, conf=0.005, topk=3)
            assert exp.heatmaps.shape == (3, *image.shape[:2]) and torch.isfinite(exp.heatmaps).all()
            assert (exp.heatmaps >= 0).all() and float(exp.heatmaps.max()) > 0
            assert len(exp.overlays) == 3 and exp.overlays[0].shape == (*image.shape[:2], 3)
    eig = det.explain(image, method="eigencam", layer="all-fpn", conf=0.005, topk=3)
    assert torch.equal(eig.heatmaps[0], eig.heatmaps[1]) and not eig.timing["backward_ms"]
    grad = det.explain(image, method="gradcam", conf=0.005, topk=3)
    assert len(grad.timing["backward_ms"]) == 3


def test_choosing_targets_and_errors(small):
    model, image = small
    det = Detector(model, ["shape"], "cpu")
    full = det.explain(image, conf=0.005, topk=0, max_det=20)
    assert len(full) == 20 and full.detection_index.tolist() == list(range(20))
    one = det.explain(image, conf=0.005, box_index=7, max_det=20)
    assert one.detection_index.tolist() == [7]
    assert torch.equal(one.heatmaps[0], full.heatmaps[7])
    assert torch.equal(one.detections.boxes[0], full.all_detections.boxes[7])
    by_class = det.explain(image, conf=0.005, class_name="shape", topk=4)
    assert len(by_class) == 4
    with pytest.raises(ConfigError, match="out of range"):
        det.explain(image, conf=0.005, box_index=20, max_det=20)
    with pytest.raises(ConfigError, match="unknown class 'cat'"):
        det.explain(image, conf=0.005, class_name="cat")
    with pytest.raises(NoDetectionsError, match="no detections above --conf 0.9"):
        det.explain(image, conf=0.9)
    with pytest.raises(ConfigError, match="unknown CAM method"):
        det.explain(image, method="scorecam")
    with pytest.raises(ConfigError, match="unknown CAM layer"):
        compute_cams(forward_with_maps(model, network_input(model, image)[0]), 0, [0], [0], [0], layer="p9")
