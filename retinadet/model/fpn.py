"""Feature pyramid P3..P7 on top of backbone maps C3..C5 (Lin et al., 2017)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from retinadet.model.config import FPNConfig


def make_norm(kind: str | None, channels: int) -> nn.Module | None:
    if kind is None:
        return None
    if kind == "gn":
        return nn.GroupNorm(32 if channels % 32 == 0 else _largest_divisor(channels, 32), channels)
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"unknown norm '{kind}' (use None, 'gn' or 'bn')")


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, at_most + 1) if n % d == 0)


def conv_norm(in_ch: int, out_ch: int, kernel: int, norm: str | None) -> nn.Sequential:
    """Conv (+ norm), laid out as torchvision's Conv2dNormActivation so weights map 1:1."""
    norm_layer = make_norm(norm, out_ch)
    layers = [nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=norm_layer is None)]
    if norm_layer is not None:
        layers.append(norm_layer)
    return nn.Sequential(*layers)


class FPN(nn.Module):
    """1x1 laterals, nearest top-down upsampling to each lateral's size, 3x3 outputs;
    P6 is a stride-2 3x3 conv on P5 or C5, and P7 one on ReLU(P6)."""

    def __init__(self, in_channels: list[int], cfg: FPNConfig):
        super().__init__()
        ch = cfg.channels
        self.p6_from_c5 = cfg.p6_input == "c5"
        self.lateral = nn.ModuleList(conv_norm(c, ch, 1, cfg.norm) for c in in_channels)
        self.output = nn.ModuleList(conv_norm(ch, ch, 3, cfg.norm) for _ in in_channels)
        self.p6 = nn.Conv2d(in_channels[-1] if self.p6_from_c5 else ch, ch, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(ch, ch, 3, stride=2, padding=1)
        self.out_channels = ch
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        inner = self.lateral[-1](feats[-1])
        outs = [self.output[-1](inner)]
        for idx in range(len(feats) - 2, -1, -1):
            lateral = self.lateral[idx](feats[idx])
            inner = lateral + F.interpolate(inner, size=lateral.shape[-2:], mode="nearest")
            outs.insert(0, self.output[idx](inner))
        p6 = self.p6(feats[-1] if self.p6_from_c5 else outs[-1])
        p7 = self.p7(F.relu(p6))
        return outs + [p6, p7]
