"""The inference path: images -> :class:`Detections` in each original image's pixels.

One path for ``Detector.predict``, evaluation, prediction over folders and videos and the server:
:func:`detect_batch` decodes a padded batch; :func:`detect_images` resizes images by the model's rule,
and slices those that the whole-image resize would shrink below the scale the model was trained at
(:mod:`retinadet.utils.tiling` decides and merges). Grad-CAM runs its own grad-enabled forward pass
and decodes it with the same ``RetinaNet.postprocess``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from retinadet.model.config import PreprocessConfig
from retinadet.model.preprocess import InputBatch, prepare_batch
from retinadet.model.retinanet import RetinaNet
from retinadet.structures import Detections
from retinadet.utils.device import autocast_context
from retinadet.utils.resize import resize_scale
from retinadet.utils.sentinels import FROM_CONFIG, FromConfig
from retinadet.utils.tiling import (
    TileOptions,
    TilePlan,
    TilingReport,
    TrainingScale,
    full_image_keep,
    merge_tiles,
    plan_images,
    plan_regions,
)


@torch.no_grad()
def detect_batch(model: RetinaNet, batch: InputBatch, *, conf: float | None = None, iou: float | None = None,
                 max_det: int | None | FromConfig = FROM_CONFIG, amp: bool | str = False,
                 class_names: Sequence[str] = ()) -> list[Detections]:
    """Detections per image of ``batch``, boxes in original pixels (``batch.orig_sizes``).

    ``conf``/``iou`` None and ``max_det`` FROM_CONFIG take the model config's values; ``max_det=None``
    keeps every detection. The model runs in eval mode; its previous mode is restored."""
    was_training = model.training
    model.eval()
    try:
        x = model.normalize(batch.images, batch.image_sizes)
        with autocast_context(x.device, amp):
            cls_logits, box_deltas, anchors, per_level = model.forward_raw(x)
        return model.postprocess(cls_logits.float(), box_deltas.float(), anchors, per_level, batch.image_sizes,
                                 x.shape[-2:], score_thresh=conf, nms_iou=iou, max_det=max_det,
                                 output_sizes=batch.orig_sizes, class_names=class_names)
    finally:
        model.train(was_training)


@torch.no_grad()
def detect_images(model: RetinaNet, images: Sequence[Tensor], preprocess: PreprocessConfig | None = None, *,
                  tiling: TileOptions | None = None, scale: TrainingScale | None = None, batch_size: int | None = None,
                  report: TilingReport | None = None, conf: float | None = None, iou: float | None = None,
                  max_det: int | None | FromConfig = FROM_CONFIG, amp: bool | str = False,
                  class_names: Sequence[str] = (),
                  keep_tiles: Sequence[Callable[[np.ndarray], np.ndarray] | None] | None = None,
                  progress: Callable[[int, int], None] | None = None) -> list[Detections]:
    """Detections of uint8 (or [0, 1] float) images [3, h, w] of any sizes, resized by the model's rule (or
    ``preprocess``'s, e.g. another input size), boxes in original pixels.

    ``tiling`` (None: never slice) slices an image as :func:`retinadet.utils.tiling.plan_tiles` decides from
    ``scale``, the model's training scale. The tiles of all images, and the whole images, go through the network
    together, ``batch_size`` regions at a time (default: all at once); tiles share one geometry, so their anchors
    are built once. A sliced image's ``max_det`` (FROM_CONFIG: no cap) applies after the merge; each tile keeps
    the model's own cap. ``keep_tiles[i]`` picks which of image i's tiles run (given its grid [T, 4]; a slide's
    tissue mask skips the glass). ``progress(done, total)`` is called as the regions' batches finish."""
    pre = preprocess or model.cfg.preprocess
    device = next(model.parameters()).device
    common = dict(conf=conf, iou=iou, amp=amp, class_names=class_names)
    plans = plan_images([img.shape[-2:] for img in images], pre, tiling, scale, report)
    if all(p is None for p in plans):
        whole = [(img, (0, 0, int(img.shape[-1]), int(img.shape[-2]))) for img in images]
        return _run_regions(model, whole, pre, device, batch_size, by_size=False, max_det=max_det, progress=progress,
                            **common)
    # Regions: (image, tile index or -1 for the whole image, x1, y1, pixels).
    boxes, grids = plan_regions([img.shape[-2:] for img in images], plans, tiling.full_image, keep_tiles)
    regions = [(i, t, box[0], box[1], (images[i], box)) for i, t, box in boxes]
    # One pass without a cap, then each region's own: a whole image's is ``max_det``, a tile's the model's.
    model_cap = model.cfg.inference.max_det
    whole_cap = model_cap if max_det is FROM_CONFIG else max_det
    tile_cap = None if max_det is None else model_cap
    found = _run_regions(model, [r[4] for r in regions], pre, device, batch_size, max_det=None, progress=progress,
                         **common)
    found = [d if (cap := whole_cap if plans[i] is None else tile_cap) is None else d[:cap]
             for (i, *_), d in zip(regions, found)]
    per_image: list[list[tuple[int, int, int, Detections]]] = [[] for _ in images]
    for (i, t, x1, y1, _), d in zip(regions, found):
        per_image[i].append((t, x1, y1, d))
    nms_iou = model.cfg.inference.nms_iou if iou is None else iou
    cap = None if max_det is FROM_CONFIG else max_det
    out = []
    for img, plan, grid, parts in zip(images, plans, grids, per_image):
        if plan is None:
            out.append(parts[0][3])
            continue
        h, w = int(img.shape[-2]), int(img.shape[-1])
        if not parts:  # every tile skipped (no tissue)
            out.append(Detections.empty((h, w), list(class_names), device=device))
            continue
        th, tw = min(plan.tile[0], h), min(plan.tile[1], w)
        net_scale = resize_scale(th, tw, pre.min_size, pre.max_size, pre.fixed_size)
        out.append(_merge_image(parts, plan, grid, (h, w), tiling, nms_iou, net_scale, cap, list(class_names)))
    return out


