"""Prediction survives its inputs: unreadable files are skipped and listed, results stream to
predictions.jsonl, and a killed run resumes to the predictions an uninterrupted run writes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retinadet.errors import DataError
from retinadet.utils.prediction_writer import PredictionWriter, read_lines


def _broken_folder(tiny_data: Path, root: Path) -> tuple[Path, list[str], list[str]]:
    folder = root / "mixed"
    folder.mkdir()
    good = sorted((tiny_data / "test").glob("*.jpg"))[:2]
    for g in good:
        shutil.copy(g, folder / g.name)
    (folder / "empty.png").write_bytes(b"")
    data = good[0].read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "notes.jpg").write_text("not an image, just text\n")
    return folder, [g.name for g in good], ["empty.png", "notes.jpg", "truncated.jpg"]


def test_unreadable_inputs_are_skipped_named_and_listed(trained_run, tiny_data, tmp_path, cli):
    best = trained_run / "weights" / "best.pt"
    folder, good, broken = _broken_folder(tiny_data, tmp_path)
    res = cli(["predict", "--weights", str(best), "--source", str(folder), "--conf", "0.001", "--project", str(tmp_path),
               "--name", "p"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    out = tmp_path / "predict" / "p"
    records = json.loads((out / "predictions.json").read_text())
    assert {r["file_name"] for r in records} == set(good)  # every good image got its detections
    for name in broken:
        assert f"skipped: {folder / name}" in res.output
    listed = (out / "skipped.txt").read_text().splitlines()
    assert sorted(Path(line.split("\t")[0]).name for line in listed) == broken
    assert "3 unreadable input(s) skipped" in res.output
    assert sorted(p.name for p in out.glob("*.png")) == sorted(Path(g).stem + ".png" for g in good)
    lines = read_lines(out / "predictions.jsonl")
    assert len(lines) == 5 and sum("skipped" in e for e in lines) == 3

    res = cli(["predict", "--weights", str(best), "--source", str(folder), "--strict", "--project", str(tmp_path),
               "--name", "strict"])
    assert res.exit_code == 2 and "empty.png" in res.output and "image file is empty" in res.output

    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    for name in broken:
        shutil.copy(folder / name, only_bad / name)
    res = cli(["predict", "--weights", str(best), "--source", str(only_bad), "--project", str(tmp_path), "--name", "bad"])
    assert res.exit_code == 2 and "none of the 3 input(s) could be read" in res.output


def test_python_api_names_the_broken_input_or_skips_it(trained_run, tiny_data, tmp_path):
    import retinadet

    folder, good, broken = _broken_folder(tiny_data, tmp_path)
    det = retinadet.load(trained_run / "weights" / "best.pt")
    inputs = [str(folder / good[0]), str(folder / "truncated.jpg"), str(folder / good[1])]
    with pytest.raises(DataError, match="truncated.jpg"):
        det.predict(inputs, conf=0.001)
    results = det.predict(inputs, conf=0.001, skip_errors=True)
    assert [r.source for r in results] == [inputs[0], inputs[2]]
    assert [s for s, _ in results.skipped] == [inputs[1]] and "truncated" in results.skipped[0][1]


def test_killed_run_resumes_to_the_uninterrupted_predictions(trained_run, tiny_data, tmp_path, cli):
    best = trained_run / "weights" / "best.pt"
    folder = tmp_path / "many"
    folder.mkdir()
    images = sorted((tiny_data / "test").glob("*.jpg"))
    for i in range(60):
        shutil.copy(images[i % len(images)], folder / f"img_{i:03d}.jpg")
    (folder / "img_050.jpg").write_bytes(b"broken")  # a skip is recorded and resumed too
    args = ["predict", "--weights", str(best), "--source", str(folder), "--conf", "0.01", "--batch", "1",
            "--imgsz", "256", "--nosave", "--project", str(tmp_path)]
    res = cli([*args, "--name", "whole"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    whole = json.loads((tmp_path / "predict" / "whole" / "predictions.json").read_text())
    assert whole and len({r["file_name"] for r in whole}) >= 50

    run = tmp_path / "predict" / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "retinadet", *args, "--name", "killed"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    lines = run / "predictions.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if lines.is_file() and len(lines.read_text().splitlines()) >= 10:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    done = read_lines(lines)
    assert 10 <= len(done) < 60 and not (run / "predictions.json").exists()

    res = cli(["predict", "--resume", str(run)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert f"resuming {run}: {len(done)} input(s) already done" in res.output
    resumed = json.loads((run / "predictions.json").read_text())
    # The same detections: the part done by the killed process may differ from an in-process run in the last
    # rounded digit of a score (threads and kernels of another process), nothing more.
    assert [{k: v for k, v in r.items() if k not in ("bbox", "score")} for r in resumed] == \
        [{k: v for k, v in r.items() if k not in ("bbox", "score")} for r in whole]
    assert all(abs(a["score"] - b["score"]) <= 2e-5 and max(abs(x - y) for x, y in zip(a["bbox"], b["bbox"])) <= 1e-2
               for a, b in zip(resumed, whole))
    ids = [e["image_id"] for e in read_lines(lines)]
    assert sorted(ids) == list(range(1, 61))  # each input exactly once
    assert "img_050.jpg" in (run / "skipped.txt").read_text()

    res = cli(["predict", "--resume", str(run), "--conf", "0.5"])
    assert res.exit_code == 2 and "started with conf=0.01" in res.output


def test_lines_cut_by_a_kill_are_dropped_and_other_damage_is_named(tmp_path):
    w = PredictionWriter(tmp_path, ["a"])
    w.add(1, "x.jpg", "/d/x.jpg", (10, 10), [[0, 0, 5, 5]], [0.9], [0])
    w.skip(2, "/d/y.jpg", "/d/y.jpg: image file is empty")
    w.flush()
    text = (tmp_path / "predictions.jsonl").read_text()
    (tmp_path / "predictions.jsonl").write_text(text + '{"image_id": 3, "sou')  # killed mid-line
    assert [e["image_id"] for e in read_lines(tmp_path / "predictions.jsonl")] == [1, 2]
    resumed = PredictionWriter(tmp_path, ["a"], resume=True)
    assert resumed.is_done("/d/x.jpg") and resumed.is_done("/d/y.jpg") and not resumed.is_done("/d/z.jpg")
    result = resumed.close()
    assert result["images"] == 1 and result["skipped"] == 1 and result["detections"] == 1
    lines = (tmp_path / "predictions.jsonl").read_text().splitlines()
    (tmp_path / "predictions.jsonl").write_text("\n".join([lines[0], "garbage", lines[1]]) + "\n")
    with pytest.raises(DataError, match=r"predictions.jsonl:2: not a predictions.jsonl line"):
        read_lines(tmp_path / "predictions.jsonl")


def test_val_counts_an_unreadable_image_as_missed_and_lists_it(trained_run, tiny_data, tmp_path, cli):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    victim = sorted((data / "test").glob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:200])
    best = trained_run / "weights" / "best.pt"
    res = cli(["val", "--weights", str(best), "--data", str(data), "--split", "test", "--no-plots", "--project",
               str(tmp_path), "--name", "v"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "1 unreadable image(s) skipped" in res.output and victim.name in res.output
    out = tmp_path / "val" / "v"
    assert (out / "skipped.txt").read_text().strip() == str(victim)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped_images"] == [str(victim)]
    images = json.loads((data / "test" / "_annotations.coco.json").read_text())["images"]
    victim_id = next(im["id"] for im in images if im["file_name"] == victim.name)
    predicted = {p["image_id"] for p in json.loads((out / "predictions.json").read_text())}
    assert predicted and victim_id not in predicted  # the others were evaluated, the broken one found nothing


def test_cam_skips_unreadable_images(trained_run, tiny_data, tmp_path, cli):
    best = trained_run / "weights" / "best.pt"
    folder, good, broken = _broken_folder(tiny_data, tmp_path)
    res = cli(["cam", "--weights", str(best), "--source", str(folder), "--conf", "0.001", "--topk", "1", "--project",
               str(tmp_path), "--name", "c"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    listed = (tmp_path / "cam" / "c" / "skipped.txt").read_text().splitlines()
    assert sorted(Path(line.split("\t")[0]).name for line in listed) == broken
    assert "3 unreadable image(s) skipped" in res.output
    res = cli(["cam", "--weights", str(best), "--source", str(folder), "--conf", "0.001", "--strict", "--project",
               str(tmp_path), "--name", "c2"])
    assert res.exit_code == 2 and "empty.png" in res.output


def test_a_video_with_broken_frames_is_predicted_frame_by_frame(trained_run, tmp_path, cli):
    import torch

    from retinadet.engine.video import VideoWriter

    video = tmp_path / "clip.mp4"
    writer = VideoWriter(video, 10)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        writer.write(torch.randint(0, 255, (3, 64, 96), dtype=torch.uint8, generator=g))
    writer.close()
    data = bytearray(video.read_bytes())
    for offset in range(len(data) // 3, len(data) // 3 + 4000, 7):  # damage one stretch of the stream
        data[offset] = 0xFF
    video.write_bytes(bytes(data))
    best = trained_run / "weights" / "best.pt"
    res = cli(["predict", "--weights", str(best), "--source", str(video), "--conf", "0.001", "--project", str(tmp_path),
               "--name", "v"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "skipped: " in res.output and "undecodable data after frame" in res.output
    out = tmp_path / "predict" / "v"
    frames = {r["frame"] for r in json.loads((out / "predictions.json").read_text())}
    assert 30 <= len(frames) < 40 and (out / "clip.mp4").is_file()
    assert "undecodable data" in (out / "skipped.txt").read_text()
    res = cli(["predict", "--weights", str(best), "--source", str(video), "--strict", "--project", str(tmp_path),
               "--name", "v2"])
    assert res.exit_code == 2 and "video decoding failed" in res.output
