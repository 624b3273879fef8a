"""The review page's API on a real server: the listing, paths kept inside the review folder, detections equal to
Detector.predict, Grad-CAM as PNG, uploads, ranking lists, and an export that `retinadet train --data` reads with
exactly the accepted, shown and drawn boxes."""

from __future__ import annotations

import http.client
import io
import json
import re
import zipfile
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import torch
from PIL import Image
from serve_support import loopback_server

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from retinadet.data.discover import load_splits  # noqa: E402
from retinadet.engine.datasets import train_val_splits  # noqa: E402
from retinadet.engine.rank import detection_uncertainty  # noqa: E402

CLASSES = ["cell", "debris"]
THRESHOLD = 0.815  # stored per class: splits the test model's scores (0.80-0.86) about in half


def review_detector():
    """A seeded untrained `fast` detector whose scores spread around 0.8 (not piled at the 0.01 prior), at most 12
    boxes an image, with per-class thresholds stored as `val --save-thresholds` stores them."""
    from retinadet.detector import Detector
    from retinadet.model import resolve_model_config

    torch.manual_seed(0)
    cfg = resolve_model_config("fast").replace({"num_classes": 2, "inference.score_thresh": 0.001, "inference.max_det": 12})
    det = Detector.from_config(cfg, CLASSES, device="cpu")
    with torch.no_grad():
        det.model.head.cls_logits.weight.mul_(4.0)
        det.model.head.reset_class_bias(0.3)
    det.checkpoint["thresholds"] = {"spec": "test", "split": "val", "per_class": dict.fromkeys(CLASSES, THRESHOLD)}
    return det