def _run_regions(model: RetinaNet, regions: list[tuple], pre: PreprocessConfig, device, batch_size: int | None,
                 by_size: bool = True, progress: Callable[[int, int], None] | None = None, **options) -> list[Detections]:
    """Detections of each region (image, (x1, y1, x2, y2)), ``batch_size`` at a time, in the order given or
    (``by_size``) batched with regions of their own size, so that a tile's detections never depend on what it shared
    a padded canvas with. A region is cut from its image only when its batch runs: a view of a tensor, or the read
    of a :class:`retinadet.data.regions.RegionImage`'s tiles."""
    step = max(1, int(batch_size)) if batch_size else max(1, len(regions))
    groups: dict[tuple[int, int], list[int]] = {}
    for k, (_, (x1, y1, x2, y2)) in enumerate(regions):
        groups.setdefault((y2 - y1, x2 - x1) if by_size else (0, 0), []).append(k)
    out: list[Detections | None] = [None] * len(regions)
    done = 0
    for members in groups.values():
        for start in range(0, len(members), step):
            chunk = members[start:start + step]
            pixels = [img[:, y1:y2, x1:x2] for img, (x1, y1, x2, y2) in (regions[k] for k in chunk)]
            for k, d in zip(chunk, detect_batch(model, prepare_batch(pixels, pre, device), **options)):
                out[k] = d
            done += len(chunk)
            if progress is not None:
                progress(done, len(regions))
    return out


def _merge_image(parts: list[tuple[int, int, int, Detections]], plan: TilePlan, grid: np.ndarray, size: tuple[int, int],
                 tiling: TileOptions, nms_iou: float, net_scale: float, cap: int | None, names: list[str]) -> Detections:
    """One sliced image's detections: tile boxes moved into image pixels, seams filtered, tiles merged."""
    h, w = size
    boxes, scores, labels, anchors, levels, tile_index, regions = [], [], [], [], [], [], []
    for t, x1, y1, d in parts:
        if t < 0:  # the whole-image pass adds only what no tile can hold whole
            d = d[torch.from_numpy(full_image_keep(d.boxes.cpu().numpy(), plan)).to(d.boxes.device)]
            region = [0, 0, w, h]
        else:
            region = grid[t].tolist()
        offset = d.boxes.new_tensor([x1, y1, x1, y1])
        boxes.append(d.boxes + offset)
        scores.append(d.scores)
        labels.append(d.labels)
        anchors.append(d.anchor_index)
        levels.append(d.level)
        tile_index.append(torch.full_like(d.labels, t))
        regions.append(torch.tensor(region, dtype=torch.int64, device=d.labels.device).expand(len(d), 4))
    boxes, scores, labels, anchors, levels, tile_index, regions = (torch.cat(x) for x in (boxes, scores, labels, anchors,
                                                                                         levels, tile_index, regions))
    keep, merged = merge_tiles(boxes.cpu().numpy(), scores.cpu().numpy(), labels.cpu().numpy(), tile_index.cpu().numpy(),
                               grid, h, w, tiling, nms_iou, net_scale, cap)
    idx = torch.from_numpy(keep).to(boxes.device)
    return Detections(torch.from_numpy(merged).to(boxes), scores[idx], labels[idx], anchors[idx], levels[idx], (h, w),
                      names, tiles=regions[idx])
