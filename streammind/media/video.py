"""Video decoding by presentation time, over two optional backends (decord and PyAV).

One interface for every place that reads video (training datasets, evaluators, the
streaming demo): ``probe_video`` for metadata, ``read_video`` for a whole clip or a
window of it, and ``iter_frames`` for streaming one frame at a time from a file, a URL
(``rtsp://``, ``http://``, ...) or a webcam device (``/dev/video0``).

Sampling rule (docs/design.md §4). Frames are chosen by presentation timestamp (pts), never
by integer strides and never from an assumed frame rate:

- all times are seconds (float64) relative to the stream's first frame; the container's
  own start offset (``stream.start_time``) is removed;
- the target grid is ``t_k = start + k / fps`` for ``k = 0, 1, ...``, keeping the times in
  ``[start, min(end, duration))`` (see ``sample_grid``);
- for each ``t_k`` the selected frame is the last decoded frame with ``pts <= t_k``
  (a frame less than ``PTS_TOLERANCE_S`` after ``t_k`` counts as at ``t_k``; this only
  absorbs floating-point rounding of ``start + k / fps``, container clocks tick far
  coarser than that).

The video's duration is the end of its last frame: ``pts_last + duration_last`` (the
packet duration; the median frame interval when the container gives none).

Backends. decord is what the original StreamMind used; PyAV is the fallback and the only
backend for URLs and devices. ``backend="auto"`` prefers decord for files. Both are
optional: this module imports without either and raises ``ImportError`` naming both when
a function needs one. On the same file the two backends give identical grid times,
identical selected frame pts and frame indices, and (measured on the sample clips and on
H.264 clips we encode in the tests) bit-identical RGB pixels: both convert YUV to RGB
with swscale at the frame's own colorspace (a BT.709-tagged and an untagged, BT.601,
clip both matched exactly).

Notable details:

- decord only exposes float32 timestamps (``VideoReader.get_frame_timestamp``), which
  carry ~1e-7 relative error. We snap them back to the exact rational times by finding a
  clock lattice every frame lies on: the nominal frame rate (constant-frame-rate files),
  then 1/1000 s (Matroska/WebM), 1/600 s (QuickTime) and 1/90000 s (MPEG-TS), accepting a
  lattice only when it is unambiguous at float32 precision. When none fits (variable
  frame rate on a fine clock, or very long files) the float32 values are kept and pts may
  differ from PyAV's by that rounding.
- Frames are returned in display orientation: the PyAV path rotates by
  ``VideoFrame.rotation``. decord 0.6.0 opens files with rotation metadata but fails on
  every frame (and also failed on a short MPEG-TS clip we wrote); when decord cannot
  decode a file's first frame, ``backend="auto"`` logs a warning and uses PyAV.
- Live sources (URLs, devices) are opened and read with timeouts (``LIVE_TIMEOUT_S``:
  10 s to open or connect, 10 s without data; ``iter_frames(timeout=...)``), so a server
  that accepts the connection and never answers ends the stream with a
  ``VideoDecodeError`` instead of hanging. Their decoding runs in a daemon thread that
  hands frames over a one-slot queue, so Ctrl-C (KeyboardInterrupt) reaches the caller at
  once even while FFmpeg is blocked in a read.
- Broken data. ``iter_frames`` skips frames that fail to decode, counts them in
  ``FrameIterator.skipped`` and logs a warning; a grid time whose frame was lost gets the
  last good frame before it. ``read_video`` does the same and reports the count in
  ``VideoClip.skipped``. The two backends lose different frames around the same
  corruption (decord fails whole keyframe-to-frame seek ranges), so counts and the
  substituted frames are backend-specific. decord's threaded decoder also fails
  nondeterministically on good frames near corrupt packets; a failed request is retried
  on a freshly opened reader (``_DecordReader``), which made the outcome repeatable in
  our tests.

Notation: T sampled frames, H x W frame size, 3 RGB channels.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import queue
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import UserError

try:
    import decord
except ImportError:
    decord = None

try:
    import av
except ImportError:
    av = None

logger = logging.getLogger(__name__)

Backend = Literal["auto", "decord", "pyav"]

PTS_TOLERANCE_S = 1e-6
# Clock rates (Hz) tried, after the nominal frame rate, when snapping decord's float32 times.
_SNAP_CLOCKS_HZ = (1000, 600, 90000)
# decord rounds through float32 up to three times; allow 4 float32 ulps of relative error.
_FLOAT32_REL_TOL = 2.0**-22
# Frames fetched from decord per get_batch call while streaming.
_DECORD_CHUNK = 16
# How far back decord looks for a good frame when a window's first selected frame is broken.
_DECORD_LOOKBACK = 64
# Tries per frame (each after reopening the reader) before decord declares it broken.
_DECORD_ATTEMPTS = 3
# (open, read) timeouts in seconds of URLs and devices: connecting / opening, and the longest
# wait for data once open.
LIVE_TIMEOUT_S = (10.0, 10.0)
# How often a thread waiting for a live source's next frame wakes (to let Ctrl-C through).
_POLL_S = 0.1


class VideoDecodeError(UserError):
    """A video cannot be read: missing, not a video, undecodable or without frames."""


class _DecordUnsupported(VideoDecodeError):
    """decord opened the file but cannot decode it; backend="auto" then retries with PyAV."""


@dataclass(frozen=True)
class VideoInfo:
    """Metadata of the video stream.

    Attributes:
        path: the source as given.
        fps: nominal (average) frame rate from the container; informational only, sampling
            never relies on it.
        num_frames: frames with a timestamp in the container index.
        duration_s: end of the last frame, relative to the first frame (seconds).
        width, height: size of the returned frames (after rotation metadata is applied).
        backend: "decord" or "pyav".
    """

    path: str
    fps: float
    num_frames: int
    duration_s: float
    width: int
    height: int
    backend: str


@dataclass
class VideoClip:
    """Frames sampled on a time grid.

    Attributes:
        frames: uint8 [T, H, W, 3] RGB.
        times: float64 [T], the grid times t_k (seconds from the first frame).
        frame_pts: float64 [T], pts of the frame shown at each grid time (<= times).
        info: metadata of the source video.
        skipped: frames that failed to decode (see the module docstring).
    """

    frames: np.ndarray
    times: np.ndarray
    frame_pts: np.ndarray
    info: VideoInfo
    skipped: int = 0


@dataclass
class _Index:
    """Container index: every frame's pts (sorted, relative seconds) and the video end."""

    pts: np.ndarray
    duration_s: float
    info: VideoInfo
    reader: Any = None  # the open _DecordReader (decord backend), reused for decoding


