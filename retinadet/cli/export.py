"""``retinadet export``: weights -> ONNX (onnxruntime, TensorRT, ...), OpenVINO or TorchScript (C++), with a benchmark,
and INT8 post-training quantization behind an AP gate."""

from __future__ import annotations

import click


@click.command("export")
@click.option("--weights", required=True, help="Weights to export (a retinadet .pt, or anything `retinadet.load` reads).")
@click.option("--format", "fmt", type=click.Choice(["onnx", "openvino", "torchscript"]), default="onnx", show_default=True)
@click.option("-o", "--output", default=None, help="Output file. [default: beside the weights, .onnx / .xml (+ .bin) / "
              ".torchscript]")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (11+; NonMaxSuppression).")
@click.option("--imgsz", type=int, default=None, help="Trace and benchmark input size (square, rounded up to 32). "
              "The exported model accepts any size. [default: the model's min_size]")
@click.option("--batch", type=int, default=1, show_default=True, help="Trace and benchmark batch (the export accepts any).")
@click.option("--conf", type=float, default=None, help="Score threshold baked into the graph (default: the model's).")
@click.option("--iou", type=float, default=None, help="NMS IoU baked into the graph (default: the model's).")
@click.option("--max-det", type=int, default=None, help="Rows of the padded outputs (default: the model's max_det).")
@click.option("--input-dtype", type=click.Choice(["float32", "uint8"]), default="float32", show_default=True,
              help="Image input: float32 in [0, 1] or uint8 0..255.")
@click.option("--no-bench", is_flag=True, help="Skip the exported-vs-eager benchmark.")
@click.option("--bench-runs", type=int, default=5, show_default=True, help="Timed runs per model (median reported).")
@click.option("--int8", is_flag=True, help="Also write an INT8 model (model.int8.onnx / model.int8.xml), calibrated on the "
              "val split, kept only when its AP there is within --int8-max-drop of the fp32 model's (onnx, openvino).")
@click.option("--data", default=None, help="Dataset whose val split INT8 calibrates and measures AP on "
              "[default: the one recorded in the checkpoint].")
@click.option("--int8-images", type=int, default=100, show_default=True,
              help="Calibration images (the whole split when it has fewer).")
@click.option("--int8-max-drop", type=float, default=0.01, show_default=True,
              help="Largest AP (IoU .50:.95) the INT8 model may lose; a larger drop refuses it and exits non-zero.")
def command(weights, fmt, output, opset, imgsz, batch, conf, iou, max_det, input_dtype, no_bench, bench_runs, int8, data,
            int8_images, int8_max_drop) -> None:
    """Export a model with pre- and post-processing inside: outputs boxes, scores, labels, num_dets."""
    from retinadet.export.exporter import export

    ctx = click.get_current_context()
    given = [f"--{n.replace('_', '-')}" for n in ("data", "int8_images", "int8_max_drop")
             if ctx.get_parameter_source(n) is not click.core.ParameterSource.DEFAULT]
    if given and not int8:
        raise click.UsageError(f"{', '.join(given)} apply to --int8 (calibration and the AP gate)")
    export(weights, fmt, output, opset=opset, imgsz=imgsz, batch=batch, score_thresh=conf, nms_iou=iou, max_det=max_det,
           input_dtype=input_dtype, bench=not no_bench, repeats=max(1, bench_runs), int8=int8, int8_data=data,
           int8_images=int8_images, int8_max_drop=int8_max_drop, int8_strict=True, log=click.echo)
