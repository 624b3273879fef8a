"""What every router of the server shares: the loaded model, its batcher and the server's limits, and the three
things each endpoint does alike: decode an image, find a local file without leaving the allowed folders, and
detect at the right thresholds.

Apart from :mod:`retinadet.serve.app` so that the review page's router can import it without importing the app.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import io
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, unquote_to_bytes, urlsplit

import torch
from fastapi import HTTPException
from PIL import Image
from torch import Tensor

from retinadet.data.images import read_image
from retinadet.errors import DataError
from retinadet.serve.batcher import DynamicBatcher, InferOptions
from retinadet.structures import Detections
from retinadet.utils.sentinels import FROM_CONFIG, FromConfig
from retinadet.utils.thresholds import DEFAULT_CONF, resolve_thresholds
from retinadet.utils.tiling import TileOptions

# Leading bytes of the formats the decoders read -> (suffix that picks the decoder in read_image, format name).
_MAGIC = ((b"\xff\xd8\xff", ".jpg", "JPEG"), (b"\x89PNG\r\n\x1a\n", ".png", "PNG"), (b"GIF87a", ".gif", "GIF"),
          (b"GIF89a", ".gif", "GIF"), (b"BM", ".bmp", "BMP"), (b"II*\x00", ".tif", "TIFF"), (b"MM\x00*", ".tif", "TIFF"))
IMAGE_FORMATS = "JPEG, PNG, WebP, GIF, BMP or TIFF"
# Health checks answer without the token: load balancers and Label Studio's connection test call them bare.
# Health probes, and the review page's own assets (no data: the page asks for a token when its API answers 401).
OPEN_PATHS = frozenset({"/health", "/v2/health/live", "/v2/health/ready", "/", "/review/review.js", "/review/review.css"})


def sniff_format(data: bytes) -> tuple[str, str] | None:
    """(suffix, format name) of encoded image bytes from their signature; None when no known image starts so."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp", "WebP"
    for magic, suffix, name in _MAGIC:
        if data.startswith(magic):
            return suffix, name
    return None


