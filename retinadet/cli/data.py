"""``retinadet data``: convert, synth, check."""

from __future__ import annotations

import sys

import click


@click.group(name="data")
def command() -> None:
    """Dataset tools: convert between formats, generate the synthetic set, check a dataset."""


@command.command("convert")
@click.argument("src")
@click.option("--to", "fmt", type=click.Choice(["coco", "voc", "yolo", "csv"]), required=True, help="Output format.")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
def convert_cmd(src: str, fmt: str, out: str) -> None:
    """Convert the dataset at SRC (any supported format, all splits) to another format."""
    from retinadet.data.convert import convert

    splits = convert(src, out, fmt)
    for name, ds in splits.items():
        boxes = sum(ds.boxes_per_class().values())
        click.echo(f"{name}: {len(ds)} images, {boxes} boxes")
        for p in ds.problems:
            click.echo(f"  {p}", err=True)
    click.echo(f"wrote {fmt} dataset to {out}")


@command.command("synth")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--n", "n", type=int, default=900, show_default=True, help="Total images, split 4:1:1 into train/val/test.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--size", type=int, default=320, show_default=True, help="Image side in pixels.")
@click.option("--workers", type=int, default=None, help="Processes (default: up to 4, one per CPU).")
def synth_cmd(out: str, n: int, seed: int, size: int, workers) -> None:
    """Write the synthetic 'shapes' dataset (COCO layout) to OUT."""
    from retinadet.data.synthetic import ShapesConfig, write_shapes_dataset
    from retinadet.errors import DataError

    if n < 3:
        raise DataError(f"--n must be >= 3, got {n}")
    n_val = n_test = n // 6
    cfg = ShapesConfig(num_train=n - n_val - n_test, num_val=n_val, num_test=n_test, size=size, seed=seed)
    stats = write_shapes_dataset(out, cfg, workers=workers)
    click.echo(f"wrote {stats['images']} images (train {cfg.num_train}, val {cfg.num_val}, test {cfg.num_test}) "
               f"to {out} in {stats['seconds']:.1f}s ({stats['images_per_s']:.0f} images/s)")


@command.command("check")
@click.argument("path")
@click.option("--model", default="fast", show_default=True, help="Model preset whose resize and anchors to check against.")
@click.option("--imgsz", type=int, default=None, help="Input size override (long side / min and max size).")
@click.option("--split", default=None, help="Only this split.")
@click.option("--no-images", is_flag=True, help="Skip decoding every image (faster; misses truncated files).")
def check_cmd(path: str, model: str, imgsz, split, no_images: bool) -> None:
    """Report statistics, problems (with files) and anchor coverage; exit 1 on errors."""
    from retinadet.data.check import check_dataset, format_report

    report = check_dataset(path, model=model, imgsz=imgsz, split=split, verify_images=not no_images)
    click.echo(format_report(report))
    if not report.ok:
        sys.exit(1)