# ---------------------------------------------------------------------------- helpers


def _is_live_source(source: str) -> bool:
    """URLs and capture devices, which only PyAV can open and which have no index."""
    return "://" in source or source.startswith("/dev/video")


def _resolve_backend(backend: str, source: str) -> str:
    """Pick the backend for a source; raise ImportError/ValueError with the fix."""
    if backend not in ("auto", "decord", "pyav"):
        raise ValueError(f"backend must be 'auto', 'decord' or 'pyav', got {backend!r}")
    live = _is_live_source(source)
    if backend == "auto":
        if decord is not None and not live:
            return "decord"
        if av is not None:
            return "pyav"
        if live:
            raise ImportError(f"reading {source} needs PyAV (`pip install av`); decord cannot open URLs or devices")
        raise ImportError("video decoding needs decord (`pip install decord`) or PyAV (`pip install av`); neither is installed")
    if backend == "decord":
        if live:
            raise ValueError(f"decord cannot open URLs or devices ({source}); use backend='pyav'")
        if decord is None:
            raise ImportError("backend='decord' requested but decord is not installed (`pip install decord`)")
    if backend == "pyav" and av is None:
        raise ImportError("backend='pyav' requested but PyAV is not installed (`pip install av`)")
    return backend


def _decord_msg(exc: BaseException) -> str:
    """decord's error text without its C++ log prefixes ("[time] file.cc:123: ")."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return re.sub(r"(\[[\d:]+\]\s*)?\S+\.(cc|h):\d+:\s*", "", text).strip()


def _check_local_file(path: str) -> None:
    """Fail early, with the path, on a missing, non-regular or empty file."""
    p = Path(path)
    if not p.exists():
        raise VideoDecodeError(f"{path}: file not found")
    if not p.is_file():
        raise VideoDecodeError(f"{path}: not a regular file")
    if p.stat().st_size == 0:
        raise VideoDecodeError(f"{path}: empty file (0 bytes), no video frames")


def _video_end(pts: np.ndarray, last_end_s: float, fps: float) -> float:
    """End of the last frame: its packet's end, else last pts + median interval, else + 1/fps."""
    last = float(pts[-1])
    if last_end_s > last:
        return last_end_s
    if len(pts) > 1:
        return last + float(np.median(np.diff(pts)))
    return last + (1.0 / fps if fps > 0 else 0.0)


