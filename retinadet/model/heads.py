"""Classification and box subnets, shared across all pyramid levels."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from retinadet.model.config import HeadConfig
from retinadet.model.fpn import make_norm


def _tower(in_ch: int, cfg: HeadConfig) -> nn.Sequential:
    blocks = []
    for i in range(cfg.num_convs):
        norm = make_norm(cfg.norm, cfg.channels)
        layers = [nn.Conv2d(in_ch if i == 0 else cfg.channels, cfg.channels, 3, padding=1, bias=norm is None)]
        if norm is not None:
            layers.append(norm)
        layers.append(nn.ReLU(inplace=True))
        blocks.append(nn.Sequential(*layers))
    return nn.Sequential(*blocks)


class RetinaNetHead(nn.Module):
    """Outputs per image: class logits [N, K] and box deltas [N, 4] over all levels,
    ordered level, row, column, anchor (channel a*K + k), as torchvision and the seed."""

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, cfg: HeadConfig):
        super().__init__()
        out_in = cfg.channels if cfg.num_convs > 0 else in_channels
        self.num_anchors = num_anchors
        self.num_classes = num_classes
        self.cls_tower = _tower(in_channels, cfg)
        self.box_tower = _tower(in_channels, cfg)
        self.cls_logits = nn.Conv2d(out_in, num_anchors * num_classes, 3, padding=1)
        self.box_pred = nn.Conv2d(out_in, num_anchors * 4, 3, padding=1)
        for m in [*self.cls_tower.modules(), *self.box_tower.modules(), self.cls_logits, self.box_pred]:
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.reset_class_bias(cfg.prior_prob)

    def reset_class_bias(self, prior_prob: float) -> None:
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, feats: list[Tensor]) -> tuple[Tensor, Tensor]:
        cls_out, box_out = [], []
        for f in feats:
            n, _, h, w = f.shape
            cls = self.cls_logits(self.cls_tower(f))
            box = self.box_pred(self.box_tower(f))
            cls_out.append(cls.view(n, self.num_anchors, self.num_classes, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, self.num_classes))
            box_out.append(box.view(n, self.num_anchors, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4))
        return torch.cat(cls_out, dim=1), torch.cat(box_out, dim=1)
