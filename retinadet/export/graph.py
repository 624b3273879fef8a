"""A traceable RetinaNet: normalisation, network, anchors and post-processing in one graph.

:class:`ExportModule` wraps a :class:`~retinadet.model.RetinaNet` for export. Unlike
``RetinaNet.postprocess`` it has no data-dependent Python control flow and no host
syncs: every size (batch, padded height and width, feature-map grids, candidates per
level, detections kept) is taken from tensor shapes, so a trace taken at one input size
is valid for any batch size and any padded height and width.

Inputs
    ``images``       [B, 3, H, W] float32 in [0, 1] (or uint8 0..255 when exported with
                     ``input_dtype="uint8"``), resized images padded bottom-right with
                     zeros; H and W multiples of 32 (``preprocess.size_divisible``).
    ``image_sizes``  [B, 2] int64, each image's (h, w) before padding.
Outputs (fixed shape, padded)
    ``boxes``        [B, max_det, 4] float32 xyxy in input (resized-image) pixels, 0 past num_dets
    ``scores``       [B, max_det] float32, best first, 0 past num_dets
    ``labels``       [B, max_det] int64, contiguous class index, -1 past num_dets
    ``num_dets``     [B] int64
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import nms

from retinadet.model.anchors import LEVELS, base_anchors
from retinadet.model.retinanet import RetinaNet

INPUT_NAMES = ["images", "image_sizes"]
OUTPUT_NAMES = ["boxes", "scores", "labels", "num_dets"]
DEFAULT_MAX_DET = 300  # output rows when the model's config keeps every detection (max_det None)
# The modules _level_outputs calls, whose names scope the network's nodes in the exported graph ("/backbone/...",
# "/cls_tower_2/..."); every other node is normalisation, anchors or post-processing. INT8 keeps to these.
NETWORK_SCOPES = ("backbone", "fpn", "cls_tower", "cls_logits", "box_tower", "box_pred")
PREDICTION_SCOPES = ("cls_logits", "box_pred")  # the convolutions whose outputs are the logits and box deltas


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _int(t: Tensor):
    """A 0-dim size tensor as an argument that takes an int (kept dynamic while tracing)."""
    return t if _tracing() else int(t)


def _int_min(t: Tensor, bound: int) -> Tensor:
    """min(t, bound) for int64 tensors; Where, not Clip/Min (int64 Clip/Min need opset 12+)."""
    b = torch.tensor(bound, dtype=t.dtype)
    return torch.where(t > b, b, t)


class ExportModule(nn.Module):
    def __init__(self, model: RetinaNet, max_det: int | None = None, score_thresh: float | None = None,
                 nms_iou: float | None = None, input_dtype: str = "float32"):
        super().__init__()
        if input_dtype not in ("float32", "uint8"):
            raise ValueError(f"input_dtype must be 'float32' or 'uint8', got '{input_dtype}'")
        self.model = model.eval()
        cfg = model.cfg
        inf = cfg.inference
        self.num_classes = cfg.num_classes
        self.num_anchors = cfg.anchors.num_anchors
        self.score_thresh = float(inf.score_thresh if score_thresh is None else score_thresh)
        self.nms_iou = float(inf.nms_iou if nms_iou is None else nms_iou)
        self.topk = inf.topk_per_level
        md = inf.max_det if max_det is None else max_det
        self.max_det = int(md if md is not None else DEFAULT_MAX_DET)
        self.clip_to = inf.clip_to
        self.input_dtype = input_dtype
        a = cfg.anchors
        self.center_offset = float(a.center_offset)
        self.nominal = a.stride_mode == "nominal"
        for i, size in enumerate(a.sizes):
            # Built in float64 exactly as grid_anchors does; shifts are added in float64 too.
            self.register_buffer(f"base_anchors_{i}", base_anchors(a, size), persistent=False)

    # ------------------------------------------------------------------ network
    def _level_outputs(self, x: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        m = self.model
        feats = m.fpn(m.backbone(x))
        head = m.head
        logits, deltas = [], []
        for f in feats:
            n = f.shape[0]
            cls = head.cls_logits(head.cls_tower(f))
            box = head.box_pred(head.box_tower(f))
            # [B, A*K, h, w] -> [B, h*w*A, K], the order of RetinaNetHead.
            logits.append(cls.view(n, self.num_anchors, self.num_classes, f.shape[2], f.shape[3])
                          .permute(0, 3, 4, 1, 2).reshape(n, -1, self.num_classes))
            deltas.append(box.view(n, self.num_anchors, 4, f.shape[2], f.shape[3]).permute(0, 3, 4, 1, 2).reshape(n, -1, 4))
        return feats, logits, deltas

    def _anchors(self, level: int, image_hw: Tensor, feat: Tensor) -> Tensor:
        """Anchors [h*w*A, 4] of one level from its feature-map shape (as grid_anchors)."""
        grid = torch._shape_as_tensor(feat)[2:]
        if self.nominal:
            stride = torch.tensor([2 ** LEVELS[level]] * 2, dtype=torch.float64)
        else:
            stride = torch.div(image_hw, grid, rounding_mode="floor").to(torch.float64)
        shift_y = (torch.arange(_int(grid[0]), dtype=torch.float64) + self.center_offset) * stride[0]
        shift_x = (torch.arange(_int(grid[1]), dtype=torch.float64) + self.center_offset) * stride[1]
        gh, gw = shift_y.shape[0], shift_x.shape[0]
        yy = shift_y[:, None].expand(gh, gw)
        xx = shift_x[None, :].expand(gh, gw)
        shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)
        base = getattr(self, f"base_anchors_{level}")
        return (shifts + base.view(1, -1, 4)).reshape(-1, 4).float()

    def _clip(self, boxes: Tensor, sizes: Tensor, image_hw: Tensor) -> Tensor:
        if self.clip_to == "padded":
            hw = image_hw.to(boxes.dtype)[None, :].expand(boxes.shape[0], 2)
        else:
            hw = sizes.to(boxes.dtype)
        upper = torch.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], dim=-1)
        return torch.minimum(boxes.clamp(min=0), upper)

    # ------------------------------------------------------------------ forward
    def forward(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        m = self.model
        if self.input_dtype == "uint8":
            images = images.to(torch.uint8)
        x = m.normalize(images, image_sizes)
        feats, logits, deltas = self._level_outputs(x)
        image_hw = torch._shape_as_tensor(x)[2:]
        batch = torch._shape_as_tensor(x)[0]
        k = self.num_classes

        parts_img, parts_boxes, parts_scores, parts_labels = [], [], [], []
        for level, (feat, lg, dl) in enumerate(zip(feats, logits, deltas)):
            anchors = self._anchors(level, image_hw, feat)
            scores = torch.sigmoid(lg.float()).reshape(lg.shape[0], -1)  # [B, n*K]
            count = torch._shape_as_tensor(scores)[1]
            if self.topk is not None:
                kk = _int_min(count, int(self.topk))
                top_scores, top_idx = scores.topk(_int(kk), dim=1)
            else:
                kk = count
                top_scores = scores
                top_idx = torch.arange(_int(count))[None, :].expand_as(scores)
            sel = (top_scores > self.score_thresh).reshape(-1).nonzero().reshape(-1)
            img_idx = torch.div(sel, kk, rounding_mode="floor")
            flat_idx = top_idx.reshape(-1)[sel]
            anchor_idx = torch.div(flat_idx, k, rounding_mode="floor")
            n_anchors = torch._shape_as_tensor(dl)[1]
            level_deltas = dl.reshape(-1, 4)[img_idx * n_anchors + anchor_idx].float()
            parts_boxes.append(m.box_coder.decode(level_deltas, anchors[anchor_idx]))
            parts_scores.append(top_scores.reshape(-1)[sel])
            parts_labels.append(flat_idx - anchor_idx * k)
            parts_img.append(img_idx)
        img_idx = torch.cat(parts_img)
        boxes = self._clip(torch.cat(parts_boxes), image_sizes[img_idx], image_hw)
        scores = torch.cat(parts_scores)
        labels = torch.cat(parts_labels)

        # Class-aware NMS over the whole batch (exports to ONNX NonMaxSuppression): each
        # (image, class) group is moved to its own cell, x by class and y by image, with cells
        # larger than any clipped coordinate. Two axes keep offsets (and float32 rounding of
        # the shifted coordinates) small: max(K, B) cells instead of B * K along one axis.
        span = image_hw.max().to(boxes.dtype) + 1.0
        ox = labels.to(boxes.dtype) * span
        oy = img_idx.to(boxes.dtype) * span
        keep = nms(boxes + torch.stack([ox, oy, ox, oy], dim=1), scores, self.nms_iou)  # best first

        # Group by image keeping score order (unique sort keys, so any sort is stable), rank
        # within each image, and scatter the first max_det of each image into padded rows.
        kept_img = img_idx[keep]
        n_kept = torch._shape_as_tensor(keep)[0]
        position = torch.arange(_int(n_kept))
        order = torch.sort(kept_img * n_kept + position).indices
        keep = keep[order]
        kept_img = kept_img[order]
        onehot = kept_img[None, :] == torch.arange(_int(batch))[:, None]
        counts = onehot.sum(dim=1)
        starts = torch.cumsum(counts, dim=0) - counts
        rank = position - starts[kept_img]
        fits = (rank < self.max_det).nonzero().reshape(-1)
        dst = kept_img[fits] * self.max_det + rank[fits]
        src = keep[fits]
        rows = batch * self.max_det
        out_boxes = torch.zeros(_int(rows), 4).scatter(0, dst[:, None].expand(-1, 4), boxes[src])
        out_scores = torch.zeros(_int(rows)).scatter(0, dst, scores[src])
        out_labels = torch.full((_int(rows),), -1, dtype=torch.int64).scatter(0, dst, labels[src])
        num_dets = _int_min(counts, self.max_det)
        return (out_boxes.reshape(-1, self.max_det, 4), out_scores.reshape(-1, self.max_det),
                out_labels.reshape(-1, self.max_det), num_dets)
