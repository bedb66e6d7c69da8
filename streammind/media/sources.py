"""Live and recorded sources of frames for streaming: files, capture devices, URLs, image folders.

`open_source` classifies a source string and opens it as one `FrameSource` of ``(time,
frame)`` pairs (time in seconds, frame uint8 [H, W, 3] RGB) with a `skipped` count of broken
frames:

- a video file (decord or PyAV; probed when opened, so a missing file or a non-video fails
  there; `declared_duration_s` lets the runner notice a file that ends early);
- a capture device (``/dev/videoN`` or an integer index N) or a URL (``rtsp://``,
  ``http://``, ...), always through PyAV, with open and read timeouts;
- a folder of images (`ImageFolderFrames`: natural name order, image k at k / fps).

Frames are sampled on the grid k / fps by presentation time (`streammind.media.video`).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .video import LIVE_TIMEOUT_S, Backend, FrameIterator, iter_frames, probe_video

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# A file whose frames stop this much before the duration its header declares ended early.
EARLY_END_TOLERANCE_S = 0.5


class SourceError(UserError):
    """A source cannot be streamed (no such device, a folder without images, ...)."""


def _natural_key(name: str) -> list:
    """Sort key comparing digit runs as numbers: frame_2 < frame_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


class ImageFolderFrames:
    """``(k / fps, frame)`` for the k-th image of a folder, in natural name order.

    Images that cannot be read are skipped and counted in `skipped`; their time slot stays
    empty (the next image keeps its own k / fps). Same interface as `FrameIterator`.
    """

    def __init__(self, folder: str | os.PathLike, fps: float) -> None:
        if not fps > 0 or not math.isfinite(fps):
            raise ValueError(f"fps must be a positive finite number, got {fps}")
        self.folder = Path(folder)
        self.fps = fps
        self.paths = sorted(
            (p for p in self.folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
            key=lambda p: _natural_key(p.name),
        )
        if not self.paths:
            raise SourceError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in the folder")
        self.skipped = 0
        self._gen = self._run()

    def __iter__(self) -> ImageFolderFrames:
        return self

    def __next__(self) -> tuple[float, np.ndarray]:
        return next(self._gen)

    def close(self) -> None:
        self._gen.close()

    def _run(self) -> Iterator[tuple[float, np.ndarray]]:
        from PIL import Image, UnidentifiedImageError

        for k, path in enumerate(self.paths):
            try:
                with Image.open(path) as image:
                    frame = np.array(image.convert("RGB"))  # [H, W, 3] uint8, writable
            except (OSError, UnidentifiedImageError) as exc:
                self.skipped += 1
                logger.warning("%s: skipping unreadable image (%s)", path, exc)
                continue
            yield k / self.fps, frame


@dataclass
class FrameSource:
    """An opened source of ``(time, frame)`` pairs (time in seconds, frame uint8 [H, W, 3] RGB).

    Attributes:
        name: the source as given.
        kind: "file", "url", "device" or "images".
        fps: the sampling rate of the times.
        frames: the underlying iterator (`FrameIterator` or `ImageFolderFrames`).
        duration_s: the probed duration (files; None for the others).
        declared_duration_s: the video stream's duration in the container header (files read
            by PyAV), used to notice a truncated file; None when unknown.
    """

    name: str
    kind: str
    fps: float
    frames: FrameIterator | ImageFolderFrames
    duration_s: float | None = None
    declared_duration_s: float | None = None

    def __iter__(self) -> Iterator[tuple[float, np.ndarray]]:
        return iter(self.frames)

    @property
    def skipped(self) -> int:
        return self.frames.skipped

    def close(self) -> None:
        self.frames.close()


def source_kind(source: str) -> str:
    """Classify a source string: "url", "device", "images" or "file"."""
    if "://" in source:
        return "url"
    if source.startswith("/dev/video") or (source.isdigit() and not Path(source).exists()):
        return "device"
    if Path(source).is_dir():
        return "images"
    return "file"


def _declared_duration(path: str) -> float | None:
    """The video stream's duration from the container header (PyAV; None when unknown)."""
    try:
        import av
    except ImportError:
        return None
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            return float(stream.duration * stream.time_base) if stream.duration else None
    except (av.FFmpegError, IndexError):
        return None


def open_source(
    source: str | os.PathLike,
    fps: float = 2.0,
    backend: Backend = "auto",
    options: dict[str, str] | None = None,
    timeout: tuple[float, float] | None = LIVE_TIMEOUT_S,
) -> FrameSource:
    """Open a file, capture device, URL or image folder for streaming at `fps`.

    Args:
        source: a video file, ``/dev/videoN`` or an integer index N (webcam), a URL
            (``rtsp://``, ``http://``, ``file://``, ...) or a folder of images.
        fps: sampling rate: video frames are picked on the grid k / fps by presentation
            time; image k of a folder gets the time k / fps.
        backend: decoder for files ("auto", "decord" or "pyav"); URLs and devices always
            use PyAV.
        options: PyAV/FFmpeg open options for URLs and devices (e.g. ``{"rtsp_transport": "tcp"}``).
        timeout: (open, read) seconds for URLs and devices (default 10 s each): the longest
            wait to connect, and for data once connected; the stream then ends with an error.
            None waits forever.

    Returns:
        A `FrameSource`. Files are probed here; URLs and devices are opened on the first frame.

    Raises:
        VideoDecodeError: a missing file, not a video, no decodable frame.
        SourceError: no such capture device, a folder without images.
        ImportError: the needed decoder is not installed.
    """
    name = str(source)
    kind = source_kind(name)
    if kind == "images":
        return FrameSource(name, kind, fps, ImageFolderFrames(name, fps))
    if kind == "device":
        device = f"/dev/video{name}" if name.isdigit() else name
        if not Path(device).exists():
            raise SourceError(f"{device}: no such capture device")
        return FrameSource(name, kind, fps, iter_frames(device, fps=fps, backend="pyav", options=options, timeout=timeout))
    if kind == "url":
        return FrameSource(name, kind, fps, iter_frames(name, fps=fps, backend="pyav", options=options, timeout=timeout))
    info = probe_video(name, backend=backend)
    return FrameSource(name, kind, fps, iter_frames(name, fps=fps, backend=backend), info.duration_s, _declared_duration(name))


__all__ = ["EARLY_END_TOLERANCE_S", "FrameSource", "IMAGE_EXTENSIONS", "ImageFolderFrames", "SourceError", "open_source", "source_kind"]
