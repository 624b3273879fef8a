"""Classification CNNs turned into C3/C4/C5 feature extractors, swappable by name.

torchvision models are traced with ``torchvision.models.feature_extraction``; the tap for
each stride is the last node at that stride that every path through the network crosses
(so a ResNet's tap is a stage's output, never a block's inner conv that a shortcut skips).
timm models use ``features_only`` and their ``feature_info``.
"""

from __future__ import annotations

import difflib
import logging
import math
import os

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names
from torchvision.ops import FrozenBatchNorm2d

from retinadet.errors import CheckpointError, ConfigError
from retinadet.model.config import BackboneConfig

log = logging.getLogger(__name__)

TAP_STRIDES = (8, 16, 32)
PROBE_SIZE = 256
# Non-square, so a node whose size does not follow the input (adaptive pooling) shows
# different strides along H and W and is never taken as a tap.
PROBE_HW = (256, 320)
# torchvision's trainable_layers -> the largest output stride that is frozen.
FROZEN_STRIDE = {5: 0, 4: 2, 3: 4, 2: 8, 1: 16, 0: 32}
# Constructor arguments that keep auxiliary classifier branches out of the graph.
_EXTRA_KWARGS = {
    "inception_v3": {"aux_logits": False, "init_weights": False},
    "googlenet": {"aux_logits": False, "init_weights": False},
}


def torchvision_classification_models() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


class Backbone(nn.Module):
    """Returns [C3, C4, C5]; ``out_channels`` and ``strides`` describe them."""

    def __init__(self, body: nn.Module, out_channels: list[int], name: str, in_channels: int = 3):
        super().__init__()
        self.body = body
        self.out_channels = out_channels
        self.strides = list(TAP_STRIDES)
        self.in_channels = in_channels
        self.name = name

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = self.body(x)
        if isinstance(feats, dict):
            return [feats["c3"], feats["c4"], feats["c5"]]
        return list(feats)

    def extra_repr(self) -> str:
        return f"name={self.name}, in_channels={self.in_channels}, out_channels={self.out_channels}, strides={self.strides}"


def _builder_kwargs(cfg: BackboneConfig) -> dict:
    """``backbone.kwargs`` for the model constructor; lists become tuples (YAML has no tuples)."""
    if not isinstance(cfg.kwargs, dict):
        raise ConfigError(f"backbone.kwargs must be a mapping of constructor options, got {type(cfg.kwargs).__name__}")
    return {str(k): tuple(v) if isinstance(v, list) else v for k, v in cfg.kwargs.items()}


def build_backbone(cfg: BackboneConfig) -> Backbone:
    if cfg.name.startswith("timm:"):
        return _build_timm(cfg)
    return _build_torchvision(cfg)


# --------------------------------------------------------------------------- torchvision


def _build_torchvision(cfg: BackboneConfig) -> Backbone:
    names = torchvision_classification_models()
    if cfg.name not in names:
        close = difflib.get_close_matches(cfg.name, names, n=5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"unknown backbone '{cfg.name}'.{hint} torchvision models: {', '.join(names)}. "
            "For timm models use 'timm:<name>' (list them with `retinadet model backbones --timm`)."
        )
    weights_enum, local_file = _resolve_torchvision_weights(cfg)
    kwargs = {**_EXTRA_KWARGS.get(cfg.name, {}), **_builder_kwargs(cfg)}
    if cfg.name == "inception_v3" and weights_enum is not None:
        kwargs["aux_logits"] = True  # torchvision requires it when loading its weights
    try:
        model = torchvision.models.get_model(cfg.name, weights=weights_enum, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"backbone '{cfg.name}' rejected backbone.kwargs {cfg.kwargs}: {exc}") from exc
    except (OSError, RuntimeError) as exc:  # the download of ImageNet weights failed
        raise CheckpointError(_offline_message(cfg.name, weights_enum, exc)) from exc
    if getattr(model, "aux_logits", False):
        model.aux_logits, model.AuxLogits = False, None
    if local_file is not None:
        load_backbone_file(model, local_file)
    model = convert_norm(model, cfg.norm)
    if cfg.in_channels != 3:
        _adapt_input_channels(model, cfg.in_channels)
    model.eval()
    taps, frozen = _probe_taps(model, cfg.in_channels, FROZEN_STRIDE[cfg.trainable_layers])
    body = create_feature_extractor(model, return_nodes={taps[s]: f"c{int(math.log2(s))}" for s in TAP_STRIDES})
    channels = _probe_channels(body, cfg.in_channels)
    for name, param in body.named_parameters():
        if name in frozen or FROZEN_STRIDE[cfg.trainable_layers] >= 32:
            param.requires_grad_(False)
    body.train()
    return Backbone(body, channels, cfg.name, cfg.in_channels)


