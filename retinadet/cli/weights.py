"""``retinadet weights``: inspect, import and export weights files."""

from __future__ import annotations

import os

import click

from retinadet.errors import CheckpointError

# retinadet.weights (and so torch) is imported inside the commands: `retinadet --help` loads every command module.


@click.group(name="weights")
def command() -> None:
    """Inspect, import (seed, torchvision) and export (safetensors) weights."""


@command.command(name="info")
@click.argument("path", type=click.Path(dir_okay=False))
def info_cmd(path: str) -> None:
    """Print what a weights file is: kind, preset, classes, size, metrics."""
    from retinadet.weights import format_info, read_weights

    click.echo(format_info(read_weights(path)))


@command.command(name="import")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--from", "source", type=click.Choice(["auto", "seed", "torchvision"]), default="auto", show_default=True,
              help="Layout of the file; auto detects it.")
@click.option("--classes", default=None,
              help="Class names in label order: 'a,b,c' or a text file with one per line (required for seed files).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output retinadet checkpoint (.pt).")
def import_cmd(path: str, source: str, classes: str | None, output: str) -> None:
    """Convert a seed-pipeline or torchvision RetinaNet file (or torchvision:<name>) to a retinadet checkpoint."""
    from retinadet.weights import import_weights, save_checkpoint

    ckpt = import_weights(path, source, classes)
    save_checkpoint(output, ckpt)
    cfg = ckpt["model_config"]
    click.echo(f"wrote {output}: preset {cfg.get('preset')}, {cfg['num_classes']} classes "
               f"({', '.join(ckpt['class_names'][:10])}{', ...' if len(ckpt['class_names']) > 10 else ''})")


@command.command(name="export")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["safetensors", "pt"]), default="safetensors", show_default=True)
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False),
              help="Output file (default: PATH with the new extension).")
def export_cmd(path: str, fmt: str, output: str | None) -> None:
    """Export a checkpoint's weights and metadata (config, class names) to safetensors, or back to .pt."""
    from retinadet.weights import export_safetensors, resolve_weights, save_checkpoint

    ckpt = resolve_weights(path)
    ext = ".safetensors" if fmt == "safetensors" else ".pt"
    output = output or os.path.splitext(path)[0] + ext
    if os.path.abspath(output) == os.path.abspath(path):
        raise CheckpointError(f"{output}: refusing to overwrite the input; pass -o")
    if fmt == "safetensors":
        export_safetensors(ckpt, output)
    else:
        save_checkpoint(output, ckpt)
    click.echo(f"wrote {output} ({os.path.getsize(output) / 1e6:.1f} MB)")
