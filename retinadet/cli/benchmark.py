"""``retinadet benchmark``: every CPU inference backend of a model in one table, measured side by side."""

from __future__ import annotations

import click


@click.command("benchmark")
@click.option("--weights", required=True, help="Weights to benchmark (a retinadet .pt, or anything `retinadet.load` reads).")
@click.option("--data", default=None, help="Dataset: real images (the first --batch of --split) and each backend's AP on "
              "the split. [default: a fixed synthetic batch, no AP]")
@click.option("--split", default=None, help="Split of --data to time on and score. [default: val]")
@click.option("--imgsz", type=int, default=None, help="Input size (the resize rule at this size). [default: the model's]")
@click.option("--batch", type=int, default=1, show_default=True, help="Images per timed run.")
@click.option("--runs", type=int, default=10, show_default=True, help="Timed runs per backend (median reported).")
@click.option("--warmup", type=int, default=2, show_default=True, help="Untimed runs per backend first.")
@click.option("--backends", default=None, help="Comma-separated backends to run. [default: all]")
@click.option("--threads", type=int, default=None, help="Intra-op threads of every backend. [default: torch's default]")
@click.option("--int8-images", type=int, default=100, show_default=True,
              help="INT8 calibration images (of the val split of --data, else of the dataset the weights record).")
@click.option("--int8-max-drop", type=float, default=0.01, show_default=True,
              help="AP drop beyond which an INT8 model is reported refused, as `retinadet export --int8` refuses it "
              "(it is timed either way).")
@click.option("--no-ap", "ap", flag_value=False, default=True, help="Skip the AP of each backend (still times on --data).")
@click.option("--json", "json_path", default=None, help="Also write the results to this JSON file.")
def command(weights, data, split, imgsz, batch, runs, warmup, backends, threads, int8_images, int8_max_drop, ap,
            json_path) -> None:
    """Time eager PyTorch, channels_last, bf16, TorchScript, onnxruntime and OpenVINO (fp32 and INT8) on this CPU:
    ms per image, images/s, peak memory and AP, each backend in its own process, in alternating rounds."""
    from retinadet.benchmark import parse_backends

    parse_backends(backends)  # a bad name fails before torch and the weights load
    from retinadet.benchmark import benchmark

    out = benchmark(weights, data, split=split, imgsz=imgsz, batch=batch, runs=runs, warmup=warmup, backends=backends,
                    threads=threads, ap=ap, int8_images=int8_images, int8_max_drop=int8_max_drop, json_path=json_path,
                    log=click.echo)
    failed = [b["name"] for b in out["backends"] if b["status"] == "failed"]
    if failed:
        click.echo(f"{len(failed)} backend(s) failed: {', '.join(failed)}", err=True)
        raise SystemExit(1)