def _probe_taps(model: nn.Module, in_channels: int, max_frozen_stride: int) -> tuple[dict[int, str], set[str]]:
    """Finds the C3/C4/C5 nodes, and the parameters to freeze, from one dummy pass."""
    _, eval_nodes = get_graph_node_names(model)
    probe = create_feature_extractor(model, return_nodes={n: n for n in eval_nodes[1:]})
    with torch.no_grad():
        outs = probe(torch.zeros(1, in_channels, *PROBE_HW))
    strides: dict[str, int] = {}
    for name, out in outs.items():
        if isinstance(out, Tensor) and out.dim() == 4 and min(out.shape[-2:]) > 0:
            sh = 2 ** round(math.log2(PROBE_HW[0] / out.shape[-2]))
            sw = 2 ** round(math.log2(PROBE_HW[1] / out.shape[-1]))
            if sh == sw:
                strides[name] = sh
    order, cuts = _cut_nodes(probe)
    taps = {}
    for stride in TAP_STRIDES:
        candidates = [n for n in order if strides.get(n) == stride and n in cuts]
        if not candidates:
            raise ConfigError(f"backbone has no feature map at stride {stride}; it cannot feed an FPN P3-P5")
        taps[stride] = candidates[-1]
    return taps, _frozen_params(probe, order, cuts, strides, max_frozen_stride)


