"""Tests for streammind.datasets.video: timestamp sampling, backend parity, errors.

Run: .venv/bin/python -m pytest tests/media/test_video.py -q

Uses the real sample clips in shared/media (skipped when absent) and small H.264 clips
encoded here with PyAV, whose frame timestamps and contents are known exactly.
"""

from __future__ import annotations

import importlib.util
import logging
import struct
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from streammind.media import video
from streammind.media.video import VideoDecodeError, ceil_to_grid, iter_frames, probe_video, read_video, sample_grid
from tests.helpers import ASSETS, CLIP, CLIP_FRAMES, CLIP_HEIGHT, CLIP_WIDTH

HAS_DECORD = video.decord is not None
HAS_AV = video.av is not None
BACKENDS = [
    pytest.param("decord", marks=pytest.mark.skipif(not HAS_DECORD, reason="decord not installed")),
    pytest.param("pyav", marks=pytest.mark.skipif(not HAS_AV, reason="PyAV not installed")),
]
both_backends = pytest.mark.skipif(not (HAS_DECORD and HAS_AV), reason="needs decord and PyAV")
needs_av = pytest.mark.skipif(not HAS_AV, reason="PyAV is needed to encode test clips")

# name -> (frames, width, height): our committed clip, H.264 at 24000/1001 fps with a 1/24000 time base.
REAL_CLIPS = {CLIP.name: (CLIP_FRAMES, CLIP_WIDTH, CLIP_HEIGHT)}


def _real_clip(name: str) -> Path:
    return ASSETS / name


def _gray_level(i: int) -> int:
    """Flat gray value encoding frame number i (< 41), far enough apart to survive H.264."""
    return 8 + 6 * i


