"""``retinadet train`` and ``retinadet.train(...)``: builds a run (data, model, optimizer, schedule, hooks)
and runs it with the loop of :mod:`retinadet.engine.trainer`."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from retinadet.data.check import anchor_coverage, input_box_sides, input_box_wh
from retinadet.data.images import image_bit_depth
from retinadet.data.records import DatasetRecords
from retinadet.data.tiles import TileSampling, describe_tiles, tile_size
from retinadet.data.transforms import transform_config
from retinadet.engine import distributed as D
from retinadet.engine import schedule as S
from retinadet.engine.config import RECIPE_STEPS, TrainConfig, format_duration, recipe_epochs, resolve_config
from retinadet.engine.cpu_tuning import cpu_tuned
from retinadet.engine.datasets import train_val_splits
from retinadet.engine.hooks import (
    RESULT_COLUMNS,
    CheckpointHook,
    EvalHook,
    LoggingHook,
    StopHook,
    TimeBudgetHook,
    TrainingStopped,
    input_size,
)
from retinadet.engine.loaders import TrainLoader, mosaic_epochs, scaled_preprocess
from retinadet.engine.schedule import TimeBudget, build_scheduler, build_time_scheduler
from retinadet.engine.train_scale import describe_scale, sliced_validation, training_scale
from retinadet.engine.train_state import ModelEMA, TrainState, find_last
from retinadet.engine.trainer import HookBase, Trainer
from retinadet.errors import ConfigError, DataError, RetinadetError
from retinadet.model import ModelConfig, RetinaNet, resolve_model_config
from retinadet.model.anchor_fit import fit_anchors
from retinadet.model.backbones import torchvision_classification_models
from retinadet.model.input_fit import MAX_AREA, InputSizeChoice, fit_input_size
from retinadet.model.presets import PRESETS, get_preset
from retinadet.utils.device import resolve_amp, resolve_device
from retinadet.utils.files import RunLog, atomic_write_text, increment_run_dir, write_yaml
from retinadet.utils.tiling import TileOptions, TrainingScale
from retinadet.utils.window import DEFAULT_WINDOW, parse_window
from retinadet.weights import load_checkpoint, load_for_finetune, resolve_weights

AUTOANCHOR_MIN = 0.98  # exact IoU-0.5 coverage under which autoanchor fits the anchors
# The input may grow to input_fit.MAX_AREA times the preset's pixels to reach small objects; with --time, in
# proportion to the budget, from 1x at half of REFERENCE_BUDGET_S to INPUT_AREA_MAX at twice it.
INPUT_AREA_MAX = 4.0
REFERENCE_BUDGET_S = 600.0

__all__ = ["train", "TrainResult", "TrainingStopped", "RESULT_COLUMNS", "build_optimizer", "param_groups", "seed_everything",
           "state_digest", "check_model_spec"]


@dataclass
class TrainResult:
    save_dir: Path
    last: Path | None
    best: Path | None
    metrics: dict[str, Any] = field(default_factory=dict)
    best_fitness: float = -1.0
    epochs_completed: int = 0
    interrupted: bool = False
    skipped_steps: int = 0
    stop_reason: str = ""
    elapsed: float = 0.0  # seconds the run took, over resumes (what a time budget counts)


@dataclass
class _Resume:
    checkpoint: dict
    state: TrainState
    save_dir: Path


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on norm weights and biases (every parameter with ndim <= 1)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.base_lr, momentum=cfg.momentum, nesterov=True)
    # The fused kernel updates every tensor in one pass: 4.8 ms a step against 17 ms for the per-tensor loop
    # on the fast preset (98 tensors), on CPU as on CUDA.
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=cfg.base_lr, fused=fused or None)


def _model_config(cfg: TrainConfig, num_classes: int, finetune_ckpt: dict | None,
                  train_data: DatasetRecords | None = None,
                  resume_model: dict | None = None) -> tuple[ModelConfig, list[str], InputSizeChoice | None]:
    """The model config of a run, notes on what was adapted for training from scratch or to the data, and the
    input size fitted to the data (None: given, resumed or not fitted). ``resume_model``: the model config of the
    checkpoint a run resumes, whose input size and anchors it keeps."""
    overrides: dict[str, Any] = dict(cfg.model_overrides or {})
    if cfg.window is not None:
        overrides["preprocess.window"] = cfg.window
    if cfg.trainable_layers is not None:
        overrides["backbone.trainable_layers"] = int(cfg.trainable_layers)
    if cfg.model is None and finetune_ckpt is not None:
        base = ModelConfig.from_dict(finetune_ckpt["model_config"])
        base.backbone.weights = None
    else:
        base = resolve_model_config(cfg.model or "fast")
    if cfg.imgsz:
        overrides = {**base.replace(overrides).preprocess.size_overrides(cfg.imgsz), **overrides}
    mcfg = base.replace(overrides) if overrides else base
    mcfg.preset = base.preset
    mcfg = mcfg.replace({"num_classes": num_classes}) if mcfg.num_classes != num_classes else mcfg
    notes: list[str] = []
    if finetune_ckpt is None and not mcfg.backbone.weights:
        # Presets made for ImageNet backbones freeze BN and early stages; from random init those would
        # stay random for the whole run. Unless asked for explicitly, train them.
        scratch: dict[str, Any] = {}
        if mcfg.backbone.norm == "frozen_bn" and "backbone.norm" not in overrides:
            scratch["backbone.norm"] = "bn"
        if mcfg.backbone.trainable_layers < 5 and "backbone.trainable_layers" not in overrides:
            scratch["backbone.trainable_layers"] = 5
        if scratch:
            preset = mcfg.preset
            mcfg = mcfg.replace(scratch)
            mcfg.preset = preset
            notes.append("backbone has no pretrained weights, so it trains from scratch: "
                         + ", ".join(f"{k}={v}" for k, v in scratch.items())
                         + " (pass --trainable-layers or --set backbone.norm=... to keep the preset's)")
    if mcfg.preprocess.window is None and train_data is not None and (bits := sampled_bit_depth(train_data)) > 8:
        preset = mcfg.preset
        mcfg = mcfg.replace({"preprocess.window": DEFAULT_WINDOW})
        mcfg.preset = preset
        notes.append(f"{bits}-bit images: {parse_window(DEFAULT_WINDOW).describe()} (the checkpoint records this rule; "
                     "--window LOW,HIGH for a fixed range)")
    size_choice = None
    if resume_model is not None and isinstance(resume_model.get("anchors"), dict):
        # The resumed weights were trained at this input size and on these anchors (fitted or not): never refit them.
        preset = mcfg.preset
        kept = {f"anchors.{k}": v for k, v in resume_model["anchors"].items()}
        kept.update({f"preprocess.{k}": v for k, v in (resume_model.get("preprocess") or {}).items()
                     if k in ("min_size", "max_size", "fixed_size")})
        mcfg = mcfg.replace(kept)
        mcfg.preset = preset
    elif train_data is not None:
        sized = cfg.imgsz is not None or cfg.tile is not None or any(
            k.startswith("preprocess.") and k.endswith("_size") for k in overrides)
        if cfg.model is None and finetune_ckpt is not None and not sized:
            # The weights' features were learnt at their input size, as the heads were on their anchors: keep it.
            notes.append(f"input size {mcfg.preprocess.max_size}px from --weights (the size they were trained at); "
                         "--imgsz sets it")
        elif not sized:
            mcfg, size_choice = _fit_input_size(cfg, mcfg, train_data)
            notes.append(f"input size {size_choice.size}px ({size_choice.factor:.2f}x the preset's): {size_choice.reason} "
                         "(recorded in the checkpoint; --imgsz sets it)")
        mcfg, note = _autoanchor(cfg, mcfg, finetune_ckpt, train_data, overrides)
        notes += [note] if note else []
    mcfg.preset = mcfg.preset or cfg.model
    return mcfg.validate(), notes, size_choice


def input_area_budget(cfg: TrainConfig) -> float:
    """How many times the preset's pixels the fitted input may take: MAX_AREA, or with ``--time`` in proportion
    to the budget (a step costs about its pixels, so a longer budget affords larger inputs at the same epochs)."""
    if cfg.time_budget is None:
        return MAX_AREA
    return float(min(INPUT_AREA_MAX, max(1.0, MAX_AREA * cfg.time_budget / REFERENCE_BUDGET_S)))


def _fit_input_size(cfg: TrainConfig, mcfg: ModelConfig, train_data: DatasetRecords) -> tuple[ModelConfig, InputSizeChoice]:
    """The preset's resize rule scaled to the training boxes (``model.input_fit``), within the cost budget."""
    sides, labels, native = input_box_sides([train_data], mcfg.preprocess)
    choice = fit_input_size(sides, labels, mcfg.preprocess, mcfg.anchors, input_area_budget(cfg), native=native)
    if choice.preprocess == mcfg.preprocess:
        return mcfg, choice
    preset = mcfg.preset
    rule = choice.preprocess
    mcfg = mcfg.replace({"preprocess.min_size": rule.min_size, "preprocess.max_size": rule.max_size,
                         "preprocess.fixed_size": rule.fixed_size})
    mcfg.preset = preset
    return mcfg, choice


