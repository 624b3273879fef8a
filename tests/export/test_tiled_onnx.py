"""Sliced inference in the torch-free ONNX runner equals the torch path's (`detect_images(..., tiling=)`).

The model is the seeded `fast` model of export_support, saved as a checkpoint that records a training scale
(0.5x, 512x512 images: tiles of 512 px under its 256..384 resize rule) and exported from it, so the metadata
path is the real one. Random images give hundreds of detections per image, so the seam filter and the merge
have plenty to decide; both paths must decide alike.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from export_support import CLASS_NAMES, TRACE_SIZE

pytest.importorskip("onnxruntime", reason="the ONNX runner needs onnxruntime (a dev dependency)")

from retinadet.utils.tiling import TrainingScale  # noqa: E402 - torch-free

# As training records it (TrainingScale.to_dict) in the checkpoint's "scale".
SCALE = TrainingScale(0.5, image_size=(512, 512)).to_dict()
BOX_TOL = 5e-3  # px; onnxruntime vs eager differ by ~2e-4 px here


@pytest.fixture(scope="module")
def scaled(models, tmp_path_factory):
    """(torch Detector loaded from the checkpoint, path of the ONNX exported from that checkpoint)."""
    from retinadet.detector import load
    from retinadet.export.exporter import export
    from retinadet.weights.checkpoint import make_checkpoint, save_checkpoint

    root = tmp_path_factory.mktemp("tiled")
    ckpt = root / "scaled.pt"
    save_checkpoint(ckpt, make_checkpoint(models("fast"), CLASS_NAMES, scale=SCALE))
    onnx_path = export(str(ckpt), "onnx", root / "scaled.onnx", imgsz=TRACE_SIZE, bench=False, log=lambda *_: None)["path"]
    return load(ckpt, device="cpu"), onnx_path


@pytest.fixture(scope="module")
def runner(scaled):
    from retinadet.export.onnx_runtime import OnnxDetector

    return OnnxDetector(scaled[1])


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _tensor(img):
    return torch.from_numpy(img).permute(2, 0, 1).contiguous()


def _pair(ref, got):
    """Indices into ``got`` pairing each detection of ``ref`` (same label, score within 1e-4, nearest box), asserting
    equal counts and boxes within BOX_TOL; near-tied scores may come in either order."""
    rb, rs, rl = ref.boxes.numpy().astype(np.float64), ref.scores.numpy(), ref.labels.numpy()
    gb, gs, gl = got.boxes.astype(np.float64), got.scores, got.labels
    assert len(rs) == len(gs), f"{len(rs)} torch vs {len(gs)} ONNX detections"
    used = np.zeros(len(gs), dtype=bool)
    pairs = []
    for i in range(len(rs)):
        cand = np.nonzero(~used & (gl == rl[i]) & (np.abs(gs - rs[i]) <= 1e-4))[0]
        assert cand.size, f"torch detection {i} (label {rl[i]}, score {rs[i]:.5f}) has no ONNX partner"
        err = np.abs(gb[cand] - rb[i]).max(axis=1)
        j = cand[np.argmin(err)]
        assert err.min() <= BOX_TOL, f"detection {i}: boxes differ by {err.min():.2e} px"
        used[j] = True
        pairs.append(j)
    return np.asarray(pairs, dtype=np.int64)


def test_metadata_carries_the_checkpoints_scale(scaled, runner, exported):
    from retinadet.export.onnx_runtime import OnnxDetector, read_metadata

    assert read_metadata(scaled[1])["scale"] == SCALE
    assert runner.scale == scaled[0].scale == TrainingScale.from_dict(SCALE)
    assert OnnxDetector(exported("fast", "onnx")).scale is None  # exported without a checkpoint: no scale recorded


# (--tile, other options, tiles of a 900x1200 image)
CASES = [
    ("400", {}, 12),
    ("400x300", {"tile_merge": "greedy-nmm", "tile_match": "ios", "full_image": True}, 16),
    ("400", {"tile_overlap": 0.3, "tile_threshold": 0.3, "max_det": 150}, 12),
]


@pytest.mark.parametrize("tile,options,n_tiles", CASES, ids=["nms", "greedy-ios-full", "overlap-capped"])
def test_sliced_detections_match_torch(tile, options, n_tiles, scaled, runner):
    from retinadet.model.inference import TilingReport, detect_images
    from retinadet.utils.sentinels import FROM_CONFIG
    from retinadet.utils.tiling import tile_options

    det, _ = scaled
    img = _image(900, 1200)
    flags = {k: v for k, v in options.items() if k != "max_det"}
    max_det = options.get("max_det", FROM_CONFIG)
    said, heard = [], []
    ref = detect_images(det.model, [_tensor(img)], tiling=tile_options(tile, **flags), scale=det.scale, batch_size=5,
                        max_det=max_det, report=TilingReport(said.append))[0]
    got = runner.predict([img], batch_size=5, tile=tile, max_det=max_det, log=heard.append, **flags)[0]
    pairs = _pair(ref, got)
    assert got.image_size == (900, 1200)
    np.testing.assert_array_equal(got.tiles[pairs], ref.tiles.numpy())  # each detection came from the same tile
    assert len({tuple(t) for t in got.tiles.tolist()}) > 4, "detections should come from many tiles"
    assert got.boxes[:, 2].max() > 1100 and got.boxes[:, 3].max() > 800, "boxes should be in the image's pixels"
    if max_det is FROM_CONFIG:
        assert len(got) > runner.max_det, "merged tiles give more than one graph run's cap"
    else:
        assert len(got) == max_det
    assert heard == said and len(heard) == 1 and f"sliced into {n_tiles} tiles" in heard[0], heard


def test_one_tile_is_whole_image_inference(scaled, runner):
    from retinadet.model.inference import detect_images
    from retinadet.utils.tiling import TileOptions

    img = _image(300, 350, seed=1)
    whole = runner.predict([img], tile="off")[0]
    one = runner.predict([img], tile=400)[0]
    assert len(whole) > 0 and whole.tiles is None
    np.testing.assert_array_equal(one.boxes, whole.boxes)
    np.testing.assert_array_equal(one.scores, whole.scores)
    np.testing.assert_array_equal(one.labels, whole.labels)
    assert (one.tiles == [0, 0, 350, 300]).all()
    det = scaled[0]
    _pair(detect_images(det.model, [_tensor(img)], tiling=TileOptions.parse(400), scale=det.scale)[0], one)


def test_auto_slices_by_the_metadata_scale(scaled, runner):
    """A 1100x1500 image would reach the network at 0.23x, below the 0.5x of training: sliced into 512 px tiles; a
    600x450 image reaches it at 0.57x: whole. Both in one call, batched together with mixed shapes, as torch does."""
    from retinadet.export.onnx_runtime import TilingReport
    from retinadet.model.inference import TilingReport as TorchReport
    from retinadet.model.inference import detect_images
    from retinadet.utils.tiling import TileOptions

    det, _ = scaled
    small, big = _image(600, 450, seed=2), _image(1100, 1500, seed=3)
    said, heard = [], []
    torch_report, report = TorchReport(said.append), TilingReport(heard.append)
    ref = detect_images(det.model, [_tensor(small), _tensor(big)], tiling=TileOptions.parse("auto"), scale=det.scale,
                        batch_size=5, report=torch_report)
    got = runner.predict([small, big], batch_size=5, report=report)
    for r, g in zip(ref, got):
        _pair(r, g)
    assert got[0].tiles is None and len(got[0]) > 0
    assert {tuple(t) for t in got[1].tiles.tolist()} > {(0, 0, 512, 512)}, "the big image is sliced into 512 px tiles"
    assert heard == said and len(heard) == 1 and "tiles of 512 px" in heard[0] and "trained at" in heard[0], heard
    assert report.summary() == torch_report.summary() == "sliced inference: 1 of 2 image(s) in 12 tiles"
    # Alone (no padding to the small image's shape in its first batch), auto is exactly --tile 512.
    np.testing.assert_array_equal(runner.predict([big], batch_size=5)[0].boxes, runner.predict([big], batch_size=5, tile=512)[0].boxes)


def test_auto_keeps_an_image_at_the_training_scale_whole(runner, exported):
    from retinadet.export.onnx_runtime import OnnxDetector

    at_scale = _image(512, 512, seed=4)
    heard = []
    auto = runner.predict([at_scale], log=heard.append)[0]
    whole = runner.predict([at_scale], tile=None)[0]
    assert auto.tiles is None and heard == []
    np.testing.assert_array_equal(auto.boxes, whole.boxes)
    # A cap above the graph's only makes sense when every image is sliced (an explicit tile size): auto refuses it.
    from retinadet.export.errors import ExportError

    with pytest.raises(ExportError, match="--max-det 150 exceeds"):
        runner.predict([at_scale], max_det=150)
    # Without a recorded scale, auto never slices, however large the image.
    unscaled = OnnxDetector(exported("fast", "onnx"))
    assert unscaled.predict([_image(1100, 1500, seed=3)])[0].tiles is None
    assert runner.predict([_image(1100, 1500, seed=3)])[0].tiles is not None


def test_cli_slices_and_says_so(scaled, runner, tmp_path, capsys):
    from PIL import Image

    from retinadet.export.onnx_runtime import main

    img = _image(900, 1200, seed=5)
    src = tmp_path / "big.png"
    Image.fromarray(img).save(src)
    rc = main(["--weights", scaled[1], "--source", str(src), "--conf", "0.05", "--tile", "400", "--tile-merge", "greedy-nmm",
               "--full-image", "--nosave", "--project", str(tmp_path), "--name", "run"])
    out = capsys.readouterr().out
    assert rc == 0, out
    records = json.loads((tmp_path / "predict" / "run" / "predictions.json").read_text())
    expected = runner.predict([img], conf=0.05, tile=400, tile_merge="greedy-nmm", full_image=True)[0]
    assert len(records) == len(expected) > 100
    np.testing.assert_allclose(sorted(r["score"] for r in records), np.sort(expected.scores), atol=6e-6)  # written to 5 decimals
    assert out.count("sliced inference: 1200x900 sliced into 12 tiles") == 1
    assert "sliced inference: 1 of 1 image(s) in 12 tiles" in out
    # `retinadet predict` hands an .onnx and its tiling keywords to the same runner.
    from retinadet.detector import predict

    predict(scaled[1], str(src), conf=0.05, tile="400", tile_merge="greedy-nmm", full_image=True, save=False,
            project=str(tmp_path), name="api", progress=False, log=lambda *_: None)
    assert json.loads((tmp_path / "predict" / "api" / "predictions.json").read_text()) == records


@pytest.mark.parametrize("flag,value", [("--tile", "banana"), ("--tile", "8"), ("--tile-overlap", "1.5"),
                                        ("--tile-overlap", "abc"), ("--tile-merge", "union"), ("--tile-match", "dice"),
                                        ("--tile-threshold", "0")])
def test_cli_rejects_a_bad_tiling_flag_with_one_line(flag, value, scaled, tmp_path, capsys):
    from PIL import Image

    from retinadet.export.onnx_runtime import main

    src = tmp_path / "a.png"
    Image.fromarray(_image(64, 64)).save(src)
    rc = main(["--weights", scaled[1], "--source", str(src), flag, value, "--project", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith(f"Error: {flag} ") and value in err[0], err
    assert not (tmp_path / "predict").exists(), "a bad flag fails before any work"
