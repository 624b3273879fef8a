"""COCO indexing at scale: file_names nested or absolute, no image opened on load, annotations grouped per image
with numpy exactly as a per-annotation reader would."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner
from data_support import write_coco, write_image

from retinadet.cli.data import command as data_command
from retinadet.data.discover import load_splits
from retinadet.data.formats.coco import read_coco

CATS = [{"id": 1, "name": "cell"}]


def _images_must_not_be_opened(monkeypatch):
    """Every way the data layer reads an image (header or pixels) raises."""
    import PIL.Image

    from retinadet.data import check, images

    def refuse(*args, **kwargs):
        raise AssertionError(f"an image was opened: {args[:1]}")

    monkeypatch.setattr(PIL.Image, "open", refuse)
    monkeypatch.setattr(images, "image_size", refuse)
    monkeypatch.setattr(images, "read_image", refuse)
    monkeypatch.setattr(check, "read_image", refuse)


def test_nested_and_absolute_file_names_are_found(tmp_path):
    root = tmp_path / "export"
    nested = write_image(root / "images" / "sub" / "a.jpg", 32, 24, seed=1)  # as written
    beside = write_image(root / "b.jpg", 32, 24, seed=2)  # file_name nested, image beside the JSON
    in_images = write_image(root / "images" / "c.jpg", 32, 24, seed=3)  # file_name nested, image in images/
    absolute = write_image(tmp_path / "elsewhere" / "d.jpg", 32, 24, seed=4)
    moved = write_image(root / "e.jpg", 32, 24, seed=5)  # absolute file_name from another machine
    classic = write_image(tmp_path / "coco" / "images" / "f.jpg", 32, 24, seed=6)  # annotations/ + images/
    names = ["images/sub/a.jpg", "frames/sub/b.jpg", "batch7/c.jpg", str(absolute), "/gone/machine/e.jpg"]
    path = write_coco(root / "ann.json", [{"id": i + 1, "file_name": n, "width": 32, "height": 24} for i, n in enumerate(names)],
                      [], CATS)
    ds = read_coco(path)
    assert [r.path for r in ds.records] == [nested, beside, in_images, absolute, moved]
    assert [p.kind for p in ds.problems] == ["empty_annotations"]

    classic_json = write_coco(tmp_path / "coco" / "annotations" / "instances_val.json",
                              [{"id": 1, "file_name": "f.jpg", "width": 32, "height": 24}], [], CATS)
    assert load_splits(tmp_path / "coco")["val"].records[0].path == classic
    assert read_coco(classic_json).records[0].path == classic


def test_a_missing_image_is_one_problem_naming_the_json_and_file_name(tmp_path):
    write_image(tmp_path / "ok.jpg", 32, 24)
    images = [{"id": 1, "file_name": "ok.jpg", "width": 32, "height": 24},
              {"id": 2, "file_name": "scans/lost.jpg", "width": 32, "height": 24}]
    path = write_coco(tmp_path / "ann.json", images, [{"id": 1, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5]}], CATS)
    ds = read_coco(path)
    (problem,) = ds.problems
    assert problem.kind == "missing_file" and problem.severity == "error" and problem.file == str(path)
    assert "images[1]" in problem.message and "'scans/lost.jpg'" in problem.message and str(tmp_path) in problem.message
    assert ds.records[1].num_boxes == 1  # still indexed: its boxes count in the statistics

    for flags in ([], ["--no-images"]):
        result = CliRunner().invoke(data_command, ["check", str(path), *flags])
        assert result.exit_code == 1, result.output
        missing = [line for line in result.output.splitlines() if "missing_file" in line]
        assert len(missing) == 1 and "scans/lost.jpg" in missing[0] and str(path) in missing[0], result.output


def test_loading_opens_no_image_and_missing_sizes_are_read_lazily(tmp_path, monkeypatch):
    write_image(tmp_path / "a.jpg", 40, 30, seed=1)
    write_image(tmp_path / "b.jpg", 50, 20, seed=2)
    images = [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}, {"id": 2, "file_name": "b.jpg"}]
    anns = [{"id": 1, "image_id": 2, "category_id": 1, "bbox": [45, 2, 20, 5]},  # 15 px past b.jpg's right edge
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}]
    path = write_coco(tmp_path / "ann.json", images, anns, CATS)
    with monkeypatch.context() as m:
        _images_must_not_be_opened(m)
        splits = load_splits(path)
        ds = next(iter(splits.values()))
        a, b = ds.records
        assert a.size_known and (a.width, a.height) == (40, 30)
        assert not b.size_known and b.size_from_header
        assert b.replaced(image_id=9).size_known is False  # copies keep it unread
        assert [p.kind for p in ds.problems] == ["missing_size"] and "images[1]" in ds.problems[0].message
    assert (b.width, b.height) == (50, 20) and b.size_known and b.size_from_header  # read from the header, once
    result = CliRunner().invoke(data_command, ["check", str(path), "--no-images"])
    assert result.exit_code == 1, result.output
    outside = [line for line in result.output.splitlines() if "box_outside_image" in line]
    assert len(outside) == 1 and "b.jpg" in outside[0] and "50x20" in outside[0], result.output


def test_check_no_images_decodes_nothing_and_stats_files(tmp_path, monkeypatch):
    write_image(tmp_path / "a.jpg", 40, 30)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "folder.jpg").mkdir()
    images = [{"id": i + 1, "file_name": n, "width": 40, "height": 30}
              for i, n in enumerate(["a.jpg", "empty.jpg", "folder.jpg", "gone.jpg"])]
    anns = [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [2, 2, 10, 10]} for i in range(4)]
    path = write_coco(tmp_path / "ann.json", images, anns, CATS)
    _images_must_not_be_opened(monkeypatch)
    result = CliRunner().invoke(data_command, ["check", str(path), "--no-images"])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.strip().startswith("[error]")]
    assert len(errors) == 3, result.output
    assert any("unreadable_image" in e and "empty.jpg" in e and "empty" in e for e in errors)
    assert any("missing_file" in e and "folder.jpg" in e and "not a regular file" in e for e in errors)
    assert any("missing_file" in e and "gone.jpg" in e for e in errors)
    assert "4 boxes" in result.output


def _reference_grouping(images: list[dict], anns: list[dict]) -> dict[int, list[list[float]]]:
    """What a per-annotation reader gives: each image's boxes (xyxy) in file order, first image of an id only."""
    boxes: dict[int, list[list[float]]] = {}
    for a in anns:
        x, y, w, h = a["bbox"]
        boxes.setdefault(a["image_id"], []).append([x, y, x + w, y + h])
    return {im["id"]: boxes.get(im["id"], []) for im in images}