def _encode(path: Path, n: int = 20, fps: int = 7, first_pts: int = 0, gop: int | None = None, width: int = 64, height: int = 48) -> Path:
    """Write n flat gray frames (frame i has level _gray_level(i)) at a constant fps."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if gop is not None:
            stream.codec_context.gop_size = gop
        for i in range(n):
            rgb = np.full((height, width, 3), _gray_level(i), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = first_pts + i, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _frame_numbers(frames: np.ndarray) -> list[int]:
    """Invert _gray_level on decoded frames (nearest level)."""
    return [int(round((float(f.mean()) - 8) / 6)) for f in frames]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    if not HAS_AV:
        pytest.skip("PyAV is needed to encode test clips")
    root = tmp_path_factory.mktemp("clips")
    return {
        "7fps": _encode(root / "seven.mp4"),
        "7fps_mkv": _encode(root / "seven.mkv"),
        "offset": _encode(root / "offset.mp4", first_pts=5),
        "7fps_gop5": _encode(root / "seven_gop5.mp4", n=40, gop=5),
    }


# ------------------------------------------------------------------------ grid definition


def test_sample_grid_is_half_open_and_exact():
    np.testing.assert_array_equal(sample_grid(2.0, 2.0), [0.0, 0.5, 1.0, 1.5])  # 2.0 == duration is excluded
    np.testing.assert_array_equal(sample_grid(9.134125, 2.0), np.arange(19) * 0.5)
    np.testing.assert_array_equal(sample_grid(10.0, 2.0, start=2.2, end=4.0), [2.2, 2.7, 3.2, 3.7])
    np.testing.assert_array_equal(sample_grid(3.0, 7.0), [k / 7.0 for k in range(21)])
    assert len(sample_grid(5.0, 2.0, start=5.0)) == 0
    assert len(sample_grid(5.0, 2.0, start=1.0, end=1.0)) == 0
    with pytest.raises(ValueError, match="fps"):
        sample_grid(5.0, 0.0)
    with pytest.raises(ValueError, match="start"):
        sample_grid(5.0, 2.0, start=-1.0)


def test_ceil_to_grid_and_its_tolerance():
    assert [ceil_to_grid(t, 2.0) for t in (0.0, 0.01, 0.5, 0.51, 1.49, -0.3, -2.0)] == [0.0, 0.5, 0.5, 1.0, 1.5, 0.0, 0.0]
    assert ceil_to_grid(0.7, 10.0) == 0.7  # 0.7 * 10 = 7.000000000000001 in floating point
    assert ceil_to_grid(0.3, 5.0) == 0.4
    assert ceil_to_grid(1266.966967, 29.97) == 37971 / 29.97  # a time written to the microsecond is its slot
    assert ceil_to_grid(0.5 + 1e-6, 2.0) == 1.0  # a microsecond past a slot is the next slot
    assert ceil_to_grid(3600.0 + 1e-5, 2.0) == 3600.5  # 10 us after an hour too (the slack is 1e-9 of the time: 3.6 us)


# --------------------------------------------------------------------------- real clips


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(REAL_CLIPS))
def test_real_clip_grid_and_pts(name, backend):
    path = _real_clip(name)
    n_frames, width, height = REAL_CLIPS[name]
    clip = read_video(path, fps=2.0, backend=backend)

    duration = n_frames * 1001 / 24000  # constant frame rate: last frame ends at N frame periods
    assert clip.info == video.VideoInfo(str(path), 24000 / 1001, n_frames, duration, width, height, backend)
    expected_times = np.arange(int(np.ceil(duration * 2))) / 2.0
    np.testing.assert_array_equal(clip.times, expected_times)
    assert clip.times[-1] < duration <= clip.times[-1] + 0.5

    # Frame k has pts k * 1001/24000; the selected one is the last with pts <= t.
    last_k = [(int(t * 2) * 12000) // 1001 for t in expected_times]
    np.testing.assert_array_equal(clip.frame_pts, [(k * 1001) / 24000 for k in last_k])
    assert np.all(clip.frame_pts <= clip.times) and np.all(clip.times - clip.frame_pts < 1001 / 24000)
    assert clip.frames.shape == (len(expected_times), height, width, 3) and clip.frames.dtype == np.uint8
    assert clip.skipped == 0


@both_backends
@pytest.mark.parametrize("name", sorted(REAL_CLIPS))
def test_real_clip_backends_agree(name):
    path = _real_clip(name)
    a = read_video(path, fps=2.0, backend="decord")
    b = read_video(path, fps=2.0, backend="pyav")
    np.testing.assert_array_equal(a.times, b.times)
    np.testing.assert_array_equal(a.frame_pts, b.frame_pts)
    assert a.info.duration_s == b.info.duration_s and a.info.num_frames == b.info.num_frames
    # Both convert YUV->RGB with swscale at the stream's colorspace; measured difference: 0 on every pixel.
    diff = np.abs(a.frames.astype(np.int16) - b.frames.astype(np.int16))
    assert diff.max() <= 2 and diff.mean() < 0.05


@pytest.mark.parametrize("backend", BACKENDS)
def test_iter_frames_equals_read_video(backend):
    path = _real_clip(CLIP.name)
    clip = read_video(path, fps=2.0, backend=backend)
    it = iter_frames(path, fps=2.0, backend=backend)
    times, pts = [], []
    for k, (t, frame) in enumerate(it):
        times.append(t)
        pts.append(it.last_pts)
        np.testing.assert_array_equal(frame, clip.frames[k])
    np.testing.assert_array_equal(times, clip.times)
    np.testing.assert_array_equal(pts, clip.frame_pts)
    assert it.skipped == 0 and it.backend == backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_window_and_max_frames(backend):
    path = _real_clip(CLIP.name)
    clip = read_video(path, fps=2.0, start=2.2, end=4.0, backend=backend)
    np.testing.assert_array_equal(clip.times, [2.2, 2.7, 3.2, 3.7])
    last_k = [int(t * 24000 / 1001) for t in clip.times]
    np.testing.assert_array_equal(clip.frame_pts, [(k * 1001) / 24000 for k in last_k])
    # A window gives the same frames as a longer read over the same grid times.
    longer = read_video(path, fps=2.0, start=0.2, backend=backend)
    np.testing.assert_array_equal(longer.times[4:8], clip.times)
    np.testing.assert_array_equal(longer.frames[4:8], clip.frames)

    capped = read_video(path, fps=2.0, start=1.0, backend=backend, max_frames=3)
    np.testing.assert_array_equal(capped.times, [1.0, 1.5, 2.0])
    with pytest.raises(ValueError, match="holds no sample"):
        read_video(path, fps=2.0, start=20.0, backend=backend)


# ------------------------------------------------------------------ clips with known pts


@pytest.mark.parametrize("backend", BACKENDS)
def test_odd_fps_clip_selects_by_timestamp(clips, backend):
    path = clips["7fps"]
    info = probe_video(path, backend=backend)
    assert (info.num_frames, info.fps, info.width, info.height) == (20, 7.0, 64, 48)
    assert info.duration_s == 20 / 7

    clip = read_video(path, fps=2.0, backend=backend)
    np.testing.assert_array_equal(clip.times, [0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
    expected = [int(Fraction(t) * 7) for t in clip.times]  # floor(7 t): last frame with i/7 <= t
    assert expected == [0, 3, 7, 10, 14, 17]
    np.testing.assert_array_equal(clip.frame_pts, [float(Fraction(i, 7)) for i in expected])
    assert _frame_numbers(clip.frames) == expected

    # Sampling at the clip's own rate lands exactly on every frame (k/7 == pts, no off-by-one).
    same_rate = read_video(path, fps=7.0, backend=backend)
    assert _frame_numbers(same_rate.frames) == list(range(20))
    # A grid finer than the video repeats the held frame.
    fine = read_video(path, fps=10.0, end=0.5, backend=backend)
    assert _frame_numbers(fine.frames) == [0, 0, 1, 2, 2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_window_seeks_to_the_right_frames(clips, backend):
    """Keyframe every 5 frames, so a window start really seeks; floor(7 t) gives the frame."""
    clip = read_video(clips["7fps_gop5"], fps=2.0, start=3.1, end=4.5, backend=backend)
    np.testing.assert_array_equal(clip.times, [3.1, 3.6, 4.1])
    assert _frame_numbers(clip.frames) == [21, 25, 28]
    np.testing.assert_array_equal(clip.frame_pts, [float(Fraction(i, 7)) for i in (21, 25, 28)])


@both_backends
@pytest.mark.parametrize("kind", ["7fps", "7fps_mkv", "offset"])
def test_backends_agree_on_encoded_clips(clips, kind):
    """mp4 (1/14336 s clock), Matroska (1/1000 s clock, pts rounded to ms) and a start offset."""
    a = read_video(clips[kind], fps=3.0, backend="decord")
    b = read_video(clips[kind], fps=3.0, backend="pyav")
    np.testing.assert_array_equal(a.times, b.times)
    np.testing.assert_array_equal(a.frame_pts, b.frame_pts)
    assert a.info.duration_s == b.info.duration_s
    assert _frame_numbers(a.frames) == _frame_numbers(b.frames)
    assert np.abs(a.frames.astype(np.int16) - b.frames).max() <= 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_start_offset_is_removed(clips, backend):
    """The first frame's pts is 5/7 s in the container; reported times start at 0."""
    clip = read_video(clips["offset"], fps=2.0, backend=backend)
    assert clip.frame_pts[0] == 0.0
    assert _frame_numbers(clip.frames) == [0, 3, 7, 10, 14, 17]


