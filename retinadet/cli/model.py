"""`retinadet model`: list presets and backbones, show a preset's full config."""

from __future__ import annotations

import click
import yaml

from retinadet.model.presets import PRESETS, get_preset


@click.group("model")
def command() -> None:
    """Model presets and backbones."""


@command.command("presets")
def presets() -> None:
    """List the named model presets."""
    for name in PRESETS:
        cfg = get_preset(name)
        click.echo(f"{name:28s} backbone={cfg.backbone.name:10s} fpn={cfg.fpn.channels} head={cfg.head.num_convs}x{cfg.head.channels}"
                   f" box_loss={cfg.loss.box_loss} input={cfg.preprocess.min_size}/{cfg.preprocess.max_size}")


@command.command("show")
@click.argument("preset")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a field, e.g. --set backbone.name=resnet34")
def show(preset: str, overrides: tuple[str, ...]) -> None:
    """Print PRESET's full config as YAML."""
    parsed = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KEY=VALUE, got '{item}'", param_hint="--set")
        parsed[key] = yaml.safe_load(value)
    click.echo(yaml.safe_dump(get_preset(preset, parsed).to_dict(), sort_keys=False))


@command.command("backbones")
@click.option("--timm", "use_timm", is_flag=True, help="List timm models instead (use them as timm:<name>).")
@click.option("--filter", "pattern", default=None, help="Only names matching this glob, e.g. 'resnet*'.")
def backbones(use_timm: bool, pattern: str | None) -> None:
    """List backbone names."""
    if use_timm:
        import timm

        names = [f"timm:{n}" for n in timm.list_models(pattern or "*")]
    else:
        import fnmatch

        from retinadet.model.backbones import torchvision_classification_models

        names = [n for n in torchvision_classification_models() if pattern is None or fnmatch.fnmatch(n, pattern)]
    click.echo("\n".join(names))
