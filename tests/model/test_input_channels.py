"""Gray (and two-channel) models: the first convolution of pretrained RGB weights adapted as timm does."""

import torch
import torchvision

from retinadet.model import RetinaNet, resolve_model_config


def _model(tmp_path, in_channels):
    torch.manual_seed(0)
    weights = tmp_path / "resnet18_rgb.pth"
    if not weights.exists():  # "pretrained" RGB weights, made here: nothing is downloaded
        torch.save(torchvision.models.resnet18().state_dict(), weights)
    cfg = resolve_model_config("fast").replace({
        "num_classes": 2, "backbone.name": "resnet18", "backbone.weights": str(weights), "backbone.norm": "frozen_bn",
        "backbone.in_channels": in_channels, "backbone.kwargs": {},
        "preprocess.mean": [0.5, 0.5, 0.5], "preprocess.std": [0.25, 0.25, 0.25]})
    return RetinaNet(cfg).eval()


def test_gray_model_sees_a_gray_image_as_the_rgb_model_does(tmp_path):
    rgb, gray = _model(tmp_path, 3), _model(tmp_path, 1)
    w3 = rgb.backbone.body.conv1.weight
    w1 = gray.backbone.body.conv1.weight
    assert w1.shape[1] == 1 and torch.allclose(w1, w3.sum(1, keepdim=True))  # summed over RGB
    g = torch.randint(0, 256, (1, 1, 96, 128), dtype=torch.uint8).expand(1, 3, 96, 128)
    with torch.no_grad():
        x1, x3 = gray.normalize(g), rgb.normalize(g)
        assert x1.shape[1] == 1 and x3.shape[1] == 3
        f1, f3 = gray.backbone(x1), rgb.backbone(x3)
    for a, b in zip(f1, f3):  # the same features, so the pretrained weights keep their meaning
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_two_channel_model_runs_end_to_end(tmp_path):
    model = _model(tmp_path, 2)
    assert model.backbone.body.conv1.weight.shape[1] == 2
    image = torch.rand(3, 96, 128)
    image[2] = 0  # two fluorophores, the third channel empty
    from retinadet.model.inference import detect_images
    assert detect_images(model, [image], model.cfg.preprocess)[0].boxes.shape[1] == 4
