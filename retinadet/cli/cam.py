"""``retinadet cam``: Grad-CAM / Grad-CAM++ / EigenCAM heatmaps for detections."""

from __future__ import annotations

import click

from retinadet.cli.options import tiling_kwargs, tiling_options
from retinadet.explain.cam import LAYERS, METHODS, NORM_STATS, TARGETS


@click.command("cam")
@click.option("--weights", required=True, help="Weights (a retinadet .pt, or anything `retinadet.load` reads).")
@click.option("--source", required=True, help="An image, a folder, a glob, or a .txt file of paths.")
@click.option("--method", type=click.Choice(METHODS), default="gradcam", show_default=True)
@click.option("--layer", type=click.Choice(LAYERS), default="fpn", show_default=True,
              help="fpn: the pyramid level that produced each detection; all-fpn: P3..P7 fused; c3/c4/c5: backbone.")
@click.option("--topk", type=int, default=5, show_default=True, help="Explain the best K detections per image (0: all).")
@click.option("--class", "class_name", default=None, help="Only this class's detections.")
@click.option("--box-index", type=int, default=None, help="Only the detection with this rank (0 = best).")
@click.option("--target", type=click.Choice(TARGETS), default="cls", show_default=True,
              help="cls: the detection's class logit; box: the sum of its anchor's box deltas.")
@click.option("--conf", type=float, default=0.25, show_default=True, help="Score threshold.")
@click.option("--iou", type=float, default=None, help="NMS IoU (default: the model's).")
@click.option("--imgsz", type=int, default=None, help="Input size (default: the model's).")
@click.option("--norm-stats", type=click.Choice(NORM_STATS), default="detach", show_default=True,
              help="detach: back-propagate through GroupNorm with constant statistics (localises on GN heads); exact: true gradient.")
@click.option("--save-npy", is_flag=True, help="Also write each raw heatmap (original pixels) as .npy.")
@click.option("--device", default=None, help="auto, cpu, cuda[:N], mps.")
@click.option("--project", default="runs", show_default=True)
@click.option("--name", default=None, help="Run name under PROJECT/cam. [default: exp]")
@click.option("--exist-ok", is_flag=True)
@click.option("--strict", is_flag=True, help="Stop at the first unreadable image instead of skipping it.")
@tiling_options
def command(weights, source, method, layer, topk, class_name, box_index, target, conf, iou, imgsz, norm_stats, save_npy, device,
            project, name, exist_ok, strict, **tiling) -> None:
    """Write one heatmap overlay per explained detection and a grid per image."""
    # Imported here: `retinadet --help` loads every command module, and the API loads everything.
    from retinadet.detector import load
    from retinadet.explain.run import run_cam
    from retinadet.utils.sources import list_sources
    from retinadet.utils.tiling import tile_options

    tile_options(**tiling_kwargs(tiling))  # bad flags and sources fail before the weights are loaded
    list_sources(source)
    run_cam(load(weights, device=device), source, method=method, layer=layer, topk=topk, class_name=class_name,
            box_index=box_index, target=target, conf=conf, iou=iou, norm_stats=norm_stats, save_npy=save_npy,
            project=project, name=name, exist_ok=exist_ok, log=click.echo, strict=strict, imgsz=imgsz, **tiling_kwargs(tiling))
