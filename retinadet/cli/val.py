"""``retinadet val``: COCO evaluation of a checkpoint, or of an exported model (.onnx, OpenVINO .xml) through its runner."""

from __future__ import annotations

import click

from retinadet.cli.options import tiling_kwargs, tiling_options, window_option


@click.command("val")
@click.option("--weights", required=True, help="Weights to evaluate (a retinadet .pt, or anything `retinadet.load` reads), "
              "or an exported .onnx / OpenVINO .xml model (run by its torch-free runner).")
@click.option("--data", default=None, help="Dataset (default: the one recorded in the checkpoint).")
@click.option("--split", default=None, help="val (default) or test.")
@click.option("--batch", type=int, default=None, help="Batch size (default: the training run's val batch).")
@click.option("--conf", type=float, default=None, help="Detection score threshold (default: the model's, for AP).")
@click.option("--iou", type=float, default=None, help="NMS IoU (default: the model's).")
@click.option("--max-det", type=int, default=None, help="Detections per image (default: the model's; COCO's cap follows it).")
@click.option("--imgsz", type=int, default=None, help="Input size (default: the model's).")
@click.option("--matrix-conf", type=float, default=0.25, show_default=True,
              help="Score threshold of the confusion matrix, the error counts and the gallery.")
@click.option("--device", default=None, help="auto, cpu, cuda[:N], mps.")
@click.option("--amp", type=click.Choice(["off", "on", "bf16", "fp16", "auto"]), default="off", show_default=True,
              help="Mixed precision of .pt weights: auto is bf16 on a CPU with native bf16 (AVX512-BF16, AMX), fp32 on "
                   "other CPUs, bf16 or fp16 on CUDA (the run says which); off keeps AP comparable across machines.")
@click.option("--workers", type=int, default=0, show_default=True)
@click.option("--project", default="runs", show_default=True)
@click.option("--name", default=None, help="Run name under PROJECT/val. [default: exp]")
@click.option("--exist-ok", is_flag=True)
@click.option("--no-plots", "plots", flag_value=False, default=True)
@click.option("--froc-hit", default="iou:0.5", show_default=True,
              help="When a detection finds a lesion: iou:T (IoU at least T) or center (its centre inside the box).")
@click.option("--operating-point", default=None,
              help="Choose a score threshold per class on this split: fppi=F, sensitivity=S or f1.")
@click.option("--save-thresholds", is_flag=True, help="Store the operating point's thresholds in the checkpoint "
              "(predict and export use them).")
@tiling_options
@window_option
def command(weights, data, split, batch, conf, iou, max_det, imgsz, matrix_conf, device, amp, workers, project, name, exist_ok,
            plots, froc_hit, operating_point, save_thresholds, window, **tiling) -> None:
    """Evaluate WEIGHTS: 12 COCO stats, per-class AP, FROC, PR curves, confusion matrix, metrics.json, predictions."""
    # Imported here: `retinadet --help` loads every command module, and should not load torch.
    import torch

    from retinadet.detector import evaluate_exported, load
    from retinadet.errors import ConfigError, RetinadetError
    from retinadet.export.runners import is_exported
    from retinadet.utils.sentinels import FROM_CONFIG
    from retinadet.utils.tiling import tile_options

    tile_options(**tiling_kwargs(tiling))  # bad flags fail before the weights are loaded
    if is_exported(weights):
        if save_thresholds:
            raise ConfigError(f"--save-thresholds writes into a retinadet .pt checkpoint, not {weights}: choose the "
                              "thresholds on the .pt, then export it again")
        if workers:
            raise ConfigError("--workers applies to .pt weights: an exported model's images are read by its runner")
        evaluate_exported(weights, data, split, device=device, batch=batch, conf=conf, iou=iou,
                          max_det=FROM_CONFIG if max_det is None else max_det, imgsz=imgsz, matrix_conf=matrix_conf,
                          plots=plots, project=project, name=name, exist_ok=exist_ok, log=click.echo, progress=True,
                          froc_hit=froc_hit, operating_point=operating_point, window=window, **tiling_kwargs(tiling))
        return
    try:
        load(weights).val(data, split, save_thresholds=save_thresholds, batch=batch, workers=workers, device=device,
                          amp={"off": False, "on": True}.get(amp, amp), conf=conf, iou=iou,
                          max_det=FROM_CONFIG if max_det is None else max_det, imgsz=imgsz,
                          matrix_conf=matrix_conf, plots=plots, project=project, name=name, exist_ok=exist_ok,
                          log=click.echo, progress=True, froc_hit=froc_hit, operating_point=operating_point, window=window,
                          **tiling_kwargs(tiling))
    except torch.OutOfMemoryError as exc:
        raise RetinadetError(f"out of memory during evaluation ({str(exc).splitlines()[0][:120]}); "
                             "try a smaller --batch") from exc
