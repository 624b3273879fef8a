"""The seed preset reproduces the seed pipeline's own outputs (fixture expected_outputs.npz)."""

import numpy as np
import pytest
import torch

from retinadet.model import build_model
from retinadet.weights.keymaps import drop_unused_buffers, from_seed


@pytest.fixture(scope="module")
def seed(shared_dir):
    root = shared_dir / "fixtures" / "seed-checkpoints"
    state = torch.load(root / "seed_resnet18_state_dict.pt", map_location="cpu", weights_only=True)
    model = build_model("seed_resnet18", num_classes=3).eval()
    mapped, unmapped = from_seed(state)
    assert unmapped == []
    model.load_state_dict(drop_unused_buffers(mapped, model.state_dict().keys()), strict=True)
    return model, np.load(root / "expected_outputs.npz")


def test_seed_preset_reproduces_fixture_outputs(seed):
    model, expected = seed
    x = torch.from_numpy(expected["input"])
    with torch.no_grad():
        feats = model.fpn(model.backbone(x))
        cls_logits, box_deltas, anchors, _ = model.forward_raw(x)
        decoded = model._clip(model.box_coder.decode(box_deltas, anchors), None, x.shape[-2:])
    assert [list(f.shape[-2:]) for f in feats] == expected["fpn_shapes"].tolist()
    np.testing.assert_allclose(anchors.numpy(), expected["anchors"][0], atol=1e-4, rtol=0)
    np.testing.assert_allclose(torch.sigmoid(cls_logits).numpy(), expected["cls_probs"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(box_deltas.numpy(), expected["box_deltas"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(decoded.numpy(), expected["decoded_boxes"], atol=1e-4, rtol=0)


def test_seed_layouts_for_deeper_resnets_load_strictly(shared_dir):
    import json

    layouts = json.loads((shared_dir / "fixtures" / "seed-checkpoints" / "seed_key_layouts.json").read_text())
    for name, preset in [("resnet50", "seed_resnet50"), ("resnet101", "seed_resnet101")]:
        layout = next(v for k, v in layouts.items() if name in k.lower())
        state = {k: torch.randn(shape) if shape else torch.tensor(0) for k, shape in layout.items()}
        model = build_model(preset, num_classes=3)
        mapped, unmapped = from_seed(state)
        assert unmapped == []
        model.load_state_dict(drop_unused_buffers(mapped, model.state_dict().keys()), strict=True)
