"""Seed-pipeline checkpoints import (state_dict, pickled module, DataParallel) and reproduce its outputs."""

import json

import numpy as np
import pytest
import torch

from retinadet.errors import CheckpointError
from retinadet.model import build_model
from retinadet.weights import build_from_checkpoint, import_weights, read_weights
from retinadet.weights.keymaps import from_seed
from retinadet.weights.seed import seed_config

FILES = {"state_dict": "seed_state_dict", "module": "seed_module", "dataparallel": "seed_dataparallel"}


@pytest.fixture(scope="module")
def imported(seed_dir, seed_ckpt):
    # seed_ckpt is the state_dict file imported once per session (conftest).
    out = {"state_dict": seed_ckpt}
    out.update({name: import_weights(seed_dir / f"seed_resnet18_{name}.pt", "auto", ["a", "b", "c"])
                for name in ("module", "dataparallel")})
    return out


@pytest.fixture(scope="module")
def outputs(imported, seed_dir):
    expected = np.load(seed_dir / "expected_outputs.npz")
    model, names = build_from_checkpoint(imported["module"])
    assert names == ["a", "b", "c"]
    x = torch.from_numpy(expected["input"])
    with torch.no_grad():
        cls_logits, deltas, anchors, per_level = model.forward_raw(x)
    return model, expected, x, (cls_logits, deltas, anchors, per_level)


@pytest.mark.parametrize("name", list(FILES))
def test_each_seed_file_is_identified(seed_dir, name):
    info = read_weights(seed_dir / f"seed_resnet18_{name}.pt")
    assert info.kind == FILES[name]
    assert info.preset == "seed_resnet18" and info.num_classes == 3


def test_all_three_files_import_to_the_same_checkpoint(imported):
    ref = imported["state_dict"]
    assert ref["format"] == "retinadet" and ref["model_config"]["preset"] == "seed_resnet18"
    assert ref["model_config"]["num_classes"] == 3 and ref["class_names"] == ["a", "b", "c"]
    for name in ("module", "dataparallel"):
        ckpt = imported[name]
        assert ckpt["model_config"] == ref["model_config"]
        assert ckpt["model"].keys() == ref["model"].keys()
        for key, value in ref["model"].items():
            assert torch.equal(ckpt["model"][key], value), key


def test_imported_model_reproduces_seed_outputs(outputs):
    model, expected, x, (cls_logits, deltas, anchors, _) = outputs
    h, w = x.shape[-2:]
    decoded = model.box_coder.decode(deltas, anchors)
    decoded = torch.stack([decoded[..., 0].clamp(0, w), decoded[..., 1].clamp(0, h),
                           decoded[..., 2].clamp(0, w), decoded[..., 3].clamp(0, h)], dim=-1)
    diffs = {
        "anchors": np.abs(anchors.numpy() - expected["anchors"][0]).max(),
        "cls_probs": np.abs(torch.sigmoid(cls_logits).numpy() - expected["cls_probs"]).max(),
        "box_deltas": np.abs(deltas.numpy() - expected["box_deltas"]).max(),
        "decoded_boxes": np.abs(decoded.numpy() - expected["decoded_boxes"]).max(),
    }
    print("max abs diff vs fixture:", diffs)
    assert anchors.shape[0] == expected["anchors"].shape[1] == 15354
    for key, diff in diffs.items():
        assert diff <= 1e-4, (key, diff)


