"""benchmarks/own_data_sets.py: both sets, written tiny, read back by retinadet's own readers."""

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinadet.data import load_splits
from retinadet.data.check import check_dataset
from retinadet.engine.datasets import train_val_splits

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import own_data_sets  # noqa: E402 - lives in benchmarks/, not in the package

COUNTS = (8, 4, 4)
NAMES = sorted(own_data_sets.SETS)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("own-sets")
    return {name: own_data_sets.write_set(name, base / name, seed=0, counts=COUNTS) for name in NAMES}


def _records(path: Path) -> list:
    return [r for ds in load_splits(path).values() for r in ds.records]


def _label_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.suffix in (".json", ".txt")}


@pytest.mark.parametrize("name", NAMES)
def test_readers_find_the_three_splits(written, name):
    train, val, info = train_val_splits(written[name], None, 0)
    assert (len(train), len(val), info["val_split"]) == (8, 4, "val")
    splits = load_splits(written[name])
    assert list(splits) == ["train", "val", "test"] and len(splits["test"]) == 4
    assert splits["train"].class_names == list(own_data_sets.SETS[name].class_names)
    report = check_dataset(written[name])  # what `retinadet data check` runs: decodes every image
    assert report.problems == [] and set(report.splits) == {"train", "val", "test"}


@pytest.mark.parametrize("name", NAMES)
def test_boxes_lie_in_their_images(written, name):
    records = _records(written[name])
    assert sum(r.num_boxes for r in records) > len(records)
    for r in records:
        with Image.open(r.path) as im:
            assert im.size == (r.width, r.height)
        b = r.boxes
        assert (b[:, :2] >= 0).all() and (b[:, 2] <= r.width + 1e-3).all() and (b[:, 3] <= r.height + 1e-3).all()
        assert (b[:, 2:] > b[:, :2]).all()


def test_clutter_objects_are_large_on_images_of_several_sizes(written):
    records = _records(written["clutter"])
    assert len({(r.width, r.height) for r in records}) > 1
    for r in records:
        sides = r.boxes[:, 2:] - r.boxes[:, :2]
        short = min(r.width, r.height)
        assert (sides >= 0.2 * short).all() and (sides <= 0.7 * short + 2).all(), (r.path, sides, short)


def test_elongated_boxes_are_thin(written):
    boxes = np.concatenate([r.boxes for r in _records(written["elongated"])])
    sides = boxes[:, 2:] - boxes[:, :2]
    aspect = sides.max(1) / sides.min(1)
    assert (aspect >= 3).mean() >= 0.8, np.percentile(aspect, [10, 50, 90])


@pytest.mark.parametrize("name", NAMES)
def test_a_seed_fixes_the_bytes(tmp_path, name):
    a, b, other = (own_data_sets.write_set(name, tmp_path / tag, seed=seed, counts=(2, 1, 1))
                   for tag, seed in (("a", 0), ("b", 0), ("other", 1)))
    roots = [p if p.is_dir() else p.parent for p in (a, b, other)]
    assert _label_files(roots[0]) == _label_files(roots[1]) != _label_files(roots[2])
    image = Path("images/train/train_0000.jpg")
    assert (roots[0] / image).read_bytes() == (roots[1] / image).read_bytes() != (roots[2] / image).read_bytes()


def test_ensure_set_writes_once(tmp_path, monkeypatch):
    monkeypatch.setitem(own_data_sets.SETS, "elongated", replace(own_data_sets.SETS["elongated"], counts=(2, 1, 1)))
    path = own_data_sets.ensure_set("elongated", tmp_path, seed=3)
    assert path == tmp_path / "elongated-v1-seed3" / "data.yaml"
    stamp = path.stat().st_mtime_ns
    assert own_data_sets.ensure_set("elongated", tmp_path, seed=3) == path and path.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["elongated-v1-seed3"]  # no temporary folder left behind


def test_unknown_name_lists_the_sets(tmp_path):
    with pytest.raises(ValueError, match="clutter, elongated"):
        own_data_sets.write_set("cells", tmp_path / "x")
