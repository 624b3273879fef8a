"""``retinadet train``: train a RetinaNet (no arguments: the fast preset on the built-in shapes dataset)."""

from __future__ import annotations

import sys

import click
import yaml

from retinadet.engine.config import VAL_ALL_EPOCHS, VAL_DENSE_SHARE, VAL_SPARSE_EVERY
from retinadet.engine.train import train

AMP_VALUES = {"off": False, "on": True, "bf16": "bf16", "fp16": "fp16", "auto": "auto"}


def _tile(ctx, param, value: str | None) -> int | str | None:
    """``--tile``: a size in pixels or ``auto`` (resolved to the model's input size when the run is built)."""
    if value is None:
        return None
    if value.strip().lower() == "auto":
        return "auto"
    if not value.strip().isdigit():
        raise click.BadParameter(f"expected a size in pixels or auto, got '{value}'")
    return int(value)


@click.command("train")
@click.option("--config", type=click.Path(dir_okay=False), default=None, help="YAML file of options; flags win over it.")
@click.option("--data", default=None,
              help="Dataset path or YAML (any format the data layer reads), 'shapes' or 'shapes-large' (~2000 px images "
                   "of small objects, for --tile). [default: shapes]")
@click.option("--model", default=None, help="Model preset or backbone name. [default: fast, or the --weights model]")
@click.option("--imgsz", type=int, default=None, help="Input size (short side and long-side cap).")
@click.option("--window", default=None, metavar="LOW,HIGH|pLOW,HIGH",
              help="How images of more than 8 bits (16-bit PNG/TIFF) become intensities: raw values LOW..HIGH (0,4095), "
                   "or per-image percentiles (p0.5,99.5); recorded in the checkpoint. "
                   "[default: p0.5,99.5 when the images have more than 8 bits]")
@click.option("--epochs", type=int, default=None,
              help="Epochs. [default: about 2340 optimizer steps: 90 epochs of 205 images at batch 8, 31 of 600, "
                   "at least 14; with --time: fitted to it, so not both]")
@click.option("--time", "time", default=None, metavar="DURATION",
              help="Train for this long instead of a number of epochs: 90s, 10m, 2h, 1h30m. The epochs and the lr schedule "
                   "(which then follows elapsed time) are fitted to it from measured step and validation times, leaving "
                   "time for the last validation and the outputs; the whole run ends within about 5% of it, and a "
                   "--resume gets what is left. Not with --epochs (an error).")
@click.option("--batch", type=int, default=None, help="Batch size (per process). [default: 8]")
@click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), default=None, help="[default: adamw]")
@click.option("--lr", type=float, default=None, help="Base learning rate. [default: 0.003 adamw, 0.01 sgd]")
@click.option("--schedule", type=click.Choice(["cosine", "step", "constant"]), default=None,
              help="Decay after the linear warm-up, stepped per iteration. [default: cosine]")
@click.option("--warmup-epochs", type=float, default=None,
              help="Linear warm-up length in epochs; with --time the first 5% of the training time (0: none). [default: 1]")
@click.option("--weight-decay", type=float, default=None, help="Weight decay (not on norms and biases). [default: 0.05 adamw, 1e-4 sgd]")
@click.option("--clip-grad", type=float, default=None, help="Max gradient norm (0 = off). [default: 10]")
@click.option("--amp", type=click.Choice(list(AMP_VALUES)), default=None, is_flag=False, flag_value="on",
              help="Mixed precision: bf16 autocast on CPU; fp16 + GradScaler (or bf16) on CUDA; auto: bf16 on a CPU with "
                   "native bf16 (AVX512-BF16, AMX), fp32 on other CPUs (bf16 is slower there), bf16 or fp16 on CUDA. "
                   "[default: off]")
@click.option("--ema/--no-ema", default=None, help="Keep an exponential moving average of the weights (validated and saved as best.pt). "
                   "[default: on]")
@click.option("--set", "model_set", multiple=True, metavar="KEY=VALUE",
              help="Override a model config field, e.g. --set anchors.sizes=[16,32,64,128,256] (see `retinadet model show`).")
@click.option("--channels-last/--no-channels-last", default=None,
              help="NHWC memory format (default: on for CPU, where it trains faster).")
@click.option("--trainable-layers", type=int, default=None,
              help="Backbone stages trained, 0..5 (5: none frozen, 0: all frozen). [default: the preset's]")
