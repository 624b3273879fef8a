"""A real ``retinadet serve`` app on a loopback port (uvicorn in a thread), its model, images and a small client."""

from __future__ import annotations

import http.client
import io
import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from serve_support import loopback_server


@pytest.fixture(scope="session")
def detector():
    from retinadet.detector import Detector

    torch.manual_seed(0)  # untrained and seeded: deterministic detections without a training run
    return Detector.from_config("fast", ["cell", "debris"], device="cpu")


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def encode_png():
    """PNG bytes of an H x W x 3 uint8 array."""
    return png_bytes


@pytest.fixture(scope="session")
def images() -> list[np.ndarray]:
    """Eight distinct noise images of different sizes (H x W x 3 uint8)."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (120 + 8 * i, 160 + 5 * i, 3), dtype=np.uint8) for i in range(8)]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory, images) -> Path:
    root = tmp_path_factory.mktemp("data_root")
    (root / "sub").mkdir()
    for i, img in enumerate(images):
        (root / "sub" / f"img{i}.png").write_bytes(png_bytes(img))
    return root


class Client:
    """Plain http.client requests against one server: (status, parsed JSON body)."""

    def __init__(self, port: int):
        self.port = port

    def request(self, method: str, path: str, body=None, headers: dict | None = None, chunked: bool = False):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, raw.decode("utf-8", "replace")

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def post_json(self, path: str, payload, headers: dict | None = None):
        return self.request("POST", path, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

    def post_multipart(self, path: str, field: str, filename: str, data: bytes, content_type: str = "image/png",
                       headers: dict | None = None):
        boundary = "retinadet-test-boundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
                f"Content-Type: {content_type}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        return self.request("POST", path, body, {"Content-Type": f"multipart/form-data; boundary={boundary}", **(headers or {})})


@contextmanager
def running(app):
    """Serve ``app`` with uvicorn on a free loopback port in a background thread; stops it on exit."""
    with loopback_server(app) as port:
        yield Client(port)


@pytest.fixture(scope="session")
def serve(detector, data_root):
    """A factory: ``with serve(**create_app_options) as client``."""
    from retinadet.serve.app import create_app

    @contextmanager
    def start(**options):
        options = {"data_root": data_root, "max_upload_bytes": 2**20, "batch_wait_ms": 20, **options}
        app = create_app(detector, **options)
        with running(app) as client:
            client.app = app
            yield client

    return start


@pytest.fixture(scope="module")
def client(serve):
    """The shared server: 1 MiB upload limit, data_root, no token."""
    with serve() as c:
        yield c
