"""`retinadet data check` lists every problem with its file and exits non-zero; BCCD passes."""

from __future__ import annotations

import math

import numpy as np
from click.testing import CliRunner
from data_support import make_roboflow, write_coco, write_image

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


# --- boxes that end on an edge after rounding (YOLO) ---------------------------------------------------------------


def _yolo_edge_dataset(root, sizes):
    """A YOLO dataset whose every box ends on an image edge, written by the project's own writer (6 decimals)."""
    import yaml
    from PIL import Image

    from retinadet.data.formats.yolo import yolo_lines
    from retinadet.data.records import ImageRecord

    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h), (40 + i, 90, 140)).save(root / "images" / "train" / f"{i}.png")
        # Boxes touching each edge, from a spread of inner corners: the 6-decimal cx/w round differently for each.
        xs = np.linspace(0.05 * w, 0.7 * w, 12).round(1)
        ys = np.linspace(0.05 * h, 0.7 * h, 12).round(1)
        boxes = ([[x, y, w, h] for x, y in zip(xs, ys)] + [[0, 0, w - x, h - y] for x, y in zip(xs, ys)]
                 + [[0, y / 2, w, h - y / 3] for y in ys] + [[x / 3, 0, x, h] for x in xs])
        record = ImageRecord(f"{i}.png", w, h, np.array(boxes), np.arange(len(boxes)) % 2, np.zeros(len(boxes), bool), i)
        (root / "labels" / "train" / f"{i}.txt").write_text("\n".join(yolo_lines(record)) + "\n")
    (root / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": "images/train", "names": ["a", "b"]}))
    return root


def test_yolo_boxes_ending_on_the_edge_after_rounding_are_no_problem(tmp_path):
    """COCO-like 640x480 and a 3999x2999 scan, where 6-decimal labels land up to 2 ms of a pixel past the edge."""
    from retinadet.data.discover import load_splits
    from retinadet.data.formats.yolo import read_yolo

    root = _yolo_edge_dataset(tmp_path / "yolo", [(640, 480), (3999, 2999), (1280, 720)])
    overshoot = []
    for txt in sorted((root / "labels" / "train").glob("*.txt")):
        w, h = {"0": (640, 480), "1": (3999, 2999), "2": (1280, 720)}[txt.stem]
        v = np.loadtxt(txt)
        overshoot.append(np.max([(v[:, 1] + v[:, 3] / 2) * w - w, (v[:, 2] + v[:, 4] / 2) * h - h,
                                 -(v[:, 1] - v[:, 3] / 2) * w, -(v[:, 2] - v[:, 4] / 2) * h]))
    assert max(overshoot) > 1e-3  # the test has teeth: past the absolute 1e-3 px a 640 px image needs

    direct = read_yolo(root / "images" / "train", ["a", "b"])
    splits = load_splits(root)
    for ds in (direct, splits["train"]):
        assert ds.problems == []
        assert sum(r.num_boxes for r in ds.records) == 3 * 48
        for r in ds.records:  # clipped onto the edge exactly
            assert r.boxes[:, 2].max() == r.width and r.boxes[:, 3].max() == r.height and r.boxes.min() == 0

    result = CliRunner().invoke(data_command, ["check", str(root)])
    assert result.exit_code == 0, result.output
    assert "Problems: 0 error(s), 0 warning(s)" in result.output

    # A real overshoot of half a pixel still warns, once.
    label = root / "labels" / "train" / "0.txt"
    label.write_text(label.read_text() + f"0 {(600 + 640.5) / 2 / 640:.6f} 0.5 {40.5 / 640:.6f} 0.1\n")
    problems = load_splits(root)["train"].problems
    assert [(p.kind, p.severity) for p in problems] == [("box_clipped", "warning")]
    assert "line 49" in problems[0].message and problems[0].file == str(label)


# --- vectorised checks ---------------------------------------------------------------------------------------------


def test_sanitize_boxes_over_a_dataset_at_once_equals_image_by_image():
    from retinadet.data.records import sanitize_boxes

    rng = np.random.default_rng(3)
    sizes = [(64, 48), (0, 0), (640, 480), (33, 97)]
    per_image, widths, heights, all_boxes, names = [], [], [], [], []
    for k, (w, h) in enumerate(sizes):
        b = rng.uniform(-6, 700, (25, 4))
        b[:, 2:] = b[:, :2] + rng.uniform(-2, 60, (25, 2))
        b[3, 1] = np.nan
        b[5, 2] = w + 1e-7
        problems = []
        per_image.append((*sanitize_boxes(b, w, h, "f", problems, [f"{k}/{i}" for i in range(25)]), problems))
        all_boxes.append(b)
        widths += [w] * 25
        heights += [h] * 25
        names += [f"{k}/{i}" for i in range(25)]
    together = []
    boxes, keep = sanitize_boxes(np.concatenate(all_boxes), np.array(widths), np.array(heights), "f", together,
                                 lambda i: names[i])
    np.testing.assert_array_equal(boxes, np.concatenate([p[0] for p in per_image]))
    np.testing.assert_array_equal(keep, np.concatenate([p[1] for p in per_image]))
    assert [str(p) for p in together] == [str(p) for ps in per_image for p in ps[2]]
    kinds = {p.kind for p in together}
    assert {"nan_box", "box_outside_image", "zero_size_box"} <= kinds


def test_best_anchor_iou_is_exact_against_every_anchor():
    import torch
    from torchvision.ops import box_iou

    from retinadet.data.check import best_anchor_iou
    from retinadet.model import resolve_model_config
    from retinadet.model.anchors import anchors_for_image_size

    rng = np.random.default_rng(0)
    for preset in ("fast", "retinanet_r50"):
        anchors = resolve_model_config(preset).anchors
        for ph, pw in [(288, 384), (320, 200)]:
            centre = rng.uniform(-20, [pw + 20, ph + 20], (300, 2))
            side = np.exp(rng.uniform(np.log(3), np.log(600), (300, 2)))
            boxes = np.concatenate([centre - side / 2, centre + side / 2], axis=1)
            brute = box_iou(torch.from_numpy(boxes).float(), anchors_for_image_size(anchors, (ph, pw)).float()).amax(1)
            got = best_anchor_iou(boxes, np.tile([ph, pw], (300, 1)), anchors)
            np.testing.assert_allclose(got, brute.numpy(), atol=1e-5)
            assert 0.05 < (got >= 0.5).mean() < 0.95  # a spread of good and poor matches


# --- the plot ------------------------------------------------------------------------------------------------------


def test_check_plot_draws_the_datasets_counts(tmp_path, monkeypatch):
    from PIL import Image

    from retinadet.data.check import check_dataset
    from retinadet.data.check_plot import plot_check
    from retinadet.data.discover import load_splits

    root = make_roboflow(tmp_path / "rf")
    out = tmp_path / "plots" / "rf.png"
    result = CliRunner().invoke(data_command, ["check", str(root), "--no-images", "--plot", str(out)])
    assert result.exit_code == 0, result.output
    assert f"Plot: {out}" in result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as png:
        png.verify()
        assert png.size == (1300, 900)

    report = check_dataset(root, verify_images=False)
    _, fig = plot_check(report, tmp_path / "again.png")
    counts_ax = fig.axes[0]
    splits = load_splits(root)
    drawn = {c.get_label(): [round(p.get_height()) for p in c] for c in counts_ax.containers}
    assert drawn == {name: list(ds.boxes_per_class().values()) for name, ds in splits.items()}
    assert drawn["train"] == [2, 2, 2] and drawn["val"] == [1, 1, 0]  # crowd boxes (platelets in train) count
    assert [t.get_text() for t in counts_ax.get_xticklabels()] == ["rbc", "wbc", "platelet"]
    assert len(report.columns.side) == sum(sum(ds.boxes_per_class().values()) for ds in splits.values())

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(data_command, ["check", str(root), "--no-images", "--plot"])
    assert result.exit_code == 0 and (tmp_path / "rf_check.png").is_file(), result.output
    result = CliRunner().invoke(main_cli(), ["data", "check", str(root), "--plot", "out.jpg"])
    assert result.exit_code == 2 and "ending in .png" in result.output


def main_cli():
    from retinadet.cli import main

    return main


def test_check_fit_anchors_prints_the_gain_and_set_options(tmp_path):
    import yaml

    from retinadet.model import resolve_model_config

    write_image(tmp_path / "a.jpg", 288, 288)
    # Elongated boxes (1:5 and 5:1), which the fast preset's ratios 0.5..2 cannot reach IoU 0.5 with.
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [5 + 14 * i, 10, 10, 50] if i % 2 else [10, 5 + 14 * i, 50, 10]}
            for i in range(16)]
    path = write_coco(tmp_path / "long.json", [{"id": 1, "file_name": "a.jpg", "width": 288, "height": 288}], anns,
                      [{"id": 1, "name": "rod"}])
    result = CliRunner().invoke(data_command, ["check", str(path), "--no-images", "--fit-anchors"])
    assert result.exit_code == 0, result.output
    fit_line = next(x for x in result.output.splitlines() if "fitted anchors" in x)
    before, after = (float(v.rstrip("%")) for v in fit_line.rsplit(" ", 3)[-3::2])
    assert before < 50 and after > 90, fit_line
    grid_line = next(x for x in result.output.splitlines() if "on the grid" in x)
    grid_before, grid_after = (float(grid_line.split()[k].rstrip("%")) for k in (-3, -1))
    assert grid_after > grid_before + 30, grid_line  # the exact coverage (anchors on the grid) gains too
    options = next(x for x in result.output.splitlines() if "train with:" in x).split("train with:")[1].split()
    overrides = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in options[1::2])}
    assert set(overrides) == {"anchors.ratios", "anchors.scales"}
    rebuilt = resolve_model_config("fast").replace(overrides)  # the options are valid `train --set` input
    assert min(rebuilt.anchors.ratios) < 0.3 and max(rebuilt.anchors.ratios) > 3 and rebuilt.anchors.num_anchors == 9


