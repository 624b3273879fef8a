"""``Detector.explain``: heatmaps for a detector's detections on one image."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

from retinadet.data.images import ImageSource, to_image_tensor
from retinadet.errors import ConfigError, DataError
from retinadet.explain.cam import check_options, compute_cams, forward_with_maps, to_original
from retinadet.explain.render import grid as make_grid
from retinadet.explain.render import overlay
from retinadet.model.inference import detect_images
from retinadet.model.preprocess import prepare_batch
from retinadet.structures import Detections
from retinadet.utils.sentinels import FROM_CONFIG, FromConfig
from retinadet.utils.tiling import TileOptions, TilingReport, plan_tiles, tile_options


class NoDetectionsError(DataError):
    """The image has no detection (above the score threshold) to explain."""


@dataclass
class Explanation:
    """Heatmaps for some detections of one image, all in that image's original pixels.

    ``heatmaps[i]`` (raw, non-negative, unnormalised) belongs to ``detections`` row ``i``;
    ``overlays[i]`` is it blended on the image with the box and label drawn.
    ``detection_index[i]`` is the row's position among all detections (``all_detections``,
    best first); ``detections.anchor_index``/``level`` the anchor and pyramid level it came from.
    """

    image: Tensor  # [3, H, W] as given (uint8 or [0, 1] float)
    detections: Detections
    all_detections: Detections
    heatmaps: Tensor  # [D, H, W] float32
    overlays: list[np.ndarray]  # D x uint8 [H, W, 3]
    detection_index: Tensor  # [D]
    method: str
    layer: str
    target: str
    norm_stats: str
    timing: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.heatmaps.shape[0])

    def grid(self, columns: int | None = None) -> np.ndarray:
        """All overlays of this image in one RGB array."""
        return make_grid(self.overlays, columns)

    def labels_text(self) -> list[str]:
        return [f"{n} {s:.2f}" for n, s in zip(self.detections.names, self.detections.scores.tolist())]


def choose(dets: Detections, topk: int | None, class_name: str | None, box_index: int | None) -> Tensor:
    """Indices (into ``dets``, best first) of the detections to explain."""
    n = len(dets)
    if box_index is not None:
        if not -n <= box_index < n:
            raise ConfigError(f"--box-index {box_index} is out of range: the image has {n} detection(s) (0..{n - 1})")
        return torch.tensor([box_index % n], dtype=torch.long)
    idx = torch.arange(n)
    if class_name is not None:
        if class_name not in dets.class_names:
            raise ConfigError(f"unknown class '{class_name}' (the model's classes: {', '.join(dets.class_names)})")
        idx = idx[dets.labels.cpu() == dets.class_names.index(class_name)]
    if topk is not None and topk > 0:
        idx = idx[:topk]
    return idx


def explain(
    detector,
    image: ImageSource,
    method: str = "gradcam",
    layer: str = "fpn",
    topk: int | None = 5,
    class_name: str | None = None,
    box_index: int | None = None,
    target: str = "cls",
    conf: float | None = 0.25,
    iou: float | None = None,
    max_det: int | None | FromConfig = FROM_CONFIG,
    alpha: float = 0.5,
    norm_stats: str = "detach",
    imgsz: int | None = None,
    tile: TileOptions | int | str | None = "auto",
    tile_overlap: float = 0.2,
    tile_merge: str = "nms",
    tile_match: str = "iou",
    tile_threshold: float | None = None,
    full_image: bool = False,
    log=None,
) -> Explanation:
    """Heatmaps for ``detector``'s detections on ``image`` (path, PIL, numpy or tensor).

    ``detector``: a :class:`retinadet.detector.Detector` (its model, class names and device).
    Which detections: ``box_index`` (one, by rank), else those of ``class_name``, capped
    at the best ``topk`` (None or 0: all). Raises :class:`NoDetectionsError` when nothing
    is left to explain. ``norm_stats``: "detach" (default) back-propagates through
    GroupNorm with constant statistics, "exact" uses the true gradient (see
    :mod:`retinadet.explain.cam`). ``imgsz``: another input size; ``tile*``/``full_image``: sliced inference as in
    ``predict``: a sliced image's detections are explained on the tile that found each.
    """
    check_options(method, layer, target, norm_stats)
    model = detector.model
    tensor, name = to_image_tensor(image, model.cfg.preprocess.window)
    pre = model.cfg.preprocess.at_size(imgsz)
    scale = getattr(detector, "scale", None)
    tiling = tile_options(tile, tile_overlap, tile_merge, tile_match, tile_threshold, full_image)
    if plan_tiles(int(tensor.shape[-2]), int(tensor.shape[-1]), pre, scale, tiling) is not None:
        return _explain_sliced(detector, tensor, name, pre, tiling, scale, log, method=method, layer=layer, topk=topk,
                               class_name=class_name, box_index=box_index, target=target, conf=conf, iou=iou,
                               max_det=max_det, alpha=alpha, norm_stats=norm_stats)
    was_training = model.training
    model.eval()
    try:
        batch = prepare_batch([tensor], pre, detector.device)
        x = model.normalize(batch.images, batch.image_sizes)
        record = forward_with_maps(model, x, norm_stats)
        # The same decoding as every other path, boxes in original pixels; anchor and level say
        # which logit each detection came from.
        dets = model.postprocess(record.cls_logits.detach().float(), record.box_deltas.detach().float(), record.anchors,
                                 record.per_level, batch.image_sizes, x.shape[-2:], score_thresh=conf, nms_iou=iou,
                                 max_det=max_det, output_sizes=batch.orig_sizes, class_names=detector.class_names)[0]
        dets.source = name
        where = f"{name}: " if name else ""
        thresh = model.cfg.inference.score_thresh if conf is None else conf
        if len(dets) == 0:
            raise NoDetectionsError(f"{where}no detections above --conf {thresh:g}; nothing to explain (try a lower --conf)")
        idx = choose(dets, topk, class_name, box_index).to(dets.scores.device)
        if idx.numel() == 0:
            raise NoDetectionsError(f"{where}no '{class_name}' detections above --conf {thresh:g}; nothing to explain")
        chosen = dets[idx]
        cams = compute_cams(record, 0, chosen.anchor_index.tolist(), chosen.labels.tolist(), chosen.level.tolist(),
                            method=method, layer=layer, target=target)
    finally:
        model.train(was_training)
    orig = tuple(tensor.shape[-2:])
    resized = batch.image_sizes[0].tolist()
    heat = torch.stack([to_original(h, resized, orig) for h in cams.heatmaps]).float().cpu()
    all_dets, chosen = dets.cpu(), chosen.cpu()
    texts = [f"{n} {s:.2f}" for n, s in zip(chosen.names, chosen.scores.tolist())]
    overlays = [overlay(tensor, h, box, t, alpha=alpha) for h, box, t in zip(heat, chosen.boxes.tolist(), texts)]
    timing = {"forward_ms": record.forward_ms, "backward_ms": cams.backward_ms}
    return Explanation(tensor, chosen, all_dets, heat, overlays, idx.cpu(), method, layer, target, norm_stats, timing)


def _explain_sliced(detector, tensor: Tensor, name: str | None, pre, tiling: TileOptions, scale, log, *, method: str,
                    layer: str, topk, class_name, box_index, target: str, conf, iou, max_det, alpha: float,
                    norm_stats: str) -> Explanation:
    """Heatmaps of a sliced image: detections as ``predict`` finds them, each explained by a grad-enabled forward
    pass over the tile that found it, its heatmap placed where the tile lies in the image."""
    model = detector.model
    report = TilingReport(log)
    t0 = time.perf_counter()
    dets = detect_images(model, [tensor], pre, tiling=tiling, scale=scale, report=report, conf=conf, iou=iou,
                         max_det=max_det, class_names=detector.class_names)[0].cpu()
    detect_ms = (time.perf_counter() - t0) * 1000.0
    dets.source = name
    where = f"{name}: " if name else ""
    thresh = model.cfg.inference.score_thresh if conf is None else conf
    if len(dets) == 0:
        raise NoDetectionsError(f"{where}no detections above --conf {thresh:g}; nothing to explain (try a lower --conf)")
    idx = choose(dets, topk, class_name, box_index)
    if idx.numel() == 0:
        raise NoDetectionsError(f"{where}no '{class_name}' detections above --conf {thresh:g}; nothing to explain")
    chosen = dets[idx]
    h, w = int(tensor.shape[-2]), int(tensor.shape[-1])
    heat = torch.zeros(len(chosen), h, w)
    backward: list[float] = []
    was_training = model.training
    model.eval()
    try:
        regions = chosen.tiles.tolist()
        for region in sorted(set(map(tuple, regions))):
            rows = [j for j, r in enumerate(regions) if tuple(r) == region]
            x1, y1, x2, y2 = region
            batch = prepare_batch([tensor[:, y1:y2, x1:x2]], pre, detector.device)
            x = model.normalize(batch.images, batch.image_sizes)
            record = forward_with_maps(model, x, norm_stats)
            # The tile alone may pad differently than in predict's batch: find each detection's anchor again.
            solo = model.postprocess(record.cls_logits.detach().float(), record.box_deltas.detach().float(), record.anchors,
                                     record.per_level, batch.image_sizes, x.shape[-2:], score_thresh=0.0, nms_iou=1.0,
                                     max_det=None, output_sizes=batch.orig_sizes)[0].cpu()
            anchors, labels, levels = [], [], []
            for j in rows:
                local = chosen.boxes[j] - torch.tensor([x1, y1, x1, y1], dtype=chosen.boxes.dtype)
                same = solo.labels == chosen.labels[j]
                ious = box_iou(local[None], solo.boxes[same])[0]
                best = int(torch.nonzero(same)[int(ious.argmax())])
                anchors.append(int(solo.anchor_index[best]))
                labels.append(int(solo.labels[best]))
                levels.append(int(solo.level[best]))
            cams = compute_cams(record, 0, anchors, labels, levels, method=method, layer=layer, target=target)
            backward += cams.backward_ms
            for j, hmap in zip(rows, cams.heatmaps):
                heat[j, y1:y2, x1:x2] = to_original(hmap, batch.image_sizes[0].tolist(), (y2 - y1, x2 - x1)).float().cpu()
    finally:
        model.train(was_training)
    texts = [f"{n} {s:.2f}" for n, s in zip(chosen.names, chosen.scores.tolist())]
    overlays = [overlay(tensor, hm, box, t, alpha=alpha) for hm, box, t in zip(heat, chosen.boxes.tolist(), texts)]
    return Explanation(tensor, chosen, dets, heat, overlays, idx, method, layer, target, norm_stats,
                       {"forward_ms": detect_ms, "backward_ms": backward})


def inference_ms(detector, image, repeats: int = 3) -> float:
    """Best-of-``repeats`` wall time of one plain ``predict`` on ``image`` (for comparisons)."""
    best = float("inf")
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        detector.predict(image)
        best = min(best, (time.perf_counter() - t0) * 1000.0)
    return best
