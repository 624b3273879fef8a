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


@command.command("summary")
@click.argument("spec")
@click.option("--imgsz", type=int, default=512, show_default=True, help="Square input size for the dummy pass.")
@click.option("--num-classes", type=int, default=None, help="Override the preset's class count.")
def summary(spec: str, imgsz: int, num_classes: int | None) -> None:
    """Build SPEC (a preset or backbone name) and print shapes per level and parameter counts."""
    from retinadet.model import build_model
    from retinadet.model.retinanet import describe

    model = build_model(spec, num_classes=num_classes)
    bb = model.backbone
    click.echo(f"{model.cfg.preset}: backbone {bb.name} (in_channels {bb.in_channels}, out_channels {bb.out_channels}), "
               f"FPN {model.fpn.out_channels} ch, {model.cfg.anchors.num_anchors} anchors/location, {model.num_classes} classes")
    click.echo(f"{'stage':6s} {'stride':>6s} {'channels':>8s} {'shape':>12s} {'anchors':>8s}")
    for row in describe(model, (imgsz, imgsz)):
        shape = "x".join(str(v) for v in row["shape"])
        click.echo(f"{row['stage']:6s} {row['stride']:6d} {row['channels']:8d} {shape:>12s} {row.get('anchors', ''):>8}")
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    click.echo(f"parameters: {total / 1e6:.2f} M ({trainable / 1e6:.2f} M trainable)")


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
