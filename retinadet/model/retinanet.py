"""The RetinaNet module: backbone -> FPN -> shared heads, with loss and batched inference."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from retinadet.model.anchors import AnchorGenerator
from retinadet.model.backbones import build_backbone
from retinadet.model.box_coder import BoxCoder
from retinadet.model.config import ModelConfig
from retinadet.model.fpn import FPN
from retinadet.model.heads import RetinaNetHead
from retinadet.model.losses import detection_losses
from retinadet.model.matching import match_anchors
from retinadet.structures import Detections
from retinadet.utils.sentinels import FROM_CONFIG, FromConfig

# ITU-R BT.601 luminance: a gray image repeated in three channels comes back exactly.
LUMA = torch.tensor([0.299, 0.587, 0.114])


class RetinaNet(nn.Module):
    """Takes normalised, padded images [B, 3, H, W].

    ``forward(images, targets)`` returns losses; ``forward(images)`` returns detections.
    Targets are padded tensors: ``boxes`` [B, M, 4] (xyxy, input pixels), ``labels`` [B, M]
    with -1 for padding, and optionally ``crowd`` [B, M] (boxes to ignore, not to learn).
    ``image_sizes`` [B, 2] (h, w before padding) bounds the boxes at inference.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg.validate()
        self.backbone = build_backbone(cfg.backbone)
        self.fpn = FPN(self.backbone.out_channels, cfg.fpn)
        self.head = RetinaNetHead(cfg.fpn.channels, cfg.anchors.num_anchors, cfg.num_classes, cfg.head)
        self.anchor_generator = AnchorGenerator(cfg.anchors)
        self.box_coder = BoxCoder(cfg.box_coder.weights, cfg.box_coder.clamp, cfg.box_coder.scale_mode)
        pre = cfg.preprocess
        mean, std = torch.tensor(pre.mean), torch.tensor(pre.std)
        self.in_channels = int(cfg.backbone.in_channels)
        if self.in_channels == 1:  # a gray model sees luminance, with the statistics of the RGB ones it averages
            mean, std = (mean * LUMA).sum(0, keepdim=True), (std * LUMA).sum(0, keepdim=True)
        elif self.in_channels == 2:  # two stains or fluorophores: the first two channels
            mean, std = mean[:2], std[:2]
        self.register_buffer("pixel_mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", std.view(1, -1, 1, 1), persistent=False)
        self.channels_last = False

    def use_channels_last(self, enabled: bool = True) -> RetinaNet:
        """Switch weights and inputs to NHWC, which oneDNN convolutions run faster on CPU."""
        self.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)
        self.channels_last = enabled
        return self

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    def normalize(self, images: Tensor, image_sizes: Tensor | None = None) -> Tensor:
        """uint8 [0, 255] or float [0, 1] padded images [B, 3, H, W] -> normalised [B, in_channels, H, W], padding kept
        at zero. A gray model (in_channels 1) takes the luminance, which is the gray value of a gray image."""
        # One copy (already in the layout the convolutions want) and in-place arithmetic: the naive
        # chain of five full-size temporaries cost 25 ms a batch of eight 288 px images on one core.
        layout = torch.channels_last if self.channels_last and images.dim() == 4 else torch.preserve_format
        if self.in_channels == 1:  # images always arrive in three channels (gray repeated)
            x = torch.einsum("bchw,c->bhw", images.to(torch.float32), LUMA.to(images.device)).unsqueeze(1)
            x = x.contiguous(memory_format=layout)
        else:
            x = images[:, : self.in_channels].to(torch.float32, memory_format=layout, copy=True)
        scale = 1.0 / (self.pixel_std * 255.0) if images.dtype == torch.uint8 else 1.0 / self.pixel_std
        x.mul_(scale).sub_(self.pixel_mean / self.pixel_std)
        if image_sizes is not None:
            h, w = x.shape[-2:]
            rows = torch.arange(h, device=x.device)[None, :, None] < image_sizes[:, 0, None, None]
            cols = torch.arange(w, device=x.device)[None, None, :] < image_sizes[:, 1, None, None]
            x.mul_((rows & cols).unsqueeze(1).to(x.dtype))
        return x

    def forward_raw(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, list[int]]:
        """Class logits [B, N, K], box deltas [B, N, 4], anchors [N, 4], anchors per level."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        feats = self.fpn(self.backbone(images))
        cls_logits, box_deltas = self.head(feats)
        anchors, per_level = self.anchor_generator(
            images.shape[-2:], [f.shape[-2:] for f in feats], images.device, torch.float32
        )
        return cls_logits, box_deltas, anchors, per_level

    def forward(self, images: Tensor, targets: dict[str, Tensor] | None = None, image_sizes: Tensor | None = None):
        cls_logits, box_deltas, anchors, per_level = self.forward_raw(images)
        if targets is not None:
            return self.compute_loss(cls_logits, box_deltas, anchors, targets, per_level)
        if image_sizes is None:
            image_sizes = torch.tensor([images.shape[-2:]], device=images.device).expand(images.shape[0], 2)
        return self.postprocess(cls_logits, box_deltas, anchors, per_level, image_sizes, images.shape[-2:])

    def compute_loss(self, cls_logits: Tensor, box_deltas: Tensor, anchors: Tensor, targets: dict[str, Tensor],
                     per_level: list[int] | None = None) -> dict[str, Tensor]:
        boxes = targets["boxes"].to(anchors.dtype)
        labels = targets["labels"]
        valid = labels >= 0
        crowd = targets.get("crowd")
        crowd = torch.zeros_like(valid) if crowd is None else crowd.bool() & valid
        matched = match_anchors(anchors, boxes, valid, crowd, self.cfg.matcher, per_level, self.cfg.anchors.num_anchors)
        losses = detection_losses(
            cls_logits.float(), box_deltas.float(), anchors, matched, boxes, labels, self.box_coder, self.cfg.loss
        )
        losses["total"] = losses["cls"] + losses["box"]
        return losses

    @torch.no_grad()
    def postprocess(
        self,
        cls_logits: Tensor,
        box_deltas: Tensor,
        anchors: Tensor,
        per_level: list[int],
        image_sizes: Tensor,
        padded_size,
        score_thresh: float | None = None,
        nms_iou: float | None = None,
        max_det: int | None | FromConfig = FROM_CONFIG,
        output_sizes: Tensor | None = None,
        class_names: Sequence[str] = (),
    ) -> list[Detections]:
        """:class:`Detections` per image, best first, each with the anchor and level it came from.

        Per level: top-k candidates above the score threshold; then class-aware NMS over the
        whole batch at once (image and class form the NMS group), and ``max_det`` per image
        (None: keep all). Boxes are in input (resized-image) pixels, or, given ``output_sizes``
        [B, 2], mapped to frames of those sizes (the original images) in one step for the batch.
        """
        inf = self.cfg.inference
        score_thresh = inf.score_thresh if score_thresh is None else score_thresh
        nms_iou = inf.nms_iou if nms_iou is None else nms_iou
        max_det = inf.max_det if max_det is FROM_CONFIG else max_det
        b, _, k = cls_logits.shape
        topk = inf.topk_per_level
        parts = []
        offset = 0
        for level, (logits, deltas, level_anchors) in enumerate(zip(
            cls_logits.split(per_level, dim=1), box_deltas.split(per_level, dim=1), anchors.split(per_level)
        )):
            scores = torch.sigmoid(logits.float()).flatten(1)
            above = scores > score_thresh
            if topk is not None and int(above.sum(dim=1).max()) > topk:
                top_scores, top_idx = scores.topk(topk, dim=1)
                img_idx, col = (top_scores > score_thresh).nonzero(as_tuple=True)
                flat_idx = top_idx[img_idx, col]
            else:  # every candidate above the threshold fits in top-k: no sort needed
                img_idx, flat_idx = above.nonzero(as_tuple=True)
            anchor_idx = flat_idx // k
            boxes = self.box_coder.decode(deltas[img_idx, anchor_idx].float(), level_anchors[anchor_idx])
            parts.append((img_idx, boxes, scores[img_idx, flat_idx], flat_idx % k, anchor_idx + offset,
                          torch.full_like(anchor_idx, level)))
            offset += logits.shape[1]
        img_idx, boxes, scores, labels, anchor_index, levels = (torch.cat(t) for t in zip(*parts))
        boxes = self._clip(boxes, image_sizes[img_idx], padded_size)
        keep = batched_nms(boxes, scores, img_idx * k + labels, nms_iou)
        keep = keep[torch.sort(img_idx[keep], stable=True).indices]
        counts = torch.bincount(img_idx[keep], minlength=b)
        if max_det is not None:
            starts = torch.cumsum(counts, 0) - counts
            rank = torch.arange(keep.numel(), device=keep.device) - starts[img_idx[keep]]
            keep = keep[rank < max_det]
            counts = counts.clamp(max=max_det)
        frames = image_sizes if output_sizes is None else output_sizes
        boxes = boxes[keep]
        if output_sizes is not None:  # per axis, as torchvision maps boxes back to the original image
            ratio = output_sizes.to(boxes.dtype) / image_sizes.to(boxes.dtype)  # [B, 2] (h, w)
            boxes = boxes * ratio[img_idx[keep]][:, [1, 0, 1, 0]]
        splits = counts.tolist()
        fields = [t.split(splits) for t in (boxes, scores[keep], labels[keep], anchor_index[keep], levels[keep])]
        sizes = frames.tolist()
        names = list(class_names)
        return [Detections(*(f[i] for f in fields), image_size=tuple(sizes[i]), class_names=names) for i in range(b)]

    def _clip(self, boxes: Tensor, image_sizes: Tensor, padded_size) -> Tensor:
        if self.cfg.inference.clip_to == "padded":
            h, w = float(padded_size[0]), float(padded_size[1])
            return torch.stack(
                [boxes[..., 0].clamp(0, w), boxes[..., 1].clamp(0, h), boxes[..., 2].clamp(0, w), boxes[..., 3].clamp(0, h)], dim=-1
            )
        hw = image_sizes.to(boxes.dtype)
        upper = torch.stack([hw[..., 1], hw[..., 0], hw[..., 1], hw[..., 0]], dim=-1)
        return torch.minimum(boxes.clamp(min=0), upper)


def describe(model: RetinaNet, image_size: tuple[int, int] = (512, 512)) -> list[dict]:
    """Per-stage shapes for one dummy input: backbone taps, pyramid levels, anchors."""
    was_training = model.training
    model.eval()
    x = torch.zeros(1, model.backbone.in_channels, *image_size)
    with torch.no_grad():
        taps = model.backbone(x)
        levels = model.fpn(taps)
    model.train(was_training)
    _, per_level = model.anchor_generator(image_size, [f.shape[-2:] for f in levels], x.device, torch.float32)
    rows = [{"stage": f"C{i + 3}", "stride": s, "channels": t.shape[1], "shape": tuple(t.shape[-2:])}
            for i, (t, s) in enumerate(zip(taps, model.backbone.strides))]
    rows += [{"stage": f"P{i + 3}", "stride": 2 ** (i + 3), "channels": f.shape[1], "shape": tuple(f.shape[-2:]), "anchors": n}
             for i, (f, n) in enumerate(zip(levels, per_level))]
    return rows
