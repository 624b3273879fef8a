"""``retinadet serve`` through a real uvicorn server on loopback: every protocol returns the boxes of
``Detector.predict``, concurrent requests share forward passes, and bad requests get one clear 4xx and leave the
server serving."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import threading

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

CLASSES = ["cell", "debris"]  # the test detector's (conftest)
CONF = 0.005  # below the untrained model's prior (about 0.01), so every image yields detections
STATS = "/v2/models/retinadet/stats"


def assert_same(records: list[dict], expected) -> None:
    """COCO records from the server == a Detections from Detector.predict: boxes to 1e-3, scores to 1e-5, labels
    equal, detection for detection (matched, so that two near-equal scores may swap places)."""
    assert len(records) == len(expected) > 0
    got = np.array([[*r["bbox"], r["score"], r["label"]] for r in records], dtype=np.float64)
    want = np.concatenate([expected.xywh().double().numpy(), expected.scores.double().numpy()[:, None],
                           expected.labels.double().numpy()[:, None]], axis=1)
    assert [r["class_name"] for r in records] == [CLASSES[int(v)] for v in got[:, 5]]
    free = np.ones(len(got), dtype=bool)
    for row in want:
        ok = free & (np.abs(got[:, :4] - row[:4]).max(1) <= 1e-3) & (np.abs(got[:, 4] - row[4]) <= 1e-5) & (got[:, 5] == row[5])
        assert ok.any(), f"no served detection matches {row.tolist()}"
        free[np.flatnonzero(ok)[0]] = False


def xyxy_records(boxes, scores, labels) -> list[dict]:
    return [{"bbox": [x1, y1, x2 - x1, y2 - y1], "score": s, "label": lb, "class_name": CLASSES[lb]}
            for (x1, y1, x2, y2), s, lb in zip(boxes, scores, labels)]


@pytest.fixture(scope="module")
def expected(detector, images):
    """Detector.predict on each image alone, at the test threshold."""
    return [detector.predict(img, conf=CONF) for img in images]


# -- /detect ----------------------------------------------------------------------------------------------------


def test_detect_multipart_and_raw_body_equal_predict(client, detector, images, expected, data_root, encode_png):
    status, out = client.post_multipart(f"/detect?conf={CONF}", "image", "a.png", encode_png(images[0]))
    assert status == 200, out
    assert (out["width"], out["height"]) == (images[0].shape[1], images[0].shape[0])
    assert out["thresholds"] == {"source": "conf", "conf": CONF}
    assert_same(out["detections"], expected[0])
    # The raw body, checked against predict on the file itself (the server decodes as read_image does).
    status, out = client.request("POST", f"/detect?conf={CONF}", (data_root / "sub" / "img1.png").read_bytes())
    assert status == 200, out
    assert_same(out["detections"], detector.predict(str(data_root / "sub" / "img1.png"), conf=CONF))
    status, out = client.request("POST", f"/detect?conf={CONF}&max_det=7&iou=0.3&tile=off", encode_png(images[2]))
    assert status == 200, out
    assert_same(out["detections"], detector.predict(images[2], conf=CONF, max_det=7, iou=0.3, tile=None))


def test_stored_thresholds_apply_when_conf_is_not_given(client, detector, images, monkeypatch, encode_png):
    status, out = client.request("POST", "/detect", encode_png(images[0]))
    assert status == 200 and out["thresholds"] == {"source": "default", "conf": 0.25}
    assert out["detections"] == []  # an untrained model scores about 0.01
    per_class = {"cell": 0.011, "debris": 0.013}
    monkeypatch.setitem(detector.checkpoint, "thresholds", {"spec": "f1", "split": "val", "per_class": per_class})
    status, out = client.request("POST", "/detect", encode_png(images[0]))
    assert status == 200, out
    assert out["thresholds"] == {"source": "checkpoint", "per_class": per_class, "spec": "f1", "split": "val"}
    # As retinadet predict applies them: run at the lowest, keep each class from its own threshold.
    dets = detector.predict(images[0], conf=min(per_class.values()))
    dets = dets[dets.scores >= torch.tensor([per_class[c] for c in CLASSES])[dets.labels]]
    assert_same(out["detections"], dets)
    assert {r["label"] for r in out["detections"]} == {0, 1}


# -- KServe / Triton v2 -----------------------------------------------------------------------------------------


def infer_records(out: dict) -> list[dict]:
    tensors = {o["name"]: o for o in out["outputs"]}
    n = tensors["scores"]["shape"][0]
    assert tensors["boxes"]["shape"] == [n, 4] and tensors["boxes"]["datatype"] == "FP32"
    assert tensors["labels"]["datatype"] == "INT64" and tensors["class_names"]["datatype"] == "BYTES"
    records = xyxy_records(np.reshape(tensors["boxes"]["data"], (n, 4)).tolist(), tensors["scores"]["data"],
                           tensors["labels"]["data"])
    assert tensors["class_names"]["data"] == [r["class_name"] for r in records]
    return records


def test_v2_infer_bytes_and_uint8_equal_predict(client, images, expected, encode_png):
    encoded = encode_png(images[3])
    body = {"id": "r1", "parameters": {"conf": CONF},
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(encoded).decode()]}]}
    status, out = client.post_json("/v2/models/retinadet/infer", body)
    assert status == 200, out
    assert out["id"] == "r1" and out["model_name"] == "retinadet"
    assert out["parameters"]["width"] == images[3].shape[1] and out["parameters"]["height"] == images[3].shape[0]
    assert_same(infer_records(out), expected[3])

    h, w, _ = images[4].shape
    body = {"parameters": {"conf": CONF},
            "inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [h, w, 3], "data": images[4].reshape(-1).tolist()}]}
    status, out = client.post_json("/v2/models/retinadet/infer", body)
    assert status == 200, out
    assert_same(infer_records(out), expected[4])

    # Triton's binary tensor extension, as tritonclient sends BYTES: JSON header, then a length-prefixed element.
    header = json.dumps({"parameters": {"conf": CONF}, "outputs": [{"name": "boxes"}, {"name": "scores"},
                                                                   {"name": "labels"}, {"name": "class_names"}],
                         "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": len(encoded) + 4}}]}).encode()
    status, out = client.request("POST", "/v2/models/retinadet/infer", header + struct.pack("<I", len(encoded)) + encoded,
                                 {"Inference-Header-Content-Length": str(len(header)),
                                  "Content-Type": "application/octet-stream"})
    assert status == 200, out
    assert_same(infer_records(out), expected[3])


def test_v2_metadata_health_and_unknown_model(client, detector):
    assert client.get("/v2/health/live") == (200, {"live": True})
    assert client.get("/v2/health/ready") == (200, {"ready": True})
    status, meta = client.get("/v2/models/retinadet")
    assert status == 200
    assert meta["name"] == "retinadet" and meta["platform"] == "pytorch" and meta["classes"] == CLASSES
    assert {(i["name"], i["datatype"]) for i in meta["inputs"]} == {("image", "BYTES"), ("pixels", "UINT8")}
    assert [o["name"] for o in meta["outputs"]] == ["boxes", "scores", "labels", "class_names"]
    assert meta["input_size"]["fixed_size"] == detector.cfg.preprocess.fixed_size == 288
    status, out = client.get("/v2/models/yolo")
    assert status == 404 and "unknown model 'yolo'" in out["detail"] and out["error"] == out["detail"]
    status, out = client.post_json("/v2/models/retinadet/infer", {"inputs": [{"name": "x", "datatype": "FP32",
                                                                             "shape": [1], "data": [0.5]}]})
    assert status == 400 and "FP32 is not served" in out["detail"]
    status, out = client.post_json("/v2/models/retinadet/infer", {"inputs": [
        {"name": "pixels", "datatype": "UINT8", "shape": [4, 4, 3], "data": [1, 2, 3]}]})
    assert status == 400 and "48 expected" in out["detail"]


# -- Label Studio ML backend ------------------------------------------------------------------------------------

LABEL_CONFIG = """<View>
  <Image name="img" value="$picture"/>
  <RectangleLabels name="boxes" toName="img">
    <Label value="cell"/><Label value="Debris" predicted_values="debris"/>
  </RectangleLabels>