def _autoanchor(cfg: TrainConfig, mcfg: ModelConfig, finetune_ckpt: dict | None, train_data: DatasetRecords,
                overrides: dict[str, Any]) -> tuple[ModelConfig, str | None]:
    """``autoanchor``: when the exact anchor coverage of ``data check`` (best anchor on the grid, IoU >= 0.5, at the
    model's input size) of the training boxes is under AUTOANCHOR_MIN, the ratios and scales fitted to them
    (``model.anchor_fit``), kept only if that exact coverage rises. Not for fine-tuning (the heads learnt other
    anchors) or anchors set by hand, unless ``autoanchor`` is given explicitly."""
    if cfg.autoanchor is False:
        return mcfg, None
    explicit = cfg.autoanchor is True
    if finetune_ckpt is not None and not explicit:
        return mcfg, ("autoanchor: off when fine-tuning from --weights (its heads were trained on its anchors); "
                      "--autoanchor fits them anyway")
    if not explicit and any(k in overrides for k in ("anchors.ratios", "anchors.scales")):
        return mcfg, None
    if finetune_ckpt is not None:
        saved = (finetune_ckpt.get("model_config") or {}).get("anchors") or {}
        count = len(saved.get("ratios", ())) * len(saved.get("scales", ()))
        if count and count != mcfg.anchors.num_anchors:
            return mcfg, (f"autoanchor: not applied: --weights has {count} anchors per location, this model "
                          f"{mcfg.anchors.num_anchors}")
    before, _, n, _ = anchor_coverage([train_data], mcfg)
    if before is None:
        return mcfg, None
    if before >= AUTOANCHOR_MIN:
        return mcfg, f"autoanchor: best anchor IoU >= 0.5 for {before:.1%} of {n} training boxes: anchors kept"
    fitted, _, _ = fit_anchors(input_box_wh([train_data], mcfg.preprocess), mcfg.anchors,
                               seed=cfg.seed)
    candidate = dataclasses.replace(mcfg, anchors=fitted)
    after = anchor_coverage([train_data], candidate)[0] if fitted is not mcfg.anchors else before
    if after is None or after <= before:
        return mcfg, (f"autoanchor: best anchor IoU >= 0.5 for {before:.1%} of {n} training boxes; no better "
                      "ratios/scales found: anchors kept")
    return candidate, (f"autoanchor: best anchor IoU >= 0.5 for {before:.1%} -> {after:.1%} of {n} training boxes "
                       f"with ratios {fitted.ratios}, scales {fitted.scales} (recorded in the checkpoint; "
                       "--no-autoanchor keeps the preset's)")