def test_grouping_matches_a_per_annotation_reader(tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.permutation(np.arange(100, 400, 3))[:60].tolist()  # sparse, shuffled image ids
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 80} for i in ids]
    anns = []
    for k in range(500):  # interleaved across images, some images without any
        image_id = int(rng.choice(ids[:45]))
        x, y = rng.uniform(0, 60, 2).round(2)
        anns.append({"id": k + 1, "image_id": image_id, "category_id": int(rng.choice([3, 7])),
                     "bbox": [float(x), float(y), round(float(rng.uniform(1, 30)), 2), round(float(rng.uniform(1, 15)), 2)],
                     "iscrowd": int(k % 17 == 0)})
    path = write_coco(tmp_path / "ann.json", images, anns, [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}])
    ds = read_coco(path)
    want = _reference_grouping(images, anns)
    by_ann = {a["id"]: a for a in anns}
    assert [r.image_id for r in ds.records] == ids
    for r in ds.records:
        np.testing.assert_allclose(r.boxes, np.array(want[r.image_id], dtype=np.float32).reshape(-1, 4), rtol=1e-6)
    labels = np.concatenate([r.labels for r in ds.records])
    crowd = np.concatenate([r.crowd for r in ds.records])
    ordered = [a for im in images for a in anns if a["image_id"] == im["id"]]
    assert labels.tolist() == [0 if a["category_id"] == 3 else 1 for a in ordered]
    assert crowd.tolist() == [bool(a["iscrowd"]) for a in ordered]
    assert sum(ds.boxes_per_class().values()) == 500 and ds.num_negatives() == 15
    assert len(by_ann) == 500  # (ids unique: the comparison above is one to one)


def test_bad_annotations_are_each_reported_and_the_rest_kept(tmp_path):
    write_image(tmp_path / "a.jpg", 64, 48)
    images = [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
              {"id": "2", "file_name": "a.jpg", "width": 64, "height": 48},  # a numeric string id
              {"id": 1, "file_name": "b.jpg", "width": 64, "height": 48}]  # duplicate id: gets no boxes
    anns = [
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10]},
        {"id": 11, "category_id": 1, "bbox": [1, 1, 10, 10]},  # no image_id
        {"id": 12, "image_id": "x", "category_id": 1, "bbox": [1, 1, 10, 10]},
        {"id": 13, "image_id": 99, "category_id": 1, "bbox": [1, 1, 10, 10]},
        {"id": 14, "image_id": 99, "category_id": 1, "bbox": [1, 1, 10, 10]},
        {"id": 15, "image_id": 1, "category_id": "cell", "bbox": [1, 1, 10, 10]},
        {"id": 16, "image_id": 1, "category_id": 5, "bbox": [1, 1, 10, 10]},
        {"id": 17, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10]},
        {"id": 18, "image_id": 1, "category_id": 1, "bbox": [1, None, 10, 10]},
        {"id": 19, "image_id": 2, "category_id": 1, "bbox": [60, 40, 10, 10]},  # 6 px past two edges: clipped
        "not an object",
    ]
    path = write_coco(tmp_path / "ann.json", images, anns, CATS)
    ds = read_coco(path)
    got = [(p.kind, p.message) for p in ds.problems]

    def one(kind: str, *needles: str) -> None:
        hits = [m for k, m in got if k == kind and all(n in m for n in needles)]
        assert len(hits) == 1, (kind, needles, got)

    one("missing_file", "images[2]", "'b.jpg'")
    one("bad_annotation", "annotations[1]", "missing 'image_id'")
    one("bad_annotation", "annotations[10]", "missing 'image_id'")
    one("bad_annotation", "annotations[2] (id 12)", "image_id is not an integer: 'x'")
    one("unknown_image", "2 annotation(s)", "unknown image id 99")
    one("unknown_class", "annotations[5] (id 15)", "bad category_id 'cell'")
    one("unknown_class", "annotations[6] (id 16)", "unknown category id 5 for a.jpg")
    one("bad_annotation", "annotations[7] (id 17)", "'bbox' must be [x, y, w, h]")
    one("nan_box", "annotations[8] (id 18) of a.jpg")
    one("box_outside_image", "annotations[9] (id 19) of a.jpg", "outside image 64x48")
    one("duplicate_id", "duplicate image id 1")
    assert all(p.file == str(path) for p in ds.problems)
    assert len(ds.problems) == 12  # the 11 above and the duplicate file a.jpg (ids 1 and 2)
    first, second, third = ds.records
    np.testing.assert_array_equal(first.boxes, [[1, 1, 11, 11]])
    np.testing.assert_array_equal(second.boxes, [[60, 40, 64, 48]])
    assert third.num_boxes == 0

