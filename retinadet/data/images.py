"""Image decoding: any common file -> uint8 RGB tensor [3, H, W] (float32 in [0, 1] for more than 8 bits).

torchvision's native decoders (libjpeg-turbo / libpng) are several times faster
than PIL, so they are tried first; PIL is the fallback for what they can't do
(BMP, odd PNG/GIF variants, 16-bit gray). TIFFs of more than 8 bits or of several
channels go through tifffile. EXIF orientation is applied so that boxes drawn in a
viewer match the pixels we train on. Images of more than 8 bits are windowed
(:mod:`retinadet.utils.window`), never cut to 8 bits.
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
from retinadet.utils.samples import DEEP_PIL_MODES, is_tiff, read_tiff_samples, to_rgb
from retinadet.utils.window import Window

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")

# Only formats whose torchvision decoder is known to be reliable; the rest go to PIL.
_NATIVE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif")


def is_image_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def _to_uint8_rgb(tensor: torch.Tensor) -> torch.Tensor:
    """Normalise 8-bit decoder output (1/2/3/4 channels) to uint8 [3, H, W]."""
    if tensor.dtype != torch.uint8:
        raise TypeError(f"unexpected decoded dtype {tensor.dtype}")
    channels = tensor.shape[0]
    if channels == 1 or channels == 2:  # gray or gray+alpha
        return tensor[:1].expand(3, -1, -1).contiguous()
    if channels == 4:  # drop alpha
        tensor = tensor[:3]
    # Left as the decoder's (channels-last) layout: a copy here costs more than it saves,
    # and the collate copies into the padded batch anyway.
    return tensor


def samples_to_tensor(samples: np.ndarray, path: str, window: Window | str | None, limits=None) -> torch.Tensor:
    """Decoded samples (HxW or HxWxC, any dtype) -> uint8 [3, H, W] for 8-bit ones, else float32 [3, H, W] in
    [0, 1] through the windowing rule (an 8-bit model given more bits is refused, naming the file); the channel
    rules of :func:`retinadet.utils.samples.to_rgb`."""
    return torch.from_numpy(to_rgb(samples, path, window, limits)).permute(2, 0, 1)


def _decode_with_pil(path: Path, window) -> torch.Tensor:
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        img.load()  # raises on truncated data (Image.LOAD_TRUNCATED_IMAGES is False by default)
        mode = img.mode
        if mode in DEEP_PIL_MODES:
            arr = np.asarray(img)
        else:
            arr = np.asarray(img.convert("RGB"))
        return samples_to_tensor(np.array(arr, copy=True), str(path), window)


def read_image(path: str | os.PathLike, window: Window | str | None = None) -> torch.Tensor:
    """Read an image file as a uint8 RGB tensor [3, H, W], or, for an image of more than 8 bits, as float32
    [3, H, W] in [0, 1] by the windowing rule ``window`` (:mod:`retinadet.utils.window`; the model's
    ``preprocess.window``), so a 16-bit image keeps its precision instead of being cut to 8 bits.

    Handles grayscale, RGBA, palette, 16/32-bit and multi-channel (TIFF) images, applies EXIF orientation, and
    raises :class:`DataError` naming the file when it is missing, unreadable or truncated, or when it has more
    than 8 bits and there is no window (an 8-bit model).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    if is_tiff(path):
        samples = read_tiff_samples(path)
        if samples is not None:
            return samples_to_tensor(samples, str(path), window)
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
        decoded = None
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                raw = torch.frombuffer(data, dtype=torch.uint8)
                # RGB mode expands palettes and gray; a 16-bit PNG stays uint16 (gray repeated, alpha dropped).
                decoded = decode_image(raw, mode=ImageReadMode.RGB, apply_exif_orientation=True)
            # libjpeg reports corrupt data as a warning; treat that as a failure (the
            # torchvision deprecation notice about TorchCodec is not about the file).
            problems = [str(w.message) for w in caught if "deprecated" not in str(w.message)]
            if problems:
                raise RuntimeError(problems[0])
            del raw, data  # the encoded bytes, before the decoded image is kept
        except Exception:  # noqa: BLE001 - any native decoder failure falls back to PIL
            decoded = None
        if decoded is not None and decoded.dtype == torch.uint8 and decoded.shape[0] in (1, 3, 4):
            return _to_uint8_rgb(decoded)
        if decoded is not None and decoded.dtype == torch.uint16:  # 16-bit PNG: windowed, not cut to 8 bits
            return samples_to_tensor(decoded.permute(1, 2, 0).numpy(), str(path), window)

    try:
        image = _decode_with_pil(path, window)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001
        reason = str(exc) or type(exc).__name__
        raise DataError(f"{path}: unreadable or truncated image ({reason})") from exc
    if image.ndim != 3 or image.shape[0] != 3 or image.shape[1] == 0 or image.shape[2] == 0:
        raise DataError(f"{path}: decoded to an unexpected shape {tuple(image.shape)}")
    return image


def image_bit_depth(path: str | os.PathLike) -> int:
    """Bits per sample from the file header (8 for ordinary images; 16, 32 for what needs a window)."""
    path = Path(path)
    if is_tiff(path):
        try:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                return int(np.dtype(tif.series[0].dtype).itemsize * 8)
        except Exception:  # noqa: BLE001 - not for tifffile: Pillow's header below
            pass
    try:
        with Image.open(path) as img:
            return 8 if img.mode not in DEEP_PIL_MODES else (16 if img.mode.startswith("I;16") else 32)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: unreadable image ({exc})") from exc


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


def to_image_tensor(source: ImageSource, window: Window | str | None = None) -> tuple[torch.Tensor, str | None]:
    """Any supported image -> (uint8 or [0, 1] float tensor [3, H, W], source name). Integer arrays and tensors of
    more than 8 bits (uint16, int32) are windowed by ``window`` as files are."""
    if isinstance(source, (str, os.PathLike)):
        return read_image(source, window), str(source)
    if isinstance(source, torch.Tensor):
        if source.dim() != 3 or source.shape[0] not in (1, 3):
            raise DataError(f"image tensor must be [3, H, W] (or [1, H, W]), got shape {tuple(source.shape)}")
        if not source.is_floating_point() and source.dtype != torch.uint8:
            return samples_to_tensor(source.cpu().permute(1, 2, 0).numpy(), "image tensor", window), None
        if source.shape[0] == 1:
            source = source.expand(3, -1, -1)
        if source.is_floating_point() and source.numel() and float(source.max()) > 1.0 + 1e-3:
            raise DataError("float image tensors must be in [0, 1]; pass uint8 for 0..255 values")
        return source, None
    if isinstance(source, np.ndarray):
        arr = source
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
            raise DataError(f"numpy images must be HxW, HxWx3 or HxWx4, got shape {source.shape}")
        if np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.uint8:
            return samples_to_tensor(arr, "numpy image", window), None
        arr = np.ascontiguousarray(np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr[..., :3])
        tensor = torch.from_numpy(arr).permute(2, 0, 1)
        if tensor.dtype != torch.uint8:
            tensor = tensor.float()
            if tensor.numel() and float(tensor.max()) > 1.0 + 1e-3:
                raise DataError("float numpy images must be in [0, 1]; pass uint8 for 0..255 values")
        return tensor, None
    if isinstance(source, Image.Image):
        if source.mode in DEEP_PIL_MODES:
            return to_image_tensor(np.asarray(source), window)
        return to_image_tensor(np.array(source.convert("RGB")))
    raise DataError(f"unsupported image type {type(source).__name__}: pass a path, PIL image, numpy array or tensor")
