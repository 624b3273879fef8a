"""Shared helpers for the data-layer tests: tiny images and datasets written on the fly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
BCCD = SHARED / "datasets" / "bccd"


@pytest.fixture
def bccd() -> Path:
    if not (BCCD / "Annotations").is_dir():
        pytest.skip(f"BCCD not available at {BCCD} (shared data folder absent)")
    return BCCD


def write_image(path: Path, width: int, height: int, seed: int = 0, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path, format=fmt)
    return path


def write_coco(path: Path, images: list[dict], annotations: list[dict], categories: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def make_roboflow(root: Path) -> Path:
    """A Roboflow-style export: train/valid/test, sparse ids, an unused id-0 supercategory."""
    categories = [
        {"id": 0, "name": "cells", "supercategory": "none"},
        {"id": 3, "name": "rbc", "supercategory": "cells"},
        {"id": 7, "name": "wbc", "supercategory": "cells"},
        {"id": 9, "name": "platelet", "supercategory": "cells"},  # declared leaf, unused in valid
    ]
    sizes = {"train": 3, "valid": 2, "test": 1}
    for split, n in sizes.items():
        images, anns = [], []
        for i in range(n):
            name = f"{split}_{i}.jpg"
            write_image(root / split / name, 64, 48, seed=i)
            images.append({"id": i, "file_name": name, "width": 64, "height": 48})
            if i == n - 1 and split != "test":
                continue  # a negative image
            anns.append({"id": len(anns), "image_id": i, "category_id": 3, "bbox": [2, 3, 10, 12], "area": 120, "iscrowd": 0})
            anns.append({"id": len(anns), "image_id": i, "category_id": 7, "bbox": [20.5, 10, 30, 20], "area": 600, "iscrowd": 0})
            if split == "train":
                anns.append({"id": len(anns), "image_id": i, "category_id": 9, "bbox": [40, 30, 5, 5], "area": 25, "iscrowd": 1})
        write_coco(root / split / "_annotations.coco.json", images, anns, categories)
    return root
