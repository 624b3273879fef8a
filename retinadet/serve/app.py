"""``retinadet serve``'s HTTP app: one loaded model behind three protocols, all through one dynamic batcher.

- ``POST /detect``: an image (multipart field ``image`` or the raw body) -> COCO-style records in its pixels, the
  same boxes as :meth:`retinadet.detector.Detector.predict`.
- The KServe / Triton "v2" open inference protocol, the subset a detector needs (health, model metadata,
  statistics, ``infer`` with one BYTES or UINT8 image input, JSON or Triton's binary-data extension).
- A Label Studio ML backend (``/health``, ``/setup``, ``/predict``), so a Label Studio project connects with no
  adapter and gets ``rectanglelabels`` pre-annotations.

Requests are guarded by one ASGI layer: the token (when set) on every endpoint but the health checks, and the size of
every request body, from its Content-Length and from the bytes actually read. Every error is JSON
``{"detail": "..."}`` with one line saying what to change (the v2 routes also carry the protocol's ``"error"``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import math
import os
import struct
import xml.etree.ElementTree as ET
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from retinadet.errors import ConfigError, RetinadetError
from retinadet.serve.batcher import DynamicBatcher
from retinadet.serve.review import review_router
from retinadet.serve.state import OPEN_PATHS, ServeState
from retinadet.utils.sentinels import FROM_CONFIG
from retinadet.utils.tiling import TileOptions

DEFAULT_MAX_UPLOAD = 32 * 2**20
# Room for a multipart envelope around an upload of the maximum size, and for base64 (4/3) inside JSON bodies.
_ENVELOPE = 64 * 2**10


def create_app(detector: Any, *, token: str | None = None, max_upload_bytes: int = DEFAULT_MAX_UPLOAD, max_batch: int = 8,
               batch_wait_ms: float = 10, review_dir: str | os.PathLike | None = None,
               data_root: str | os.PathLike | None = None, model_name: str | None = None) -> FastAPI:
    """The app serving ``detector`` (a loaded :class:`retinadet.detector.Detector`; the caller loads it once).

    ``token``: required as ``Authorization: Bearer <token>`` by every endpoint but the health checks.
    ``max_upload_bytes``: the largest encoded image accepted (larger: 413). ``max_batch``/``batch_wait_ms``: the
    dynamic batcher's (1 serves one image per forward pass). ``review_dir``/``data_root``: the only folders a
    request may name files in. ``model_name``: the v2 protocol's model name (default ``retinadet``)."""
    batcher = DynamicBatcher(detector, max_batch=max_batch, batch_wait_ms=batch_wait_ms)
    name = model_name or "retinadet"
    state = ServeState(detector=detector, batcher=batcher, model_name=name, model_version=_model_version(detector, name),
                       token=token or None, review_dir=Path(review_dir) if review_dir else None,
                       data_root=Path(data_root) if data_root else None, max_upload_bytes=int(max_upload_bytes))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    # No /docs or /redoc: their pages load scripts from a CDN, and this server is meant to work offline
    # (/openapi.json describes the API).
    app = FastAPI(title="retinadet", summary=f"RetinaNet detection: {name} ({', '.join(detector.class_names)})",
                  lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.serve = state
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(RetinadetError, _user_error)
    app.add_exception_handler(Exception, _internal_error)
    app.add_middleware(_Guard, state=state)
    app.include_router(_detect_routes(state))
    app.include_router(_v2_routes(state))
    app.include_router(_label_studio_routes(state))
    app.include_router(review_router(state))
    return app


def _model_version(detector: Any, name: str) -> str:
    """``name@`` the first 12 hex digits of the weights file's SHA-256: the same weights report the same version
    (Label Studio keys its predictions by it), new weights a new one."""
    path = getattr(detector, "path", None)
    if not path or not Path(path).is_file():
        return name
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(2**20), b""):
            digest.update(chunk)
    return f"{name}@{digest.hexdigest()[:12]}"


# -- errors: one JSON line each ---------------------------------------------------------------------------------


def _error(request: Request, status: int, message: str, headers: dict | None = None) -> JSONResponse:
    body = {"detail": message}
    if request.url.path.startswith("/v2"):
        body["error"] = message  # the v2 protocol's error field
    return JSONResponse(body, status_code=status, headers=headers)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    return _error(request, exc.status_code, detail, getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body", "path"))
        given = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], (dict, list)) else ""
        lines.append(f"{where}: {err.get('msg', 'invalid')}{given}")
    return _error(request, 422, "; ".join(lines) or "invalid request")


