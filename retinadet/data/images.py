"""Image decoding: any common file -> uint8 RGB tensor [3, H, W].

torchvision's native decoders (libjpeg-turbo / libpng) are several times faster
than PIL, so they are tried first; PIL is the fallback for what they can't do
(TIFF, BMP, odd PNG/GIF variants, 16-bit modes). EXIF orientation is applied so
that boxes drawn in a viewer match the pixels we train on.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.io import ImageReadMode, decode_image

from retinadet.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")

# Only formats whose torchvision decoder is known to be reliable; the rest go to PIL.
_NATIVE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif")


def is_image_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def _to_uint8_rgb(tensor: torch.Tensor) -> torch.Tensor:
    """Normalise decoder output (uint8/uint16, 1/2/3/4 channels) to uint8 [3, H, W]."""
    if tensor.dtype == torch.uint16:
        tensor = (tensor.to(torch.int32) >> 8).to(torch.uint8)
    elif tensor.dtype != torch.uint8:
        raise TypeError(f"unexpected decoded dtype {tensor.dtype}")
    channels = tensor.shape[0]
    if channels == 1 or channels == 2:  # gray or gray+alpha
        return tensor[:1].expand(3, -1, -1).contiguous()
    if channels == 4:  # drop alpha
        tensor = tensor[:3]
    # Left as the decoder's (channels-last) layout: a copy here costs more than it saves,
    # and the collate copies into the padded batch anyway.
    return tensor


def _decode_with_pil(path: Path) -> torch.Tensor:
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        img.load()  # raises on truncated data (Image.LOAD_TRUNCATED_IMAGES is False by default)
        mode = img.mode
        if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
            arr = np.asarray(img).astype(np.float64)
            if mode == "I" and arr.max(initial=0) > 65535:
                # 32-bit integer: stretch the observed range rather than guess a bit depth.
                lo, hi = arr.min(initial=0), arr.max(initial=0)
                arr = (arr - lo) * (255.0 / max(hi - lo, 1.0))
            else:
                arr = arr / 257.0  # 16-bit -> 8-bit (65535 -> 255)
            arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
            arr = np.repeat(arr[..., None], 3, axis=2)
        elif mode == "F":
            arr = np.asarray(img, dtype=np.float64)
            lo, hi = np.nanmin(arr), np.nanmax(arr)
            arr = np.nan_to_num((arr - lo) * (255.0 / max(hi - lo, 1e-12)))
            arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
            arr = np.repeat(arr[..., None], 3, axis=2)
        else:
            arr = np.asarray(img.convert("RGB"))
    return torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).contiguous()


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file as a uint8 RGB tensor of shape [3, H, W].

    Handles grayscale, RGBA, palette and 16-bit images (scaled to 8-bit), applies
    EXIF orientation, and raises :class:`DataError` naming the file when it is
    missing, unreadable or truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    try:
        # Read straight into the buffer the decoder takes: a bytes object and its bytearray copy would hold a large
        # file's bytes twice while it decodes (600 MB for a 300 MB slide scan).
        with open(path, "rb") as fh:
            data = bytearray(os.fstat(fh.fileno()).st_size)
            fh.readinto(data)
    except OSError as exc:
        raise DataError(f"{path}: cannot read image file ({exc})") from exc
    if not data:
        raise DataError(f"{path}: image file is empty")

    if path.suffix.lower() in _NATIVE_EXTENSIONS and not _looks_truncated(data):
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                raw = torch.frombuffer(data, dtype=torch.uint8)
                # 16-bit PNGs come back as uint16 and are scaled down in _to_uint8_rgb.
                decoded = decode_image(raw, mode=ImageReadMode.RGB, apply_exif_orientation=True)
            # libjpeg reports corrupt data as a warning; treat that as a failure (the
            # torchvision deprecation notice about TorchCodec is not about the file).
            problems = [str(w.message) for w in caught if "deprecated" not in str(w.message)]
            if problems:
                raise RuntimeError(problems[0])
            del raw, data  # the encoded bytes, before the decoded image is kept
            if decoded.dtype == torch.uint8 and decoded.shape[0] in (1, 3, 4):
                return _to_uint8_rgb(decoded)
            if decoded.dtype == torch.uint16:
                return _to_uint8_rgb(decoded)
        except Exception:  # noqa: BLE001 - any native decoder failure falls back to PIL
            pass

    try:
        image = _decode_with_pil(path)
    except Exception as exc:  # noqa: BLE001
        reason = str(exc) or type(exc).__name__
        raise DataError(f"{path}: unreadable or truncated image ({reason})") from exc
    if image.ndim != 3 or image.shape[0] != 3 or image.shape[1] == 0 or image.shape[2] == 0:
        raise DataError(f"{path}: decoded to an unexpected shape {tuple(image.shape)}")
    return image


def _looks_truncated(data: bytes | bytearray) -> bool:
    """A JPEG without its end-of-image marker is truncated; libjpeg would silently pad it grey."""
    if data[:2] == b"\xff\xd8":
        return b"\xff\xd9" not in data[-1024:]
    return False


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from the file header without decoding the pixels (EXIF-rotated)."""
    path = Path(path)
    limit = Image.MAX_IMAGE_PIXELS
    try:
        # Only the header is read: Pillow's decompression-bomb limit (178 MP) guards a decode, not this.
        Image.MAX_IMAGE_PIXELS = None
        with Image.open(path) as img:
            w, h = img.size
            try:
                orientation = img.getexif().get(0x0112, 1)
            except Exception:  # noqa: BLE001 - a PNG's EXIF may follow its pixels: reading it would decode them
                orientation = 1
    except FileNotFoundError as exc:
        raise DataError(f"{path}: image file not found") from exc
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: unreadable image ({exc})") from exc
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return int(w), int(h)


