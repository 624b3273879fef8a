"""Class-activation maps for RetinaNet detections: Grad-CAM, Grad-CAM++ and EigenCAM.

One forward pass records the backbone maps C3..C5 and the pyramid P3..P7 (forward hooks,
so the model's own ``forward_raw`` runs unchanged). Each detection's target is the
pre-sigmoid class logit of the exact anchor and class it came from (``target="cls"``), or
the sum of that anchor's four box deltas (``target="box"``: which pixels moved the box).
Gradient methods then run one ``autograd.grad`` per detection with ``retain_graph=True``,
asking only for the maps in use, so the backward pass stops at those maps.

Map choice (``layer``):

- ``fpn``: the pyramid level whose anchor produced the detection (the head sees only it).
- ``all-fpn``: P3..P7, each map upsampled to the input and summed. For gradient methods the
  other levels get gradient only through the top-down pathway, i.e. none: the head is
  applied per level, so in practice this equals ``fpn``; it is useful with ``eigencam``.
- ``c3`` / ``c4`` / ``c5``: a backbone stage (gradients pass back through the FPN).

Normalisation statistics (``norm_stats``): a GroupNorm head subtracts each group's mean over
the whole map, so the gradient of one anchor's logit sums to zero over space within every
group, and Grad-CAM's channel weights (spatial means of that gradient) collapse to the small
remainder: on a GN-head model the maps came out all-zero or off the object (measured in
``tests/explain``). With ``norm_stats="detach"`` (default) the GroupNorm means and variances
are treated as constants in the backward pass only (forward values are exactly the model's);
the gradient then measures the local dependence of the detection on the map, and Grad-CAM
localises. ``"exact"`` keeps the true gradient. Models without GroupNorm are unaffected.
"""

from __future__ import annotations

import contextlib
import time
import types
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retinadet.errors import ConfigError

METHODS = ("gradcam", "gradcam++", "eigencam")
LAYERS = ("fpn", "all-fpn", "c3", "c4", "c5")
TARGETS = ("cls", "box")
NORM_STATS = ("detach", "exact")
BACKBONE_STRIDES = (8, 16, 32)


def check_options(method: str, layer: str, target: str, norm_stats: str = "detach") -> None:
    if norm_stats not in NORM_STATS:
        raise ConfigError(f"unknown norm_stats '{norm_stats}' (use one of: {', '.join(NORM_STATS)})")
    if method not in METHODS:
        raise ConfigError(f"unknown CAM method '{method}' (use one of: {', '.join(METHODS)})")
    if layer not in LAYERS:
        raise ConfigError(f"unknown CAM layer '{layer}' (use one of: {', '.join(LAYERS)})")
    if target not in TARGETS:
        raise ConfigError(f"unknown CAM target '{target}' (use one of: {', '.join(TARGETS)})")


@dataclass
class ForwardRecord:
    """One grad-enabled forward pass and the maps it went through."""

    cls_logits: Tensor  # [B, N, K]
    box_deltas: Tensor  # [B, N, 4]
    anchors: Tensor  # [N, 4]
    per_level: list[int]
    backbone: list[Tensor]  # C3, C4, C5
    pyramid: list[Tensor]  # P3..P7
    padded_size: tuple[int, int]
    forward_ms: float = 0.0


def _group_norm_detached_stats(self: nn.GroupNorm, x: Tensor) -> Tensor:
    """GroupNorm whose output equals ``F.group_norm`` exactly, but whose backward treats the
    group mean and variance as constants."""
    exact = F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
    n = x.shape[0]
    xr = x.reshape(n, self.num_groups, -1)
    mean = xr.mean(dim=-1, keepdim=True).detach()
    var = xr.var(dim=-1, unbiased=False, keepdim=True).detach()
    lin = ((xr - mean) / torch.sqrt(var + self.eps)).reshape(x.shape)
    if self.affine:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        lin = lin * self.weight.view(shape) + self.bias.view(shape)
    return exact.detach() + (lin - lin.detach())