# Slack when ceiling a time to the frame grid, relative to t * fps: 1e-9 of the time itself
# (3.6 us after an hour). It absorbs float noise (0.7 s * 10 fps = 7.000000000000001 stays on
# slot 7) and times written with microsecond precision (1266.966967 s at 29.97 fps is slot
# 37971), while any real offset past a slot moves to the next one.
_GRID_REL_EPS = 1e-9


def ceil_to_grid(time_s: float, fps: float) -> float:
    """The smallest grid time ``k / fps >= time_s`` (k >= 0): where an event at `time_s` is first seen.

    ``t * fps`` within a relative 1e-9 above an integer counts as that integer (float noise or
    rounding of the written time, not a later time): the one rule used by the annotation
    converters and the benchmarks (COIN's segment bounds).
    """
    x = time_s * fps
    return max(math.ceil(x - _GRID_REL_EPS * max(1.0, abs(x))) / fps, 0.0)


def sample_grid(duration_s: float, fps: float, start: float = 0.0, end: float | None = None) -> np.ndarray:
    """Target sampling times on a fixed-rate grid.

    Returns ``t_k = start + k / fps`` (k = 0, 1, ...; each computed directly, never by
    accumulation) for every ``t_k`` with ``start <= t_k < stop``, where
    ``stop = duration_s`` if ``end`` is None else ``min(end, duration_s)``. The interval is
    half-open: a time equal to the duration (or to ``end``) is excluded, because no frame is
    displayed from that instant on.

    Args:
        duration_s: video duration in seconds (end of the last frame).
        fps: target sampling rate, > 0.
        start: first grid time in seconds, >= 0.
        end: optional exclusive upper bound in seconds.

    Returns:
        float64 [T] times (T may be 0 when the window is empty).
    """
    if not fps > 0 or not math.isfinite(fps):
        raise ValueError(f"fps must be a positive finite number, got {fps}")
    if not start >= 0:
        raise ValueError(f"start must be >= 0, got {start}")
    stop = duration_s if end is None else min(end, duration_s)
    if not stop > start:
        return np.zeros(0, dtype=np.float64)
    n = int(math.ceil((stop - start) * fps)) + 1
    times = start + np.arange(n, dtype=np.float64) / fps
    return times[times < stop]


