"""Video frames in and annotated video out, through PyAV (FFmpeg bindings with bundled codecs)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import torch

from retinadet.errors import DataError

# H.264 where the FFmpeg build has an encoder for it, else MPEG-4 part 2 (always bundled).
_CODECS = ("libx264", "h264", "mpeg4")


def _av():
    try:
        import av  # type: ignore
    except ImportError:  # pragma: no cover - av is a declared dependency
        raise DataError("reading or writing video needs PyAV: pip install av") from None
    return av


def probe_video(path: str) -> float:
    """Frames per second of ``path``'s first video stream; a :class:`DataError` naming the file if it cannot be decoded."""
    av = _av()
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise DataError(f"{path}: no video stream in this file")
            stream = container.streams.video[0]
            next(container.decode(stream), None)
            rate = stream.average_rate or stream.guessed_rate
    except av.FFmpegError as exc:
        raise DataError(f"{path}: not a readable video ({exc})") from None
    return float(rate) if rate else 25.0


def read_video_frames(path: str, on_error: Callable[[str], None] | None = None) -> Iterator[torch.Tensor]:
    """uint8 [3, H, W] RGB frames, in order. A packet that does not decode is fatal, or, given ``on_error``,
    reported to it (one message naming the file and the frame position) and passed over."""
    av = _av()
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            decoded = 0
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.FFmpegError as exc:
                    if on_error is None:
                        raise
                    on_error(f"{path}: undecodable data after frame {decoded} ({exc})")
                    continue
                for frame in frames:
                    decoded += 1
                    yield torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1).contiguous()
    except av.FFmpegError as exc:
        raise DataError(f"{path}: video decoding failed ({exc})") from None


class VideoWriter:
    """Writes uint8 [3, H, W] frames to ``path`` (an .mp4) at ``fps``, atomically: a temp file renamed on close."""

    def __init__(self, path: str | os.PathLike, fps: float):
        self.path = Path(path)
        self.fps = Fraction(fps).limit_denominator(1001) if fps > 0 else Fraction(25)
        self._tmp = self.path.with_name(f".{self.path.stem}.tmp{self.path.suffix}")
        self._container = None
        self._stream = None
        self.frames = 0

    def _open(self, height: int, width: int) -> None:
        av = _av()
        self._container = av.open(str(self._tmp), mode="w", format="mp4")
        codec = next((c for c in _CODECS if c in av.codecs_available), None)
        if codec is None:  # pragma: no cover - PyAV wheels bundle mpeg4
            raise DataError(f"{self.path}: this FFmpeg build has no MP4 video encoder")
        self._stream = self._container.add_stream(codec, rate=self.fps)
        # yuv420p needs even sides; the odd last row or column is dropped.
        self._stream.height, self._stream.width = height - height % 2, width - width % 2
        self._stream.pix_fmt = "yuv420p"

    def write(self, image: torch.Tensor) -> None:
        av = _av()
        if self._container is None:
            self._open(int(image.shape[-2]), int(image.shape[-1]))
        h, w = self._stream.height, self._stream.width
        array = image[:, :h, :w].permute(1, 2, 0).contiguous().numpy()
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> Path | None:
        """Flushes and renames into place; the path, or None when no frame was written."""
        if self._container is None:
            return None
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
        self._tmp.unlink(missing_ok=True)