@needs_av
def test_url_source_streams_through_pyav(clips):
    path = clips["7fps"]
    url = path.as_uri()  # file:// goes through FFmpeg's protocol layer like rtsp:// or http://
    it = iter_frames(url, fps=2.0)
    got = list(it)
    assert it.backend == "pyav"
    ref = read_video(path, fps=2.0, backend="pyav")
    np.testing.assert_array_equal([t for t, _ in got], ref.times)
    np.testing.assert_array_equal(np.stack([f for _, f in got]), ref.frames)
    with pytest.raises(ValueError, match="decord cannot open URLs"):
        iter_frames(url, backend="decord")
    with pytest.raises(ValueError, match="live source"):
        read_video(url)


def test_iter_frames_stops_early_without_decoding_everything(clips):
    it = iter_frames(clips["7fps"], fps=2.0)
    t0, f0 = next(it)
    t1, _ = next(it)
    it.close()
    assert (t0, t1) == (0.0, 0.5) and f0.shape == (48, 64, 3)


# ---------------------------------------------------------------------- broken input


def _corrupt_packets(src: Path, dst: Path, which: range) -> Path:
    """Overwrite the payload of the given packets (in file order) with 0x44 bytes."""
    import av

    with av.open(str(src)) as container:
        spans = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    data = bytearray(src.read_bytes())
    for pos, size in (spans[i] for i in which):
        data[pos : pos + size] = b"\x44" * size
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("backend", BACKENDS)
def test_broken_frames_are_skipped_and_counted(tmp_path, caplog, backend):
    if not HAS_AV:
        pytest.skip("PyAV is needed to encode test clips")
    clean = _encode(tmp_path / "clean.mp4", n=40, gop=5)
    broken = _corrupt_packets(clean, tmp_path / "broken.mp4", range(10, 13))
    grid = sample_grid(40 / 7, 2.0)

    with caplog.at_level(logging.WARNING, logger="streammind.datasets.video"):
        it = iter_frames(broken, fps=2.0, backend=backend)
        got = list(it)
    assert it.skipped >= 1
    assert any("undecodable" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal([t for t, _ in got], grid)  # every grid time still gets a frame

    clip = read_video(broken, fps=2.0, backend=backend)
    assert clip.skipped >= 1
    np.testing.assert_array_equal(clip.times, grid)
    assert np.all(clip.frame_pts <= clip.times)
    # Away from the damage (frames 10-12, and for decord the GOP around them) nothing changes.
    good = read_video(clean, fps=2.0, backend=backend)
    assert _frame_numbers(clip.frames[-4:]) == _frame_numbers(good.frames[-4:])


def _rotate_90(src: Path, dst: Path) -> Path:
    """Write a copy whose mp4 track header carries a 90-degree display matrix."""
    data = bytearray(src.read_bytes())
    k = data.find(b"tkhd")
    assert k > 0 and data[k + 4] == 0  # version-0 track header
    # type(4) version+flags(4) times+track_id+reserved+duration(20) reserved(8) layer..volume(8)
    matrix = k + 4 + 4 + 20 + 8 + 8
    struct.pack_into(">9i", data, matrix, 0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30)
    dst.write_bytes(bytes(data))
    return dst


@needs_av
def test_rotation_metadata(tmp_path, caplog):
    import av

    plain = tmp_path / "plain.mp4"
    with av.open(str(plain), "w") as container:
        stream = container.add_stream("libx264", rate=7)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        rgb = np.zeros((48, 64, 3), dtype=np.uint8)
        rgb[:16, :16] = 255  # white square, top-left
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 7)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    rotated = _rotate_90(plain, tmp_path / "rotated.mp4")

    with caplog.at_level(logging.WARNING, logger="streammind.datasets.video"):
        clip = read_video(rotated, fps=7.0)  # auto: decord cannot decode it, falls back to PyAV
    assert clip.info.backend == "pyav" and (clip.info.width, clip.info.height) == (48, 64)
    assert clip.frames.shape == (3, 64, 48, 3)
    # Rotated 90 degrees clockwise for display: the square moves to the top-right corner.
    ys, xs = np.nonzero(clip.frames[0, :, :, 0] > 128)
    assert ys.max() < 20 and xs.min() > 28
    if HAS_DECORD:
        assert any("falling back to PyAV" in r.getMessage() for r in caplog.records)
        with pytest.raises(VideoDecodeError, match="decord cannot decode"):
            read_video(rotated, backend="decord")


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_errors_name_the_path(tmp_path, backend):
    missing = tmp_path / "missing.mp4"
    text = tmp_path / "notes.mp4"
    text.write_text("this is a text file renamed to .mp4\n")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    cases = {missing: "file not found", text: "cannot open as a video", empty: "empty file"}
    for path, problem in cases.items():
        for call in (
            lambda p: probe_video(p, backend=backend),
            lambda p: read_video(p, backend=backend),
            lambda p: next(iter_frames(p, backend=backend)),
        ):
            with pytest.raises(VideoDecodeError) as err:
                call(path)
            assert str(path) in str(err.value) and problem in str(err.value)