def _select_indices(pts: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index of the last frame with pts <= t (within PTS_TOLERANCE_S) for each grid time; -1 if none."""
    return np.searchsorted(pts, times + PTS_TOLERANCE_S, side="right") - 1


def _clock_steps(fps: float) -> list[Fraction]:
    """Candidate clock lattices (seconds per tick): the nominal frame period, then common clocks."""
    steps = [Fraction(1, hz) for hz in _SNAP_CLOCKS_HZ]
    if fps > 0 and math.isfinite(fps):
        steps.insert(0, 1 / Fraction(fps).limit_denominator(10**6))
    return steps


def _snap_to_clock(x: np.ndarray, steps: list[Fraction]) -> tuple[np.ndarray, Fraction | None]:
    """Recover exact times from decord's float32 seconds by snapping to a clock lattice.

    Returns the snapped times and the first step whose lattice holds every value within
    float32 rounding, or ``(x, None)`` when none does.
    """
    tol = _FLOAT32_REL_TOL * np.maximum(np.abs(x), 1.0)
    for step in steps:
        if float(step) <= 4 * float(tol.max()):
            continue  # lattice too fine to be unambiguous at float32 precision
        n = np.rint(x * step.denominator / step.numerator).astype(np.int64)
        # n * p is an exact integer in float64 and the division is correctly rounded, so
        # the result is the float64 nearest the rational n*p/q, exactly what PyAV computes.
        snapped = (n * step.numerator) / step.denominator
        if np.all(np.abs(snapped - x) <= tol):
            return snapped, step
    return x, None


def _pyav_rgb(frame: Any) -> np.ndarray:
    """PyAV VideoFrame -> uint8 [H, W, 3] RGB in display orientation."""
    rgb = frame.to_ndarray(format="rgb24")
    # VideoFrame.rotation is the counter-clockwise angle the display matrix applies;
    # np.rot90 with positive k also rotates counter-clockwise.
    k = int(round(frame.rotation / 90.0)) % 4 if frame.rotation else 0
    if k:
        rgb = np.ascontiguousarray(np.rot90(rgb, k))
    return rgb


@dataclass
class _Stats:
    """Counters shared between a decoding loop and its owner."""

    skipped: int = 0  # frames/packets that failed to decode
    dropped: int = 0  # grid times before the first decodable frame


@dataclass
class _LastGood:
    """The last frame shown (decord path), reused in place of a broken one."""

    index: int = -1  # highest frame index already tried
    pts: float | None = None
    frame: np.ndarray | None = None


def _warn_skip(stats: _Stats, source: str, what: str) -> None:
    """Count one broken frame; warn on the first, debug-log the rest (summarised at the end)."""
    stats.skipped += 1
    if stats.skipped == 1:
        logger.warning("%s: skipping undecodable data (%s); further skips are summarised at the end", source, what)
    else:
        logger.debug("%s: skipping undecodable data (%s)", source, what)


# ------------------------------------------------------------------------------ PyAV


def _pyav_open(source: str, options: dict[str, str] | None = None, timeout: tuple[float, float] | None = None) -> tuple[Any, Any]:
    """Open a container and its first video stream, mapping failures to VideoDecodeError.

    `timeout`: (open, read) seconds (PyAV's interrupt callback); None waits forever.
    """
    if not _is_live_source(source):
        _check_local_file(source)
    kwargs: dict[str, Any] = {"options": options or {}}
    if timeout is not None:
        kwargs["timeout"] = timeout
    if source.startswith("/dev/video"):
        kwargs["format"] = "v4l2"
    try:
        container = av.open(source, **kwargs)
    except av.ExitError as exc:  # raised only by the interrupt callback, i.e. the open timeout
        raise VideoDecodeError(f"{source}: no answer within {timeout[0]:g} s (open timeout)") from exc
    except av.FFmpegError as exc:
        raise VideoDecodeError(f"{source}: cannot open as a video ({type(exc).__name__}: {exc.strerror or exc})") from exc
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(f"{source}: no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return container, stream


def _pyav_fps(stream: Any) -> float:
    """Nominal frame rate of a PyAV stream (0.0 if unknown)."""
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else 0.0


def _pyav_frames(
    container: Any, stream: Any, origin: int | None, stats: _Stats, source: str, read_timeout: float | None = None
) -> Iterator[tuple[float, float, Any]]:
    """Decode in presentation order; yield (pts_s, end_s, frame) relative to the origin.

    ``origin`` is the first frame's pts in stream ticks; None takes ``stream.start_time``, or
    the first decoded frame's pts when the container does not give one. Packets that fail
    to decode, frames flagged corrupt, without pts, or going back in time are skipped.
    """
    tb = stream.time_base
    num, den = tb.numerator, tb.denominator
    if origin is None:
        origin = stream.start_time
    fps = _pyav_fps(stream)
    nominal_period = 1.0 / fps if fps > 0 else 0.0
    last_pts = None
    prev_s = None
    try:
        for packet in container.demux(stream):
            try:
                decoded = packet.decode()
            except av.FFmpegError as exc:
                _warn_skip(stats, source, f"packet pts={packet.pts}: {type(exc).__name__}")
                continue
            for frame in decoded:
                if frame.pts is None or frame.is_corrupt or (last_pts is not None and frame.pts <= last_pts):
                    _warn_skip(stats, source, f"frame pts={frame.pts}")
                    continue
                if origin is None:
                    origin = frame.pts
                last_pts = frame.pts
                pts_s = ((frame.pts - origin) * num) / den
                if frame.duration:
                    end_s = ((frame.pts + frame.duration - origin) * num) / den
                else:
                    end_s = pts_s + (pts_s - prev_s if prev_s is not None else nominal_period)
                prev_s = pts_s
                yield pts_s, end_s, frame
    except av.ExitError as exc:  # the read timeout of a live source
        raise VideoDecodeError(f"{source}: no data for {read_timeout:g} s (read timeout)") from exc
    except av.FFmpegError as exc:
        raise VideoDecodeError(f"{source}: demuxing failed ({type(exc).__name__}: {exc.strerror or exc})") from exc


def _follow_grid(
    frames: Iterator[tuple[float, float, Any]], times: Iterator[float], eof_end: float | None, stats: _Stats
) -> Iterator[tuple[float, float, Any]]:
    """Streaming form of ``_select_indices``: (pts, end, payload) in, (t, pts, payload) out.

    Holds the latest frame; a grid time is resolved once a frame with pts > t arrives (so
    the held one is the last with pts <= t) or the input ends. At the end, remaining grid
    times are resolved while ``t < eof_end`` (``None``: the end of the held frame). Grid
    times before the first frame are dropped and counted in ``stats.dropped``.
    """
    t = next(times, None)
    held: tuple[float, float, Any] | None = None
    for pts, end, payload in frames:
        while t is not None and pts > t + PTS_TOLERANCE_S:
            if held is None:
                stats.dropped += 1
            else:
                yield t, held[0], held[2]
            t = next(times, None)
        if t is None:
            break
        held = (pts, end, payload)
    else:
        if held is not None:
            stop = held[1] if eof_end is None else eof_end
            while t is not None and t < stop:
                yield t, held[0], held[2]
                t = next(times, None)


def _pyav_index(path: str) -> _Index:
    """Demux every packet for its pts (no full decode); decode only until the first frame."""
    container, stream = _pyav_open(path)
    with container:
        tb = stream.time_base
        pts_ticks: list[int] = []
        durations: dict[int, int] = {}
        shape = None
        try:
            for packet in container.demux(stream):
                ts = packet.pts if packet.pts is not None else packet.dts
                if packet.size > 0 and ts is not None:
                    pts_ticks.append(ts)
                    durations[ts] = packet.duration or 0
                if shape is None:  # the final empty packet flushes the decoder, so 1-frame files work
                    try:
                        shape = next((_pyav_rgb(frame).shape for frame in packet.decode()), None)
                    except av.FFmpegError:
                        pass
        except av.FFmpegError as exc:
            raise VideoDecodeError(f"{path}: demuxing failed ({type(exc).__name__}: {exc.strerror or exc})") from exc
        if not pts_ticks:
            raise VideoDecodeError(f"{path}: video stream has no frames")
        if shape is None:
            raise VideoDecodeError(f"{path}: no frame could be decoded")
        ticks = np.sort(np.asarray(pts_ticks, dtype=np.int64))
        origin = stream.start_time if stream.start_time is not None else int(ticks[0])
        pts = ((ticks - origin) * tb.numerator) / tb.denominator
        fps = _pyav_fps(stream)
        last_end = ((int(ticks[-1]) + durations[int(ticks[-1])] - origin) * tb.numerator) / tb.denominator
        duration = _video_end(pts, last_end, fps)
    info = VideoInfo(path, fps, len(ticks), duration, int(shape[1]), int(shape[0]), "pyav")
    return _Index(pts=pts, duration_s=duration, info=info)


def _pyav_read(path: str, index: _Index, times: np.ndarray) -> VideoClip:
    """Decode sequentially (after seeking near the window start) and keep the grid's frames."""
    for use_seek in (bool(times[0] > 0), False):
        stats = _Stats()
        container, stream = _pyav_open(path)
        with container:
            if use_seek:
                target = int(math.floor(times[0] / stream.time_base)) + (stream.start_time or 0)
                container.seek(target, stream=stream, backward=True, any_frame=False)
            decoded = _pyav_frames(container, stream, stream.start_time, stats, path)
            picked = _follow_grid(decoded, iter(times.tolist()), math.inf, stats)
            first = next(picked, None)
            if use_seek and (first is None or first[0] != times[0]):
                logger.debug("%s: seek overshot the window start, decoding from the beginning", path)
                continue
            rgb_picked = []
            last_frame, last_rgb = None, None
            for t, pts, frame in itertools.chain([first] if first is not None else [], picked):
                if frame is not last_frame:
                    last_frame, last_rgb = frame, _pyav_rgb(frame)
                rgb_picked.append((t, pts, last_rgb))
            break
    return _clip_from(path, index, stats, rgb_picked)


def _clip_from(path: str, index: _Index, stats: _Stats, picked: list[tuple[float, float, np.ndarray]]) -> VideoClip:
    """The VideoClip of ``(grid time, pts, rgb)`` triples; raises when none, warns about skips and drops."""
    if not picked:
        raise VideoDecodeError(f"{path}: no frame could be decoded")
    if stats.skipped:
        logger.warning("%s: skipped %d undecodable packets/frames", path, stats.skipped)
    if stats.dropped:
        logger.warning("%s: %d grid times precede the first decodable frame and were dropped", path, stats.dropped)
    return VideoClip(
        frames=np.stack([f for _, _, f in picked]),
        times=np.array([t for t, _, _ in picked], dtype=np.float64),
        frame_pts=np.array([p for _, p, _ in picked], dtype=np.float64),
        info=index.info,
        skipped=stats.skipped,
    )


# ---------------------------------------------------------------------------- decord


def _decord_open(path: str) -> Any:
    """Open a decord VideoReader, mapping its assorted failures to VideoDecodeError."""
    _check_local_file(path)
    try:
        return decord.VideoReader(path, num_threads=0)
    except decord.DECORDError as exc:
        if "cannot find video stream" in str(exc):
            raise VideoDecodeError(f"{path}: no video stream") from exc
        raise VideoDecodeError(f"{path}: cannot open as a video (decord: {_decord_msg(exc)})") from exc
    except AssertionError as exc:
        raise VideoDecodeError(f"{path}: video stream has no frames") from exc
    except RuntimeError as exc:
        raise VideoDecodeError(f"{path}: cannot open as a video (decord: {_decord_msg(exc)})") from exc


class _DecordReader:
    """A decord VideoReader that is reopened after a decode error.

    decord's threaded decoder reads packets ahead, so corrupt data near a requested frame
    can make the request fail, and the reader can stay failing; which requests fail varies
    from run to run. A fresh reader and a retry makes the outcome repeatable.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.vr = _decord_open(path)

    def reopen(self) -> None:
        self.vr = _decord_open(self.path)

    def frames(self, indices: list[int], attempts: int = 1) -> np.ndarray:
        """uint8 [N, H, W, 3] frames; after a failure reopen and retry, up to ``attempts`` tries."""
        attempt = 1
        while True:
            try:
                return self.vr.get_batch(indices).asnumpy()
            except decord.DECORDError:
                self.reopen()
                if attempt >= attempts:
                    raise
                attempt += 1


def _decord_index(path: str, reader: _DecordReader) -> _Index:
    """Frame pts from decord's float32 timestamps, snapped to exact values when possible."""
    vr = reader.vr
    n = len(vr)
    ts = vr.get_frame_timestamp(np.arange(n)).astype(np.float64)  # [N, 2] (start, stop)
    start, stop = ts[:, 0], ts[:, 1]
    # decord subtracts stream.start_time; when the container has none (AV_NOPTS_VALUE) the
    # values are enormous, so fall back to the first frame as origin.
    if abs(start[0]) > 1e5:
        stop, start = stop - start[0], start - start[0]
    fps = float(vr.get_avg_fps())
    pts, step = _snap_to_clock(start, _clock_steps(fps))
    last_stop = float(stop[-1])
    if step is None:
        logger.debug("%s: decord timestamps kept at float32 precision (no clock lattice fits)", path)
    else:
        last_stop = float(_snap_to_clock(np.array([last_stop]), [step])[0][0])
    duration = _video_end(pts, last_stop, fps)
    try:
        height, width = reader.frames([0], attempts=_DECORD_ATTEMPTS).shape[1:3]
    except decord.DECORDError as exc:
        # decord 0.6.0 opens some valid files it cannot decode (e.g. rotation metadata:
        # its buffers keep the unrotated size and every get_batch fails).
        raise _DecordUnsupported(f"{path}: decord cannot decode the first frame ({_decord_msg(exc)})") from exc
    info = VideoInfo(path, fps, n, duration, int(width), int(height), "decord")
    return _Index(pts=pts, duration_s=duration, info=info, reader=reader)


def _decord_fetch(reader: _DecordReader, indices: list[int], stats: _Stats) -> dict[int, np.ndarray]:
    """Decode frames by index; on failure retry one by one and leave out the broken ones."""
    if not indices:
        return {}
    try:
        batch = reader.frames(indices)  # [N, H, W, 3]
        return {i: batch[j] for j, i in enumerate(indices)}
    except decord.DECORDError:
        out = {}
        for i in indices:
            try:
                out[i] = reader.frames([i], attempts=_DECORD_ATTEMPTS)[0]
            except decord.DECORDError as exc:
                logger.debug("%s: decord failed on frame %d: %s", reader.path, i, _decord_msg(exc))
                _warn_skip(stats, reader.path, f"frame {i}")
        return out


def _decord_pick(index: _Index, times: np.ndarray, stats: _Stats, last: _LastGood) -> Iterator[tuple[float, float, np.ndarray]]:
    """Yield (t, pts, frame) for a run of grid times.

    A broken selected frame is replaced, as in the PyAV path, by the last good frame before
    it: frames between the previously shown one (or up to ``_DECORD_LOOKBACK`` back) are
    tried newest first, then ``last`` is kept.
    """
    sel = _select_indices(index.pts, times)
    wanted = sorted({int(i) for i in sel if i >= 0})
    got = _decord_fetch(index.reader, wanted, stats)
    for t, i in zip(times.tolist(), sel.tolist()):
        if i in got:
            last.index, last.pts, last.frame = i, float(index.pts[i]), got[i]
        elif i > last.index:
            for j in range(i - 1, max(last.index, i - 1 - _DECORD_LOOKBACK, -1), -1):
                earlier = _decord_fetch(index.reader, [j], stats)
                if j in earlier:
                    last.index, last.pts, last.frame = j, float(index.pts[j]), earlier[j]
                    break
            last.index = max(last.index, i)  # do not retry the same broken range for the next grid time
        if last.frame is None:
            stats.dropped += 1
            continue
        yield t, last.pts, last.frame


# -------------------------------------------------------------------------- public API


def probe_video(path: str | os.PathLike, backend: Backend = "auto") -> VideoInfo:
    """Read a video file's metadata (frame pts are indexed, only the first frame is decoded).

    Args:
        path: video file.
        backend: "auto" (decord if installed, else PyAV), "decord" or "pyav".

    Returns:
        VideoInfo; ``duration_s`` is the end of the last frame.

    Raises:
        VideoDecodeError: missing file, not a video, no video stream or no frames.
        ImportError: neither backend is installed.
    """
    return _index(str(path), backend).info


def _index(path: str, backend: Backend) -> _Index:
    """Frame pts index and metadata through the resolved backend."""
    if _is_live_source(path):
        raise ValueError(f"{path} is a live source without an index; use iter_frames")
    name = _resolve_backend(backend, path)
    if name == "decord":
        try:
            return _decord_index(path, _DecordReader(path))
        except _DecordUnsupported as exc:
            if backend != "auto" or av is None:
                raise
            logger.warning("%s; falling back to PyAV", exc)
    return _pyav_index(path)


def read_video(
    path: str | os.PathLike,
    fps: float = 2.0,
    start: float | None = None,
    end: float | None = None,
    backend: Backend = "auto",
    max_frames: int | None = None,
) -> VideoClip:
    """Decode the frames shown at ``sample_grid(duration, fps, start, end)``.

    Args:
        path: video file.
        fps: target sampling rate (frames per second of video time), > 0.
        start: window start in seconds from the first frame (default 0).
        end: exclusive window end in seconds (default: the video's duration).
        backend: "auto", "decord" or "pyav".
        max_frames: keep only the first ``max_frames`` grid times (the window is cut
            short, not resampled).

    Returns:
        VideoClip with frames uint8 [T, H, W, 3], times [T], frame_pts [T].

    Raises:
        VideoDecodeError: the file cannot be read or has no decodable frame.
        ValueError: the window holds no grid time.
    """
    path = str(path)
    start = 0.0 if start is None else float(start)
    index = _index(path, backend)
    times = sample_grid(index.duration_s, fps, start, end)
    if max_frames is not None:
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        times = times[:max_frames]
    if len(times) == 0:
        raise ValueError(f"{path}: window [{start}, {end}) holds no sample at {fps} fps (duration {index.duration_s:.3f} s)")
    if index.info.backend == "pyav":
        return _pyav_read(path, index, times)
    stats = _Stats()
    return _clip_from(path, index, stats, list(_decord_pick(index, times, stats, _LastGood())))


def _in_background(items: Iterator[Any], name: str) -> Iterator[Any]:
    """Run the generator `items` in a daemon thread and yield what it yields, in order.

    The hand-over is a one-slot queue polled every `_POLL_S` seconds, so the calling thread
    never blocks in C code (FFmpeg) and a KeyboardInterrupt reaches it at once. When the
    caller stops early, the thread stops at its next item (or when its read times out) and
    closes the generator (hence the source) itself.
    """
    slot: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def hand_over(message: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                slot.put(message, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not hand_over(("item", item)):
                    return
            hand_over(("end", None))
        except BaseException as exc:  # handed to the caller, who raises it
            hand_over(("error", exc))
        finally:
            items.close()

    threading.Thread(target=work, name=name, daemon=True).start()
    try:
        while True:
            try:
                kind, value = slot.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()


class FrameIterator:
    """Iterator of ``(time, frame)`` pairs produced by ``iter_frames``.

    ``time`` is the grid time in seconds (float), ``frame`` uint8 [H, W, 3] RGB. Decoding is
    incremental: the source is opened on the first ``next()`` (so open errors surface
    there) and read only as far as needed.

    Attributes:
        skipped: frames (PyAV: packets or frames) that failed to decode and were skipped,
            counted so far.
        last_pts: pts in seconds of the frame just yielded (<= its grid time).
        backend: "decord" or "pyav".
    """

    def __init__(
        self, source: str, fps: float, backend: str, options: dict[str, str] | None, auto: bool, timeout: tuple[float, float] | None = None
    ) -> None:
        if not fps > 0 or not math.isfinite(fps):
            raise ValueError(f"fps must be a positive finite number, got {fps}")
        self.source = source
        self.timeout = timeout
        self.fps = fps
        self.backend = backend
        self._auto = auto
        self.last_pts: float | None = None
        self._options = options
        self._stats = _Stats()
        self._gen = self._run()

    @property
    def skipped(self) -> int:
        return self._stats.skipped

    def __iter__(self) -> FrameIterator:
        return self

    def __next__(self) -> tuple[float, np.ndarray]:
        return next(self._gen)

    def close(self) -> None:
        """Stop decoding and release the source."""
        self._gen.close()

    def _grid(self) -> Iterator[float]:
        """Unbounded grid k / fps (same arithmetic as ``sample_grid``) for sources of unknown length."""
        return (k / self.fps for k in itertools.count())

    def _run(self) -> Iterator[tuple[float, np.ndarray]]:
        try:
            if self.backend == "decord":
                try:
                    index = _decord_index(self.source, _DecordReader(self.source))
                except _DecordUnsupported as exc:
                    if not self._auto or av is None:
                        raise
                    logger.warning("%s; falling back to PyAV", exc)
                    self.backend = "pyav"
            if self.backend == "decord":
                yield from self._run_decord(index)
            elif _is_live_source(self.source):
                yield from _in_background(self._run_pyav(), name=f"streammind-read {self.source}")
            else:
                yield from self._run_pyav()
        finally:
            if self._stats.skipped:
                logger.warning("%s: skipped %d undecodable packets/frames", self.source, self._stats.skipped)
            if self._stats.dropped:
                logger.warning("%s: %d grid times precede the first decodable frame and were dropped", self.source, self._stats.dropped)

    def _run_pyav(self) -> Iterator[tuple[float, np.ndarray]]:
        container, stream = _pyav_open(self.source, self._options, self.timeout)
        with container:
            decoded = _pyav_frames(container, stream, None, self._stats, self.source, self.timeout[1] if self.timeout else None)
            for t, pts, frame in _follow_grid(decoded, self._grid(), None, self._stats):
                self.last_pts = pts
                yield t, _pyav_rgb(frame)

    def _run_decord(self, index: _Index) -> Iterator[tuple[float, np.ndarray]]:
        times = sample_grid(index.duration_s, self.fps)
        last = _LastGood()
        for lo in range(0, len(times), _DECORD_CHUNK):
            for t, pts, frame in _decord_pick(index, times[lo : lo + _DECORD_CHUNK], self._stats, last):
                self.last_pts = pts
                yield t, frame


def iter_frames(
    source: str | os.PathLike,
    fps: float = 2.0,
    backend: Backend = "auto",
    options: dict[str, str] | None = None,
    timeout: tuple[float, float] | None = LIVE_TIMEOUT_S,
) -> FrameIterator:
    """Stream ``(time, frame)`` pairs on the grid ``k / fps`` from a file, URL or device.

    Gives the same times and frames as ``read_video(source, fps)`` for files, without
    holding the clip in memory. URLs (``rtsp://``, ``http://``, ...) and devices
    (``/dev/videoN``, opened with v4l2) need PyAV; there the stream ends when the source
    does, and the last frame covers the grid up to its own end.

    Args:
        source: file path, URL or capture device.
        fps: target sampling rate, > 0.
        backend: "auto" (decord for files if installed, else PyAV), "decord" or "pyav".
        options: PyAV/FFmpeg open options, e.g. ``{"rtsp_transport": "tcp"}``.
        timeout: (open, read) seconds for URLs and devices: the longest wait to open or
            connect, and for data once open (a ``VideoDecodeError`` when exceeded); None
            waits forever. Files are read without a timeout.

    Returns:
        FrameIterator; its ``skipped`` attribute counts frames lost to decode errors.
    """
    source = str(source)
    name = _resolve_backend(backend, source)
    if options and name != "pyav":
        raise ValueError("options are PyAV open options; they need backend='pyav'")
    if timeout is not None and (len(timeout) != 2 or not all(math.isfinite(t) and t > 0 for t in timeout)):
        raise ValueError(f"timeout must be (open, read) positive finite seconds, got {timeout}")
    live = _is_live_source(source)
    return FrameIterator(source, fps, name, options, auto=backend == "auto", timeout=tuple(timeout) if timeout and live else None)
