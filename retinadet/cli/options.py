"""Options that several commands share, declared once: sliced inference and windowing (predict, val, cam)."""

from __future__ import annotations

import click

# CLI name -> API keyword of the sliced-inference options.
TILING = {"tile": "tile", "tile_overlap": "tile_overlap", "tile_merge": "tile_merge", "tile_match": "tile_match",
          "tile_threshold": "tile_threshold", "full_image": "full_image"}


def tiling_options(command):
    """Add the sliced-inference flags to ``command``; they arrive as keyword arguments named as in TILING."""
    flags = [
        click.option("--tile", default="auto", show_default=True,
                     help="Sliced inference: tiles of SIZE px (640, or WxH such as 640x480); auto slices an image that the "
                          "whole-image resize would shrink below the scale the model was trained at; off never slices."),
        click.option("--tile-overlap", type=float, default=0.2, show_default=True, help="Overlap of neighbouring tiles, "
                     "as a fraction of the tile (an object smaller than the overlap lies whole in some tile)."),
        click.option("--tile-merge", type=click.Choice(["nms", "greedy-nmm"]), default="nms", show_default=True,
                     help="How detections of overlapping tiles merge: nms keeps the best, greedy-nmm (SAHI's) unites boxes."),
        click.option("--tile-match", type=click.Choice(["iou", "ios"]), default="iou", show_default=True,
                     help="When two tiles' detections are one object: IoU, or intersection over the smaller box."),
        click.option("--tile-threshold", type=float, default=None, help="Match threshold of the merge [default: the model's NMS IoU]."),
        click.option("--full-image/--no-full-image", default=False, show_default=True,
                     help="Also run the whole image, for objects too large for a tile to hold whole."),
    ]
    for flag in reversed(flags):
        command = flag(command)
    return command


def tiling_kwargs(values: dict) -> dict:
    """The sliced-inference keywords out of a command's parsed options."""
    return {api: values[cli] for cli, api in TILING.items()}


def window_option(command):
    """``--window``: another rule than the model's for images of more than 8 bits (arrives as ``window``)."""
    return click.option("--window", default=None, metavar="LOW,HIGH|pLOW,HIGH",
                        help="How images of more than 8 bits (16-bit PNG/TIFF) become intensities: raw values LOW..HIGH, "
                             "or per-image percentiles pLOW,HIGH. [default: the model's, recorded in training]")(command)