def _cut_nodes(graph_module: nn.Module) -> tuple[list[str], set[str]]:
    """Node names in execution order, and those that every input-to-output path crosses."""
    graph = graph_module.graph
    output = next(n for n in graph.nodes if n.op == "output")
    qualname = {node: name for name, node in output.args[0].items()}
    nodes = list(graph.nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    order, cuts, reach = [], set(), -1
    for i, node in enumerate(nodes):
        if node in qualname:
            order.append(qualname[node])
            if reach <= i:
                cuts.add(qualname[node])
        consumers = [pos[u] for u in node.users if u is not output]
        if consumers:
            reach = max(reach, max(consumers))
    return order, cuts


def _frozen_params(probe: nn.Module, order: list[str], cuts: set[str], strides: dict[str, int], max_stride: int) -> set[str]:
    """Parameters used up to the last cut node at ``max_stride`` or less.

    With a ResNet this is torchvision's ``trainable_layers``: 4 freezes conv1/bn1, 3 also
    layer1, and so on; 0 freezes the whole backbone.
    """
    if max_stride == 0:
        return set()
    boundary = None
    for name in order:
        if name in cuts and strides.get(name, 10**9) <= max_stride:
            boundary = name
    if boundary is None:
        return set()
    prefixes = set()
    for node in probe.graph.nodes:
        if node.op in ("call_module", "get_attr"):
            prefixes.add(str(node.target))
        if node.op != "output" and _is_node_named(probe, node, boundary):
            break
    return {
        name for name, _ in probe.named_parameters()
        if any(name == p or name.startswith(p + ".") for p in prefixes)
    }


def _is_node_named(probe: nn.Module, node, name: str) -> bool:
    output = next(n for n in probe.graph.nodes if n.op == "output")
    return output.args[0].get(name) is node


def _probe_channels(body: nn.Module, in_channels: int) -> list[int]:
    was_training = body.training
    body.eval()
    with torch.no_grad():
        outs = body(torch.zeros(1, in_channels, PROBE_SIZE, PROBE_SIZE))
    body.train(was_training)
    return [outs[k].shape[1] for k in ("c3", "c4", "c5")]


def _resolve_torchvision_weights(cfg: BackboneConfig):
    if not cfg.weights:
        return None, None
    if os.path.sep in str(cfg.weights) or os.path.exists(str(cfg.weights)):
        if not os.path.isfile(cfg.weights):
            raise CheckpointError(f"backbone weights file not found: {cfg.weights}")
        return None, cfg.weights
    try:
        return torchvision.models.get_weight(f"{_weights_enum_name(cfg.name)}.{cfg.weights}"), None
    except (KeyError, ValueError, AttributeError) as exc:
        valid = [w.name for w in torchvision.models.get_model_weights(cfg.name)]
        raise ConfigError(f"unknown weights '{cfg.weights}' for {cfg.name}; valid: {', '.join(valid) or 'none'}, "
                          "or a local file path") from exc


def _weights_enum_name(model_name: str) -> str:
    return torchvision.models.get_model_weights(model_name).__name__


def _offline_message(name: str, weights, exc: Exception) -> str:
    target = os.path.join(torch.hub.get_dir(), "checkpoints")
    url = getattr(weights, "url", "")
    filename = os.path.basename(url) if url else "<weights file>"
    return (
        f"could not download ImageNet weights for {name} ({exc}). Offline? Place {filename} "
        f"(from {url}) in {target}, or pass a local file with --backbone-weights PATH."
    )


def load_backbone_file(model: nn.Module, path: str) -> None:
    """Loads a local ImageNet state_dict, reporting every key that does not fit by name."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means the file is unusable
        raise CheckpointError(f"{path}: not a readable weights file ({type(exc).__name__}: {exc})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state_dict, got {type(state).__name__}")
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise CheckpointError(f"{path}: missing {len(result.missing_keys)} backbone key(s): {', '.join(result.missing_keys[:20])}")
    if result.unexpected_keys:
        log.warning("%s: ignored %d unexpected key(s): %s", path, len(result.unexpected_keys), ", ".join(result.unexpected_keys[:20]))


def _adapt_input_channels(model: nn.Module, in_channels: int) -> None:
    from timm.models import adapt_input_conv

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            new = nn.Conv2d(in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                            module.dilation, module.groups, module.bias is not None)
            with torch.no_grad():
                # timm's rule: summed over RGB for one channel (a gray image is R = G = B), else the RGB filters
                # repeated and rescaled so that the activations keep their size.
                new.weight.copy_(adapt_input_conv(in_channels, module.weight))
                if module.bias is not None:
                    new.bias.copy_(module.bias)
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
            return
    raise ConfigError("could not find the first 3-channel convolution to adapt to in_channels")


# --------------------------------------------------------------------------- norms


def convert_norm(module: nn.Module, kind: str) -> nn.Module:
    """Replaces BatchNorm2d layers by the requested kind, keeping their learned values."""
    if kind == "bn":
        return module
    if kind == "syncbn":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, _replace_bn(child, kind))
        else:
            convert_norm(child, kind)
    return module


def _replace_bn(bn: nn.BatchNorm2d, kind: str) -> nn.Module:
    if kind == "frozen_bn":
        new = FrozenBatchNorm2d(bn.num_features, eps=bn.eps)
        with torch.no_grad():
            if bn.affine:
                new.weight.copy_(bn.weight)
                new.bias.copy_(bn.bias)
            if bn.track_running_stats:
                new.running_mean.copy_(bn.running_mean)
                new.running_var.copy_(bn.running_var)
        return new
    if kind == "gn":
        new = nn.GroupNorm(math.gcd(32, bn.num_features), bn.num_features, eps=bn.eps)
        if bn.affine:
            with torch.no_grad():
                new.weight.copy_(bn.weight)
                new.bias.copy_(bn.bias)
        return new
    raise ConfigError(f"unknown norm '{kind}'")


# --------------------------------------------------------------------------- timm


def _build_timm(cfg: BackboneConfig) -> Backbone:
    try:
        import timm
    except ImportError as exc:  # pragma: no cover - timm is a declared dependency
        raise ConfigError("timm backbones need the 'timm' package: pip install timm") from exc
    name = cfg.name.split(":", 1)[1]
    if name not in timm.list_models():
        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        hint = f" Did you mean: {', '.join('timm:' + c for c in close)}?" if close else ""
        raise ConfigError(f"unknown timm model '{name}'.{hint} List them with `retinadet model backbones --timm`.")
    pretrained = bool(cfg.weights) and not os.path.exists(str(cfg.weights))
    try:
        probe = timm.create_model(name, pretrained=False, features_only=True, **_builder_kwargs(cfg))
    except (RuntimeError, TypeError, ValueError) as exc:
        if cfg.kwargs:
            raise ConfigError(f"timm model '{name}' rejected backbone.kwargs {cfg.kwargs}: {exc}") from exc
        raise ConfigError(f"timm model '{name}' has no features_only mode, so it cannot be a backbone: {exc}") from exc
    reductions = probe.feature_info.reduction()
    indices = []
    for stride in TAP_STRIDES:
        matches = [i for i, r in enumerate(reductions) if r == stride]
        if not matches:
            raise ConfigError(f"timm model '{name}' has no feature map at stride {stride} (it has {reductions})")
        indices.append(matches[-1])
    try:
        body = timm.create_model(name, pretrained=pretrained, features_only=True, out_indices=tuple(indices),
                                 in_chans=cfg.in_channels, **_builder_kwargs(cfg))
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(
            f"could not download timm weights for '{name}' ({exc}). Offline? Pass a local file with --backbone-weights PATH."
        ) from exc
    if cfg.weights and os.path.exists(str(cfg.weights)):
        load_backbone_file(body, cfg.weights)
    body = convert_norm(body, cfg.norm)
    _freeze_timm(body, cfg.in_channels, FROZEN_STRIDE[cfg.trainable_layers])
    return Backbone(body, list(body.feature_info.channels()), cfg.name, cfg.in_channels)


def _freeze_timm(body: nn.Module, in_channels: int, max_frozen_stride: int) -> None:
    """Freezes modules that run before the first output deeper than ``max_frozen_stride``."""
    if max_frozen_stride == 0:
        return
    order: list[tuple[nn.Module, int]] = []
    hooks = []
    for module in body.modules():
        if not list(module.children()):
            hooks.append(module.register_forward_hook(
                lambda m, i, o: order.append((m, 2 ** round(math.log2(PROBE_SIZE / o.shape[-1]))))
                if isinstance(o, Tensor) and o.dim() == 4 else None))
    was_training = body.training
    body.eval()
    with torch.no_grad():
        body(torch.zeros(1, in_channels, PROBE_SIZE, PROBE_SIZE))
    body.train(was_training)
    for h in hooks:
        h.remove()
    for module, stride in order:
        if stride > max_frozen_stride:
            break
        for p in module.parameters():
            p.requires_grad_(False)