def decode_memory_note(path: str | os.PathLike, threshold: int = 512 * 2**20) -> str | None:
    """A note, before decoding, on the memory a large image needs decoded whole (None for an ordinary one or an
    unreadable header, which the decode then reports)."""
    try:
        w, h = image_size(path)
    except DataError:
        return None
    need = w * h * 3
    if need < threshold:
        return None
    return (f"{path}: {w}x{h} px; decoding it whole takes {need / 2**30:.1f} GiB of memory (the file is read whole, not "
            "by region), then it is sliced")


ImageSource = str | os.PathLike | np.ndarray | torch.Tensor | Image.Image


def to_image_tensor(source: ImageSource) -> tuple[torch.Tensor, str | None]:
    """Any supported image -> (uint8 or [0, 1] float tensor [3, H, W], source name)."""
    if isinstance(source, (str, os.PathLike)):
        return read_image(source), str(source)
    if isinstance(source, torch.Tensor):
        if source.dim() != 3 or source.shape[0] not in (1, 3):
            raise DataError(f"image tensor must be [3, H, W] (or [1, H, W]), got shape {tuple(source.shape)}")
        if source.shape[0] == 1:
            source = source.expand(3, -1, -1)
        if source.is_floating_point() and source.numel() and float(source.max()) > 1.0 + 1e-3:
            raise DataError("float image tensors must be in [0, 1]; pass uint8 for 0..255 values")
        return source, None
    if isinstance(source, np.ndarray):
        arr = source
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise DataError(f"numpy images must be HxW, HxWx3 or HxWx4, got shape {arr.shape}")
        arr = np.ascontiguousarray(arr[..., :3])
        tensor = torch.from_numpy(arr).permute(2, 0, 1)
        if tensor.dtype != torch.uint8:
            tensor = tensor.float()
            if tensor.numel() and float(tensor.max()) > 1.0 + 1e-3:
                raise DataError("float numpy images must be in [0, 1]; pass uint8 for 0..255 values")
        return tensor, None
    if isinstance(source, Image.Image):
        return to_image_tensor(np.array(source.convert("RGB")))
    raise DataError(f"unsupported image type {type(source).__name__}: pass a path, PIL image, numpy array or tensor")
