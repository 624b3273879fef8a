"""Training options: defaults, a YAML config file, then explicit arguments (which win)."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any

import yaml

from retinadet.errors import ConfigError, DataError
from retinadet.utils.device import AMP_MODES
from retinadet.utils.window import parse_window

FREEZE_DEPRECATED = ("warning: --freeze is deprecated, use --trainable-layers (trainable_layers in Python and YAML); "
                     "it takes the same values")
TIME_EXAMPLES = "such as 90s, 10m, 2h or 1h30m"
DEFAULT_MOSAIC = 0.5  # measured on BCCD (docs/own_data.md)
# Without --val-every: runs of more than VAL_ALL_EPOCHS epochs validate every epoch of the last VAL_DENSE_SHARE and
# every VAL_SPARSE_EVERY-th before it. With EMA and a cosine schedule the best epoch falls late, and a validation
# cost a fifth of a BCCD epoch (docs/own_data.md).
VAL_ALL_EPOCHS = 15
VAL_DENSE_SHARE = 1 / 3
VAL_SPARSE_EVERY = 5
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(value: str | float | int, flag: str = "--time") -> float:
    """Seconds in ``value``: a string of hours, minutes and seconds in that order ("90s", "10m", "2h", "1h30m",
    "1.5h"), or a number of seconds (Python and YAML). Anything else, or not more than zero, is a ConfigError."""
    if isinstance(value, bool):
        raise ConfigError(f"{flag} must be a duration {TIME_EXAMPLES}, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        parts = _DURATION.findall(text)
        units = [unit for _, unit in parts]
        if not parts or "".join(n + u for n, u in parts) != text or units != sorted(set(units), key="hms".index):
            raise ConfigError(f"{flag} must be a duration {TIME_EXAMPLES}, got '{value}'")
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{flag} must be more than 0 seconds, got '{value}'")
    return seconds


def validation_due(epoch: int, epochs: int, every: int | None) -> bool:
    """Whether the run validates after ``epoch`` (1-based) of ``epochs`` (a time budget's current estimate):
    every ``every``-th epoch, or without it the schedule of VAL_ALL_EPOCHS, VAL_DENSE_SHARE and VAL_SPARSE_EVERY;
    the last epoch always."""
    if epoch >= epochs:
        return True
    if every is not None:
        return epoch % every == 0
    return epochs <= VAL_ALL_EPOCHS or epoch > epochs - math.ceil(VAL_DENSE_SHARE * epochs) or epoch % VAL_SPARSE_EVERY == 0


def format_duration(seconds: float) -> str:
    """``seconds`` as 45s, 4m05s, 1h30m (to the second below an hour, to the minute above)."""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s" if s % 60 else f"{s // 60}m"
    m = int(round(seconds / 60))
    return f"{m // 60}h{m % 60:02d}m" if m % 60 else f"{m // 60}h"


@dataclass
class TrainConfig:
    data: str = "shapes"
    model: str | None = None  # preset or backbone; default "fast" (or the --weights model)
    imgsz: int | None = None
    # The windowing rule of images of more than 8 bits (retinadet.utils.window); None: chosen from the data.
    window: str | None = None
    # The defaults are the measured CPU recipe of `retinadet train` (fast preset) on shapes, BCCD and the sets of
    # benchmarks/bench_own_data.py. None: recipe_epochs() of the training set's size.
    epochs: int | None = None
    # Train for this long instead of a number of epochs ("10m", "1h30m"; seconds as a number): the epochs and the
    # lr schedule are fitted to it from measured step and validation times. Excludes ``epochs``.
    time: str | float | None = None
    batch: int = 8
    val_batch: int | None = None
    optimizer: str = "adamw"
    lr: float | None = None  # default: 0.003 (adamw) or 0.01 (sgd)
    momentum: float = 0.9
    weight_decay: float | None = None  # default: 0.05 (adamw) or 1e-4 (sgd)
    schedule: str = "cosine"  # cosine | step | constant
    lr_final: float = 0.05  # cosine end, as a fraction of lr
    warmup_epochs: float = 1.0
    clip_grad: float | None = 10.0
    amp: Any = False  # False | True | "bf16" | "fp16" | "auto" (bf16 where the CPU has it: utils/device.choose_amp)
    ema: bool = True  # measured: +0.011 test AP on BCCD (docs/own_data.md)
    ema_decay: float | None = None  # None: from the run length (see ema_schedule)
    # NHWC weights and activations; None: on for CPU, where oneDNN convolutions run faster in it.
    channels_last: bool | None = None
    trainable_layers: int | None = None  # backbone stages trained (0..5); None: the preset's
    augment: str = "default"
    # Progressive resizing: this fraction of the epochs (the first ones; never the last) trains on inputs
    # progressive_scale times the model's input size. Such an epoch costs about scale^2 of a full one;
    # validation always runs at full size.
    progressive: float = 0.5
    progressive_scale: float = 0.78
    # Tiled training: each epoch trains on square tiles of this many original pixels, sampled anew from the
    # images (retinadet.data.tiles); "auto": the model's input canvas, recorded as that int once the run is built.
    tile: int | str | None = None
    tile_negatives: float = 0.1  # share of empty tiles
    tile_min_visibility: float = 0.5  # a box cut by a tile edge under this share inside is ignored
    # Mosaic (retinadet.data.mosaic): the probability that a training sample is four augmented images around a
    # random centre, at their own scale (more objects and contexts a step on a small dataset); 0: off. Not with tile.
    # None: DEFAULT_MOSAIC, or 0 with tile (see mosaic_prob).
    mosaic: float | None = None
    # The share of the epochs at the end trained without mosaic, on whole images as at inference (YOLO's
    # close_mosaic): the first ceil((1 - mosaic_close) * epochs) have it. With a time budget: every epoch has it.
    mosaic_close: float = 0.15
    device: str = "auto"
    workers: int = 2
    seed: int = 0
    deterministic: bool = False
    val_every: int | None = None  # validate every N epochs (and after the last); None: validation_due's schedule
    val_split: str | None = None
    patience: int = 0  # validations without val AP improvement before stopping; 0 = off
    max_bad_steps: int = 10  # consecutive non-finite losses that stop the run
    # Fit the anchor ratios and scales to the training boxes when their anchor coverage is low (engine/train
    # _autoanchor). None: on, except when fine-tuning from --weights; True (asked for): there too.
    autoanchor: bool | None = None
    weights: str | None = None
    resume: str | None = None
    sync_bn: bool = False
    project: str = "runs"
    name: str | None = None
    exist_ok: bool = False
    plots: bool = True
    progress: bool = True
    conf: float = 0.25  # confusion-matrix threshold
    max_iters: int | None = None  # stop (as if interrupted) after this many optimizer steps in this call
    model_overrides: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - {"freeze"})
        if unknown:
            raise ConfigError(f"unknown training option(s): {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        return cls(**_renamed(data)).validate()

    def validate(self) -> TrainConfig:
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"--optimizer must be sgd or adamw, got '{self.optimizer}'")
        if self.schedule not in ("cosine", "step", "constant"):
            raise ConfigError(f"schedule must be cosine, step or constant, got '{self.schedule}'")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1, got {self.epochs}")
        if self.batch < 1:
            raise ConfigError(f"--batch must be >= 1, got {self.batch}")
        if self.imgsz is not None and self.imgsz < 32:
            raise ConfigError(f"--imgsz must be >= 32, got {self.imgsz}")
        if self.window is not None:
            try:
                rule = parse_window(self.window)
            except DataError as exc:
                raise ConfigError(str(exc)) from exc
            self.window = rule.spec if rule is not None else None
        if self.trainable_layers is not None and not 0 <= self.trainable_layers <= 5:
            raise ConfigError(f"--trainable-layers (backbone stages trained) must be in 0..5, got {self.trainable_layers}")
        if self.amp not in AMP_MODES:
            raise ConfigError(f"--amp must be off, on, bf16, fp16 or auto, got {self.amp!r}")
        if self.time is not None:
            parse_duration(self.time)
        if self.ema_decay is not None and not 0.0 < float(self.ema_decay) < 1.0:
            raise ConfigError(f"ema_decay must be between 0 and 1 (exclusive), got {self.ema_decay}")
        if self.max_iters is not None and self.max_iters < 1:
            raise ConfigError(f"max_iters must be >= 1, got {self.max_iters}")
        if self.val_every is not None and self.val_every < 1:
            raise ConfigError(f"--val-every must be >= 1, got {self.val_every}")
        if not 0.0 <= float(self.progressive) <= 1.0:
            raise ConfigError(f"--progressive (fraction of epochs on smaller inputs) must be in [0, 1], got {self.progressive}")
        if not 0.0 < float(self.progressive_scale) <= 1.0:
            raise ConfigError(f"--progressive-scale must be in (0, 1], got {self.progressive_scale}")
        if self.tile is not None and self.tile != "auto" and (isinstance(self.tile, bool) or not isinstance(self.tile, int)
                                                              or self.tile < 32):
            raise ConfigError(f"--tile must be a size in pixels >= 32 or auto, got {self.tile!r}")
        if not 0.0 <= float(self.tile_negatives) <= 1.0:
            raise ConfigError(f"--tile-negatives (share of empty tiles) must be in [0, 1], got {self.tile_negatives}")
        if not 0.0 <= float(self.tile_min_visibility) <= 1.0:
            raise ConfigError(f"--tile-min-visibility (share of a cut box inside the tile) must be in [0, 1], "
                              f"got {self.tile_min_visibility}")
        if self.mosaic is not None and (isinstance(self.mosaic, bool) or not 0.0 <= float(self.mosaic) <= 1.0):
            raise ConfigError(f"--mosaic (probability that a sample is a mosaic of four) must be in [0, 1], got {self.mosaic}")
        if not 0.0 <= float(self.mosaic_close) < 1.0:
            raise ConfigError(f"--mosaic-close (share of the last epochs without mosaic) must be in [0, 1), got {self.mosaic_close}")
        if self.mosaic is not None and float(self.mosaic) > 0 and self.tile is not None:
            raise ConfigError(f"--mosaic {self.mosaic} does not combine with --tile {self.tile}: tiles are crops already; "
                              "drop one of them")
        return self

    @property
    def mosaic_prob(self) -> float:
        """The mosaic probability of the run: ``mosaic``, or by default DEFAULT_MOSAIC (0 for tiled training)."""
        if self.mosaic is not None:
            return float(self.mosaic)
        return 0.0 if self.tile is not None else DEFAULT_MOSAIC

    @property
    def small_epochs(self) -> int:
        """Epochs at the start that train on smaller inputs (half rounds up; the last epoch is always full size)."""
        if self.epochs is None:
            raise ConfigError("the run's epochs are not resolved yet (recipe_epochs)")
        return max(0, min(int(self.progressive * self.epochs + 0.5), self.epochs - 1))

    @property
    def time_budget(self) -> float | None:
        """The time budget in seconds (None: the run is ``epochs`` long)."""
        return parse_duration(self.time) if self.time is not None else None

    @property
    def base_lr(self) -> float:
        if self.lr is not None:
            return float(self.lr)
        return 0.01 if self.optimizer == "sgd" else 0.003

    def ema_schedule(self, total_iters: int) -> tuple[float, float]:
        """(decay, warm-up tau) of the weight EMA. The average spans about a ninth of the run: a fixed 0.9998
        with a 2000-step warm-up (long-schedule practice) would still be warming up when a 900-step run ends."""
        span = max(1.0, total_iters / 9)
        decay = self.ema_decay if self.ema_decay is not None else min(0.9999, max(0.99, 1 - 1 / span))
        return float(decay), float(min(2000.0, span))

    @property
    def decay(self) -> float:
        if self.weight_decay is not None:
            return float(self.weight_decay)
        return 1e-4 if self.optimizer == "sgd" else 0.05


# A detector trained from scratch needs a number of optimizer steps more than of passes over its data, so the
# default length is in steps: a few hundred images get many epochs, thousands get few (never under MIN_EPOCHS).
RECIPE_STEPS = 2340  # 90 epochs of BCCD's 205 training images in batches of 8 (docs/own_data.md)
MIN_EPOCHS, MAX_EPOCHS = 14, 100


def recipe_epochs(steps_per_epoch: int) -> int:
    """The default number of epochs for epochs of ``steps_per_epoch`` optimizer steps: about RECIPE_STEPS steps in
    all, within [MIN_EPOCHS, MAX_EPOCHS]."""
    return int(min(MAX_EPOCHS, max(MIN_EPOCHS, round(RECIPE_STEPS / max(1, int(steps_per_epoch))))))


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: config file not found")
    with open(path, encoding="utf-8") as fh:
        try:
            data = yaml.safe_load(fh) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of options, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _renamed(options: dict[str, Any]) -> dict[str, Any]:
    """``freeze`` is the deprecated name of ``trainable_layers`` (old checkpoints' train_config hold it too)."""
    if "freeze" not in options:
        return options
    options = dict(options)
    freeze = options.pop("freeze")
    if freeze is None:
        return options
    if options.get("trainable_layers") not in (None, freeze):
        raise ConfigError(f"--freeze {freeze} and --trainable-layers {options['trainable_layers']} disagree; "
                          "give --trainable-layers only (--freeze is its deprecated name)")
    return {**options, "trainable_layers": freeze}


def resolve_config(config: str | os.PathLike | None = None, **explicit: Any) -> TrainConfig:
    """Defaults < YAML file < explicit (non-None) arguments."""
    sources = [read_config_file(config) if config else {}, {k: v for k, v in explicit.items() if v is not None}]
    if any(source.get("freeze") is not None for source in sources):
        print(FREEZE_DEPRECATED, file=sys.stderr)
    merged: dict[str, Any] = {}
    for source in sources:
        merged.update(_renamed(source))
    if merged.get("time") is not None and merged.get("epochs") is not None:
        # One length per run: with both, the lr schedule's end would be ambiguous.
        raise ConfigError(f"--time {merged['time']} and --epochs {merged['epochs']} exclude each other: --time fits the "
                          "epochs to the budget (drop epochs, from the config file too)")
    return TrainConfig.from_dict(merged)
