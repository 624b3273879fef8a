"""Imported checkpoints work from the command line like any other: predict and val."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from retinadet.cli import main

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
BCCD_IMAGE = SHARED / "datasets" / "bccd" / "JPEGImages" / "BloodImage_00000.jpg"


def _run(args):
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_cli_predict_on_imported_torchvision_weights_matches_torchvision(tv_file, tmp_path):
    if not BCCD_IMAGE.is_file():
        pytest.skip(f"BCCD image not found at {BCCD_IMAGE}")
    tv, path = tv_file
    out = tmp_path / "coco.pt"
    _run(["weights", "import", str(path), "--from", "torchvision", "-o", str(out)])
    # At the model's input size (800 x 1066) neither pipeline resizes: torchvision resizes in float without
    # antialiasing, retinadet as its training loader does, so only there must they see the same pixels.
    from PIL import Image

    from retinadet.data.images import read_image
    from retinadet.model.config import PreprocessConfig
    from retinadet.model.preprocess import resize_image, resized_size

    image = read_image(BCCD_IMAGE)
    image = resize_image(image, resized_size(*image.shape[-2:], PreprocessConfig(min_size=800, max_size=1333)))
    source = tmp_path / "bccd_800.png"
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(source)
    _run(["predict", "--weights", str(out), "--source", str(source), "--conf", "0.05", "--max-det", "300",
          "--nosave", "--device", "cpu", "--project", str(tmp_path), "--name", "p"])
    records = json.loads((tmp_path / "predict" / "p" / "predictions.json").read_text())

    with torch.no_grad():
        expected = tv([image.float() / 255])[0]
    assert len(records) == len(expected["scores"]) > 0
    records.sort(key=lambda r: -r["score"])
    got_scores = torch.tensor([r["score"] for r in records])
    torch.testing.assert_close(got_scores, expected["scores"], atol=1e-4, rtol=0)
    got_boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in records)])
    # Boxes compared where scores are not near-tied, so the order is the same in both lists.
    gaps = torch.cat([expected["scores"][:-1] - expected["scores"][1:], torch.tensor([1.0])])
    distinct = (gaps > 1e-4) & torch.cat([torch.tensor([True]), gaps[:-1] > 1e-4])
    assert distinct.sum() > 10
    torch.testing.assert_close(got_boxes[distinct], expected["boxes"][distinct], atol=0.5, rtol=0)
    assert {r["category_id"] for r in records} <= set(range(91))


def test_cli_predict_and_val_on_an_imported_seed_module(seed_dir, tmp_path):
    bccd = SHARED / "datasets" / "bccd"
    if not bccd.is_dir():
        pytest.skip(f"BCCD not found at {bccd}")
    out = tmp_path / "seed.pt"
    _run(["weights", "import", str(seed_dir / "seed_resnet18_module.pt"), "--from", "seed",
          "--classes", "Platelets,RBC,WBC", "-o", str(out)])
    # A three-image VOC copy keeps val quick.
    names = ["BloodImage_00003", "BloodImage_00004", "BloodImage_00005"]  # each holds all three classes
    data = tmp_path / "voc"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (data / sub).mkdir(parents=True)
    for n in names:
        shutil.copy(bccd / "Annotations" / f"{n}.xml", data / "Annotations")
        shutil.copy(bccd / "JPEGImages" / f"{n}.jpg", data / "JPEGImages")
    (data / "ImageSets" / "Main" / "val.txt").write_text("\n".join(names) + "\n")

    # At 320 px: the fixture's random weights score ~0.6 everywhere, so no threshold prunes the seed rules' uncapped
    # NMS, whose cost grows with the square of the anchors (138 s at the model's 800 px here, 26 s at 320).
    small = ["--imgsz", "320"]
    _run(["predict", "--weights", str(out), "--source", str(data / "JPEGImages"), "--device", "cpu", *small,
          "--project", str(tmp_path), "--name", "p"])
    pred_dir = tmp_path / "predict" / "p"
    records = json.loads((pred_dir / "predictions.json").read_text())
    assert {Path(r["file_name"]).stem for r in records} <= set(names)
    assert len(list(pred_dir.glob("BloodImage_*.png"))) == 3

    _run(["val", "--weights", str(out), "--data", str(data), "--split", "val", "--device", "cpu", "--no-plots", *small,
          "--project", str(tmp_path), "--name", "v"])
    metrics = json.loads((tmp_path / "val" / "v" / "metrics.json").read_text())
    assert "AP50" in json.dumps(metrics) or "ap50" in json.dumps(metrics).lower()
