"""``predict`` and ``val`` see the same pixels and decode the same way: the COCO AP of predict's
predictions.json on a split equals what ``val`` reports for it."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from pycocotools.cocoeval import COCOeval

from retinadet.data.discover import load_splits
from retinadet.data.formats.coco import coco_api


def coco_ap_of_predictions(records: list[dict], data, split: str) -> dict[str, float]:
    """AP / AP50 of ``retinadet predict`` records against ``split`` of ``data``, as a user would compute them."""
    ds = load_splits(str(data))[split]
    ids = {r.path.name: int(r.image_id) for r in ds.records}
    gt = coco_api(ds.records, ds.class_names, ds.category_ids)
    rows = [[ids[p["file_name"]], *p["bbox"], p["score"], p["category_id"]] for p in records]
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(np.asarray(rows, dtype=np.float64)), "bbox")
        ev.params.imgIds = sorted(ids.values())
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"AP": float(ev.stats[0]), "AP50": float(ev.stats[1])}


def test_coco_ap_of_predict_output_equals_val(trained_run, tiny_data, tmp_path, cli):
    best = trained_run / "weights" / "best.pt"
    thresh = torch.load(best, weights_only=True)["model_config"]["inference"]["score_thresh"]
    res = cli(["val", "--weights", str(best), "--data", str(tiny_data), "--split", "test", "--no-plots",
               "--project", str(tmp_path), "--name", "v"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    val = json.loads((tmp_path / "val" / "v" / "metrics.json").read_text())
    # predict at val's score threshold, one image per batch (val batches them): the padding must not matter
    res = cli(["predict", "--weights", str(best), "--source", str(tiny_data / "test"), "--conf", str(thresh),
               "--batch", "1", "--nosave", "--project", str(tmp_path), "--name", "p"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    records = json.loads((tmp_path / "predict" / "p" / "predictions.json").read_text())
    assert val["num_detections"] == len(records) > 0
    ours = coco_ap_of_predictions(records, tiny_data, "test")
    assert val["AP50"] > 0, "a model that finds nothing would make the comparison empty"
    assert ours["AP"] == pytest.approx(val["AP"], abs=1e-3) and ours["AP50"] == pytest.approx(val["AP50"], abs=1e-3)
