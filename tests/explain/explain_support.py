"""A one-object shapes task small enough to train a detector in well under a minute on CPU."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

IMG = 96  # pixels; one bright shape per image on a noisy background


def make_shapes(n: int, seed: int, size: int = IMG) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 images [n, size, size, 3] and their one tight box each [n, 4] (xyxy)."""
    rng = np.random.default_rng(seed)
    imgs = np.empty((n, size, size, 3), np.uint8)
    boxes = np.zeros((n, 4), np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        img = rng.integers(0, 90, (size, size, 3)).astype(np.float32)
        w, h = rng.uniform(14, 36, 2)
        x1, y1 = rng.uniform(2, size - w - 2), rng.uniform(2, size - h - 2)
        cx, cy = x1 + w / 2, y1 + h / 2
        kind = rng.integers(3)
        if kind == 0:  # rectangle
            m = (xx >= x1) & (xx < x1 + w) & (yy >= y1) & (yy < y1 + h)
        elif kind == 1:  # ellipse
            m = ((xx + 0.5 - cx) / (w / 2)) ** 2 + ((yy + 0.5 - cy) / (h / 2)) ** 2 <= 1
        else:  # triangle, apex up
            t = (yy + 0.5 - y1) / h
            m = (t >= 0) & (t <= 1) & (np.abs(xx + 0.5 - cx) <= t * w / 2)
        img[m] = rng.uniform(160, 255, 3)
        ys, xs = np.nonzero(m)
        boxes[i] = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        imgs[i] = img.clip(0, 255).astype(np.uint8)
    return imgs, boxes


def _stage(cin: int, cout: int, two: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    if two:
        layers += [nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class SlimBody(nn.Module):
    """A plain 5-stage CNN with C3/C4/C5 taps (strides 8/16/32): trains in seconds."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(_stage(3, 16, two=False), _stage(16, 24), _stage(24, 32))
        self.stage4 = _stage(32, 48)
        self.stage5 = _stage(48, 64, two=False)

    def forward(self, x):
        c3 = self.stem(x)
        c4 = self.stage4(c3)
        return [c3, c4, self.stage5(c4)]


SLIM_OVERRIDES = {
    "fpn.channels": 32, "head.channels": 48, "head.num_convs": 1, "anchors.scales": [1.0, 1.5],
    "preprocess.min_size": IMG, "preprocess.max_size": IMG, "preprocess.fixed_size": None,
}


def slim_model(seed: int = 0):
    """The ``fast`` preset (1 class, slim FPN/head, 96-px input) on :class:`SlimBody`."""
    from retinadet.model import build_model
    from retinadet.model.backbones import Backbone
    from retinadet.model.fpn import FPN

    torch.manual_seed(seed)
    model = build_model("fast", num_classes=1, overrides=SLIM_OVERRIDES)
    model.backbone = Backbone(SlimBody(), [32, 48, 64], "slim")
    model.fpn = FPN([32, 48, 64], model.cfg.fpn)
    return model


def ap50(dets: list[dict], gt_boxes: np.ndarray) -> float:
    """All-point interpolated AP at IoU 0.5, one ground-truth box per image."""
    from torchvision.ops import box_iou

    rows = []
    for i, d in enumerate(dets):
        for b, s in zip(d.boxes, d.scores.tolist()):
            rows.append((s, i, b))
    rows.sort(key=lambda r: -r[0])
    matched = np.zeros(len(gt_boxes), bool)
    tp = np.zeros(len(rows))
    for j, (_, i, b) in enumerate(rows):
        iou = float(box_iou(b[None].float(), torch.as_tensor(gt_boxes[i])[None].float()))
        if iou >= 0.5 and not matched[i]:
            matched[i] = True
            tp[j] = 1
    if not rows:
        return 0.0
    ctp = np.cumsum(tp)
    recall = ctp / len(gt_boxes)
    precision = ctp / np.arange(1, len(rows) + 1)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    for k in range(len(mpre) - 2, -1, -1):
        mpre[k] = max(mpre[k], mpre[k + 1])
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


@pytest.fixture(scope="session")
def shapes_model():
    """A slim detector trained on 400 one-shape images (250 iterations, batch 8) and its
    validation set; trained once per session, single-threaded (robust on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = slim_model(0)
        imgs, boxes = make_shapes(400, seed=1)
        x_all = torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous()
        b_all = torch.from_numpy(boxes)
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
        gen = torch.Generator().manual_seed(0)
        iters, batch = 250, 8
        model.train()
        t0 = time.perf_counter()
        for it in range(iters):
            lr = 2e-3 * min(1.0, (it + 1) / 30) * (0.1 if it > 0.8 * iters else 1.0)
            for group in opt.param_groups:
                group["lr"] = lr
            idx = torch.randint(0, len(x_all), (batch,), generator=gen)
            targets = {"boxes": b_all[idx][:, None], "labels": torch.zeros(batch, 1, dtype=torch.long)}
            loss = model(model.normalize(x_all[idx]), targets=targets)["total"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        train_s = time.perf_counter() - t0
        model.eval()
        val_imgs, val_boxes = make_shapes(40, seed=99)
        with torch.no_grad():
            dets = model(model.normalize(torch.from_numpy(val_imgs).permute(0, 3, 1, 2)))
    finally:
        torch.set_num_threads(threads)
    return {"model": model, "val_images": val_imgs, "val_boxes": val_boxes, "ap50": ap50(dets, val_boxes),
            "train_s": train_s}


def network_input(model, image: np.ndarray):
    """One HxWx3 uint8 image -> (the normalised, padded network input [1, 3, H, W], resized sizes [1, 2])."""
    from retinadet.model.preprocess import prepare_batch

    batch = prepare_batch([torch.from_numpy(image).permute(2, 0, 1)], model.cfg.preprocess)
    return model.normalize(batch.images, batch.image_sizes), batch.image_sizes
