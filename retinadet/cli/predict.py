"""``retinadet predict``: detect objects in images, folders, globs, path lists or videos."""

from __future__ import annotations

import click
from click.core import ParameterSource

from retinadet.cli.options import TILING, tiling_kwargs, tiling_options, window_option

# CLI names of the options a run records, and their keyword in the API.
OPTIONS = {"conf": "conf", "iou": "iou", "max_det": "max_det", "batch": "batch", "imgsz": "imgsz", "amp": "amp",
           "save_txt": "save_txt", "save_csv": "save_csv", "save_geojson": "save_geojson", "nosave": "save",
           "strict": "strict", "window": "window", "save_labelstudio": "save_labelstudio", "save_cvat": "save_cvat",
           "level": "level", "mpp": "mpp", "tissue": "tissue", **TILING}


@click.command("predict")
@click.option("--weights", default=None, help="Weights (a retinadet .pt, or anything `retinadet.load` reads).")
@click.option("--source", default=None, help="An image, a folder, a glob, a .txt file of paths, or a video.")
@click.option("--conf", type=float, default=None,
              help="Score threshold [default: the checkpoint's per-class thresholds (val --save-thresholds), else 0.25].")
@click.option("--iou", type=float, default=None, help="NMS IoU (default: the model's).")
@click.option("--max-det", type=int, default=None, help="Detections per image (default: the model's).")
@click.option("--batch", type=int, default=4, show_default=True)
@click.option("--imgsz", type=int, default=None, help="Input size (default: the model's).")
@click.option("--device", default=None, help="auto, cpu, cuda[:N], mps.")
@click.option("--amp", type=click.Choice(["off", "on", "bf16", "fp16", "auto"]), default="off", show_default=True,
              help="Mixed precision of .pt weights: auto is bf16 on a CPU with native bf16 (AVX512-BF16, AMX), fp32 on "
                   "other CPUs, bf16 or fp16 on CUDA (the run says which); off gives the boxes val measured.")
@click.option("--save-txt", is_flag=True, help="Also write YOLO-style labels/*.txt (class cx cy w h score, normalised).")
@click.option("--save-csv", is_flag=True, help="Also write predictions.csv.")
@click.option("--save-geojson", is_flag=True,
              help="Also write geojson/<stem>.geojson per image: QuPath imports it (classes with their colours, score as a measurement).")
@click.option("--save-labelstudio", is_flag=True,
              help="Also write labelstudio/tasks.json: Label Studio pre-annotations (with the label_config.xml to set up the project).")
@click.option("--save-cvat", is_flag=True,
              help="Also write cvat/annotations.xml: CVAT for images 1.1 pre-annotations (source=auto boxes, score attribute).")
@click.option("--nosave", is_flag=True, help="Do not write annotated images.")
@click.option("--strict", is_flag=True, help="Stop at the first unreadable input instead of skipping it.")
@click.option("--resume", default=None, type=click.Path(file_okay=False),
              help="Finish an interrupted run (its folder): the inputs not done yet, with its weights and options.")
@click.option("--project", default="runs", show_default=True)
@click.option("--name", default=None, help="Run name under PROJECT/predict. [default: exp]")
@click.option("--exist-ok", is_flag=True)
@click.option("--level", type=int, default=None,
              help="Read slides (SVS, NDPI, MRXS, pyramidal TIFF) at this pyramid level (0: full resolution).")
@click.option("--mpp", type=float, default=None,
              help="Read slides at this resolution in microns per pixel (the level at or finer than it, resampled).")
@click.option("--tissue/--no-tissue", default=True, show_default=True,
              help="Skip the tiles of a slide that its thumbnail's tissue mask shows as glass.")
@tiling_options
@window_option
@click.pass_context
def command(ctx, weights, source, conf, iou, max_det, batch, imgsz, device, amp, save_txt, save_csv, save_geojson, nosave, strict, resume,
            project, name, exist_ok, window, save_labelstudio, save_cvat, level, mpp, tissue, **tiling) -> None:
    """Write annotated images and predictions.json (COCO results + file_name + class name, original pixels).

    An image much larger than the model's training inputs is sliced into tiles at the scale the model was
    trained at (--tile auto), and the run says so; boxes come back in the image's pixels. Whole-slide images are
    read region by region (--level/--mpp), their glass skipped; boxes in level-0 pixels (and µm in the CSV), and an
    overview PNG (the thumbnail with its detections).

    Under torchrun (`torchrun --nproc_per_node N -m retinadet predict ...`) each process takes a share of the
    sources and the first writes the merged result; `--resume` continues a killed run, every source once.

    Unreadable inputs are skipped, named and listed in skipped.txt; the exit code is non-zero only when
    no input could be read. Detections also stream to predictions.jsonl, so `--resume RUN_DIR` finishes
    an interrupted run."""
    # Imported here: `retinadet --help` loads every command module, and should not load torch.
    import torch

    from retinadet.detector import predict
    from retinadet.errors import RetinadetError
    from retinadet.utils.sentinels import FROM_CONFIG

    values = {"conf": conf, "iou": iou, "max_det": FROM_CONFIG if max_det is None else max_det, "batch": batch,
              "amp": {"off": False, "on": True}.get(amp, amp),
              "imgsz": imgsz, "save_txt": save_txt, "save_csv": save_csv, "save_geojson": save_geojson, "save": not nosave,
              "strict": strict, "window": window, "level": level, "mpp": mpp, "tissue": tissue,
              "save_labelstudio": save_labelstudio, "save_cvat": save_cvat,
              **tiling_kwargs(tiling)}
    if resume is not None:  # only what was given now: the rest comes from the run
        given = {api for cli, api in OPTIONS.items() if ctx.get_parameter_source(cli) == ParameterSource.COMMANDLINE}
        values = {k: v for k, v in values.items() if k in given}
    elif weights is None or source is None:
        raise click.UsageError("--weights and --source are required (unless --resume RUN_DIR)")
    try:
        predict(weights, source, device=device, resume=resume, project=project, name=name, exist_ok=exist_ok,
                log=click.echo, **values)
    except torch.OutOfMemoryError as exc:
        raise RetinadetError(f"out of memory during prediction ({str(exc).splitlines()[0][:120]}); "
                             "try a smaller --batch or --imgsz") from exc
