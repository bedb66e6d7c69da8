"""Tests for streammind.datasets.video: timestamp sampling, backend parity, errors.

Run: .venv/bin/python -m pytest tests/media/test_video.py -q

Uses the real sample clips in shared/media (skipped when absent) and small H.264 clips
encoded here with PyAV, whose frame timestamps and contents are known exactly.
"""

from __future__ import annotations

import importlib.util
import logging
import math
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
    # Below one slot (|t * fps| < 1) the slack is 1e-9 of a slot, not less, not more: 1.5e-9 slots past
    # a slot is the next one, 0.5e-9 is that slot (near 0 and near 1 alike).
    assert [ceil_to_grid(t, 1.0) for t in (0.5e-9, 1.5e-9, 1.0 + 0.5e-9, 1.0 + 1.5e-9)] == [0.0, 1.0, 1.0, 2.0]


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

    with caplog.at_level(logging.WARNING, logger="streammind.media.video"):
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
    # read_video's warnings name the file: the first skip as it happens, then the total.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="streammind.media.video"):
        again = read_video(broken, fps=2.0, backend=backend)
    messages = [r.getMessage() for r in caplog.records]
    assert f"{broken}: skipped {again.skipped} undecodable packets/frames" in messages
    assert any(m.startswith(f"{broken}: skipping undecodable data") for m in messages)


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

    with caplog.at_level(logging.WARNING, logger="streammind.media.video"):
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


# ------------------------------------------------------------ selection rules by value


def test_video_end_is_the_last_frame_s_end():
    assert video._video_end(np.array([0.0, 0.5, 1.0]), 1.5, 2.0) == 1.5  # the packet's end
    # No packet duration (the end is not after the last pts): last pts + the median interval.
    assert video._video_end(np.array([0.0, 0.5, 1.25, 1.5]), 1.5, 2.0) == 1.5 + 0.5
    assert video._video_end(np.array([0.0, 0.5, 1.25]), 0.0, 2.0) == 1.25 + 0.625
    assert video._video_end(np.array([0.0, 0.5]), 0.5, 4.0) == 1.0  # two frames give an interval too
    # One frame: one nominal period, or nothing without a rate.
    assert video._video_end(np.array([2.0]), 2.0, 4.0) == 2.25
    assert video._video_end(np.array([2.0]), 2.0, 0.5) == 4.0
    assert video._video_end(np.array([2.0]), 2.0, 0.0) == 2.0


def test_sample_grid_edges():
    assert sample_grid(10.0, 0.5).tolist() == [0.0, 2.0, 4.0, 6.0, 8.0]  # rates below 1 fps are fine
    empty = sample_grid(5.0, 2.0, start=3.0, end=3.0)
    assert empty.dtype == np.float64 and empty.shape == (0,)
    assert sample_grid(101.0, 2.0, start=100.0).tolist() == [100.0, 100.5]


def test_clock_lattices_in_order():
    F = Fraction
    assert video._clock_steps(7.0) == [F(1, 7), F(1, 1000), F(1, 600), F(1, 90000)]
    assert video._clock_steps(24000 / 1001)[0] == F(1001, 24000)  # the float rate's exact fraction
    assert video._clock_steps(0.5)[0] == F(2)
    assert video._clock_steps(0.0) == video._clock_steps(math.inf) == [F(1, 1000), F(1, 600), F(1, 90000)]


def test_snap_recovers_exact_times_from_float32():
    F = Fraction
    exact = np.array([k * 1001 / 24000 for k in range(0, 500, 7)])  # 23.976 fps: the step's numerator is not 1
    snapped, step = video._snap_to_clock(exact.astype(np.float32).astype(np.float64), video._clock_steps(24000 / 1001))
    assert step == F(1001, 24000) and np.array_equal(snapped, exact)
    # A lattice too fine to be told apart at float32 precision is passed over, not taken or final.
    ms = np.array([0.25, 0.5, 0.125])
    assert video._snap_to_clock(ms, [F(1, 2**20), F(1, 8)])[1] == F(1, 8)  # 2**-20 is exactly 4 float32 ulps here
    assert video._snap_to_clock(ms, [F(1, 10**9), F(1, 8)])[1] == F(1, 8)
    fine = F(9, 2**23)  # 4.5 ulps: fine but still unambiguous
    on_fine = np.array([float(fine * 1000), float(fine * 3)])
    assert video._snap_to_clock(on_fine, [fine])[1] == fine
    # Values off every lattice by more than float32 rounding are returned as they are.
    off = np.array([1 / 7 + 1.5 * 2**-22, 2 / 7])  # 1.5 float32 ulps off the 1/7 lattice
    kept, step = video._snap_to_clock(off, [F(1, 7)])
    assert step is None and kept is off