def sampled_bit_depth(data: DatasetRecords, samples: int = 16) -> int:
    """The most bits a sample among the first images of ``data`` (headers only; unreadable ones are the loader's
    to report)."""
    bits = 8
    for r in data.records[:samples]:
        try:
            bits = max(bits, image_bit_depth(r.path))
        except DataError:
            continue
    return bits


def check_model_spec(spec: str | None) -> None:
    """``--model`` must be a preset, a torchvision classification model or ``timm:<name>``."""
    if spec is None or spec in PRESETS or spec.startswith("timm:") or spec in torchvision_classification_models():
        return
    try:
        get_preset(spec)
    except ConfigError as exc:
        raise ConfigError(f"{exc}; or a backbone name (see `retinadet model backbones`)") from None


def state_digest(model: nn.Module) -> str:
    """sha256 over every parameter (to check that DDP ranks hold the same weights). BatchNorm running
    statistics are left out: DDP re-broadcasts rank 0's at each forward, so after the last step they are
    per-rank by design (rank 0's are the ones saved)."""
    h = hashlib.sha256()
    for k, v in model.named_parameters():
        h.update(k.encode())
        h.update(v.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def train(config: str | os.PathLike | None = None, **options: Any) -> TrainResult:
    """Train a RetinaNet; ``options`` are the CLI flags (``data``, ``epochs``, ``batch``, ...), which win
    over a YAML ``config``. Returns where the run was written and its final metrics. ``time="10m"`` trains to
    that budget instead of a number of epochs (counted from this call, set-up included)."""
    started = S.CLOCK()
    cfg, resume = _resolve(config, options)
    dist, device_spec = D.setup(cfg.device)
    try:
        device = resolve_device(device_spec)
        with cpu_tuned(device.type == "cpu") as cpu_tuning:
            seed_everything(cfg.seed, cfg.deterministic)
            trainer, save_dir, log = _build(cfg, dist, device, resume, cpu_tuning, started)
            trainer.train()
            return _result(trainer, save_dir, log)
    except torch.OutOfMemoryError as exc:
        raise RetinadetError(f"out of memory ({str(exc).splitlines()[0][:120]}); try a smaller --batch or --imgsz") from exc
    finally:
        D.cleanup()


def _resolve(config: str | os.PathLike | None, options: dict[str, Any]) -> tuple[TrainConfig, _Resume | None]:
    """The run's options: the call's, or with ``resume`` the interrupted run's (from its last.pt)."""
    if not options.get("resume"):
        return resolve_config(config, **options), None
    last = find_last(options["resume"])
    ck = load_checkpoint(last)
    saved = ck.get("train_config")
    if not isinstance(saved, dict) or "train_state" not in ck:
        raise RetinadetError(f"{last}: holds no training state to resume from (not a last.pt)")
    keep = {k: options[k] for k in ("device", "workers", "max_iters", "progress") if options.get(k) is not None}
    # max_iters counts the steps of one call: the interrupted call's limit is not the resumed one's.
    cfg = TrainConfig.from_dict({**saved, "max_iters": None, **keep, "resume": str(last)})
    state = TrainState.from_dict(ck["train_state"])
    if cfg.time is not None:
        if state.finished or state.elapsed >= cfg.time_budget:
            raise ConfigError(f"{cfg.resume}: training already finished (time budget {format_duration(cfg.time_budget)}); "
                              "nothing to resume")
    elif state.epoch >= cfg.epochs:
        raise ConfigError(f"{cfg.resume}: training already finished ({cfg.epochs} epochs); nothing to resume")
    return cfg, _Resume(ck, state, last.parent.parent)


def _build(cfg: TrainConfig, dist: D.DistInfo, device: torch.device, resume: _Resume | None,
           cpu_tuning: list[str], started: float | None = None) -> tuple[Trainer, Path, RunLog]:
    # Inputs are checked before the run folder exists, so a bad --data or --model leaves nothing behind.
    train_data, val_data, data_info = train_val_splits(cfg.data, cfg.val_split, cfg.seed)
    check_model_spec(cfg.model)
    finetune = resolve_weights(cfg.weights) if cfg.weights and resume is None else None
    save_dir, log = _run_folder(cfg, dist, resume, train_data, val_data, data_info)
    model, size_choice = _build_model(cfg, len(train_data.class_names), finetune, device, dist, log, train_data,
                         resume.checkpoint.get("model_config") if resume is not None else None)
    mcfg = model.cfg
    state = resume.state if resume is not None else TrainState()
    epochs_note = _resolve_epochs(cfg, mcfg.preprocess, train_data, dist)
    loader, small = _train_loader(cfg, mcfg.preprocess, train_data, dist, device, state)
    # With a time budget the epochs are the plan's (TimeBudgetHook); until then the EMA spans the default length.
    total_iters = cfg.epochs * len(loader)
    warmup = max(0, min(int(round(cfg.warmup_epochs * len(loader))), total_iters - 1))
    optimizer = build_optimizer(model, cfg)
    ema = ModelEMA(model, *cfg.ema_schedule(total_iters)) if cfg.ema else None
    budget = None
    if cfg.time is not None:
        budget = TimeBudget(cfg.time_budget, started=S.CLOCK() if started is None else started, spent=state.elapsed,
                            clock=S.CLOCK, warmup=S.WARMUP_SHARE if cfg.warmup_epochs > 0 else 0.0,
                            warmup_steps=max(1, warmup), kind=cfg.schedule, final=cfg.lr_final, shared=dist.enabled)
    val_batch = int(cfg.val_batch or cfg.batch)

    if dist.is_main:
        write_yaml(save_dir / "args.yaml", {**cfg.to_dict(), "val_batch": val_batch, "model_config": mcfg.to_dict(),
                                            "data_info": {k: v for k, v in data_info.items() if k != "carved_ids"},
                                            "world_size": dist.world_size})
        world = f" x{dist.world_size}" if dist.enabled else ""
        length = (f"time budget {format_duration(budget.seconds)}, epochs of {len(loader)} iterations" if budget is not None
                  else f"{cfg.epochs} epochs x {len(loader)} iterations")
        log(f"train: {len(train_data)} images, val ({data_info['val_split']}): {len(val_data)} images, "
            f"{len(train_data.class_names)} classes; model {mcfg.preset}, input {mcfg.preprocess.max_size}px, "
            f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params; device {device}{world}; "
            f"{length}; run dir {save_dir}")
        if epochs_note:
            log(epochs_note)
        if cpu_tuning:
            log(f"cpu: {', '.join(cpu_tuning)}")
        if loader.tiles is not None:
            log(describe_tiles(loader.tiles, loader.num_samples, len(train_data)))
        if small is not None and budget is None:  # a time budget's plan says how many epochs train small
            log(f"progressive resizing: epochs 1-{small[0]} train at {input_size(small[1])}px, "
                f"then {input_size(mcfg.preprocess)}px; validation at {input_size(mcfg.preprocess)}px")
    amp = resolve_amp(cfg.amp, device, log)  # "auto": the precision this device runs fast, said in one line

    scale = training_scale(train_data, mcfg.preprocess, transform_config(cfg.augment).scale_range,
                           tile=(cfg.tile, cfg.tile) if cfg.tile is not None else None)
    if dist.is_main:
        log(describe_scale(scale))
        if (line := sliced_validation(val_data, mcfg.preprocess, scale, TileOptions())) is not None:
            log(line)
    fitted = resume.checkpoint.get("input_fit") if resume is not None else size_choice.to_dict() if size_choice else None
    hooks = _hooks(cfg, save_dir, log, train_data, val_data, data_info, val_batch, resume, scale, amp, fitted)
    if budget is not None:
        progressive = None
        if small is not None:
            cost = (input_size(small[1]) / input_size(mcfg.preprocess)) ** 2  # a step's cost goes with the pixels
            progressive = (float(cfg.progressive), cost, f"{input_size(small[1])}px")
        val_batches = -(-len(val_data) // (val_batch * dist.world_size))
        hooks.insert(1, TimeBudgetHook(budget, log=log, val_every=_val_every(cfg), val_batches=val_batches, plots=cfg.plots,
                                       progressive=progressive, ema_schedule=cfg.ema_schedule))
        scheduler = build_time_scheduler(optimizer, budget)
    else:
        scheduler = build_scheduler(optimizer, total_iters, warmup, cfg.schedule, cfg.lr_final)
    # A time budget's loop ends when the budget does (the plan bounds it then).
    trainer = Trainer(model, loader, optimizer, scheduler, state=state, max_epochs=cfg.epochs if budget is None else 10**9,
                      device=device, dist=dist, amp=amp, clip_grad=cfg.clip_grad, ema=ema, hooks=hooks, clock=S.CLOCK,
                      started=started)
    return trainer, save_dir, log


def _run_folder(cfg: TrainConfig, dist: D.DistInfo, resume: _Resume | None, train_data: DatasetRecords,
                val_data: DatasetRecords, data_info: dict) -> tuple[Path, RunLog]:
    """The run folder (a resumed run's own, else a new one named by rank 0) and its train.log."""
    if resume is not None:
        save_dir = resume.save_dir
    else:
        path = str(increment_run_dir(cfg.project, "train", cfg.name, cfg.exist_ok)) if dist.is_main else None
        save_dir = Path(D.broadcast_object(path, dist))
    if dist.is_main:
        (save_dir / "weights").mkdir(parents=True, exist_ok=True)
    log = RunLog(save_dir / "train.log" if dist.is_main else None, echo=dist.is_main)
    if data_info["val_split"] == "carved":
        log(f"data: no val split in {cfg.data}; carved {len(val_data)} of {len(train_data) + len(val_data)} "
            f"training images as val (seed {cfg.seed}); ids in {save_dir / 'val_ids.txt'}")
        if dist.is_main:
            atomic_write_text(save_dir / "val_ids.txt", "\n".join(map(str, data_info["carved_ids"])) + "\n")
    return save_dir, log


def _resolve_epochs(cfg: TrainConfig, preprocess: Any, train_data: DatasetRecords, dist: D.DistInfo) -> str | None:
    """Without ``--epochs``, the recipe's length (``config.recipe_epochs``) from this run's steps per epoch (tiles
    counted with ``--tile``), set in ``cfg`` so that args.yaml and the checkpoints record it; a line saying so.
    With ``--time`` the budget decides, and this is only the length the schedule starts from until it is planned."""
    if cfg.epochs is not None:
        return None
    tile = tile_size(cfg.tile, preprocess)
    tiles = TileSampling(tile, cfg.tile_negatives, cfg.tile_min_visibility) if tile is not None else None
    steps = len(TrainLoader(train_data, preprocess, cfg.batch, "none", 0, cfg.seed, dist.rank, dist.world_size, tiles=tiles))
    cfg.epochs = recipe_epochs(steps)
    if cfg.time is not None:
        return None
    return (f"epochs: {cfg.epochs} of {steps} steps (the recipe's length, about {RECIPE_STEPS} steps; --epochs or "
            "--time sets it)")


def _train_loader(cfg: TrainConfig, preprocess: Any, train_data: DatasetRecords, dist: D.DistInfo,
                  device: torch.device, state: TrainState | None = None) -> tuple[TrainLoader, tuple[int, Any] | None]:
    """The training batches, and (epochs, preprocess) of the progressive-resizing epochs (None: none).
    With ``cfg.tile``, batches of tiles; ``tile="auto"`` is resolved here, in ``cfg``, so that args.yaml and the
    checkpoints record the size (and a resume restores it without the model). With a time budget the epochs that
    train small are the plan's (in ``state`` once planned; until then the first one)."""
    small = None
    if cfg.time is None:
        small_epochs = cfg.small_epochs
    else:
        planned = state.small_epochs if state is not None else -1
        small_epochs = (planned if planned >= 0 else 1) if cfg.progressive > 0 else 0
    if small_epochs:
        scaled = scaled_preprocess(preprocess, cfg.progressive_scale)
        small = (small_epochs, scaled) if scaled != preprocess else None  # too small to shrink
    cfg.tile = tile_size(cfg.tile, preprocess)
    tiles = TileSampling(cfg.tile, cfg.tile_negatives, cfg.tile_min_visibility) if cfg.tile is not None else None
    mosaic = None
    if cfg.mosaic_prob > 0:  # with a time budget the epoch count is not known up front: mosaic on every epoch (None)
        mosaic = (cfg.mosaic_prob, mosaic_epochs(cfg.epochs, cfg.mosaic_close) if cfg.time is None else None)
    loader = TrainLoader(train_data, preprocess, cfg.batch, cfg.augment, cfg.workers, cfg.seed, dist.rank, dist.world_size,
                         pin_memory=device.type == "cuda", small=small, tiles=tiles, mosaic=mosaic)
    return loader, small


def _build_model(cfg: TrainConfig, num_classes: int, finetune: dict | None, device: torch.device, dist: D.DistInfo,
                 log: RunLog, train_data: DatasetRecords | None = None,
                 resume_model: dict | None = None) -> tuple[RetinaNet, InputSizeChoice | None]:
    mcfg, notes, size_choice = _model_config(cfg, num_classes, finetune, train_data, resume_model)
    for note in notes:
        log(note)
    model = RetinaNet(mcfg).to(device)
    if finetune is not None:
        reinit = load_for_finetune(model, finetune, where=str(cfg.weights), report=log)
        log(f"weights: {cfg.weights} loaded; re-initialised keys: {', '.join(reinit) if reinit else 'none'}")
    if cfg.channels_last if cfg.channels_last is not None else device.type == "cpu":
        model.use_channels_last()
    if dist.enabled and cfg.sync_bn:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            log("--sync-bn needs CUDA (SyncBatchNorm is GPU-only); ignored on this device")
    return model, size_choice


def _val_every(cfg: TrainConfig) -> int | None:
    """The validation interval the hooks use: --val-every, else None (validation_due's schedule), except under a
    time budget, whose epoch count is an estimate that moves: there every epoch, unless --val-every is given."""
    return cfg.val_every if cfg.val_every is not None or cfg.time is None else 1


def _hooks(cfg: TrainConfig, save_dir: Path, log: RunLog, train_data: DatasetRecords, val_data: DatasetRecords,
           data_info: dict, val_batch: int, resume: _Resume | None, scale: TrainingScale, amp: Any = False,
           input_fit: dict | None = None) -> list[HookBase]:
    """The hooks in calling order: stopping first (a stop decided after a step is then saved by the checkpoint
    hook in that same step), then validation, whose metrics the checkpoint and logging hooks record. A time
    budget's hook goes second (_build), to decide before validation whether an epoch is the last."""
    wdir = save_dir / "weights"
    meta = {"data": data_info, "train_config": {**cfg.to_dict(), "val_batch": val_batch}, "scale": scale.to_dict()}
    if input_fit is not None:  # the input size fitted to the data, and why (model_config holds the size itself)
        meta["input_fit"] = input_fit
    return [
        StopHook(max_iters=cfg.max_iters, max_bad_steps=cfg.max_bad_steps, last=wdir / "last.pt", save_dir=save_dir, log=log),
        EvalHook(val_data, batch_size=val_batch, workers=min(cfg.workers, 2), conf=cfg.conf, every=_val_every(cfg),
                 patience=cfg.patience, amp=amp, plots=cfg.plots, save_dir=save_dir, scale=scale),
        CheckpointHook(wdir, class_names=list(train_data.class_names), category_ids=list(train_data.category_ids), meta=meta,
                       log=log, resume=resume.checkpoint if resume is not None else None),
        LoggingHook(save_dir, log, progress=cfg.progress, plots=cfg.plots),
    ]


def _result(trainer: Trainer, save_dir: Path, log: RunLog) -> TrainResult:
    """What the run ended with; under DDP also whether every rank holds the same weights."""
    s, dist = trainer.state, trainer.dist
    metrics = dict(trainer.metrics)
    if dist.enabled:
        digests = D.all_gather_objects(state_digest(trainer.model), dist)
        metrics["ddp_weights_identical"] = same = len(set(digests)) == 1
        log(f"DDP: final weights (parameters) {'identical' if same else 'DIFFER'} on all {dist.world_size} ranks "
            f"(sha256 {', '.join(d[:16] for d in digests)})")
    if not trainer.interrupted:
        ap = f"; best val AP {s.best_fitness:.4f}" if s.best_fitness >= 0 else ""
        log(f"done: {s.epoch} epochs{ap}; results in {save_dir}")
    elapsed = trainer.elapsed()
    budget = next((h.budget for h in trainer.hooks if isinstance(h, TimeBudgetHook)), None)
    if budget is not None:
        b = format_duration(budget.seconds)
        if trainer.interrupted:
            log(f"time budget {b}: {format_duration(elapsed)} used, {format_duration(budget.seconds - elapsed)} left "
                "for the resumed run")
        else:
            log(f"time budget {b}: took {format_duration(elapsed)} ({(elapsed - budget.seconds) / budget.seconds:+.1%})")
    last, best = save_dir / "weights" / "last.pt", save_dir / "weights" / "best.pt"
    return TrainResult(save_dir, last if last.is_file() else None, best if best.is_file() else None, metrics, s.best_fitness,
                       s.epoch, trainer.interrupted, s.skipped_steps, trainer.stop_reason, elapsed)
