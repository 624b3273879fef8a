"""Does Grad-CAM look at the object, and does it depend on the trained weights?

Localisation: a detector trained on one-shape images should explain each detection with a
map that peaks inside the detected box and puts more of its mass there than the box's share
of the image. Randomisation (Adebayo et al., 2018): re-initialising the heads, then also the
FPN, must change the maps (low Spearman rank correlation with the trained model's maps).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from explain_support import network_input

from retinadet.detector import Detector
from retinadet.explain import NoDetectionsError, compute_cams, forward_with_maps
from retinadet.model.fpn import FPN
from retinadet.model.heads import RetinaNetHead


def _rank(a: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), as scipy.stats.rankdata."""
    _, inv, cnt = np.unique(a, return_inverse=True, return_counts=True)
    avg = np.cumsum(cnt) - (cnt - 1) / 2.0
    return avg[inv]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = _rank(a.ravel()), _rank(b.ravel())
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def test_spearman_helper():
    x = np.array([1.0, 2.0, 2.0, 5.0, 0.0])
    assert spearman(x, x ** 3) == 1.0
    assert abs(spearman(x, -x) + 1.0) < 1e-12
    assert abs(spearman(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 3.0, 2.0, 4.0])) - 0.8) < 1e-12


def test_detector_learned_the_task(shapes_model):
    print(f"\nslim detector: trained in {shapes_model['train_s']:.1f} s, val AP50 {shapes_model['ap50']:.3f}")
    assert shapes_model["ap50"] >= 0.8


def test_gradcam_localises_the_detected_object(shapes_model):
    assert shapes_model["ap50"] >= 0.8, "the detector did not learn the task; the check below would mean nothing"
    det = Detector(shapes_model["model"], ["shape"], "cpu")
    inside, mass_share, area_share, missing = [], [], [], 0
    for img in shapes_model["val_images"]:
        try:
            exp = det.explain(img, method="gradcam", layer="fpn", topk=1, conf=0.5)
        except NoDetectionsError:
            missing += 1
            continue
        heat = exp.heatmaps[0].numpy()
        assert heat.max() > 0, "an all-zero Grad-CAM map"
        x1, y1, x2, y2 = exp.detections.boxes[0].tolist()
        h, w = heat.shape
        yy, xx = np.mgrid[0:h, 0:w] + 0.5  # pixel centres
        in_box = (xx >= x1) & (xx <= x2) & (yy >= y1) & (yy <= y2)
        py, px = np.unravel_index(int(heat.argmax()), heat.shape)
        inside.append(bool(in_box[py, px]))
        mass_share.append(float(heat[in_box].sum() / heat.sum()))
        area_share.append(float(in_box.mean()))
    n = len(inside)
    mass_share, area_share = np.array(mass_share), np.array(area_share)
    print(f"\nlocalisation: {n} detections ({missing} images without one); peak inside the box: "
          f"{100 * np.mean(inside):.1f}%; mass inside {mass_share.mean():.3f} vs box area share {area_share.mean():.3f} "
          f"(ratio {np.mean(mass_share / area_share):.2f}; mass > area for {100 * np.mean(mass_share > area_share):.1f}%)")
    assert n >= 0.9 * len(shapes_model["val_images"])
    assert np.mean(inside) >= 0.9
    assert np.mean(mass_share > area_share) >= 0.9
    assert mass_share.mean() > area_share.mean()


def _maps(model, images, picks):
    """Grad-CAM (layer fpn, class target) of the given (anchor, label, level) per image."""
    out = []
    for img, (a, k, lvl) in zip(images, picks):
        rec = forward_with_maps(model, network_input(model, img)[0], "detach")
        out.append(compute_cams(rec, 0, [a], [k], [lvl], method="gradcam", layer="fpn").heatmaps[0].numpy())
    return out


def test_randomising_heads_then_fpn_changes_the_maps(shapes_model):
    assert shapes_model["ap50"] >= 0.8
    model = shapes_model["model"].eval()
    images, picks = [], []
    for img in shapes_model["val_images"][:20]:
        x, sizes = network_input(model, img)
        with torch.no_grad():
            raw = model.forward_raw(x)
        sel = model.postprocess(*raw, sizes, x.shape[-2:], score_thresh=0.5)[0]
        if len(sel):
            images.append(img)
            picks.append((int(sel.anchor_index[0]), int(sel.labels[0]), int(sel.level[0])))
    assert len(images) >= 15
    trained = _maps(model, images, picks)

    torch.manual_seed(1234)
    heads = copy.deepcopy(model)
    cfg = heads.cfg
    heads.head = RetinaNetHead(cfg.fpn.channels, cfg.anchors.num_anchors, cfg.num_classes, cfg.head).eval()
    rand_heads = _maps(heads, images, picks)
    both = copy.deepcopy(heads)
    both.fpn = FPN(both.backbone.out_channels, cfg.fpn).eval()
    rand_both = _maps(both, images, picks)

    same = [spearman(t, t.copy()) for t in trained]
    rho_heads = np.array([spearman(t, r) for t, r in zip(trained, rand_heads)])
    rho_both = np.array([spearman(t, r) for t, r in zip(trained, rand_both)])
    # A randomised map with no variation at all (ReLU of all-negative) carries no ranking: 0.
    flat_heads, flat_both = int(np.isnan(rho_heads).sum()), int(np.isnan(rho_both).sum())
    rho_heads, rho_both = np.nan_to_num(rho_heads, nan=0.0), np.nan_to_num(rho_both, nan=0.0)
    print(f"\nrandomisation: Spearman vs trained maps, {len(images)} detections: heads re-initialised "
          f"median {np.median(rho_heads):.3f} (mean {rho_heads.mean():.3f}, {flat_heads} flat); heads + FPN "
          f"median {np.median(rho_both):.3f} (mean {rho_both.mean():.3f}, {flat_both} flat)")
    assert min(same) > 1 - 1e-9
    assert flat_heads <= len(images) // 4 and flat_both <= len(images) // 4
    assert np.median(rho_heads) < 0.5
    assert np.median(rho_both) < 0.5