</View>"""


def test_label_studio_backend(client, detector, images, data_root, monkeypatch, encode_png):
    status, out = client.get("/health")
    assert status == 200 and out["status"] == "UP" and out["model_class"]
    status, out = client.post_json("/setup", {"project": "3.1718000000", "schema": LABEL_CONFIG})
    assert status == 200 and out["model_version"]
    status, out = client.post_json("/setup", {"project": "3.1", "schema": "<View><Image name='i' value='$i'/></View>"})
    assert status == 400 and "RectangleLabels" in out["detail"]

    per_class = {"cell": 0.011, "debris": 0.013}
    monkeypatch.setitem(detector.checkpoint, "thresholds", {"spec": "f1", "split": "val", "per_class": per_class})
    tasks = [{"id": 1, "data": {"picture": "sub/img0.png"}},                             # relative to the data root
             {"id": 2, "data": {"picture": "/data/local-files/?d=sub%2Fimg1.png"}},     # Label Studio's local files
             {"id": 3, "data": {"picture": "data:image/png;base64," + base64.b64encode(encode_png(images[2])).decode()}}]
    status, out = client.post_json("/predict", {"tasks": tasks, "label_config": LABEL_CONFIG, "project": "3.1718000000",
                                                "params": {"login": None, "password": None, "context": None}})
    assert status == 200, out
    assert len(out["results"]) == 3
    for prediction, img in zip(out["results"], images[:3]):
        h, w, _ = img.shape
        dets = detector.predict(img, conf=min(per_class.values()))
        dets = dets[dets.scores >= torch.tensor([per_class[c] for c in CLASSES])[dets.labels]]
        regions = prediction["result"]
        assert prediction["model_version"] == out["model_version"] and 0 < prediction["score"] < 1
        assert {r["from_name"] for r in regions} == {"boxes"} and {r["to_name"] for r in regions} == {"img"}
        assert {r["type"] for r in regions} == {"rectanglelabels"}
        assert all((r["original_width"], r["original_height"]) == (w, h) for r in regions)
        back = [{"bbox": [r["value"]["x"] * w / 100, r["value"]["y"] * h / 100, r["value"]["width"] * w / 100,
                          r["value"]["height"] * h / 100], "score": r["score"],
                 "label": {"cell": 0, "Debris": 1}[r["value"]["rectanglelabels"][0]]} for r in regions]
        assert all(r["value"]["rotation"] == 0 and len(r["value"]["rectanglelabels"]) == 1 for r in regions)
        assert_same([{**b, "class_name": CLASSES[b["label"]]} for b in back], dets)


def test_paths_outside_the_root_and_urls_are_refused(client, data_root, tmp_path, images, encode_png):
    outside = tmp_path / "secret.png"
    outside.write_bytes(encode_png(images[0]))
    (data_root / "link.png").symlink_to(outside)
    cases = {str(outside): 403, f"../{tmp_path.name}/secret.png": 403, "link.png": 403, "sub/missing.png": 404,
             f"/data/local-files/?d={outside}": 403, "http://example.com/a.png": 400, "s3://bucket/a.png": 400}
    try:
        for ref, code in cases.items():
            status, out = client.post_json("/predict", {"tasks": [{"id": 7, "data": {"image": ref}}]})
            assert status == code, (ref, out)
            assert isinstance(out["detail"], str) and "task 7" in out["detail"]
    finally:
        (data_root / "link.png").unlink()
    status, out = client.post_json("/predict", {"tasks": [{"id": 8, "data": {"image": "sub/img0.png"}}]})
    assert status == 200 and len(out["results"]) == 1


# -- batching ---------------------------------------------------------------------------------------------------


def test_concurrent_requests_share_forward_passes(serve, images, expected, encode_png):
    with serve(batch_wait_ms=250, max_batch=8) as c:
        before = c.get(STATS)[1]["model_stats"][0]
        barrier = threading.Barrier(len(images))
        answers: dict[int, tuple] = {}

        def one(i):
            body = encode_png(images[i])
            barrier.wait()
            answers[i] = c.request("POST", f"/detect?conf={CONF}", body)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(images))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        after = c.get(STATS)[1]["model_stats"][0]
    assert after["inference_count"] - before["inference_count"] == len(images)
    passes = after["execution_count"] - before["execution_count"]
    assert 1 <= passes < len(images), f"{passes} forward passes for {len(images)} concurrent requests"
    assert after["batcher"]["largest_batch"] >= 2
    for i in range(len(images)):
        status, out = answers[i]
        assert status == 200, out
        assert (out["width"], out["height"]) == (images[i].shape[1], images[i].shape[0])
        assert_same(out["detections"], expected[i])  # its own image's detections, not a neighbour's


class _Flaky:
    """A stand-in detector whose batch fails when it holds an all-zero image."""

    def __init__(self):
        self.calls: list[tuple[int, float | None]] = []

    def predict(self, images, conf=None, **_):
        self.calls.append((len(images), conf))
        if any(int(img.max()) == 0 for img in images):
            raise RuntimeError("bad batch")
        return [int(img[0, 0, 0]) for img in images]


def test_batcher_groups_by_options_and_fails_only_the_bad_batch():
    from retinadet.serve.batcher import DynamicBatcher, InferOptions

    async def scenario():
        fake = _Flaky()
        batcher = DynamicBatcher(fake, max_batch=4, batch_wait_ms=30)
        await batcher.start()
        good = [torch.full((3, 4, 4), v, dtype=torch.uint8) for v in (1, 2, 3)]
        results = await asyncio.gather(*(batcher.submit(g, InferOptions(conf=0.5)) for g in good),
                                       batcher.submit(good[0], InferOptions(conf=0.1)),
                                       batcher.submit(torch.zeros(3, 4, 4, dtype=torch.uint8), InferOptions(conf=0.9)),
                                       return_exceptions=True)
        after = await batcher.submit(good[1], InferOptions(conf=0.9))  # the same options as the failed batch
        await batcher.stop()
        return fake, results, after, batcher.stats

    fake, results, after, stats = asyncio.run(scenario())
    assert results[:4] == [1, 2, 3, 1] and isinstance(results[4], RuntimeError)
    assert sorted(fake.calls) == sorted([(3, 0.5), (1, 0.1), (1, 0.9), (1, 0.9)])
    assert after == 2 and stats.batches == 3 and stats.failed_batches == 1 and stats.images == 5


# -- safety -----------------------------------------------------------------------------------------------------


def test_bad_uploads_get_one_clear_4xx_and_the_server_goes_on(client, images, expected, encode_png):
    good = encode_png(images[0])
    text = b"name,x,y\ncell,1,2\n" * 10
    cases = [
        (client.request("POST", "/detect", np.random.default_rng(1).bytes(5000)), 415, "not an image"),
        (client.request("POST", "/detect", b""), 400, "empty"),
        (client.post_multipart("/detect", "image", "notes.txt", text, "text/plain"), 415, "not an image"),
        (client.post_multipart("/detect", "file", "a.png", good), 400, "field named 'image'"),
        (client.request("POST", "/detect", good[: len(good) // 2]), 400, "does not decode as PNG"),
        (client.request("POST", "/detect?conf=abc", good), 422, "conf"),
        (client.request("POST", "/detect?conf=2", good), 422, "conf must be in [0, 1]"),
        (client.request("POST", "/detect?tile=big", good), 422, "tile must be a size"),
        (client.request("POST", "/detect", iter([b"\x89PNG" + b"0" * (2**20 + 2**16)]), chunked=True), 413, "upload limit"),
        (client.post_json("/v2/models/retinadet/infer", {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                                                    "data": ["not base64!"]}]}), 400, "not base64"),
    ]
    for (status, out), code, words in cases:
        assert status == code, (code, words, out)
        assert isinstance(out, dict) and isinstance(out["detail"], str) and words in out["detail"], out
    # Content-Length over the limit: refused from the header, before the body is read.
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", client.port, timeout=30)
    conn.putrequest("POST", "/detect")
    conn.putheader("Content-Length", str(5 * 2**20))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and "upload limit of 1 MB" in json.loads(resp.read())["detail"]
    conn.close()
    status, out = client.request("POST", f"/detect?conf={CONF}", good)
    assert status == 200
    assert_same(out["detections"], expected[0])


def test_token_is_enforced_except_on_health(serve, images, encode_png):
    good = encode_png(images[0])
    basic = base64.b64encode(b"labelstudio:s3cret").decode()
    with serve(token="s3cret") as c:
        for path in ("/health", "/v2/health/live", "/v2/health/ready"):
            assert c.get(path)[0] == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            status, out = c.request("POST", "/detect", good, headers)
            assert status == 401 and "Bearer" in out["detail"]
        assert c.get("/v2/models/retinadet")[0] == 401
        assert c.post_json("/predict", {"tasks": []})[0] == 401
        assert c.request("POST", f"/detect?conf={CONF}", good, {"Authorization": "Bearer s3cret"})[0] == 200
        assert c.post_json("/predict", {"tasks": []}, {"Authorization": f"Basic {basic}"}) == (
            200, {"results": [], "model_version": "retinadet"})
        assert c.get("/v2/models/retinadet", headers={"Cookie": "retinadet_token=s3cret"})[0] == 200
        # The review page itself loads (it then asks for the token); its data does not.
        assert c.get("/")[0] == 200 and c.get("/api/review/config")[0] == 401


def test_cli_binds_loopback_by_default_and_warns_without_a_token(tmp_path):
    from click.testing import CliRunner

    from retinadet.cli import main
    from retinadet.cli.serve import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    out = CliRunner().invoke(main, ["serve", "--help"]).output
    assert "[default: 127.0.0.1]" in out and "--token" in out and "--max-batch" in out
    missing = str(tmp_path / "missing.pt")  # the warning comes before the weights load, and their error ends it
    res = CliRunner().invoke(main, ["serve", "--weights", missing, "--host", "0.0.0.0"], env={"RETINADET_SERVE_TOKEN": ""})
    assert res.exit_code != 0 and "warning: serving on 0.0.0.0 without --token" in res.output
    res = CliRunner().invoke(main, ["serve", "--weights", missing, "--host", "0.0.0.0", "--token", "t"])
    assert res.exit_code != 0 and "warning" not in res.output
