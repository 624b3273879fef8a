"""Dataset, collate contract, grouped/distributed sampling, skipping of unreadable images, counters."""

from __future__ import annotations

import pytest
import torch
from data_support import make_roboflow, write_coco, write_image
from torch.utils.data import DistributedSampler, SequentialSampler

from retinadet.data.discover import load_dataset
from retinadet.data.loading import DetectionDataset, GroupedBatchSampler, aspect_ratio_groups, build_loader, collate_detection
from retinadet.data.transforms import build_transform
from retinadet.errors import DataError


def _mixed_dataset(root, broken=False):
    sizes = [(64, 48), (40, 80), (64, 48), (40, 80), (64, 48)]
    images, anns = [], []
    for i, (w, h) in enumerate(sizes):
        write_image(root / f"{i}.jpg", w, h, seed=i)
        images.append({"id": 10 + i, "file_name": f"{i}.jpg", "width": w, "height": h})
        for k in range(i % 3):  # 0, 1 or 2 boxes
            anns.append({"id": len(anns) + 1, "image_id": 10 + i, "category_id": 5, "bbox": [2 + k, 3, 20, 10], "iscrowd": k})
    if broken:
        (root / "1.jpg").write_bytes((root / "1.jpg").read_bytes()[:100])
    return write_coco(root / "ann.json", images, anns, [{"id": 5, "name": "x"}])


def test_collate_contract(tmp_path):
    ds = DetectionDataset(load_dataset(_mixed_dataset(tmp_path)), build_transform("none", min_size=50, max_size=100))
    batch = collate_detection([ds[0], ds[1], ds[2]], size_divisible=32)
    B = 3
    assert batch["images"].dtype == torch.uint8 and batch["images"].shape[:2] == (B, 3)
    H, W = batch["images"].shape[-2:]
    assert H % 32 == 0 and W % 32 == 0
    assert batch["image_sizes"].dtype == torch.int64
    assert batch["image_sizes"].tolist() == [[50, 66], [100, 50], [50, 66]]  # floor, as torchvision
    assert batch["orig_sizes"].tolist() == [[48, 64], [80, 40], [48, 64]]
    M = batch["boxes"].shape[1]
    assert M == 2 and batch["boxes"].dtype == torch.float32
    assert batch["labels"].tolist() == [[-1, -1], [0, -1], [0, 0]]
    assert batch["crowd"].tolist() == [[False, False], [False, False], [False, True]]
    assert torch.all(batch["boxes"][0] == 0) and torch.all(batch["boxes"][1, 1] == 0)
    assert batch["image_ids"].tolist() == [10, 11, 12]
    assert [p.rsplit("/", 1)[-1] for p in batch["paths"]] == ["0.jpg", "1.jpg", "2.jpg"]
    # zero padding bottom-right, content top-left
    h, w = batch["image_sizes"][0].tolist()
    assert batch["images"][0, :, h:, :].sum() == 0 and batch["images"][0, :, :, w:].sum() == 0
    assert batch["images"][0, :, :h, :w].float().std() > 10
    # boxes are in resized pixels: 64x48 -> 67x50
    torch.testing.assert_close(batch["boxes"][1, 0], torch.tensor([2, 3, 22, 13]) * torch.tensor([50 / 40, 100 / 80] * 2))
    assert batch["stats"]["boxes"] == 3


def test_grouped_batches_share_orientation_and_cover_the_epoch():
    ratios = [1.33, 0.5, 1.33, 0.5, 1.33, 1.33, 0.5]
    groups = aspect_ratio_groups(ratios)
    batches = list(GroupedBatchSampler(SequentialSampler(range(7)), groups, batch_size=2))
    assert len(batches) == len(GroupedBatchSampler(SequentialSampler(range(7)), groups, 2)) == 4
    assert sorted(i for b in batches for i in b) == list(range(7))
    full = [b for b in batches if len(b) == 2]
    assert sum(len({groups[i] for i in b}) == 1 for b in full) >= 3
    sharded = DistributedSampler(range(7), num_replicas=2, rank=1, shuffle=False)
    assert [i for b in GroupedBatchSampler(sharded, groups, 2) for i in b] == [1, 3, 5, 0]


def test_unreadable_image_is_skipped_counted_or_fatal_when_strict(tmp_path):
    path = _mixed_dataset(tmp_path, broken=True)
    loader = build_loader(path, batch_size=5, workers=0, train=False, model="fast", aspect_grouping=False)
    with pytest.warns(RuntimeWarning, match="1.jpg"):
        batches = list(loader)
    assert len(batches) == 1 and len(batches[0]["paths"]) == 5
    assert loader.counters.skipped_images == 1 and loader.counters.skipped_files[0].endswith("1.jpg")
    assert "1 unreadable images skipped" in loader.counters.summary()
    snap = loader.counters.reset()
    assert snap.images == 5 and loader.counters.images == 0 and loader.counters.skipped_images == 0

    strict = build_loader(path, batch_size=5, workers=0, train=False, strict=True, aspect_grouping=False)
    with pytest.raises(DataError, match="1.jpg"):
        list(strict)


def test_build_loader_with_workers_sizes_from_model_preset(tmp_path):
    root = make_roboflow(tmp_path / "rf")
    loader = build_loader(root, "train", batch_size=2, workers=2, model="fast", augment="strong", seed=1)
    batches = list(loader)
    assert len(batches) == len(loader) == 2
    for b in batches:
        # fast preset: 320 x 320 limits, multiples of 32 (strong jitter up to 1.5x)
        assert b["images"].shape[-1] % 32 == 0 and b["images"].shape[-2] % 32 == 0
        assert int(b["image_sizes"].max()) <= 480
        assert "stats" not in b
    assert loader.counters.images == 3 and loader.counters.boxes == 6
    assert loader.class_names == ["rbc", "wbc", "platelet"] and loader.category_ids == [3, 7, 9]
    with pytest.raises(DataError, match="batch_size"):
        build_loader(root, "train", batch_size=0)


def test_fixed_size_letterbox_pads_to_square(tmp_path):
    from types import SimpleNamespace

    path = _mixed_dataset(tmp_path)
    pre = SimpleNamespace(min_size=0, max_size=0, fixed_size=96, size_divisible=32)
    b = next(iter(build_loader(path, batch_size=5, workers=0, train=False, model=pre, aspect_grouping=False)))
    assert tuple(b["images"].shape[-2:]) == (96, 96)
    assert b["image_sizes"].tolist()[:2] == [[72, 96], [96, 48]]
