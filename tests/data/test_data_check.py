"""`retinadet data check` lists every problem with its file and exits non-zero; BCCD passes."""

from __future__ import annotations

import math

from click.testing import CliRunner
from data_support import write_coco, write_image

from retinadet.cli.data import command as data_command


def _broken_dataset(root):
    write_image(root / "ok.jpg", 64, 48, seed=1)
    write_image(root / "outside.jpg", 64, 48, seed=2)
    write_image(root / "nan.jpg", 64, 48, seed=3)
    write_image(root / "unknown.jpg", 64, 48, seed=4)
    full = write_image(root / "full.jpg", 64, 48, seed=5).read_bytes()
    (root / "truncated.jpg").write_bytes(full[: len(full) // 2])
    images = [
        {"id": 1, "file_name": "ok.jpg", "width": 64, "height": 48},
        {"id": 2, "file_name": "truncated.jpg", "width": 64, "height": 48},
        {"id": 3, "file_name": "missing.jpg", "width": 64, "height": 48},
        {"id": 4, "file_name": "outside.jpg", "width": 64, "height": 48},
        {"id": 5, "file_name": "nan.jpg", "width": 64, "height": 48},
        {"id": 6, "file_name": "unknown.jpg", "width": 64, "height": 48},
        {"id": 6, "file_name": "ok.jpg", "width": 64, "height": 48},  # duplicate image id (and file)
    ]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20]},
        {"id": 2, "image_id": 4, "category_id": 1, "bbox": [50, 30, 40, 40]},
        {"id": 3, "image_id": 5, "category_id": 1, "bbox": [1, 2, math.nan, 5]},  # json.dumps writes a bare NaN
        {"id": 4, "image_id": 6, "category_id": 42, "bbox": [1, 2, 5, 5]},
    ]
    json_path = write_coco(root / "train.json", images, anns, [{"id": 1, "name": "thing"}])
    empty = write_coco(root / "empty" / "ann.json", [{"id": 1, "file_name": "../ok.jpg", "width": 64, "height": 48}], [],
                       [{"id": 1, "name": "thing"}])
    return json_path, empty


def test_check_reports_every_problem_with_its_file(tmp_path):
    json_path, empty = _broken_dataset(tmp_path)
    result = CliRunner().invoke(data_command, ["check", str(json_path)])
    out = result.output
    assert result.exit_code == 1, out
    lines = out.splitlines()

    def has(kind, needle):
        return any(kind in line and needle in line for line in lines)

    assert has("unreadable_image", "truncated.jpg")
    assert has("missing_file", "missing.jpg")
    assert has("box_outside_image", "outside.jpg")
    assert has("nan_box", "nan.jpg")
    assert has("unknown_class", "unknown category id 42")
    assert has("duplicate_id", "duplicate image id 6")
    assert all(str(json_path) in line or "jpg" in line for line in lines if line.strip().startswith("[error]"))
    assert "[train]" in out and "Anchor coverage" in out

    result = CliRunner().invoke(data_command, ["check", str(empty)])
    assert "empty_annotations" in result.output and str(empty) in result.output
    assert "1 images without boxes" in result.output
    assert result.exit_code == 0  # a dataset of negatives is legal: reported as a warning


def test_check_bccd_passes_and_reports_zero_size_boxes(bccd):
    result = CliRunner().invoke(data_command, ["check", str(bccd), "--model", "fast"])
    assert result.exit_code == 0, result.output
    zero = [line for line in result.output.splitlines() if "zero_size_box" in line]
    assert len(zero) == 2
    assert any("BloodImage_00338.xml" in line for line in zero) and any("BloodImage_00343.xml" in line for line in zero)
    assert "[train] 205 images" in result.output and "[val] 87 images" in result.output and "[test] 72 images" in result.output
    assert "best anchor IoU >= 0.5" in result.output


def test_anchor_coverage_drops_for_tiny_objects_with_hint(tmp_path):
    from retinadet.data.check import check_dataset

    write_image(tmp_path / "a.jpg", 640, 640)
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [10 + 40 * i, 10 + 30 * i, 6, 6]} for i in range(10)]
    path = write_coco(tmp_path / "tiny.json", [{"id": 1, "file_name": "a.jpg", "width": 640, "height": 640}], anns,
                      [{"id": 1, "name": "dot"}])
    small = check_dataset(path, model="fast", imgsz=320, verify_images=False)
    big = check_dataset(path, model="fast", imgsz=1280, verify_images=False)
    assert small.coverage_05 < 0.5 and any("smaller anchors or a larger input" in h for h in small.hints)
    assert big.coverage_05 > small.coverage_05


def test_root_cli_turns_data_errors_into_exit_2(tmp_path):
    from retinadet.cli import main

    result = CliRunner().invoke(main, ["data", "check", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "not found" in result.output