async def _user_error(request: Request, exc: RetinadetError) -> JSONResponse:
    return _error(request, 422 if isinstance(exc, ConfigError) else 400, str(exc).replace("--tile", "tile"))


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    """A failure inside a forward pass: its requests get this, the server goes on (the traceback goes to the log)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return _error(request, 503, "out of memory during inference; retry, or serve with a smaller --max-batch")
    return _error(request, 500, f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")


class _Guard:
    """The token and the request size, before any route runs (pure ASGI, so that an oversized body is refused
    as it streams in, and a chunked upload without Content-Length is bounded too)."""

    def __init__(self, app, state: ServeState):
        self.app = app
        self.state = state

    def _limit(self, content_type: str) -> int:
        limit = self.state.max_upload_bytes + _ENVELOPE
        return limit * 4 // 3 + _ENVELOPE if "json" in content_type else limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if scope["path"] not in OPEN_PATHS and not self.state.authorized(headers.get("authorization"),
                                                                         _cookie(headers.get("cookie"), "retinadet_token")):
            await self._refuse(scope, receive, send, 401, "missing or wrong token: send the header "
                               "'Authorization: Bearer <token>' given to retinadet serve --token", {"WWW-Authenticate": "Bearer"})
            return
        limit = self._limit(headers.get("content-type", ""))
        mb = f"{self.state.max_upload_bytes / 2**20:g} MB"
        try:
            declared = int(headers.get("content-length", "0") or 0)
        except ValueError:
            await self._refuse(scope, receive, send, 400, "the Content-Length header is not a number")
            return
        if declared > limit:
            await self._refuse(scope, receive, send, 413, f"the request body ({declared / 2**20:.1f} MB) is over the "
                               f"server's upload limit of {mb} (--max-upload-mb)")
            return
        seen = 0

        async def bounded():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, f"the request body is over the server's upload limit of {mb} (--max-upload-mb)")
            return message

        await self.app(scope, bounded, send)

    async def _refuse(self, scope, receive, send, status: int, message: str, headers: dict | None = None) -> None:
        body = {"detail": message, **({"error": message} if scope["path"].startswith("/v2") else {})}
        await JSONResponse(body, status_code=status, headers=headers)(scope, receive, send)


def _cookie(header: str | None, name: str) -> str | None:
    for part in (header or "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


# -- inference options ------------------------------------------------------------------------------------------


def _options(conf: Any = None, iou: Any = None, max_det: Any = None, tile: Any = "auto") -> dict:
    """Validated options of one request, each bad value one line naming it (422)."""
    def fraction(name, value):
        if value is None:
            return None
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise HTTPException(422, f"{name} must be a number in [0, 1], got {value!r}") from None
        if not 0.0 <= value <= 1.0 or math.isnan(value):
            raise HTTPException(422, f"{name} must be in [0, 1], got {value}")
        return value

    if max_det is not None:
        try:
            max_det = int(max_det)
        except (TypeError, ValueError):
            raise HTTPException(422, f"max_det must be a whole number >= 1, got {max_det!r}") from None
        if max_det < 1:
            raise HTTPException(422, f"max_det must be >= 1, got {max_det}")
    try:
        tiling = TileOptions.parse("auto" if tile is None else str(tile))
    except ConfigError as exc:
        raise HTTPException(422, str(exc).replace("--tile", "tile")) from None
    return {"conf": fraction("conf", conf), "iou": fraction("iou", iou),
            "max_det": FROM_CONFIG if max_det is None else max_det, "tile": tiling}


# -- POST /detect -----------------------------------------------------------------------------------------------


def _detect_routes(state: ServeState) -> APIRouter:
    router = APIRouter(tags=["detect"])

    @router.post("/detect")
    async def detect(request: Request,
                     conf: float | None = Query(None, description="score threshold [default: the checkpoint's per-class "
                                                "thresholds (val --save-thresholds), else 0.25]"),
                     iou: float | None = Query(None, description="NMS IoU [default: the model's]"),
                     max_det: int | None = Query(None, description="detections per image [default: the model's]"),
                     tile: str = Query("auto", description="sliced inference: auto, off, SIZE or WxH")) -> dict:
        """Detect objects in one image: the multipart field ``image``, or the request body itself. Boxes are COCO
        ``[x, y, w, h]`` in the image's pixels (after its EXIF rotation)."""
        options = _options(conf, iou, max_det, tile)
        data = await _upload(request)
        image = await asyncio.to_thread(state.decode, data)  # off the event loop, which keeps gathering requests
        dets, used = await state.detect(image, **options)
        h, w = dets.image_size
        return {"detections": dets.to_records(), "width": w, "height": h, "thresholds": used,
                "model": state.model_name, "model_version": state.model_version}

    return router