@dataclass
class ServeState:
    """The server's model and settings. ``review_dir`` and ``data_root`` are the only folders a request may name
    files in (Label Studio tasks, the review page); ``max_upload_bytes`` bounds an encoded image and
    ``max_pixels`` its decoded size, checked from the header before decoding."""

    detector: Any  # a retinadet.detector.Detector
    batcher: DynamicBatcher
    model_name: str = "retinadet"
    model_version: str = "retinadet"
    token: str | None = None
    review_dir: Path | None = None
    data_root: Path | None = None
    max_upload_bytes: int = 32 * 2**20
    max_pixels: int = 256 * 2**20
    started: float = field(default_factory=time.time)

    # -- access -------------------------------------------------------------------------------------------------

    def authorized(self, authorization: str | None, cookie_token: str | None = None) -> bool:
        """Whether a request may pass: no token set, ``Authorization: Bearer <token>``, HTTP Basic auth whose
        password is the token (Label Studio's ML backend settings offer only Basic auth), or the
        ``retinadet_token`` cookie (a browser page cannot set headers on its own loads)."""
        if not self.token:
            return True
        given = None
        scheme, _, value = (authorization or "").strip().partition(" ")
        if scheme.lower() == "bearer":
            given = value.strip()
        elif scheme.lower() == "basic":
            try:
                given = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2]
            except (binascii.Error, UnicodeDecodeError):
                given = None
        if given is None:
            given = cookie_token
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    @property
    def window(self) -> str | None:
        """The model's rule for images of more than 8 bits (None: it refuses them, saying so)."""
        return self.detector.model.cfg.preprocess.window

    # -- images -------------------------------------------------------------------------------------------------

    def decode(self, data: bytes, what: str = "the upload") -> Tensor:
        """Encoded image bytes -> uint8 [3, H, W], decoded by :func:`retinadet.data.images.read_image` (the decoder,
        EXIF rotation and 16-bit handling of ``retinadet predict``). Empty, oversized, non-image and undecodable
        bytes raise an HTTP error with one line saying which."""
        if not data:
            raise HTTPException(400, f"{what} is empty: send an image file ({IMAGE_FORMATS})")
        if len(data) > self.max_upload_bytes:
            raise HTTPException(413, f"{what} is {len(data) / 2**20:.1f} MB, over the server's limit of "
                                     f"{self.max_upload_bytes / 2**20:g} MB (--max-upload-mb)")
        sniffed = sniff_format(data)
        self._check_pixels(io.BytesIO(data), what)
        # read_image reads files: the upload goes through a temporary one, so that it decodes exactly as a file would.
        with tempfile.TemporaryDirectory(prefix="retinadet-serve-") as tmp:
            path = Path(tmp) / f"upload{sniffed[0] if sniffed else '.img'}"
            path.write_bytes(data)
            try:
                return read_image(path, self.window)
            except DataError as exc:
                reason = str(exc).replace(f"{path}: ", "").replace(str(path), "the file")
        if sniffed is None:
            raise HTTPException(415, f"{what} is not an image ({IMAGE_FORMATS} expected)")
        raise HTTPException(400, f"{what} does not decode as {sniffed[1]}: {reason}")

    def read_file(self, path: Path, what: str) -> Tensor:
        self._check_pixels(path, what)
        try:
            return read_image(path, self.window)
        except DataError as exc:
            with open(path, "rb") as fh:
                known = sniff_format(fh.read(16)) is not None
            raise HTTPException(400 if known else 415, f"{what}: {str(exc).replace(f'{path}: ', '')}") from None

    def _check_pixels(self, source, what: str) -> None:
        try:
            with Image.open(source) as img:
                w, h = img.size
        except Exception:  # noqa: BLE001 - not an image PIL knows: the decoder says why
            return
        if w * h > self.max_pixels:
            raise HTTPException(413, f"{what} is {w}x{h} px, over the server's limit of {self.max_pixels / 2**20:g} "
                                     "megapixels")

    def load_ref(self, ref: Any, what: str = "the image") -> Tensor:
        """An image named by a string, as Label Studio tasks name them: a ``data:`` URI, a local path (relative
        to ``data_root``/``review_dir``, or absolute inside one), ``file://``, or Label Studio's own
        ``/data/local-files/?d=PATH`` (PATH under its LOCAL_FILES_DOCUMENT_ROOT, which is ``data_root`` here) and
        ``/data/upload/...`` (its media folder as ``data_root``). Nothing is fetched over the network."""
        if not isinstance(ref, str) or not ref.strip():
            raise HTTPException(400, f"{what}: expected an image path or data: URI, got {ref!r}")
        ref = ref.strip()
        if ref.startswith("data:"):
            header, sep, payload = ref[5:].partition(",")
            if not sep:
                raise HTTPException(400, f"{what}: a data: URI needs a comma before its data")
            try:
                data = (base64.b64decode(payload, validate=False) if header.endswith(";base64")
                        else unquote_to_bytes(payload))
            except (binascii.Error, ValueError) as exc:
                raise HTTPException(400, f"{what}: the data: URI's base64 does not decode ({exc})") from None
            return self.decode(data, what)
        parts = urlsplit(ref)
        scheme = parts.scheme.lower()
        if scheme in ("http", "https") or (not scheme and ref.startswith("/data/")):
            if parts.path.rstrip("/") == "/data/local-files":
                name = (parse_qs(parts.query).get("d") or [""])[0]
                return self.read_file(self.resolve(name, what, roots=[self.data_root], label_studio=True), what)
            if parts.path.startswith("/data/upload/"):
                return self.read_file(self.resolve(unquote(parts.path[len("/data/"):]), what, roots=[self.data_root],
                                                   label_studio=True), what)
            if scheme:
                raise HTTPException(400, f"{what}: {ref} is a URL; this server works offline and fetches nothing: send the "
                                         "image itself (multipart, raw body, base64 or a data: URI) or a path under "
                                         "--data-root")
        if scheme == "file":
            ref = unquote(parts.path)
        elif len(scheme) > 1:  # s3://, gs://, azure-blob:// ... (a one-letter scheme is a Windows drive)
            raise HTTPException(400, f"{what}: {scheme}:// storage is not fetched; this server works offline and reads "
                                     "local paths under --data-root")
        return self.read_file(self.resolve(ref, what), what)

    def resolve(self, name: str, what: str, roots: list[Path | None] | None = None, label_studio: bool = False) -> Path:
        """The real path of ``name`` when it lies inside one of ``roots`` (default: data_root and review_dir), symlinks
        followed; 403 outside them, 404 when missing."""
        allowed = [Path(r).resolve() for r in (roots if roots is not None else [self.data_root, self.review_dir]) if r]
        if not allowed:
            need = "--data-root (Label Studio's LOCAL_FILES_DOCUMENT_ROOT, or its media folder)" if label_studio else \
                "--data-root or --review-dir"
            raise HTTPException(403, f"{what}: {name} is a local path, and this server reads files only under {need}, "
                                     "which is not set")
        if not name:
            raise HTTPException(400, f"{what}: empty path")
        path = Path(name)
        candidates = [path] if path.is_absolute() else [root / path for root in allowed]
        inside = []
        for candidate in candidates:
            real = candidate.resolve()
            if any(real.is_relative_to(root) for root in allowed):
                if real.is_file():
                    return real
                inside.append(real)
        if not inside:
            raise HTTPException(403, f"{what}: {name} is outside the folders this server may read "
                                     f"({', '.join(map(str, allowed))})")
        raise HTTPException(404, f"{what}: {name} not found under {', '.join(map(str, allowed))}")

    # -- detection ----------------------------------------------------------------------------------------------

    def thresholds(self, conf: float | None) -> tuple[float, list[float] | None, dict]:
        """(the score threshold the network runs at, per-class thresholds to apply after, what to report): ``conf``
        when given, else the checkpoint's stored per-class thresholds (``val --save-thresholds``), else 0.25,
        decided by :func:`retinadet.utils.thresholds.resolve_thresholds` as ``retinadet predict`` decides."""
        names = self.detector.class_names
        stored = (getattr(self.detector, "checkpoint", None) or {}).get("thresholds")
        run_conf, per_class, _ = resolve_thresholds(names, stored, conf)
        if conf is not None:
            return run_conf, None, {"source": "conf", "conf": run_conf}
        if per_class is None:
            return run_conf, None, {"source": "default", "conf": DEFAULT_CONF}
        return run_conf, per_class, {"source": "checkpoint", "per_class": dict(zip(names, per_class)),
                                     "spec": stored.get("spec"), "split": stored.get("split")}

    async def detect(self, image: Tensor, conf: float | None = None, iou: float | None = None,
                     max_det: int | None | FromConfig = FROM_CONFIG,
                     tile: TileOptions | None = None) -> tuple[Detections, dict]:
        """(the image's detections in its pixels, the thresholds used), through the batcher."""
        run_conf, per_class, used = self.thresholds(conf)
        dets = await self.batcher.submit(image, InferOptions(run_conf, iou, max_det, tile or TileOptions()))
        if per_class is not None:
            dets = dets[dets.scores >= torch.tensor(per_class, dtype=dets.scores.dtype)[dets.labels]]
        return dets, used
