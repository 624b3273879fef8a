import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from retinadet.model.box_coder import BoxCoder

coords = st.floats(min_value=0, max_value=1000, allow_nan=False, width=32)
sizes = st.floats(min_value=2, max_value=800, allow_nan=False, width=32)


@st.composite
def boxes(draw):
    x, y, w, h = draw(coords), draw(coords), draw(sizes), draw(sizes)
    return [x, y, x + w, y + h]


@settings(max_examples=200, deadline=None)
@given(box=boxes(), anchor=boxes(), weights=st.sampled_from([(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]),
       mode=st.sampled_from(["divide", "multiply_std"]))
def test_encode_decode_round_trip(box, anchor, weights, mode):
    coder = BoxCoder(weights, clamp=None, scale_mode=mode)
    b = torch.tensor([box], dtype=torch.float64)
    a = torch.tensor([anchor], dtype=torch.float64)
    torch.testing.assert_close(coder.decode(coder.encode(b, a), a), b, atol=1e-6, rtol=1e-9)


def test_decode_clamps_log_scale_only_when_configured():
    anchor = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    huge = torch.tensor([[0.0, 0.0, 20.0, 20.0]])
    clamped = BoxCoder(clamp=4.135166556742356).decode(huge, anchor)
    assert torch.allclose(clamped[0, 2] - clamped[0, 0], torch.tensor(10 * 1000 / 16), rtol=1e-4)
    assert torch.isinf(BoxCoder(clamp=None).decode(huge * 10, anchor)).any()


def test_batched_shapes_are_preserved():
    coder = BoxCoder()
    anchors = torch.tensor([[0.0, 0.0, 10.0, 20.0], [5.0, 5.0, 50.0, 40.0]])
    deltas = torch.randn(3, 2, 4) * 0.1
    out = coder.decode(deltas, anchors)
    assert out.shape == (3, 2, 4)
    torch.testing.assert_close(coder.encode(out, anchors.expand(3, 2, 4)), deltas, atol=1e-5, rtol=1e-5)