async def _upload(request: Request) -> bytes:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=4, max_fields=16)
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            fields = ", ".join(form.keys()) or "none"
            raise HTTPException(400, f"a multipart upload needs the image file in a field named 'image' (fields sent: {fields})")
        return await upload.read()
    return await request.body()


# -- KServe / Triton v2 -----------------------------------------------------------------------------------------

_V2_OUTPUTS = (("boxes", "FP32", "[N, 4] xyxy in the image's pixels"), ("scores", "FP32", "[N]"),
               ("labels", "INT64", "[N] class index"), ("class_names", "BYTES", "[N]"))


def _v2_routes(state: ServeState) -> APIRouter:
    """The v2 protocol (https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/ and Triton's
    HTTP/REST API): health, server and model metadata, model statistics, and ``infer``."""
    router = APIRouter(prefix="/v2", tags=["v2"])
    det = state.detector

    def known(name: str) -> None:
        if name != state.model_name:
            raise HTTPException(404, f"unknown model '{name}': this server serves '{state.model_name}'")

    @router.get("")
    async def server_metadata() -> dict:
        from importlib.metadata import PackageNotFoundError, version
        try:
            ours = version("retinadet")
        except PackageNotFoundError:
            ours = "unknown"
        return {"name": "retinadet", "version": ours, "extensions": ["statistics", "binary_tensor_data"]}

    @router.get("/health/live")
    async def live() -> dict:
        return {"live": True}

    @router.get("/health/ready")
    async def ready() -> JSONResponse:
        ok = state.batcher.running
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @router.get("/models/{name}")
    async def model_metadata(name: str) -> dict:
        known(name)
        pre = det.cfg.preprocess
        size = {"fixed_size": pre.fixed_size} if pre.fixed_size else {"min_size": pre.min_size, "max_size": pre.max_size}
        return {"name": state.model_name, "versions": [state.model_version], "platform": "pytorch",
                "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                            "parameters": {"content": "one encoded image file: base64 in JSON, or binary data"}},
                           {"name": "pixels", "datatype": "UINT8", "shape": [-1, -1, 3],
                            "parameters": {"content": "RGB pixels, H x W x 3, row-major"}}],
                "outputs": [{"name": n, "datatype": t, "shape": [-1, 4] if n == "boxes" else [-1]} for n, t, _ in _V2_OUTPUTS],
                "classes": list(det.class_names), "input_size": {**size, "size_divisible": pre.size_divisible},
                "preset": det.cfg.preset,
                "parameters": {"conf": "score threshold", "iou": "NMS IoU", "max_det": "detections per image",
                               "tile": "auto, off, SIZE or WxH"}}

    @router.get("/models/{name}/ready")
    async def model_ready(name: str) -> JSONResponse:
        known(name)
        ok = state.batcher.running
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

    @router.get("/models/{name}/stats")
    async def model_stats(name: str) -> dict:
        """Triton's statistics extension: ``inference_count`` images, ``execution_count`` forward passes (fewer
        than the images when requests were batched), plus the batcher's own counters."""
        known(name)
        s = state.batcher.stats
        return {"model_stats": [{"name": name, "version": state.model_version, "last_inference": s.last_ns // 10**6,
                                 "inference_count": s.images, "execution_count": s.batches,
                                 "inference_stats": {"success": {"count": s.images, "ns": int(s.busy_s * 1e9)},
                                                     "fail": {"count": s.failed_batches}},
                                 "batcher": {**s.to_dict(), "max_batch": state.batcher.max_batch,
                                             "batch_wait_ms": state.batcher.batch_wait * 1000}}]}

    @router.post("/models/{name}/infer")
    async def infer(name: str, request: Request) -> dict:
        known(name)
        payload, binary = _v2_body(await request.body(), request.headers.get("inference-header-content-length"))
        inputs = payload.get("inputs")
        if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
            raise HTTPException(400, "inputs must hold exactly one tensor: 'image' (BYTES, an encoded image) or "
                                     "'pixels' (UINT8, H x W x 3)")
        params = payload.get("parameters") or {}
        if not isinstance(params, dict):
            raise HTTPException(400, "parameters must be an object")
        options = _options(params.get("conf"), params.get("iou"), params.get("max_det"), params.get("tile", "auto"))
        image = await asyncio.to_thread(_v2_image, state, inputs[0], binary)
        wanted = _v2_wanted(payload.get("outputs"))
        dets, used = await state.detect(image, **options)
        h, w = dets.image_size
        n = len(dets)
        tensors = {"boxes": ("FP32", [n, 4], dets.boxes.reshape(-1).tolist()),
                   "scores": ("FP32", [n], dets.scores.tolist()),
                   "labels": ("INT64", [n], dets.labels.tolist()),
                   "class_names": ("BYTES", [n], dets.names)}
        response = {"model_name": state.model_name, "model_version": state.model_version,
                    "parameters": {"width": w, "height": h, "thresholds": used["source"]},
                    "outputs": [{"name": k, "datatype": t, "shape": s, "data": d}
                                for k, (t, s, d) in tensors.items() if k in wanted]}
        if "id" in payload:
            response["id"] = payload["id"]
        return response

    return router


