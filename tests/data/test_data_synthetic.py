"""The synthetic `shapes` dataset: deterministic bytes, the specified variety, and the COCO code path."""

from __future__ import annotations

import hashlib

import numpy as np
from click.testing import CliRunner

from retinadet.data.discover import load_dataset, load_splits
from retinadet.data.synthetic import CLASS_NAMES, ShapesConfig, ensure_shapes_dataset, write_shapes_dataset

SMALL = ShapesConfig(num_train=40, num_val=8, num_test=8, size=160, seed=3)


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = write_shapes_dataset(tmp_path / "a", SMALL, workers=1)
    b = write_shapes_dataset(tmp_path / "b", SMALL, workers=2)  # parallelism does not change bytes
    write_shapes_dataset(tmp_path / "c", ShapesConfig(num_train=40, num_val=8, num_test=8, size=160, seed=4), workers=1)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    print(f"\nshapes generation: {a['images_per_s']:.0f} images/s (1 process), {b['images_per_s']:.0f} images/s (2)")


def test_content_has_the_specified_variety(tmp_path):
    cfg = ShapesConfig(num_train=200, num_val=0, num_test=0, size=320, seed=0)
    stats = write_shapes_dataset(tmp_path, cfg, workers=1)
    print(f"\nshapes generation at 320 px: {stats['images_per_s']:.0f} images/s")
    ds = load_dataset(tmp_path, split="train")
    assert ds.class_names == CLASS_NAMES and ds.format == "coco" and not ds.problems
    counts = np.array(list(ds.boxes_per_class().values()))
    assert counts.min() > 0 and counts.max() >= 1.8 * counts.min()  # imbalance
    assert 0.04 <= ds.num_negatives() / len(ds) <= 0.2
    boxes = np.concatenate([r.boxes for r in ds.records])
    sides = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    assert sides.min() < 16 and sides.max() > 0.45 * 320  # P3 ... P7 sized objects
    # overlaps: some pairs of boxes in one image intersect
    import torch
    from torchvision.ops import box_iou

    overlapping = sum(int((box_iou(torch.from_numpy(r.boxes), torch.from_numpy(r.boxes)).triu(1) > 0).any())
                      for r in ds.records if r.num_boxes > 1)
    assert overlapping > 10
    # textured, noisy backgrounds: a negative image is far from flat
    from retinadet.data.images import read_image

    neg = next(r for r in ds.records if r.num_boxes == 0)
    assert read_image(neg.path).float().std() > 5


def test_ensure_caches_once_and_cli_writes_anywhere(tmp_path, monkeypatch):
    monkeypatch.setenv("RETINADET_CACHE", str(tmp_path / "cache"))
    cfg = ShapesConfig(num_train=6, num_val=3, num_test=3, size=96, seed=1)
    root = ensure_shapes_dataset(cfg)
    assert root.parent == tmp_path / "cache" and (root / ".complete").is_file()
    stamp = (root / "train" / "_annotations.coco.json").stat().st_mtime_ns
    assert ensure_shapes_dataset(cfg) == root
    assert (root / "train" / "_annotations.coco.json").stat().st_mtime_ns == stamp
    assert [len(s) for s in load_splits(root).values()] == [6, 3, 3]

    from retinadet.cli.data import command

    result = CliRunner().invoke(command, ["synth", "-o", str(tmp_path / "out"), "--n", "12", "--seed", "2", "--size", "96"])
    assert result.exit_code == 0, result.output
    assert [len(s) for s in load_splits(tmp_path / "out").values()] == [8, 2, 2]
