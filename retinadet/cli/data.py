"""``retinadet data``: convert, synth, check."""

from __future__ import annotations

import sys

import click
from click.core import ParameterSource


@click.group(name="data")
def command() -> None:
    """Dataset tools: convert between formats, generate the synthetic set, check a dataset."""


@command.command("convert")
@click.argument("src")
@click.option("--to", "fmt", type=click.Choice(["coco", "voc", "yolo", "csv", "labelstudio", "cvat"]), required=True,
              help="Output format (labelstudio: tasks.json + label_config.xml; cvat: CVAT for images 1.1 annotations.xml).")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
def convert_cmd(src: str, fmt: str, out: str) -> None:
    """Convert the dataset at SRC (any supported format, all splits) to another format.

    labelstudio: import OUT/tasks.json into a project whose labeling interface is OUT/label_config.xml, with Label
    Studio started with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=OUT."""
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
@click.option("--n", "n", type=int, default=None, help="Total images, split 4:1:1 into train/val/test. [default: 900, 72 with --large]")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--size", type=int, default=320, show_default=True, help="Image side in pixels (not with --large).")
@click.option("--large", is_flag=True, help="Write 'shapes-large' instead: ~2000 px images crowded with 10-40 px objects.")
@click.option("--workers", type=int, default=None, help="Processes (default: up to 4, one per CPU).")
@click.pass_context
def synth_cmd(ctx: click.Context, out: str, n, seed: int, size: int, large: bool, workers) -> None:
    """Write the synthetic 'shapes' (or, with --large, 'shapes-large') dataset (COCO layout) to OUT."""
    from retinadet.errors import DataError

    if large and ctx.get_parameter_source("size") is not ParameterSource.DEFAULT:
        raise DataError("--size does not apply to --large (shapes-large images vary in size, 1700-2300 x 1500-2100 px)")
    if large:
        from retinadet.data.shapes_large import LargeShapesConfig as Config
        from retinadet.data.shapes_large import write_large_shapes_dataset as write
    else:
        from retinadet.data.synthetic import ShapesConfig as Config
        from retinadet.data.synthetic import write_shapes_dataset as write
    if n is None:  # the config's own total: 900 for shapes, 72 for shapes-large
        default = Config()
        n = default.num_train + default.num_val + default.num_test
    if n < 3:
        raise DataError(f"--n must be >= 3, got {n}")
    n_val = n_test = n // 6
    cfg = Config(num_train=n - n_val - n_test, num_val=n_val, num_test=n_test, seed=seed, **({} if large else {"size": size}))
    stats = write(out, cfg, workers=workers)
    rate = f"{stats['seconds'] / stats['images']:.2f} s/image" if large else f"{stats['images_per_s']:.0f} images/s"
    click.echo(f"wrote {stats['images']} images (train {cfg.num_train}, val {cfg.num_val}, test {cfg.num_test}) "
               f"to {out} in {stats['seconds']:.1f}s ({rate})")


@command.command("check")
@click.argument("path")
@click.option("--model", default="fast", show_default=True, help="Model preset whose resize and anchors to check against.")
@click.option("--imgsz", type=int, default=None, help="Input size override (long side / min and max size).")
@click.option("--split", default=None, help="Only this split.")
@click.option("--no-images", is_flag=True,
              help="Do not decode the images, only stat them (exists, regular file, not empty; the header of one whose "
                   "size the annotations lack): seconds for 100k images; misses truncated files and size mismatches.")
@click.option("--plot", "plot", is_flag=False, flag_value="", default=None, metavar="[FILE]",
              help="Also draw class counts, box sizes, aspect ratios and anchor coverage to one PNG "
                   "[default FILE: <dataset>_check.png in the current folder]. Put it after PATH.")
@click.option("--fit-anchors", is_flag=True,
              help="Also fit the anchor ratios and scales to the boxes (k-means, then evolution) and print them as "
                   "--set options for `retinadet train`, with the coverage before and after.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --fit-anchors.")
def check_cmd(path: str, model: str, imgsz, split, no_images: bool, plot: str | None, fit_anchors: bool, seed: int) -> None:
    """Report statistics, problems (with files) and anchor coverage; exit 1 on errors."""
    from retinadet.data.check import check_dataset, format_report

    target = None
    if plot is not None:  # checked before the (possibly long) check, not after it
        from retinadet.data.check_plot import plot_path

        target = plot_path(path, plot)
    report = check_dataset(path, model=model, imgsz=imgsz, split=split, verify_images=not no_images,
                           fit=fit_anchors, seed=seed)
    click.echo(format_report(report))
    if target is not None:
        from retinadet.data.check_plot import plot_check

        written, _ = plot_check(report, target)
        click.echo(f"\nPlot: {written}")
    if not report.ok:
        sys.exit(1)
