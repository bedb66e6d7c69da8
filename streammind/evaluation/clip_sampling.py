"""Frame sampling for the offline benchmarks: which frames of a clip a question is answered from.

Notation: T sampled frames.

`uniform_times` splits the window [start, end) into T equal chunks and takes the middle of
each, t_i = start + (i + 0.5) (end - start) / T, as the original StreamMind's offline path
does with its `num_frames` = 32; no frame is repeated to pad short clips, and frames are
picked by presentation time (`streammind.media.video`). `load_frames` also offers a
fixed-rate grid (`fps`, the VideoLLM-online way of feeding every 2 fps frame of a segment;
a window holding more than `max_frames` grid times is sampled uniformly with `max_frames`
instead), and reads directories of image files (MVBench's frame-type tasks) with a given
frame rate. A clip that is missing, undecodable or empty raises `BadSample`
("missing_video", "undecodable_video", "empty_video"), which the runner counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadSample
from ..media.video import VideoDecodeError, probe_video, read_video

DEFAULT_NUM_FRAMES = 32  # the original StreamMind's offline `num_frames`
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".gif")


@dataclass
class Frames:
    """Sampled frames: uint8 [T, H, W, 3] and their times [T] in seconds."""

    frames: np.ndarray
    times: np.ndarray


def uniform_times(start: float, end: float, num_frames: int) -> np.ndarray:
    """Middles of `num_frames` equal chunks of [start, end): float64 [num_frames]."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if not end > start:
        raise ValueError(f"empty window [{start}, {end})")
    step = (end - start) / num_frames
    return start + (np.arange(num_frames, dtype=np.float64) + 0.5) * step


def find_video(directory: str | Path, stem: str, suffixes: Sequence[str] = VIDEO_SUFFIXES) -> Path | None:
    """`directory/stem` if it exists, else `directory/stem<suffix>` for the first suffix that exists, else None."""
    directory = Path(directory)
    for path in [directory / stem] + [directory / f"{stem}{suffix}" for suffix in suffixes]:
        if path.exists():
            return path
    return None


def _image_files(directory: Path) -> list[Path]:
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BadSample("empty_video", f"{directory}: a frame directory without image files")
    return files


def _load_frame_dir(directory: Path, times: np.ndarray, fps: float) -> np.ndarray:
    """Frame i of a directory of images (sorted by name) is shown from i / fps on."""
    from PIL import Image

    files = _image_files(directory)
    indices = np.clip(np.floor(times * fps + 1e-6).astype(np.int64), 0, len(files) - 1)
    frames = [np.asarray(Image.open(files[i]).convert("RGB")) for i in indices]
    if len({f.shape for f in frames}) > 1:
        raise BadSample("undecodable_video", f"{directory}: frames of different sizes")
    return np.stack(frames)


def load_frames(
    path: str | Path,
    *,
    num_frames: int | None = DEFAULT_NUM_FRAMES,
    fps: float | None = None,
    start: float | None = None,
    end: float | None = None,
    max_frames: int | None = None,
    frame_dir_fps: float | None = None,
) -> Frames:
    """Sample a clip's frames, uniformly (`num_frames`) or on a fixed-rate grid (`fps`).

    Args:
        path: a video file, or a directory of image files (then `frame_dir_fps` is needed).
        num_frames: T for uniform sampling (the middles of T equal chunks of the window).
        fps: sample every 1/fps seconds from `start` instead (used when given); a window
            holding more than `max_frames` grid times is sampled uniformly with
            `max_frames` frames instead.
        start, end: the window in seconds (default: the whole video); `end` is clamped to
            the video's duration.
        max_frames: cap for grid sampling.
        frame_dir_fps: frame rate of an image directory.

    Returns:
        Frames with uint8 frames [T, H, W, 3] and times [T].

    Raises:
        BadSample: "missing_video", "undecodable_video", or "empty_video" (the window
            holds no frame); the runner counts it.
    """
    try:
        return _load_frames(Path(path), num_frames, fps, start, end, max_frames, frame_dir_fps)
    except VideoDecodeError as error:
        raise BadSample("undecodable_video", str(error)) from error


def _load_frames(path: Path, num_frames, fps, start, end, max_frames, frame_dir_fps) -> Frames:
    """`load_frames` without the error translation."""
    if not path.exists():
        raise BadSample("missing_video", f"video file not found: {path}")
    if fps is None and num_frames is None:
        raise ValueError("give num_frames (uniform sampling) or fps (grid sampling)")
    start = 0.0 if start is None else max(0.0, float(start))
    if path.is_dir():
        if frame_dir_fps is None:
            raise ValueError(f"{path} is a frame directory but no frame rate was given for it")
        duration = len(_image_files(path)) / frame_dir_fps
    else:
        duration = probe_video(path).duration_s
    stop = duration if end is None else min(float(end), duration)
    if not stop > start:
        raise BadSample("empty_video", f"{path}: window [{start:.3f}, {stop:.3f}) s is empty (video duration {duration:.3f} s)")
    grid = np.arange(start, stop, 1.0 / fps, dtype=np.float64) if fps is not None else None
    if grid is not None and (max_frames is None or len(grid) <= max_frames):
        if path.is_dir():
            return Frames(_load_frame_dir(path, grid, frame_dir_fps), grid)
        clip = read_video(path, fps=fps, start=start, end=stop)
        return Frames(clip.frames, clip.times)
    # Uniform sampling (also for a grid longer than max_frames).
    count = num_frames if grid is None else max_frames
    times = uniform_times(start, stop, count)
    if path.is_dir():
        return Frames(_load_frame_dir(path, times, frame_dir_fps), times)
    # The chunk middles form a grid of step (stop - start) / count starting half a step in.
    step = (stop - start) / count
    clip = read_video(path, fps=1.0 / step, start=float(times[0]), end=stop, max_frames=count)
    return Frames(clip.frames, clip.times)


__all__ = ["DEFAULT_NUM_FRAMES", "Frames", "IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "find_video", "load_frames", "uniform_times"]