@needs_av
@pytest.mark.parametrize("backend", BACKENDS)
def test_audio_only_file_has_no_video_stream(tmp_path, backend):
    import av

    path = tmp_path / "speech.mka"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
        samples.sample_rate, samples.pts = 16000, 0
        container.mux(stream.encode(samples))
        container.mux(stream.encode())
    with pytest.raises(VideoDecodeError, match="no video stream") as err:
        read_video(path, backend=backend)
    assert str(path) in str(err.value)


def test_missing_backends_raise_import_error_naming_both(monkeypatch, tmp_path):
    monkeypatch.setattr(video, "decord", None)
    monkeypatch.setattr(video, "av", None)
    with pytest.raises(ImportError, match="decord.*av|av.*decord"):
        read_video(tmp_path / "x.mp4")
    with pytest.raises(ImportError, match="PyAV"):
        iter_frames("rtsp://camera.local/stream")
    with pytest.raises(ValueError, match="backend must be"):
        read_video(tmp_path / "x.mp4", backend="opencv")


def test_module_imports_without_backends(monkeypatch):
    monkeypatch.setitem(sys.modules, "decord", None)  # None in sys.modules makes `import` raise ImportError
    monkeypatch.setitem(sys.modules, "av", None)
    spec = importlib.util.spec_from_file_location("streammind.media.video_without_backends", video.__file__)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up here
    spec.loader.exec_module(module)
    assert module.decord is None and module.av is None
    with pytest.raises(ImportError, match="neither is installed"):
        module.probe_video(ASSETS / "missing.mp4")