def _seed_rules(probs: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """The seed pipeline's inference as torchvision ops: scores > 0.05, per-class NMS at 0.5, no top-k, no cap.
    Rows (label, score, box), sorted."""
    from torchvision.ops import batched_nms

    idx, labels = (probs > 0.05).nonzero(as_tuple=True)
    scores, boxes = probs[idx, labels], boxes[idx]
    keep = batched_nms(boxes, scores, labels, 0.5)
    return _sorted_rows(labels[keep], scores[keep], boxes[keep])


def _sorted_rows(labels, scores, boxes) -> torch.Tensor:
    rows = torch.cat([labels[:, None].float(), scores[:, None], boxes], 1)
    for col in reversed(range(rows.shape[1])):  # lexicographic: stable sorts from the last column to the first
        rows = rows[rows[:, col].sort(stable=True).indices]
    return rows


def test_detections_follow_seed_inference_rules(outputs):
    """Per-class NMS at 0.5, scores > 0.05, no top-k, no cap, clipped to the tensor.

    With these random weights 44k scores pass the threshold and a quarter of them tie, so NMS is a cascade
    that one float32 ulp of input reorders: scores agree with the fixture to 6e-7, yet a third of the
    detections differ on an AVX2-only host. So the rules are checked on each side's own numbers, exactly:
    they reproduce the fixture's detections from its probabilities and boxes, and ours from our outputs.
    """
    model, expected, x, (cls_logits, deltas, anchors, per_level) = outputs
    inf = model.cfg.inference
    assert inf.topk_per_level is None and inf.max_det is None and inf.clip_to == "padded" and inf.nms_iou == 0.5
    num_classes = cls_logits.shape[-1]
    exp_rows = _sorted_rows(*(torch.from_numpy(expected[k]) for k in ("det_labels", "det_scores", "det_boxes")))
    seed = _seed_rules(torch.from_numpy(expected["cls_probs"]).reshape(-1, num_classes),
                       torch.from_numpy(expected["decoded_boxes"]).reshape(-1, 4))
    assert torch.equal(seed, exp_rows)  # the rules above are the seed pipeline's

    size = torch.tensor([list(x.shape[-2:])])
    det = model.postprocess(cls_logits, deltas, anchors, per_level, size, x.shape[-2:])[0]
    h, w = x.shape[-2:]
    boxes = model.box_coder.decode(deltas, anchors)[0]
    boxes = torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h), boxes[:, 2].clamp(0, w),
                         boxes[:, 3].clamp(0, h)], dim=-1)
    ours = _seed_rules(torch.sigmoid(cls_logits[0]), boxes)
    torch.testing.assert_close(_sorted_rows(det.labels, det.scores, det.boxes), ours, atol=1e-5, rtol=0)
    # And the two agree where no tie decides: the count, and each class's best scores.
    assert abs(len(det) - len(exp_rows)) <= 0.005 * len(exp_rows), (len(det), len(exp_rows))
    for label in range(num_classes):
        top = det.scores[det.labels == label].sort(descending=True).values[:10]
        ref = torch.from_numpy(expected["det_scores"][expected["det_labels"] == label]).sort(descending=True).values[:10]
        torch.testing.assert_close(top, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant", ["resnet50", "resnet101"])
def test_deeper_seed_layouts_load_strictly(seed_dir, variant):
    layouts = json.loads((seed_dir / "seed_key_layouts.json").read_text())
    layout = next(v for k, v in layouts.items() if variant in k.lower())
    g = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(shape, generator=g) if shape else torch.tensor(0)) for k, shape in layout.items()}
    cfg = seed_config(state)
    assert cfg.preset == f"seed_{variant}" and cfg.num_classes == 3
    model = build_model(cfg)
    mapped, unmapped = from_seed(state)
    assert unmapped == []
    result = model.load_state_dict({k: v for k, v in mapped.items() if not k.endswith("num_batches_tracked")}, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(model.state_dict()["head.cls_logits.weight"], state["classificationModel.output.weight"])


def test_seed_import_needs_matching_class_names(seed_dir):
    path = seed_dir / "seed_resnet18_state_dict.pt"
    with pytest.raises(CheckpointError, match="class names"):
        import_weights(path, "seed", None)
    with pytest.raises(CheckpointError, match="2 class names given, but the model has 3"):
        import_weights(path, "seed", "a,b")
    with pytest.raises(CheckpointError, match="--from torchvision given"):
        import_weights(path, "torchvision", "a,b,c")