def test_the_report_gives_the_input_size_train_would_fit(tmp_path):
    from retinadet.data.check import check_dataset, format_report
    from retinadet.data.synthetic import ShapesConfig, write_shapes_dataset

    write_shapes_dataset(tmp_path / "small", ShapesConfig(num_train=4, num_val=2, num_test=0, size=640, seed=1,
                                                         min_object=8, max_object_frac=0.05), workers=1)
    report = check_dataset(tmp_path / "small", verify_images=False)
    assert report.input_fit is not None and report.input_fit.size == 416
    text = format_report(report)
    assert "input size fitted to the training boxes (what train picks without --imgsz): 416px" in text
    assert "--imgsz 416 shows it there" in text
    assert check_dataset(tmp_path / "small", imgsz=416, verify_images=False).input_fit is None


def test_the_input_fit_knows_each_images_own_resolution(tmp_path):
    from retinadet.data.check import check_dataset, input_box_sides
    from retinadet.data.discover import load_splits
    from retinadet.data.synthetic import ShapesConfig, write_shapes_dataset
    from retinadet.model import resolve_model_config
    from retinadet.model.input_fit import fit_input_size

    write_shapes_dataset(tmp_path / "s", ShapesConfig(num_train=6, num_val=2, num_test=0, size=320, seed=2,
                                                     min_object=12, max_object_frac=0.06), workers=1)
    pre = resolve_model_config("fast").preprocess
    sides, labels, native = input_box_sides([load_splits(tmp_path / "s")["train"]], pre)
    assert len(sides) and np.allclose(native, 320 / 288)  # a 320 px image is at its own resolution at 1.11x of 288
    anchors = resolve_model_config("fast").anchors
    unbounded = fit_input_size(sides, labels, pre, anchors)
    report = check_dataset(tmp_path / "s", verify_images=False)
    assert report.input_fit.size < unbounded.size, "upsampling past the images' resolution only for the bottom anchor"
    assert report.input_fit.size == fit_input_size(sides, labels, pre, anchors, native=native).size
