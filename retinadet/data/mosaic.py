"""Mosaic augmentation (YOLO-style): four training images in the canvas of one, at their own scale.

Why: a small dataset trained from scratch (a few hundred images) gives a step few objects and few contexts; a mosaic
puts pieces of four augmented images, with their objects, beside one another in every such sample, around a random
centre. Object scale is unchanged (no downscaling, unlike a 2x canvas shrunk back), so training sees objects at the
scale inference does. An object cut by a quadrant edge is clipped and kept when at least ``min_visibility`` of it
stays inside, else marked crowd (ignored by the matcher, never taught as background nor as a whole object from a
part), as tiled training (:mod:`retinadet.data.tiles`) does; one with nothing inside is dropped (counted).

Every draw comes from torch's CPU RNG, which the engine's loader seeds per (seed, epoch, index), so a mosaic is a
pure function of those and an interrupted run resumes exactly.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from retinadet.data.loading import DetectionDataset
from retinadet.data.transforms import BoxStats

FILL = 114  # the uncovered area: mean grey (114 / 255 for float images)


def _as_dtype(image: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``image`` in ``dtype`` (uint8 in 0..255 or float in [0, 1])."""
    if image.dtype == dtype:
        return image
    if dtype == torch.uint8:
        return (image.float() * 255).round().clamp(0, 255).to(torch.uint8)
    return image.to(dtype) / 255.0 if image.dtype == torch.uint8 else image.to(dtype)


def _area(b: torch.Tensor) -> torch.Tensor:
    return (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)


def mosaic_layout(height: int, width: int, sizes: list[tuple[int, int]], xc: int, yc: int
                  ) -> list[tuple[tuple[int, int, int, int], tuple[int, int]]]:
    """Where each of four images (h, w) goes on an ``height`` x ``width`` canvas whose centre is (xc, yc): per image,
    its quadrant window on the canvas (x0, y0, x1, y1) and the offset (dx, dy) from its pixels to the canvas'.
    Order: top-left, top-right, bottom-left, bottom-right; each meets the centre with its inner corner."""
    out = []
    for k, (h, w) in enumerate(sizes):
        left, top = k in (0, 2), k in (0, 1)
        x0, x1 = (max(xc - w, 0), xc) if left else (xc, min(xc + w, width))
        y0, y1 = (max(yc - h, 0), yc) if top else (yc, min(yc + h, height))
        # The image's inner corner sits on the centre: a left image's right edge at xc, a top image's bottom at yc.
        dx, dy = (xc - w if left else xc), (yc - h if top else yc)
        out.append(((x0, y0, x1, y1), (dx, dy)))
    return out


class MosaicDataset(Dataset):
    """``inner``'s samples; with probability ``prob`` sample i is a mosaic of it and three others (see the module).

    Sample i is drawn first (so its augmentation is the one it has without mosaic), then whether it is a mosaic,
    then the three others (uniformly, with replacement) and the centre (uniform in the middle half of the canvas).
    The canvas is sample i's shape and dtype; sample i is the top-left image. The target keeps every key of sample
    i's (image_id, orig_size, path, ...), with the four samples' ``skipped`` and ``stats`` summed and this crop's
    clipped (cut, kept: target or crowd) and dropped (nothing inside, or under ``min_box_size`` px) boxes added."""

    def __init__(self, inner: DetectionDataset | Dataset, prob: float, min_visibility: float = 0.5,
                 min_box_size: float | None = None):
        self.inner = inner
        self.prob = float(prob)
        self.min_visibility = float(min_visibility)
        if min_box_size is None:  # the inner transform's rule for degenerate boxes
            cfg = getattr(getattr(inner, "transform", None), "cfg", None)
            min_box_size = getattr(cfg, "min_box_size", 1.0)
        self.min_box_size = float(min_box_size)

    def __len__(self) -> int:
        return len(self.inner)

    def __getattr__(self, name: str):
        # The inner dataset's attributes (class_names, aspect_ratios, records, ...); not for pickling's lookups.
        if name.startswith("__") or name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __getitem__(self, index: int):
        first = self.inner[index]
        if self.prob <= 0 or (self.prob < 1 and float(torch.rand(())) >= self.prob):
            return first
        others = torch.randint(0, len(self.inner), (3,)).tolist()
        samples = [first] + [self.inner[j] for j in others]
        return self.compose(samples)

    def compose(self, samples: list[tuple[torch.Tensor, dict]], centre: tuple[int, int] | None = None):
        """The mosaic of four (image, target) samples around ``centre`` (x, y); None: drawn from torch's RNG."""
        canvas_like, target0 = samples[0]
        c, height, width = (int(v) for v in canvas_like.shape[-3:])
        dtype = canvas_like.dtype
        fill = FILL if dtype == torch.uint8 else FILL / 255.0
        canvas = torch.full((c, height, width), fill, dtype=dtype)
        if centre is None:
            centre = (int(torch.randint(width // 4, width - width // 4 + 1, ())),
                      int(torch.randint(height // 4, height - height // 4 + 1, ())))
        xc, yc = (int(v) for v in centre)
        layout = mosaic_layout(height, width, [(int(img.shape[-2]), int(img.shape[-1])) for img, _ in samples], xc, yc)

        for (image, _), ((x0, y0, x1, y1), (dx, dy)) in zip(samples, layout):
            if x1 > x0 and y1 > y0:
                canvas[:, y0:y1, x0:x1] = _as_dtype(image[:, y0 - dy:y1 - dy, x0 - dx:x1 - dx], dtype)

        counts = torch.tensor([int(t["boxes"].shape[0]) for _, t in samples])
        boxes = torch.cat([t["boxes"].float().reshape(-1, 4) for _, t in samples])
        labels = torch.cat([t["labels"].long().reshape(-1) for _, t in samples])
        crowd = torch.cat([t["crowd"].bool().reshape(-1) for _, t in samples])
        windows = torch.tensor([w for w, _ in layout], dtype=torch.float32).repeat_interleave(counts, dim=0)
        offsets = torch.tensor([o for _, o in layout], dtype=torch.float32).repeat(1, 2).repeat_interleave(counts, dim=0)

        shifted = boxes + offsets
        inside = torch.minimum(torch.maximum(shifted, windows[:, :2].repeat(1, 2)), windows[:, 2:].repeat(1, 2))
        visible_area = _area(inside)
        size = self.min_box_size
        bw, bh = inside[:, 2] - inside[:, 0], inside[:, 3] - inside[:, 1]
        keep = (visible_area > 0) & (bw >= size) & (bh >= size) & (visible_area >= size)
        cut = keep & ((inside - shifted).abs().amax(dim=1) > 1e-4)
        visible = visible_area / _area(shifted).clamp(min=1e-12)
        ignore = cut & (visible < self.min_visibility - 1e-6)

        stats = BoxStats()
        skipped: list[str] = []
        for _, t in samples:
            if "stats" in t:
                stats.add(t["stats"])
            skipped += list(t.get("skipped", []))
        stats.clipped += int(cut.sum())
        stats.dropped += int((~keep).sum())
        target = {**target0, "boxes": inside[keep], "labels": labels[keep], "crowd": (crowd | ignore)[keep],
                  "stats": stats, "skipped": skipped}
        return canvas, target
