"""Benchmark: ``predict`` and ``val`` agree. The COCO AP of ``retinadet predict``'s predictions.json on a split,
against ``retinadet val`` on the same split, for a trained model.

    python benchmarks/bench_predict_val.py --weights runs/train/bccd/weights/best.pt \\
        [--data ../shared/datasets/bccd] [--split test] [--conf 0.05]

``--conf`` defaults to the model's own score threshold (what ``val`` keeps). Prints a table and one JSON line.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import click
import numpy as np
from pycocotools.cocoeval import COCOeval

import retinadet
from retinadet.data.discover import load_splits
from retinadet.data.formats.coco import coco_api

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "bccd"


def coco_ap(records: list[dict], split) -> tuple[float, float]:
    ids = {r.path.name: int(r.image_id) for r in split.records}
    gt = coco_api(split.records, split.class_names, split.category_ids)
    rows = np.asarray([[ids[p["file_name"]], *p["bbox"], p["score"], p["category_id"]] for p in records], dtype=np.float64)
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(rows), "bbox")
        ev.params.imgIds = sorted(ids.values())
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1])


@click.command()
@click.option("--weights", required=True)
@click.option("--data", default=str(DEFAULT_DATA), show_default=True)
@click.option("--split", default="test", show_default=True)
@click.option("--conf", type=float, default=None, help="predict's --conf [default: the model's score threshold]")
@click.option("--batch", type=int, default=8, show_default=True)
def main(weights, data, split, conf, batch) -> None:
    det = retinadet.load(weights, device="cpu")
    conf = det.cfg.inference.score_thresh if conf is None else conf
    records_split = load_splits(data)[split]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        val = det.val(data, split, batch=batch, save_dir=Path(tmp) / "val", plots=False, log=lambda *_: None)
        t_val = time.perf_counter() - t0
        listing = Path(tmp) / "images.txt"
        listing.write_text("".join(f"{r.path}\n" for r in records_split.records))
        t0 = time.perf_counter()
        out = retinadet.predict(det, str(listing), conf=conf, batch=batch, save=False, project=tmp, name="predict",
                                progress=False, log=lambda *_: None)
        t_pred = time.perf_counter() - t0
        records = json.loads((Path(out["save_dir"]) / "predictions.json").read_text())
    ap, ap50 = coco_ap(records, records_split)
    print(f"{len(records_split)} {split} images of {data}, weights {weights}, predict --conf {conf:g}")
    print(f"{'':18} {'AP':>8} {'AP50':>8} {'detections':>11} {'wall s':>7}")
    print(f"{'val':18} {val['AP']:8.4f} {val['AP50']:8.4f} {val['num_detections']:11d} {t_val:7.1f}")
    print(f"{'predict -> COCO':18} {ap:8.4f} {ap50:8.4f} {len(records):11d} {t_pred:7.1f}")
    print(f"{'difference':18} {ap - val['AP']:8.1e} {ap50 - val['AP50']:8.1e}")
    print(json.dumps({"split": split, "conf": conf, "val_AP": val["AP"], "val_AP50": val["AP50"], "predict_AP": ap,
                      "predict_AP50": ap50, "val_detections": val["num_detections"], "predict_detections": len(records)}))


if __name__ == "__main__":
    main()