@contextlib.contextmanager
def norm_stats_mode(model: nn.Module, mode: str):
    """Within the block, the model's GroupNorm layers back-propagate with constant
    statistics when ``mode == "detach"``; ``"exact"`` changes nothing."""
    patched = []
    if mode == "detach":
        for m in model.modules():
            if isinstance(m, nn.GroupNorm) and "forward" not in m.__dict__:
                m.forward = types.MethodType(_group_norm_detached_stats, m)
                patched.append(m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward


def forward_with_maps(model, batch: Tensor, norm_stats: str = "detach") -> ForwardRecord:
    """``model.forward_raw(batch)`` with autograd on, recording backbone and FPN outputs
    (``norm_stats``: see the module docstring)."""
    store: dict[str, list[Tensor]] = {}
    hooks = [
        model.backbone.register_forward_hook(lambda m, i, o: store.__setitem__("backbone", list(o))),
        model.fpn.register_forward_hook(lambda m, i, o: store.__setitem__("pyramid", list(o))),
    ]
    t0 = time.perf_counter()
    try:
        with torch.enable_grad(), norm_stats_mode(model, norm_stats):
            # The input asks for gradients so every map does, even under frozen weights.
            x = batch.detach().requires_grad_(True)
            cls_logits, box_deltas, anchors, per_level = model.forward_raw(x)
    finally:
        for h in hooks:
            h.remove()
    ms = (time.perf_counter() - t0) * 1000.0
    return ForwardRecord(cls_logits, box_deltas, anchors, list(per_level), store["backbone"], store["pyramid"],
                         tuple(batch.shape[-2:]), ms)


def maps_for(record: ForwardRecord, layer: str, level: int) -> tuple[list[Tensor], list[int]]:
    """The feature maps (and their strides) that ``layer`` means for a detection at ``level``."""
    if layer == "fpn":
        return [record.pyramid[level]], [2 ** (level + 3)]
    if layer == "all-fpn":
        return list(record.pyramid), [2 ** (i + 3) for i in range(len(record.pyramid))]
    idx = {"c3": 0, "c4": 1, "c5": 2}[layer]
    return [record.backbone[idx]], [BACKBONE_STRIDES[idx]]


# ----------------------------------------------------------------------------- CAM math


def gradcam(activation: Tensor, grad: Tensor) -> Tensor:
    """Grad-CAM (Selvaraju et al.): channel weights = spatial mean of the gradient; ReLU of
    the weighted sum of channels. ``activation``/``grad`` [C, h, w] -> [h, w]."""
    weights = grad.mean(dim=(1, 2))
    return torch.relu((weights[:, None, None] * activation).sum(dim=0))


def gradcam_plus_plus(activation: Tensor, grad: Tensor) -> Tensor:
    """Grad-CAM++ (Chattopadhay et al.), with the usual exponential-score closed form:
    alpha = g^2 / (2 g^2 + sum(A) g^3); weights = sum(alpha * relu(g))."""
    g2 = grad.pow(2)
    g3 = grad.pow(3)
    sum_a = activation.sum(dim=(1, 2), keepdim=True)
    denom = 2 * g2 + sum_a * g3
    alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), torch.zeros_like(denom))
    weights = (alpha * torch.relu(grad)).sum(dim=(1, 2))
    return torch.relu((weights[:, None, None] * activation).sum(dim=0))


def eigencam(activation: Tensor) -> Tensor:
    """EigenCAM (Muhammad & Yeasin): the activations [C, h, w] projected on their first
    principal component over positions (centred), signed so that it agrees with the mean
    activation, then ReLU. Gradient-free."""
    c, h, w = activation.shape
    # At least float32 (half-precision SVD is not supported), never less precise than the input.
    a = activation.detach().to(torch.promote_types(activation.dtype, torch.float32)).reshape(c, h * w).T  # [hw, C]
    centred = a - a.mean(dim=0, keepdim=True)
    if h * w < 2 or not torch.isfinite(centred).all() or float(centred.abs().max()) == 0.0:
        return torch.zeros(h, w, dtype=activation.dtype, device=activation.device)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    proj = centred @ vh[0]
    ref = a.mean(dim=1)
    if float(((proj - proj.mean()) * (ref - ref.mean())).sum()) < 0:
        proj = -proj
    return torch.relu(proj).reshape(h, w).to(activation.dtype)


