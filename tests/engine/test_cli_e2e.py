"""End to end through the CLI: train -> val reproduces best.pt's metrics -> predict in original pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from retinadet.engine.evaluate import STAT_NAMES
from retinadet.utils.files import read_csv

IMGSZ = 64  # conftest's IMGSZ


def test_train_writes_run_folder(trained_run):
    w = trained_run / "weights"
    assert (w / "best.pt").is_file() and (w / "last.pt").is_file()
    header, rows = read_csv(trained_run / "results.csv")
    for col in ["epoch", "loss_total", "loss_cls", "loss_box", "lr", *STAT_NAMES, "epoch_time"]:
        assert col in header
    assert [int(r[0]) for r in rows] == [1, 2]  # --epochs 2 beat the config's 5
    assert all(np.isfinite(float(r[header.index("loss_total")])) for r in rows)
    for name in ["results.png", "val_batch0_labels_vs_pred.png", "train.log", "val/PR_curves.png",
                 "val/confusion_matrix.png"]:
        assert (trained_run / name).is_file(), name
    assert list(trained_run.glob("events.out.tfevents.*"))
    args = yaml.safe_load((trained_run / "args.yaml").read_text())
    assert args["epochs"] == 2 and args["seed"] == 1 and args["imgsz"] == IMGSZ
    assert args["model_config"]["preprocess"]["max_size"] == IMGSZ
    # Checkpoints load with weights_only=True and hold the full training state.
    last = torch.load(w / "last.pt", weights_only=True)
    for key in ["model", "model_config", "class_names", "category_ids", "epoch", "metrics", "versions",
                "optimizer", "scheduler", "rng", "train_state"]:
        assert key in last, key
    assert last["epoch"] == 2 and last["train_state"]["epoch"] == 2 and last["train_state"]["iteration"] == 0
    assert set(last["rng"]) >= {"torch", "numpy", "python"}
    best = torch.load(w / "best.pt", weights_only=True)
    assert "optimizer" not in best and best["class_names"] == ["circle", "square", "triangle", "cross", "ellipse"]
    assert set(STAT_NAMES) <= set(best["metrics"])


def test_val_reproduces_best_metrics(trained_run, tmp_path, cli):
    best = trained_run / "weights" / "best.pt"
    stored = torch.load(best, weights_only=True)["metrics"]
    res = cli(["val", "--weights", str(best), "--project", str(tmp_path), "--name", "v"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    out = tmp_path / "val" / "v"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_detections"] > 0  # the comparison below is not between two empty evaluations
    for k in STAT_NAMES:
        assert metrics[k] == pytest.approx(stored[k], abs=1e-9), k
    assert metrics["per_class_AP"] == pytest.approx(stored["per_class_AP"], abs=1e-9)
    for name in ["PR_curves.png", "confusion_matrix.png", "predictions.json"]:
        assert (out / name).is_file()
    preds = json.loads((out / "predictions.json").read_text())
    assert preds and {p["category_id"] for p in preds} <= {1, 2, 3, 4, 5}
    for label in ["AP50", "AR100", "circle"]:
        assert label in res.output
    # The Python API gives the same numbers.
    import retinadet

    api = retinadet.load(best).val(save_dir=tmp_path / "api", log=lambda *_: None)
    assert api["AP"] == pytest.approx(stored["AP"], abs=1e-9)


def test_predict_boxes_in_original_coordinates(trained_run, tiny_data, tmp_path, cli):
    import retinadet

    # A non-square image larger than the 64 px input: the pipeline resizes it.
    src = sorted((tiny_data / "test").glob("*.jpg"))[0]
    img = Image.open(src).convert("RGB").resize((210, 130))
    folder = tmp_path / "imgs"
    folder.mkdir()
    img.save(folder / "wide.png")
    best = trained_run / "weights" / "best.pt"
    res = cli(["predict", "--weights", str(best), "--source", str(folder), "--conf", "0.001", "--project",
               str(tmp_path), "--name", "p", "--save-csv", "--save-txt"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    out = tmp_path / "predict" / "p"
    assert (out / "wide.png").is_file() and (out / "predictions.csv").is_file() and (out / "labels" / "wide.txt").is_file()
    preds = json.loads((out / "predictions.json").read_text())
    assert preds and all(p["file_name"] == "wide.png" and "class_name" in p for p in preds)
    direct = retinadet.load(best).predict(str(folder / "wide.png"), conf=0.001)
    assert direct.image_size == (130, 210)
    got = np.array([p["bbox"] for p in preds])
    want = np.array([r["bbox"] for r in direct.to_records()])
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=2e-3)
    assert got[:, 0].max() + got[:, 2].max() > IMGSZ  # not left in 64 px input coordinates
    drawn = np.asarray(Image.open(out / "wide.png"))
    assert drawn.shape == (130, 210, 3)
    assert "image(s):" in res.output


def test_predict_video_writes_annotated_video(trained_run, tiny_data, tmp_path, cli):
    from retinadet.engine.video import VideoWriter, read_video_frames

    src = sorted((tiny_data / "test").glob("*.jpg"))[0]
    frame = torch.from_numpy(np.array(Image.open(src).convert("RGB").resize((96, 80)))).permute(2, 0, 1).contiguous()
    writer = VideoWriter(tmp_path / "clip.mp4", fps=10)
    for _ in range(3):
        writer.write(frame)
    writer.close()
    res = cli(["predict", "--weights", str(trained_run / "weights" / "best.pt"), "--source", str(tmp_path / "clip.mp4"),
               "--conf", "0.001", "--project", str(tmp_path), "--name", "v"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    out = tmp_path / "predict" / "v"
    annotated = list(read_video_frames(str(out / "clip.mp4")))
    assert len(annotated) == 3 and annotated[0].shape == (3, 80, 96)
    preds = json.loads((out / "predictions.json").read_text())
    assert {p["frame"] for p in preds} == {0, 1, 2}
    assert all(p["file_name"] == f"clip_{p['frame']:06d}.jpg" for p in preds)
    assert not list(out.glob("*.png"))  # frames go into the video, not into images
    assert "3 image(s)" in res.output


def test_finetune_reinitialises_class_layer(trained_run, tiny_data, tmp_path):
    """--weights with another class count: class layer re-initialised and reported; AMP (bf16 on CPU) step runs."""
    import shutil

    import retinadet

    ds = tmp_path / "two"
    for split in ("train", "valid"):
        shutil.copytree(tiny_data / split, ds / split)
        ann = json.loads((ds / split / "_annotations.coco.json").read_text())
        ann["categories"] = ann["categories"][:2]
        ann["annotations"] = [a for a in ann["annotations"] if a["category_id"] <= 2]
        (ds / split / "_annotations.coco.json").write_text(json.dumps(ann))
    from retinadet.engine.cpu_tuning import flushes_denormals

    torch.set_flush_denormal(False)
    res = retinadet.train(data=str(ds), weights=str(trained_run / "weights" / "best.pt"), max_iters=1, amp=True,
                          workers=0, batch=4, project=str(tmp_path), progress=False, plots=False)
    assert res.interrupted
    assert not flushes_denormals()  # the run flushed denormals (its log says so) and put the caller's state back
    log = (res.save_dir / "train.log").read_text()
    assert "re-initialised keys: head.cls_logits.weight, head.cls_logits.bias" in log
    ck = torch.load(res.last, weights_only=True)
    assert ck["class_names"] == ["circle", "square"] and ck["model_config"]["num_classes"] == 2
    # The rest of the network came from the weights, and so did its input size: the fit (96 px on this data)
    # is not applied to weights trained at another size.
    src = torch.load(trained_run / "weights" / "best.pt", weights_only=True)
    size = src["model_config"]["preprocess"]["max_size"]
    assert size == 64 and ck["model_config"]["preprocess"]["max_size"] == size  # the source run's --imgsz
    assert f"input size {size}px from --weights" in log
    # Naming a preset asks for its rule, which is fitted to the data as for a run from scratch.
    named = retinadet.train(data=str(ds), weights=str(trained_run / "weights" / "best.pt"), model="fast", max_iters=1,
                            workers=0, batch=4, project=str(tmp_path), progress=False, plots=False)
    named_log = (named.save_dir / "train.log").read_text()
    assert "px from --weights" not in named_log and "input size 288px (1.00x the preset's): " in named_log


@pytest.mark.parametrize("cache_bytes, loads", [(None, 1), (0, 2)])
def test_validation_decodes_val_images_once_when_they_fit(tiny_data, tmp_path, monkeypatch, cache_bytes, loads):
    """Val batches are kept between epochs (or streamed when over the cap); val/ is written when the run ends."""
    import retinadet
    import retinadet.engine.evaluate as evaluate_mod
    import retinadet.engine.hooks as hooks
    import retinadet.engine.loaders as loaders

    calls = []
    real = loaders.eval_loader
    for module in (loaders, evaluate_mod, hooks):  # wherever the val loader is looked up
        monkeypatch.setattr(module, "eval_loader", lambda *a, **k: calls.append(1) or real(*a, **k), raising=False)
    if cache_bytes is not None:
        monkeypatch.setattr(hooks, "VAL_CACHE_BYTES", cache_bytes)
    res = retinadet.train(data=str(tiny_data), epochs=2, batch=4, imgsz=64, workers=0, project=str(tmp_path),
                          progress=False, plots=False, model_overrides={"inference.score_thresh": 0.001})
    assert len(calls) == loads
    header, rows = read_csv(res.save_dir / "results.csv")
    metrics = json.loads((res.save_dir / "val" / "metrics.json").read_text())
    assert metrics["AP"] == pytest.approx(float(rows[-1][header.index("AP")]), abs=1e-6)
    assert (res.save_dir / "val" / "predictions.json").is_file()