class _FakeDecordReader:
    """Frames 0..19 at 10 fps, frame i a 1x1 image of value i; the `broken` ones fail to decode.
    `singles` records the one-frame requests (the retries), in order."""

    path = "fake.mp4"

    def __init__(self, broken):
        self.broken, self.singles = set(broken), []

    def frames(self, indices, attempts=1):
        if len(indices) == 1:
            self.singles.append(indices[0])
        if self.broken & set(indices):
            raise video.decord.DECORDError("broken frame")
        return np.stack([np.full((1, 1, 3), i, dtype=np.uint8) for i in indices])


def _decord_picks(broken, times, lookback=None, monkeypatch=None):
    if lookback is not None:
        monkeypatch.setattr(video, "_DECORD_LOOKBACK", lookback)
    reader = _FakeDecordReader(broken)
    index = video._Index(pts=np.arange(20) / 10, duration_s=2.0, info=None, reader=reader)
    stats = video._Stats()
    picked = [(t, pts, int(frame[0, 0, 0])) for t, pts, frame in video._decord_pick(index, np.array(times), stats, video._LastGood())]
    return picked, reader.singles, (stats.skipped, stats.dropped)


@pytest.mark.skipif(not HAS_DECORD, reason="decord not installed")
def test_decord_pick_replaces_a_broken_frame_by_the_last_good_one_before_it(monkeypatch):
    """(t, pts, frame) by value: a broken selected frame is replaced by the newest good frame
    after the one shown before (tried newest first, within the lookback); a range already
    tried is not tried again; grid times before any good frame are dropped and counted."""
    picked, singles, counts = _decord_picks({5, 8, 9}, [0.0, 0.5, 0.55, 0.9, 1.5])
    assert picked == [(0.0, 0.0, 0), (0.5, 0.4, 4), (0.55, 0.4, 4), (0.9, 0.7, 7), (1.5, 1.5, 15)]
    # The batch [0, 5, 9, 15] fails, then one by one; frame 5 is replaced by 4, 9 by 7 (8 is broken
    # too: its one-frame batch fails, then its one-by-one retry).
    assert singles == [0, 5, 9, 15, 4, 8, 8, 7] and counts == (3, 0)
    # Nothing good before the first grid times: they are dropped, and the later ones still come.
    picked, singles, counts = _decord_picks({0}, [0.0, 0.05, 0.1])
    assert picked == [(0.1, 0.1, 1)] and counts == (1, 2)
    # The lookback bounds the search: with 2, frames 8 and 7 are tried for 9, not 6.
    picked, singles, counts = _decord_picks({7, 8, 9}, [0.9, 1.0], lookback=2, monkeypatch=monkeypatch)
    assert picked == [(1.0, 1.0, 10)] and singles == [9, 10, 8, 8, 7, 7] and counts == (3, 1)
    picked, _, _ = _decord_picks({8, 9}, [0.9], lookback=2, monkeypatch=monkeypatch)
    assert picked == [(0.9, 0.7, 7)]
    # The first frame can stand in too.
    assert _decord_picks({1}, [0.1])[0] == [(0.1, 0.0, 0)]


@pytest.mark.skipif(not HAS_DECORD, reason="decord not installed")
def test_decord_pick_tries_and_counts_each_broken_frame_once():
    """Frames 4-9 broken, grid 0.3, 0.6, 0.9: 0.6 searches 5, 4 (down to frame 3, shown before),
    0.9 searches only 8, 7 (not again 6 and below: 6 was selected for 0.6, 5 and 4 tried then).
    Every grid time shows frame 3, and each of the six broken frames counts one skip."""
    picked, singles, counts = _decord_picks(set(range(4, 10)), [0.3, 0.6, 0.9])
    assert picked == [(0.3, 0.3, 3), (0.6, 0.3, 3), (0.9, 0.3, 3)]
    # The batch [3, 6, 9] fails, then one by one; each searched frame: its batch of one, then its retry.
    assert singles == [3, 6, 9, 5, 5, 4, 4, 8, 8, 7, 7]
    assert counts == (6, 0)