def upsample_to_input(cam: Tensor, stride: int, padded_size: Sequence[int]) -> Tensor:
    """A map [h, w] at ``stride`` -> the padded input's pixels [H, W] (bilinear; cell (i, j)
    covers pixels [i*s, (i+1)*s), so P6/P7 maps that overhang the input are cropped)."""
    h, w = cam.shape
    up = F.interpolate(cam[None, None], size=(h * stride, w * stride), mode="bilinear", align_corners=False)[0, 0]
    return up[: padded_size[0], : padded_size[1]]


def to_original(cam_input: Tensor, resized_hw: Sequence[int], original_hw: Sequence[int]) -> Tensor:
    """Input-pixel map -> original image pixels: crop the padding, undo the resize."""
    crop = cam_input[: int(resized_hw[0]), : int(resized_hw[1])]
    if tuple(crop.shape) == tuple(int(v) for v in original_hw):
        return crop
    return F.interpolate(crop[None, None], size=tuple(int(v) for v in original_hw), mode="bilinear", align_corners=False)[0, 0]


def fuse(cams: Sequence[Tensor], strides: Sequence[int], padded_size: Sequence[int], normalize_each: bool) -> Tensor:
    """Sum of maps brought to the input's pixels (each scaled to max 1 first for EigenCAM,
    whose projections have no common scale)."""
    out = None
    for cam, s in zip(cams, strides):
        up = upsample_to_input(cam, s, padded_size)
        if normalize_each:
            peak = up.max()
            up = up / peak if float(peak) > 0 else up
        out = up if out is None else out + up
    return out


@dataclass
class CamResult:
    heatmaps: Tensor  # [D, H, W] in input (padded) pixels, float
    backward_ms: list[float] = field(default_factory=list)


def target_scalar(record: ForwardRecord, image: int, anchor: int, label: int, target: str) -> Tensor:
    if target == "cls":
        return record.cls_logits[image, anchor, label]
    return record.box_deltas[image, anchor].sum()


def compute_cams(
    record: ForwardRecord,
    image: int,
    anchor_index: Sequence[int],
    labels: Sequence[int],
    levels: Sequence[int],
    method: str = "gradcam",
    layer: str = "fpn",
    target: str = "cls",
) -> CamResult:
    """One heatmap per (anchor, class, level) of image ``image`` in ``record``'s batch,
    in the padded input's pixels."""
    check_options(method, layer, target)
    out: list[Tensor] = []
    times: list[float] = []
    eigen_cache: dict[int, Tensor] = {}
    n = len(anchor_index)
    for a, k, lvl in zip(anchor_index, labels, levels):
        maps, strides = maps_for(record, layer, int(lvl))
        if method == "eigencam":
            key = -1 if layer != "fpn" else int(lvl)
            if key not in eigen_cache:
                cams = [eigencam(m[image]) for m in maps]
                eigen_cache[key] = fuse(cams, strides, record.padded_size, normalize_each=len(cams) > 1)
            out.append(eigen_cache[key])
            continue
        t0 = time.perf_counter()
        score = target_scalar(record, image, int(a), int(k), target)
        grads = torch.autograd.grad(score, maps, retain_graph=True, allow_unused=True)
        times.append((time.perf_counter() - t0) * 1000.0)
        fn = gradcam if method == "gradcam" else gradcam_plus_plus
        cams = []
        for m, g in zip(maps, grads):
            act = m[image].detach()
            cams.append(torch.zeros(act.shape[-2:], dtype=act.dtype, device=act.device) if g is None else fn(act, g[image]))
        out.append(fuse(cams, strides, record.padded_size, normalize_each=False))
    if n:
        heat = torch.stack(out)
    else:
        heat = torch.zeros(0, *record.padded_size, device=record.anchors.device)
    return CamResult(heat.detach(), times)
