"""The high-level Detector: any input type, batching, boxes mapped to original coordinates."""

import numpy as np
import pytest
import torch
from PIL import Image

from retinadet.detector import Detector
from retinadet.errors import DataError
from retinadet.model.preprocess import prepare_batch

OVERRIDES = {"fpn.channels": 32, "head.channels": 32, "head.num_convs": 1, "preprocess.min_size": 160, "preprocess.max_size": 256,
             "preprocess.fixed_size": None}


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    det = Detector.from_config("fast", ["a", "b"], device="cpu", overrides=OVERRIDES)
    with torch.no_grad():
        det.model.head.cls_logits.bias.uniform_(-2.5, -1.0)
    return det


def _image(h=120, w=200, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)


def test_all_input_types_give_the_same_detections(detector, tmp_path):
    arr = _image()
    path = tmp_path / "img.png"
    Image.fromarray(arr).save(path)
    variants = [arr, Image.fromarray(arr), torch.from_numpy(arr).permute(2, 0, 1), str(path)]
    results = [detector.predict(v) for v in variants]
    assert len(results[0]) > 0
    for r in results[1:]:
        assert torch.equal(r.labels, results[0].labels)
        torch.testing.assert_close(r.boxes, results[0].boxes, atol=1e-3, rtol=0)
    assert results[3].source == str(path)
    # A [0, 1] float image is resized in float by the same kernel (no rounding to uint8 levels): at the
    # model's input size (no resize) it gives exactly the uint8 image's detections.
    exact = _image(160, 256)
    as_uint8 = detector.predict(exact)
    as_float = detector.predict(torch.from_numpy(exact).permute(2, 0, 1).float() / 255)
    assert len(as_uint8) > 0 and torch.equal(as_float.labels, as_uint8.labels)
    torch.testing.assert_close(as_float.boxes, as_uint8.boxes, atol=1e-3, rtol=0)


def test_boxes_are_in_original_coordinates(detector):
    arr = _image(90, 150)
    tensor = torch.from_numpy(arr).permute(2, 0, 1)
    got = detector.predict(tensor)
    batch = prepare_batch([tensor], detector.cfg.preprocess)
    sizes = batch.image_sizes
    assert sizes.tolist() == [[153, 256]]  # scale min(160/90, 256/150): the long side hits max_size
    with torch.no_grad():
        direct = detector.model(detector.model.normalize(batch.images, sizes), image_sizes=sizes)[0]
    scale = torch.tensor([150 / sizes[0, 1], 90 / sizes[0, 0], 150 / sizes[0, 1], 90 / sizes[0, 0]])
    torch.testing.assert_close(got.boxes, direct.boxes * scale, atol=1e-3, rtol=1e-5)
    assert (got.boxes[:, 2] <= 150 + 1e-3).all() and (got.boxes[:, 3] <= 90 + 1e-3).all()


def _canonical(det):
    rows = np.concatenate([det.labels[:, None].numpy(), det.boxes.numpy(), det.scores[:, None].numpy()], axis=1)
    return rows[np.lexsort(rows[:, ::-1].T)]


def test_batched_predictions_match_single_images(detector):
    # Same padded geometry: batching must not change anything.
    same = [torch.from_numpy(_image(120, 200, 1)).permute(2, 0, 1), torch.from_numpy(_image(120, 200, 2)).permute(2, 0, 1)]
    # (Batch size changes BLAS summation order by ~1e-7, which may swap near-tied scores,
    # so detections are compared as sets.)
    for b, s in zip(detector.predict(same, batch_size=2), [detector.predict(img) for img in same]):
        assert len(b) == len(s) > 0
        np.testing.assert_allclose(_canonical(b), _canonical(s), atol=1e-3)
    # Different sizes share one padded batch; each keeps its own size and bounds.
    mixed = [same[0], torch.from_numpy(_image(200, 100, 3)).permute(2, 0, 1)]
    out = detector.predict(mixed, batch_size=2)
    assert [o.image_size for o in out] == [(120, 200), (200, 100)]
    assert (out[1].boxes[:, 2] <= 100 + 1e-3).all() and (out[1].boxes[:, 3] <= 200 + 1e-3).all()


def test_thresholds_and_cap(detector):
    arr = _image()
    loose = detector.predict(arr, conf=0.05)
    capped = detector.predict(arr, conf=0.05, max_det=3)
    strict = detector.predict(arr, conf=0.99)
    assert len(capped) == min(3, len(loose)) and len(strict) < len(loose)
    assert torch.equal(capped.scores, loose.scores[:3])


def test_cpu_speed_options_keep_results_close(detector):
    arr = _image()
    ref = detector.predict(arr)
    fast = detector.predict(arr, channels_last=True)
    torch.testing.assert_close(fast.scores[:5], ref.scores[:5], atol=1e-4, rtol=0)
    assert detector.model.channels_last
    assert detector.model.head.cls_logits.weight.is_contiguous(memory_format=torch.channels_last)
    bf16 = detector.predict(arr, amp=True)
    assert len(bf16) > 0
    detector.predict(arr, channels_last=False)
    assert not detector.model.channels_last


def test_bad_inputs_fail_clearly(detector, tmp_path):
    with pytest.raises(DataError, match="missing.png"):
        detector.predict(str(tmp_path / "missing.png"))
    with pytest.raises(DataError, match="shape"):
        detector.predict(torch.zeros(5, 10, 10))
    with pytest.raises(DataError, match="unsupported"):
        detector.predict(12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")
def test_cuda_matches_cpu(detector):
    arr = _image()
    ref = detector.predict(arr)
    gpu = Detector(detector.model, detector.class_names, device="cuda")
    got = gpu.predict(arr)
    torch.testing.assert_close(got.boxes, ref.boxes, atol=1e-2, rtol=0)
    gpu_amp = gpu.predict(arr, amp=True)
    assert len(gpu_amp) > 0
    detector.model.to("cpu")