def _v2_body(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The JSON part of an infer request and the binary data after it (Triton's binary tensor extension: the
    ``Inference-Header-Content-Length`` header says where the JSON ends)."""
    if header_length is not None:
        try:
            cut = int(header_length)
        except ValueError:
            raise HTTPException(400, "Inference-Header-Content-Length is not a number") from None
        if not 0 < cut <= len(body):
            raise HTTPException(400, f"Inference-Header-Content-Length {cut} does not fit the {len(body)}-byte body")
        body, binary = body[:cut], body[cut:]
    else:
        binary = b""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPException(400, f"the infer request is not JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise HTTPException(400, "the infer request must be a JSON object with 'inputs'")
    return payload, binary


def _v2_image(state: ServeState, spec: dict, binary: bytes) -> torch.Tensor:
    """The uint8 [3, H, W] image of the one input tensor: BYTES holding one encoded image (a base64 string, or
    binary data framed as Triton frames BYTES: a 4-byte little-endian length, then the bytes), or UINT8 pixels
    [H, W, 3] (or [1, H, W, 3]) as JSON data or binary data."""
    name, dtype, shape = spec.get("name", "input"), str(spec.get("datatype", "")).upper(), spec.get("shape")
    size = (spec.get("parameters") or {}).get("binary_data_size")
    raw = None
    if size is not None:
        if not isinstance(size, int) or size < 0 or size > len(binary):
            raise HTTPException(400, f"input '{name}': binary_data_size {size} does not fit the {len(binary)} bytes sent")
        raw = binary[:size]
    elif "data" not in spec:
        raise HTTPException(400, f"input '{name}' has no data")
    if dtype == "BYTES":
        if raw is not None:
            if len(raw) < 4 or struct.unpack("<I", raw[:4])[0] != len(raw) - 4:
                raise HTTPException(400, f"input '{name}': binary BYTES data must be one element: a 4-byte little-endian "
                                         "length, then the encoded image")
            return state.decode(raw[4:], f"input '{name}'")
        data = spec["data"]
        while isinstance(data, list) and len(data) == 1:
            data = data[0]
        if not isinstance(data, str):
            raise HTTPException(400, f"input '{name}': BYTES data must be one base64 string (one image per request)")
        text = data.partition(",")[2] if data.startswith("data:") else data
        try:
            encoded = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise HTTPException(400, f"input '{name}': BYTES data is not base64 (send the encoded image base64 in JSON, "
                                     "or as binary data)") from None
        return state.decode(encoded, f"input '{name}'")
    if dtype != "UINT8":
        raise HTTPException(400, f"input '{name}': datatype {dtype or '(none)'} is not served: send BYTES (an encoded "
                                 "image) or UINT8 (H x W x 3 pixels)")
    if not (isinstance(shape, list) and all(isinstance(v, int) and v > 0 for v in shape)):
        raise HTTPException(400, f"input '{name}': UINT8 needs a shape [H, W, 3] of positive integers, got {shape!r}")
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 3 or shape[2] != 3:
        raise HTTPException(400, f"input '{name}': UINT8 shape must be [H, W, 3] (one RGB image), got {spec.get('shape')}")
    h, w, _ = shape
    if h * w > state.max_pixels:
        raise HTTPException(413, f"input '{name}' is {w}x{h} px, over the server's limit of {state.max_pixels / 2**20:g} "
                                 "megapixels")
    if raw is not None:
        pixels = np.frombuffer(raw, dtype=np.uint8)
    else:
        try:
            values = np.asarray(spec["data"], dtype=np.int64).reshape(-1)
        except (TypeError, ValueError, OverflowError):
            raise HTTPException(400, f"input '{name}': UINT8 data must be integers 0-255") from None
        if values.size and (values.min() < 0 or values.max() > 255):
            raise HTTPException(400, f"input '{name}': UINT8 data must be integers 0-255, got {values.min()}..{values.max()}")
        pixels = values.astype(np.uint8)
    if pixels.size != h * w * 3:
        raise HTTPException(400, f"input '{name}': {pixels.size} values for shape [{h}, {w}, 3] ({h * w * 3} expected)")
    # As Detector.predict takes an H x W x 3 array: a channels-first view of the pixels.
    return torch.from_numpy(pixels.reshape(h, w, 3).copy()).permute(2, 0, 1)


def _v2_wanted(outputs: Any) -> set[str]:
    every = {n for n, _, _ in _V2_OUTPUTS}
    if outputs is None:
        return every
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and "name" in o for o in outputs):
        raise HTTPException(400, "outputs must be a list of {'name': ...}")
    names = {o["name"] for o in outputs}
    if unknown := names - every:
        raise HTTPException(400, f"unknown output(s) {', '.join(sorted(unknown))}: the outputs are {', '.join(sorted(every))}")
    return names


# -- Label Studio ML backend ------------------------------------------------------------------------------------


@dataclass
class _LabelConfig:
    """What a Label Studio labeling config says about boxes: the control that holds them (``from_name``), the image
    they are on (``to_name``), the task field naming the image, and the labels it allows (empty: any)."""

    from_name: str = "label"
    to_name: str = "image"
    data_key: str = "image"
    labels: dict[str, str] = field(default_factory=dict)  # model class or predicted_values name -> LS label

    def label_of(self, class_name: str) -> str | None:
        if not self.labels:
            return class_name
        if class_name in self.labels:
            return self.labels[class_name]
        folded = {k.casefold(): v for k, v in self.labels.items()}
        return folded.get(class_name.casefold())


def _parse_label_config(xml: Any) -> _LabelConfig:
    """The first ``<RectangleLabels name=... toName=...>`` and the ``<Image name=... value="$key">`` it points at;
    ``<Label value="X" predicted_values="a,b"/>`` maps model classes a, b to X, as Label Studio's own backends do."""
    if not xml:
        return _LabelConfig()
    if not isinstance(xml, str):
        raise HTTPException(400, "label_config must be the project's labeling config XML, as a string")
    if "<!DOCTYPE" in xml or "<!ENTITY" in xml:
        raise HTTPException(400, "label_config: DOCTYPE and ENTITY declarations are refused")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise HTTPException(400, f"label_config is not valid XML ({exc})") from None
    images = {el.get("name"): el for el in root.iter() if el.tag == "Image"}
    controls = [el for el in root.iter() if el.tag == "RectangleLabels"]
    control = next((el for el in controls if el.get("toName", "").split(",")[0] in images), controls[0] if controls else None)
    if control is None:
        raise HTTPException(400, "label_config has no <RectangleLabels> tag: this backend predicts boxes "
                                 "(e.g. <RectangleLabels name=\"label\" toName=\"image\">)")
    to_name = control.get("toName", "image").split(",")[0]
    value = images[to_name].get("value", "$image") if to_name in images else "$image"
    labels: dict[str, str] = {}
    for el in control.iter("Label"):
        label = el.get("value")
        if not label:
            continue
        labels.setdefault(label, label)
        for alias in (el.get("predicted_values") or "").split(","):
            if alias.strip():
                labels[alias.strip()] = label
    return _LabelConfig(control.get("name", "label"), to_name, value.lstrip("$") or "image", labels)


def _label_studio_routes(state: ServeState) -> APIRouter:
    """Label Studio's ML backend protocol, as its SDK's server (label_studio_ml/api.py of
    HumanSignal/label-studio-ml-backend) speaks it to Label Studio (label_studio/ml/api_connector.py):

    - ``GET /health`` -> ``{"status": "UP", "model_class": ...}`` (Label Studio's connection test);
    - ``POST /setup`` with ``{"project": "ID.TIMESTAMP", "schema": LABEL_CONFIG, ...}`` -> ``{"model_version"}``;
    - ``POST /predict`` with ``{"tasks": [{"id", "data": {KEY: image}}], "label_config", "project", "params"}`` ->
      ``{"results": [{"result": [region, ...], "score", "model_version"}, ...]}``, one per task in order: the newer
      SDK's ModelResponse.predictions, each region a ``rectanglelabels`` with x, y, width, height in percent of the
      image (as its YOLO example builds them), plus ``original_width``/``original_height``.

    KEY is the ``value`` of the Image tag the RectangleLabels control points at (``$image`` -> ``image``)."""
    router = APIRouter(tags=["label-studio"])

    @router.get("/health")
    async def health() -> dict:
        return {"status": "UP", "model_class": "retinadet", "model_name": state.model_name,
                "model_version": state.model_version, "classes": list(state.detector.class_names)}

    @router.post("/setup")
    async def setup(request: Request) -> dict:
        payload = await _json(request)
        _parse_label_config(payload.get("schema"))  # a project without boxes is told so when it connects
        return {"model_version": state.model_version}

    @router.post("/predict")
    async def predict(request: Request) -> dict:
        payload = await _json(request)
        tasks = payload.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise HTTPException(400, "tasks must be a list of Label Studio tasks ({'id': ..., 'data': {'image': ...}})")
        config = _parse_label_config(payload.get("label_config"))
        images = await asyncio.gather(*(asyncio.to_thread(_task_image, state, config, task) for task in tasks))
        found = await asyncio.gather(*(state.detect(img) for img in images))
        results = [_task_prediction(state, config, dets) for dets, _ in found]
        return {"results": results, "model_version": state.model_version}

    return router


def _task_image(state: ServeState, config: _LabelConfig, task: dict) -> torch.Tensor:
    data = task.get("data")
    what = f"task {task.get('id', '?')}"
    if not isinstance(data, dict):
        raise HTTPException(400, f"{what} has no 'data' object")
    ref = data.get(config.data_key)
    if ref is None:  # Label Studio's name for a field imported without a config, then the only field there is
        ref = data.get("$undefined$")
    if ref is None and len(data) == 1:
        ref = next(iter(data.values()))
    if ref is None:
        raise HTTPException(400, f"{what}: no image in data['{config.data_key}'] (fields: {', '.join(data) or 'none'})")
    return state.load_ref(ref, what)


def _task_prediction(state: ServeState, config: _LabelConfig, dets) -> dict:
    h, w = dets.image_size
    regions = []
    for (x1, y1, x2, y2), score, name in zip(dets.boxes.tolist(), dets.scores.tolist(), dets.names):
        label = config.label_of(name)
        if label is None:  # a class the project does not label
            continue
        regions.append({"from_name": config.from_name, "to_name": config.to_name, "type": "rectanglelabels",
                        "original_width": w, "original_height": h, "image_rotation": 0,
                        "value": {"x": 100.0 * x1 / w, "y": 100.0 * y1 / h, "width": 100.0 * (x2 - x1) / w,
                                  "height": 100.0 * (y2 - y1) / h, "rotation": 0, "rectanglelabels": [label]},
                        "score": score})
    mean = sum(r["score"] for r in regions) / len(regions) if regions else 0.0
    return {"result": regions, "score": mean, "model_version": state.model_version}


async def _json(request: Request) -> dict:
    body = await request.body()
    try:
        payload = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPException(400, f"the request body is not JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise HTTPException(400, "the request body must be a JSON object")
    return payload
