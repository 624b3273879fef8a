from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
SEED_DIR = SHARED / "fixtures" / "seed-checkpoints"
BCCD_IMAGE = SHARED / "datasets" / "bccd" / "JPEGImages" / "BloodImage_00000.jpg"


@pytest.fixture(scope="session")
def seed_dir() -> Path:
    if not SEED_DIR.is_dir():
        pytest.skip(f"seed checkpoint fixtures not found at {SEED_DIR} (shared data ships beside the repository)")
    return SEED_DIR


@pytest.fixture(scope="session")
def seed_ckpt(seed_dir):
    from retinadet.weights import import_weights

    return import_weights(seed_dir / "seed_resnet18_state_dict.pt", "seed", "a,b,c")


@pytest.fixture(scope="session")
def tv_file(tmp_path_factory):
    """A seeded torchvision RetinaNet v1 (COCO, 91 classes), its state_dict saved to disk."""
    from torchvision.models.detection import retinanet_resnet50_fpn

    torch.manual_seed(0)
    tv = retinanet_resnet50_fpn(weights=None, weights_backbone=None)
    with torch.no_grad():
        tv.head.classification_head.cls_logits.bias.uniform_(-3.5, -1.5)
        tv.head.regression_head.bbox_reg.bias.uniform_(-0.2, 0.2)
    path = tmp_path_factory.mktemp("tv") / "retinanet_v1.pth"
    torch.save(tv.state_dict(), path)
    return tv.eval(), path


@pytest.fixture(scope="session")
def tv_ckpt(tv_file):
    from retinadet.weights import import_weights

    return import_weights(tv_file[1], "torchvision")