@click.option("--freeze", type=int, default=None, help="Deprecated: use --trainable-layers.")
@click.option("--augment", type=click.Choice(["none", "upright", "default", "strong"]), default=None,
              help="default: flips and 90-degree rotations (images without an up: microscopy); upright: horizontal "
                   "flips only, for images with an up. Both add mild scale jitter and colour. [default: default]")
@click.option("--progressive", type=float, default=None,
              help="Fraction of the epochs (the first ones) trained on smaller inputs; 0 = off. [default: 0.5]")
@click.option("--progressive-scale", type=float, default=None,
              help="Input size of those epochs, as a fraction of the model's. [default: 0.78]")
@click.option("--tile", callback=_tile, default=None, metavar="SIZE|auto",
              help="Tiled training: each epoch samples SIZE px square tiles of the images anew (one coverage of each "
                   "image's area); auto: the model's input size. [default: off]")
@click.option("--tile-negatives", type=float, default=None, help="Share of empty tiles with --tile. [default: 0.1]")
@click.option("--tile-min-visibility", type=float, default=None,
              help="A box cut by a tile edge stays a target when this share of it is inside, else it is ignored. "
                   "[default: 0.5]")
@click.option("--mosaic", type=float, default=None, metavar="P",
              help="Probability that a training sample is a mosaic of four augmented images around a random centre, at "
                   "their own scale; the last --mosaic-close share of the epochs trains without. Not with --tile; 0: off. "
                   "[default: 0.5, 0 with --tile]")
@click.option("--mosaic-close", type=float, default=None, metavar="F",
              help="Share of the epochs at the end trained without mosaic, on whole images as at inference; with "
                   "--time, none. [default: 0.15]")
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:N or mps. [default: auto]")
@click.option("--workers", type=int, default=None, help="Data loader processes. [default: 2]")
@click.option("--seed", type=int, default=None, help="[default: 0]")
@click.option("--deterministic", is_flag=True, default=None, help="Deterministic algorithms (exactly resumable on CPU).")
@click.option("--val-every", type=int, default=None,
              help=f"Validate every N epochs (and after the last). [default: every epoch of runs up to {VAL_ALL_EPOCHS} "
                   f"epochs; longer ones, every epoch of the last {VAL_DENSE_SHARE:.0%} and every {VAL_SPARSE_EVERY}th "
                   "before; every epoch with --time]")
@click.option("--val-split", default=None, help="Split to validate on (default val; a test split only when named).")
@click.option("--patience", type=int, default=None, help="Stop after N validations without AP gain (0 = off).")
@click.option("--weights", default=None, help="Start from these weights (fine-tune; class layer re-initialised if needed).")
@click.option("--autoanchor/--no-autoanchor", default=None,
              help="Fit the anchor ratios and scales to the training boxes when under 98% reach IoU 0.5 with their best "
                   "anchor; recorded in the checkpoint. [default: on, off with --weights unless given]")
@click.option("--resume", default=None, help="Resume a run folder or its last.pt.")
@click.option("--sync-bn", is_flag=True, default=None, help="SyncBatchNorm under torchrun.")
@click.option("--project", default=None, help="Root folder of runs. [default: runs]")
@click.option("--name", default=None, help="Run name under PROJECT/train (auto-incremented). [default: exp]")
@click.option("--exist-ok", is_flag=True, default=None, help="Reuse PROJECT/train/NAME if it exists.")
@click.option("--no-plots", "plots", flag_value=False, default=None, help="Skip PNG plots.")
def command(**flags) -> None:
    """Train a RetinaNet detector; writes PROJECT/train/NAME with weights, results.csv and plots."""
    config = flags.pop("config")
    model_set = flags.pop("model_set")
    if model_set:
        overrides = {}
        for item in model_set:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise click.BadParameter(f"expected KEY=VALUE, got '{item}'", param_hint="--set")
            overrides[key] = yaml.safe_load(value)
        flags["model_overrides"] = overrides
    if flags.get("amp") is not None:
        flags["amp"] = AMP_VALUES[flags["amp"]]
    options = {k: v for k, v in flags.items() if v is not None}
    result = train(config, **options)
    if result.interrupted:
        click.echo(f"stopped early ({result.stop_reason}); resume with: retinadet train --resume {result.save_dir}")
        sys.exit(0)
