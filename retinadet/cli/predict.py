"""``retinadet predict``: detect objects in images, folders, globs, path lists or videos."""

from __future__ import annotations

import click


@click.command("predict")
@click.option("--weights", required=True, help="Weights (a retinadet .pt, or anything `retinadet.load` reads).")
@click.option("--source", required=True, help="An image, a folder, a glob, a .txt file of paths, or a video.")
@click.option("--conf", type=float, default=0.25, show_default=True, help="Score threshold.")
@click.option("--iou", type=float, default=None, help="NMS IoU (default: the model's).")
@click.option("--max-det", type=int, default=None, help="Detections per image (default: the model's).")
@click.option("--batch", type=int, default=4, show_default=True)
@click.option("--imgsz", type=int, default=None, help="Input size (default: the model's).")
@click.option("--device", default=None, help="auto, cpu, cuda[:N], mps.")
@click.option("--save-txt", is_flag=True, help="Also write YOLO-style labels/*.txt (class cx cy w h score, normalised).")
@click.option("--save-csv", is_flag=True, help="Also write predictions.csv.")
@click.option("--nosave", is_flag=True, help="Do not write annotated images.")
@click.option("--project", default="runs", show_default=True)
@click.option("--name", default=None, help="Run name under PROJECT/predict. [default: exp]")
@click.option("--exist-ok", is_flag=True)
def command(weights, source, conf, iou, max_det, batch, imgsz, device, save_txt, save_csv, nosave, project, name, exist_ok) -> None:
    """Write annotated images and predictions.json (COCO results + file_name + class name, original pixels)."""
    # Imported here: `retinadet --help` loads every command module, and should not load torch.
    import torch

    from retinadet.detector import predict
    from retinadet.errors import RetinadetError
    from retinadet.utils.sentinels import FROM_CONFIG

    try:
        predict(weights, source, conf=conf, iou=iou, max_det=FROM_CONFIG if max_det is None else max_det, batch=batch,
                imgsz=imgsz, device=device, save=not nosave, save_txt=save_txt, save_csv=save_csv, project=project,
                name=name, exist_ok=exist_ok, log=click.echo)
    except torch.OutOfMemoryError as exc:
        raise RetinadetError(f"out of memory during prediction ({str(exc).splitlines()[0][:120]}); "
                             "try a smaller --batch or --imgsz") from exc