@pytest.mark.skipif(not HAS_DECORD, reason="decord not installed")
def test_decord_read_video_warns_and_fails_naming_the_file(monkeypatch, caplog):
    """read_video on the decord path (the fake reader's index): the skip summary and the error
    when no frame decodes name the file that was asked for."""
    reader = _FakeDecordReader(range(20))
    info = video.VideoInfo("clip.mp4", 10.0, 20, 2.0, 1, 1, "decord")
    monkeypatch.setattr(video, "_index", lambda path, backend: video._Index(np.arange(20) / 10, 2.0, info, reader))
    with pytest.raises(VideoDecodeError, match=r"^clip\.mp4: no frame could be decoded$"):
        read_video("clip.mp4", fps=2.0, backend="decord")
    reader.broken = {2, 4}  # grid 0.0, 0.2, ..., 0.8: frames 2 and 4 are replaced by 1 and 3
    with caplog.at_level(logging.WARNING, logger="streammind.media.video"):
        clip = read_video("clip.mp4", fps=5.0, end=1.0, backend="decord")
    assert [int(f[0, 0, 0]) for f in clip.frames] == [0, 1, 3, 6, 8] and clip.skipped == 2
    np.testing.assert_array_equal(clip.frame_pts, [0.0, 0.1, 0.3, 0.6, 0.8])
    assert "clip.mp4: skipped 2 undecodable packets/frames" in [r.getMessage() for r in caplog.records]


def test_follow_grid_holds_the_last_frame_shown():
    """(pts, end, payload) frames in; each grid time gets the last frame with pts <= t (a frame
    within 1 us after t counts as at t); times before the first frame are dropped and counted;
    after the input ends, times up to eof_end (or the held frame's end) reuse it."""
    frames = [(0.3, 0.5, "a"), (0.500001, 1.0, "b"), (1.0, 1.5, "c")]
    stats = video._Stats()
    got = list(video._follow_grid(iter(frames), iter([0.0, 0.25, 0.5, 0.75, 1.0, 1.2, 1.5, 2.0]), None, stats))
    assert got == [(0.5, 0.500001, "b"), (0.75, 0.500001, "b"), (1.0, 1.0, "c"), (1.2, 1.0, "c")]
    assert stats.dropped == 2
    stats = video._Stats()
    tail = list(video._follow_grid(iter(frames), iter([1.0, 1.6, 3.0]), math.inf, stats))
    assert tail == [(1.0, 1.0, "c"), (1.6, 1.0, "c"), (3.0, 1.0, "c")] and stats.dropped == 0
    assert list(video._follow_grid(iter(frames), iter([]), None, video._Stats())) == []


@needs_av
def test_read_video_defaults_and_frame_caps(clips):
    path = clips["7fps"]
    default = read_video(path, backend="pyav")
    np.testing.assert_array_equal(default.times, [0.0, 0.5, 1.0, 1.5, 2.0, 2.5])  # 2 fps by default
    one = read_video(path, fps=2.0, max_frames=1, backend="pyav")
    assert one.times.tolist() == [0.0] and _frame_numbers(one.frames) == [0]
    single = read_video(path, fps=2.0, start=2.6, backend="pyav")  # one grid time left in the video
    assert single.times.tolist() == [2.6] and _frame_numbers(single.frames) == [18]
    with pytest.raises(ValueError, match="max_frames must be >= 1, got 0"):
        read_video(path, fps=2.0, max_frames=0, backend="pyav")


@needs_av
@pytest.mark.parametrize(
    "kind, start, expected, keyframe",
    [("7fps_gop5", 3.1, [21, 25, 28], 20), ("7fps_gop5", 0.9, [6, 9, 13], 5), ("offset", 1.1, [7, 11, 14], 0)],
)
def test_pyav_window_seeks_once_to_the_keyframe_before_it(clips, caplog, monkeypatch, kind, start, expected, keyframe):
    """A window read seeks to the keyframe before its start (decoding starts there, not at the
    beginning) and lands right the first time, also when the container's clock does not start
    at 0 (the offset clip has one keyframe)."""
    first_decoded = []
    real = video._pyav_frames

    def spy(*args, **kwargs):
        for i, item in enumerate(real(*args, **kwargs)):
            if i == 0:
                first_decoded.append(item[0])
            yield item

    monkeypatch.setattr(video, "_pyav_frames", spy)
    with caplog.at_level(logging.DEBUG, logger="streammind.media.video"):
        clip = read_video(clips[kind], fps=2.0, start=start, end=start + 1.4, backend="pyav")
    assert _frame_numbers(clip.frames) == expected
    np.testing.assert_array_equal(clip.frame_pts, [float(Fraction(i, 7)) for i in expected])
    assert first_decoded == [float(Fraction(keyframe, 7))]  # one pass, from the keyframe
    assert not any("seek overshot" in r.getMessage() for r in caplog.records)


class _FakeAvFrame:
    """A decoded PyAV frame: 1x1, value i, no rotation."""

    rotation = 0

    def __init__(self, i):
        self.i = i

    def to_ndarray(self, format):
        assert format == "rgb24"
        return np.full((1, 1, 3), self.i, dtype=np.uint8)