def write_noise(path: Path, seed: int, size=(96, 128)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def review_folder(root: Path) -> Path:
    """a.png, sub/b.png, c.jpg; beside it a secret outside the folder, reachable from inside only by symlinks."""
    review = root / "review"
    write_noise(review / "a.png", 0)
    write_noise(review / "sub" / "b.png", 1)
    write_noise(review / "c.jpg", 2)
    outside = root / "outside"
    write_noise(outside / "secret.png", 3)
    (review / "link.png").symlink_to(outside / "secret.png")
    (review / "linkdir").symlink_to(outside, target_is_directory=True)
    return review


class Client:
    def __init__(self, port: int):
        self.port = port

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """(status, parsed JSON or raw bytes, headers)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        if "json" in (resp.getheader("content-type") or ""):
            return resp.status, json.loads(raw), dict(resp.getheaders())
        return resp.status, raw, dict(resp.getheaders())

    def get(self, path: str):
        return self.request("GET", path)[:2]

    def send_json(self, method: str, path: str, payload):
        return self.request(method, path, json.dumps(payload).encode(), {"Content-Type": "application/json"})[:2]


@contextmanager
def running(app):
    """``app`` on a free loopback port (uvicorn in a thread), stopped on exit."""
    with loopback_server(app) as port:
        yield Client(port)


def p(path: str) -> str:
    return quote(path, safe="")


@pytest.fixture(scope="module")
def detector():
    return review_detector()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return review_folder(tmp_path_factory.mktemp("review"))


@pytest.fixture
def client(detector, folder, tmp_path, monkeypatch):
    """A fresh server (empty review memory) whose exports go under tmp_path/runs/review."""
    from retinadet.serve.app import create_app

    monkeypatch.chdir(tmp_path)
    with running(create_app(detector, review_dir=folder, batch_wait_ms=5)) as c:
        yield c


def test_page_assets_and_config(client):
    status, html = client.get("/")
    assert status == 200 and b"review/review.js" in html and b"review/review.css" in html
    for name in ("review.js", "review.css"):
        status, body = client.get(f"/review/{name}")
        assert status == 200 and len(body) > 1000
        # Nothing from the network: the only absolute URL is the SVG namespace, which is never fetched.
        assert set(re.findall(rb"https?://[^\s\"'`)]+", body)) <= {b"http://www.w3.org/2000/svg"}
    assert not re.search(rb"https?://(?!www\.w3\.org/2000/svg)", html)
    assert client.get("/review/index.html")[0] == 404 and client.get("/review/..%2Fstate.py")[0] == 404
    status, cfg = client.get("/api/review/config")
    assert status == 200 and cfg["classes"] == CLASSES and cfg["thresholds"] == [THRESHOLD, THRESHOLD]
    assert cfg["thresholds_source"] == "checkpoint" and cfg["floor"] == pytest.approx(0.001)


def test_listing_skips_links_out_of_the_folder(client):
    status, out = client.get("/api/review/images?list=")
    assert status == 200, out
    assert [r["path"] for r in out["images"]] == ["a.png", "c.jpg", "sub/b.png"]  # not link.png, not linkdir/
    assert not any(r["reviewed"] for r in out["images"])


@pytest.mark.parametrize("endpoint", ["image", "detections", "cam"])
def test_paths_leaving_the_folder_are_refused(client, folder, endpoint):
    secret = folder.parent / "outside" / "secret.png"
    for bad in ["../outside/secret.png", "sub/../../outside/secret.png", str(secret), str(folder / "a.png"), "link.png",
                "linkdir/secret.png", "..\\outside\\secret.png"]:
        status, body = client.get(f"/api/review/{endpoint}?path={p(bad)}&index=0")
        assert status == 403, (bad, body)
    assert client.get(f"/api/review/{endpoint}?path=missing.png&index=0")[0] == 404
    assert client.get("/api/review/images?list=..%2Foutside%2Fx.txt")[0] == 403


def test_detections_equal_predict_and_cam_is_a_png(client, detector, folder):
    status, out = client.get("/api/review/detections?path=a.png")
    assert status == 200, out
    want = detector.predict(str(folder / "a.png"), conf=out["floor"])
    assert (out["width"], out["height"]) == (128, 96) and len(out["detections"]) == len(want) > 4
    got = out["detections"]
    assert [d["index"] for d in got] == list(range(len(want)))
    np.testing.assert_allclose([d["box"] for d in got], want.boxes.numpy(), atol=1e-4)
    np.testing.assert_allclose([d["score"] for d in got], want.scores.numpy(), atol=1e-6)
    assert [d["label"] for d in got] == want.labels.tolist() and [d["class_name"] for d in got] == want.names
    status, png, headers = client.request("GET", "/api/review/cam?path=a.png&index=2")
    assert status == 200 and headers["content-type"] == "image/png" and png.startswith(b"\x89PNG")
    assert Image.open(io.BytesIO(png)).size == (128, 96)
    assert client.get("/api/review/cam?path=a.png&index=99")[0] == 404
    assert client.get("/api/review/cam?path=a.png&index=0&method=nope")[0] == 422


def test_uncertainty_sort_follows_the_rule(client, detector, folder):
    status, out = client.get("/api/review/images?list=&sort=uncertainty")
    assert status == 200, out
    values = [r["uncertainty"] for r in out["images"]]
    assert values == sorted(values, reverse=True)
    for r in out["images"]:
        d = detector.predict(str(folder / r["path"]), conf=0.001)
        assert r["uncertainty"] == pytest.approx(float(detection_uncertainty(d.scores, d.labels, [THRESHOLD] * 2).sum()), abs=1e-5)
    # Thresholds from the page's sliders change the order's numbers.
    status, far = client.get("/api/review/images?list=&sort=uncertainty&thresholds=0.1,0.1")
    assert status == 200 and all(r["uncertainty"] == 0 for r in far["images"])  # every score is > 0.25 from 0.1
    assert client.get("/api/review/images?thresholds=0.5")[0] == 422 and client.get("/api/review/images?sort=x")[0] == 422


def test_lists_choose_the_queue(client, folder):
    (folder / "mine.txt").write_text("sub/b.png\n# a comment\na.png\n../outside/secret.png\nmissing.png\nlink.png\n")
    try:
        status, out = client.get("/api/review/images?list=mine.txt")
        assert status == 200 and [r["path"] for r in out["images"]] == ["sub/b.png", "a.png"]
        assert out["list"] == "mine.txt" and out["skipped"] == 3
        (folder / "ranking.txt").write_text("c.jpg\na.png\n")  # what `retinadet rank -o DIR/ranking.txt` writes
        status, out = client.get("/api/review/images")
        assert [r["path"] for r in out["images"]] == ["c.jpg", "a.png"] and out["list"] == "ranking.txt"
        assert client.get("/api/review/config")[1]["default_list"] == "ranking.txt"
        assert len(client.get("/api/review/images?list=")[1]["images"]) == 3  # empty: every image
    finally:
        for name in ("mine.txt", "ranking.txt"):
            (folder / name).unlink(missing_ok=True)


def test_uploads_join_the_queue(client):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(7).integers(0, 256, (80, 100, 3), dtype=np.uint8)).save(buf, "PNG")
    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"../../up load.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + buf.getvalue() + f"\r\n--{boundary}--\r\n".encode()
    status, out, _ = client.request("POST", "/api/review/upload", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 200 and out["added"] == ["upload:1/up_load.png"], out
    key = out["added"][0]
    assert key in [r["path"] for r in client.get("/api/review/images?list=")[1]["images"]]
    status, dets = client.get(f"/api/review/detections?path={p(key)}")
    assert status == 200 and (dets["width"], dets["height"]) == (100, 80)
    assert client.get(f"/api/review/image?path={p(key)}")[1] == buf.getvalue()
    assert client.get("/api/review/image?path=upload%3A9%2Fx.png")[0] == 404
    not_image = body.replace(buf.getvalue(), b"not an image")
    status, _, _ = client.request("POST", "/api/review/upload", not_image, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 415


def test_review_and_export(client, detector, tmp_path):
    assert client.send_json("POST", "/api/review/export", {"name": "x"})[0] == 409  # nothing reviewed yet
    dets = client.get("/api/review/detections?path=a.png")[1]["detections"]
    shown = [d for d in dets if d["score"] >= THRESHOLD]
    hidden = [d for d in dets if d["score"] < THRESHOLD]
    assert len(shown) >= 2 and hidden
    rejected, accepted = shown[0], hidden[0]
    drawn = {"box": [5.0, 6.0, 40.0, 30.0], "label": "debris"}
    review = {"statuses": {str(rejected["index"]): "rejected", str(accepted["index"]): "accepted"}, "drawn": [drawn]}
    status, out = client.send_json("PUT", "/api/review/review?path=a.png", review)
    assert status == 200 and out["review"]["kept"] == len(shown) - 1 + 1 + 1, out
    expected_a = sorted([tuple(d["box"]) + (d["label"],) for d in shown[1:] + [accepted]] + [(5.0, 6.0, 40.0, 30.0, 1)])
    # sub/b.png reviewed at thresholds no box reaches: a negative. c.jpg is never reviewed: not exported.
    assert client.send_json("PUT", f"/api/review/review?path={p('sub/b.png')}", {"thresholds": [1.0, 1.0]})[0] == 200
    assert client.get("/api/review/detections?path=a.png")[1]["review"]["statuses"] == review["statuses"]
    # Bad reviews are refused and change nothing.
    assert client.send_json("PUT", "/api/review/review?path=a.png", {"statuses": {"99": "rejected"}})[0] == 422
    assert client.send_json("PUT", "/api/review/review?path=a.png", {"drawn": [{"box": [1, 1, 9, 9], "label": "dog"}]})[0] == 422
    assert client.send_json("PUT", "/api/review/review?path=a.png", {"drawn": [{"box": [500, 1, 900, 9], "label": 0}]})[0] == 422
    assert client.send_json("PUT", "/api/review/review?path=a.png", {"statuses": {"0": "maybe"}})[0] == 422
    assert client.get("/api/review/reviews")[1]["boxes"] == len(expected_a)

    def check(folder: Path) -> None:
        splits = load_splits(folder)  # what `retinadet train --data FOLDER` reads
        assert list(splits) == ["train"] and (folder / "train" / "_annotations.coco.json").is_file()
        ds = splits["train"]
        assert ds.class_names == CLASSES and sorted(r.path.name for r in ds.records) == ["a.png", "b.png"]
        by_name = {r.path.name: r for r in ds.records}
        assert by_name["b.png"].num_boxes == 0 and (by_name["a.png"].width, by_name["a.png"].height) == (128, 96)
        a = by_name["a.png"]
        got = sorted(tuple(b) + (lb,) for b, lb in zip(a.boxes.tolist(), a.labels.tolist()))
        assert len(got) == len(expected_a)
        np.testing.assert_allclose(np.array(got), np.array(expected_a), atol=2e-3)  # COCO keeps 3 decimals
        train, val, info = train_val_splits(folder)  # how `retinadet train --data FOLDER` splits it
        assert info["train_split"] == "train" and len(train) + len(val) == 2

    status, out = client.send_json("POST", "/api/review/export", {"name": "first"})
    assert status == 200, out
    assert Path(out["folder"]) == (tmp_path / "runs" / "review" / "first").resolve()
    assert (out["images"], out["boxes"], out["negatives"]) == (2, len(expected_a), 1)
    check(Path(out["folder"]))
    assert Path(client.send_json("POST", "/api/review/export", {"name": "first"})[1]["folder"]).name == "first2"
    for bad in ["../evil", "/tmp/evil", "a/b", ".hidden", ""]:
        assert client.send_json("POST", "/api/review/export", {"name": bad})[0] == 403, bad
    assert not (tmp_path / "runs" / "evil").exists()

    status, archive, headers = client.request("GET", "/api/review/export.zip")
    assert status == 200 and headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        assert "train/_annotations.coco.json" in z.namelist()
        z.extractall(tmp_path / "unzipped")
    check(tmp_path / "unzipped")

    assert client.request("DELETE", "/api/review/review?path=sub%2Fb.png")[0] == 200
    assert client.get("/api/review/reviews")[1]["reviewed"] == 1