class _FakePyAV:
    """PyAV under _pyav_read: 20 frames, frame i at i/10 s (until (i+1)/10 s) and of value i, in a
    1 ms time base whose first frame is at tick `start_time`. A seek makes decoding start at frame
    `land` (the keyframe FFmpeg would reach); frames in `broken` are skipped by the decoder.
    `calls` records ("open", path), ("seek", target, backward, any_frame) and
    ("decode", first frame, origin, source), in order."""

    def __init__(self, monkeypatch, start_time=500, land=0, broken=()):
        self.start_time, self.land, self.broken, self.calls = start_time, land, set(broken), []
        monkeypatch.setattr(video, "_pyav_open", self.open)
        monkeypatch.setattr(video, "_pyav_frames", self.frames)

    def open(self, path):
        self.calls.append(("open", path))
        fake = self

        class Container:
            first = 0

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def seek(self, target, stream=None, backward=False, any_frame=False):
                fake.calls.append(("seek", target, backward, any_frame))
                self.first = fake.land

        stream = type("Stream", (), {"time_base": Fraction(1, 1000), "start_time": self.start_time})()
        return Container(), stream

    def frames(self, container, stream, origin, stats, source):
        self.calls.append(("decode", container.first, origin, source))
        for i in range(container.first, 20):
            if i in self.broken:
                video._warn_skip(stats, source, f"frame {i}")
                continue
            yield i / 10, (i + 1) / 10, _FakeAvFrame(i)


def _pyav_read_fake(times):
    index = video._Index(pts=np.arange(20) / 10, duration_s=2.0, info=None)
    clip = video._pyav_read("clip.mp4", index, np.array(times))
    return clip.times.tolist(), clip.frame_pts.tolist(), [int(f[0, 0, 0]) for f in clip.frames], clip.skipped


def test_pyav_read_seeks_to_the_window_start_in_stream_ticks(monkeypatch):
    """The seek target is the window start in stream ticks plus the stream's start_time (1.0 s at
    1 ms ticks from tick 500: 1500), backward to a keyframe; decoding starts there with the
    stream's start_time as origin, and the grid takes its frames from that one pass."""
    av_ = _FakePyAV(monkeypatch, start_time=500, land=10)
    assert _pyav_read_fake([1.0, 1.25, 1.5]) == ([1.0, 1.25, 1.5], [1.0, 1.2, 1.5], [10, 12, 15], 0)
    assert av_.calls == [("open", "clip.mp4"), ("seek", 1500, True, False), ("decode", 10, 500, "clip.mp4")]
    av_ = _FakePyAV(monkeypatch, start_time=None, land=5)  # no start_time in the container: ticks from 0
    assert _pyav_read_fake([0.75]) == ([0.75], [0.7], [7], 0)
    assert av_.calls == [("open", "clip.mp4"), ("seek", 750, True, False), ("decode", 5, None, "clip.mp4")]


@pytest.mark.parametrize("land", [12, 20], ids=["past-the-start", "past-the-end"])
def test_pyav_read_decodes_from_the_beginning_when_the_seek_overshoots(monkeypatch, land):
    """A seek that lands after the window start (first frame 1.2 s for a 1.0 s start, or nothing
    left to decode) gives up that pass and decodes the file again from its first frame, without
    seeking: the clip is the one a correct seek gives, and the first pass's counts are dropped."""
    av_ = _FakePyAV(monkeypatch, start_time=500, land=land, broken={19})
    assert _pyav_read_fake([1.0, 1.5]) == ([1.0, 1.5], [1.0, 1.5], [10, 15], 0)
    assert av_.calls == [
        ("open", "clip.mp4"), ("seek", 1500, True, False), ("decode", land, 500, "clip.mp4"),
        ("open", "clip.mp4"), ("decode", 0, 500, "clip.mp4"),
    ]


def test_pyav_read_drops_times_before_the_first_good_frame_and_names_the_file(monkeypatch, caplog):
    """Decoding from the start with frames 0-6 broken: grid times 0.0 and 0.5 come before any frame
    and are dropped, 1.0 gets frame 10; the warnings name the file. With no frame at all the read
    fails with a VideoDecodeError naming the file."""
    _FakePyAV(monkeypatch, broken=range(7))
    with caplog.at_level(logging.WARNING, logger="streammind.media.video"):
        assert _pyav_read_fake([0.0, 0.5, 1.0]) == ([1.0], [1.0], [10], 7)
    messages = [r.getMessage() for r in caplog.records]
    assert "clip.mp4: skipped 7 undecodable packets/frames" in messages
    assert "clip.mp4: 2 grid times precede the first decodable frame and were dropped" in messages
    _FakePyAV(monkeypatch, broken=range(20))
    with pytest.raises(VideoDecodeError, match=r"^clip\.mp4: no frame could be decoded$"):
        _pyav_read_fake([0.0, 0.5])
