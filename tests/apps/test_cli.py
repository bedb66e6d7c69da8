"""The `streammind` CLI and the streaming runtime (sources, pacing, queries, stats, bad sources).

Run: .venv/bin/python -m pytest tests/apps/test_cli.py -q

The CLI runs in-process (`main([...])`) on CPU against a tiny model saved to a temporary
directory, over the real sample clips (skipped when shared/media is absent), an image
folder and small clips encoded here. Pacing is tested with an injected clock.
"""

from __future__ import annotations

import io
import json
import queue
import socket
import sys
import types
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from streammind import StreamingSession, save_model
from streammind.apps.cli import main
from streammind.apps.runtime import LatencyStats, Pacer, StdinQueries, StreamRunner, format_time
from streammind.media.sources import FrameSource, ImageFolderFrames, source_kind
from streammind.media.video import VideoDecodeError, probe_video, sample_grid
from tests.helpers import CLIP, make_tiny

QUERY = "Tell me when a shape appears."


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    model, processor = make_tiny(AutoTokenizer.from_pretrained(tiny_tokenizer_dir))
    out = tmp_path_factory.mktemp("model")
    save_model(model, processor, out)
    return out


def _clip() -> Path:
    return CLIP


def _encode(path: Path, n: int = 40, fps: int = 8, faststart: bool = False) -> Path:
    """A small H.264 clip of noise frames (noise keeps the packets large, for truncation)."""
    av = pytest.importorskip("av")
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _stream(model_dir, source, *extra) -> list[str]:
    return ["stream", str(source), "--model", str(model_dir), "--query", QUERY, *map(str, extra)]


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class _ListFrames:
    """A list of (time, frame) with the FrameIterator interface; optionally fails after `fail_after`."""

    def __init__(self, items, fail_after: int | None = None):
        self.items, self.fail_after, self.skipped, self.closed = items, fail_after, 0, False

    def __iter__(self):
        for i, item in enumerate(self.items):
            if self.fail_after is not None and i == self.fail_after:
                raise VideoDecodeError("rtsp://cam/live: demuxing failed (ConnectionResetError)")
            yield item

    def close(self):
        self.closed = True


def _list_source(n: int, fps: float = 2.0, fail_after: int | None = None, kind: str = "url") -> FrameSource:
    frames = np.zeros((n, 24, 32, 3), dtype=np.uint8)
    return FrameSource("rtsp://cam/live", kind, fps, _ListFrames([(k / fps, frames[k]) for k in range(n)], fail_after))


# ------------------------------------------------------------------------ real clips


def test_stream_real_clip_grid_and_outputs(model_dir, tmp_path, capsys):
    """Threshold 0: every sampled frame replies, so --output lists exactly the sampled times."""
    clip, duration = _clip(), 6.0894167
    assert probe_video(clip).duration_s == pytest.approx(duration, abs=1e-6)
    out, stats_path = tmp_path / "replies.jsonl", tmp_path / "stats.json"
    rc = main(_stream(model_dir, clip, "--fps", 2, "--threshold", 0, "--max-new-tokens", 2, "--output", out, "--stats", stats_path))
    assert rc == 0
    grid = np.arange(0.0, duration, 0.5)  # 0, 0.5, ... < duration
    replies = _read_jsonl(out)
    np.testing.assert_allclose([r["time"] for r in replies], grid)
    assert all(set(r) == {"time", "text", "prob"} and r["prob"] > 0 for r in replies)
    stats = json.loads(stats_path.read_text())
    assert stats["frames"] == len(grid) == stats["replies"] == len(replies)
    assert stats["duration_s"] == pytest.approx(duration, abs=1e-6)
    assert (stats["fps"], stats["dropped"], stats["skipped"], stats["error"], stats["realtime"]) == (2.0, 0, 0, None, False)
    reply_ms, always_on_ms = stats["latency_ms"]["reply"], stats["latency_ms"]["always_on"]
    assert reply_ms["count"] == len(grid) and always_on_ms["count"] == 0 and always_on_ms["p50"] is None
    assert 0 < reply_ms["p50"] <= reply_ms["p95"] <= reply_ms["max"]
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert len(printed) == len(replies) and printed[0].startswith("[00:00.0] ") and printed[-1].startswith(f"[{format_time(grid[-1])}] ")


def test_stream_silent_run_measures_the_always_on_path(model_dir, tmp_path, capsys):
    clip = _clip()
    out, stats_path = tmp_path / "replies.jsonl", tmp_path / "stats.json"
    assert main(_stream(model_dir, clip, "--threshold", 1, "--output", out, "--stats", stats_path)) == 0
    stats = json.loads(stats_path.read_text())
    assert out.read_text() == "" and stats["replies"] == 0
    assert stats["frames"] == len(sample_grid(stats["duration_s"], 2.0)) == 13  # the model's frames_per_second
    assert stats["latency_ms"]["always_on"]["count"] == 13 and stats["latency_ms"]["reply"]["count"] == 0
    assert "13 frames (0 dropped, 0 skipped), 0 replies" in capsys.readouterr().err


# ---------------------------------------------------------------------- image folder


def _write_images(folder: Path) -> None:
    from PIL import Image

    folder.mkdir()
    for name, level in [("img_10.png", 30), ("img_2.png", 20), ("img_1.png", 10), ("img_11.jpg", 40)]:
        Image.fromarray(np.full((24, 32, 3), level, dtype=np.uint8)).save(folder / name)
    (folder / "img_3.png").write_bytes(b"not a png")  # broken: skipped, its slot stays empty
    (folder / "notes.txt").write_text("not an image")


def test_image_folder_order_times_and_broken_images(tmp_path):
    _write_images(tmp_path / "imgs")
    frames = ImageFolderFrames(tmp_path / "imgs", fps=4.0)
    got = list(frames)
    assert [t for t, _ in got] == [0.0, 0.25, 0.75, 1.0]  # img_1, img_2, (img_3 broken), img_10, img_11
    assert [int(f.mean()) for _, f in got][:3] == [10, 20, 30] and all(f.shape == (24, 32, 3) for _, f in got)
    assert frames.skipped == 1


def test_stream_image_folder(model_dir, tmp_path):
    _write_images(tmp_path / "imgs")
    out, stats_path = tmp_path / "replies.jsonl", tmp_path / "stats.json"
    rc = main(_stream(model_dir, tmp_path / "imgs", "--fps", 4, "--threshold", 0, "--max-new-tokens", 1, "--output", out, "--stats", stats_path))
    assert rc == 0
    assert [r["time"] for r in _read_jsonl(out)] == [0.0, 0.25, 0.75, 1.0]
    stats = json.loads(stats_path.read_text())
    assert (stats["kind"], stats["frames"], stats["skipped"], stats["replies"], stats["duration_s"]) == ("images", 4, 1, 4, 1.0)


def test_source_kinds(tmp_path):
    clip = tmp_path / "a.mp4"
    clip.write_bytes(b"x")
    assert source_kind("rtsp://cam/live") == source_kind("http://host/a.mp4") == "url"
    assert source_kind("/dev/video0") == source_kind("0") == "device"
    assert source_kind(str(tmp_path)) == "images"
    assert source_kind(str(clip)) == "file"


# ---------------------------------------------------------------------- realtime pacing


class FakeClock:
    """Monotonic seconds that only move when slept on or when the fake compute advances them."""

    def __init__(self):
        self.now, self.slept = 100.0, []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def test_pacer_drops_late_frames_with_a_slow_clock():
    clock = FakeClock()
    pacer = Pacer(clock=clock, sleep=clock.sleep)
    kept = []
    for t, _ in pacer.pace(((k / 2, None) for k in range(12)), fps=2.0):  # 0, 0.5, ... 5.5
        kept.append(t)
        clock.now += 1.3  # compute takes 1.3 s per frame: far slower than the 0.5 s period
    # Frame t is due at start + t; frames late by a period or more are dropped.
    assert kept == [0.0, 1.0, 2.5, 3.5, 5.0]
    assert pacer.dropped == 12 - len(kept) and clock.slept == []
    assert pacer.lag_ms.count == len(kept) and pacer.lag_ms.max < 500


def test_pacer_waits_for_early_frames_and_keeps_all_when_fast():
    clock = FakeClock()
    pacer = Pacer(clock=clock, sleep=clock.sleep)
    starts = []
    for t, _ in pacer.pace(((k / 2, None) for k in range(6)), fps=2.0):
        starts.append(clock.now - 100.0)
        clock.now += 0.1
    assert starts == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5])  # each frame starts when due
    assert pacer.dropped == 0 and clock.slept == pytest.approx([0.4] * 5)


def test_runner_realtime_counts_drops(tiny):
    """The runner with a pacer on a fake clock: a slow push drops frames, counted in the stats."""
    model, processor = tiny
    clock = FakeClock()
    session = StreamingSession(model, processor, query=QUERY, threshold=1.0, record_probs=False)
    real_push = session.push

    def slow_push(frame, t):
        clock.now += 1.3
        return real_push(frame, t)

    session.push = slow_push
    runner = StreamRunner(session, _list_source(12), pacer=Pacer(clock=clock, sleep=clock.sleep), timer=clock)
    stats = runner.run().to_dict()
    assert (stats["frames"], stats["dropped"], stats["realtime"]) == (5, 7, True)
    assert stats["duration_s"] == 5.5  # a live source: the last frame's time, dropped or not
    assert stats["latency_ms"]["always_on"] == {"count": 5, "p50": pytest.approx(1300, rel=0.01),
                                                "p95": pytest.approx(1300, rel=0.01), "max": pytest.approx(1300)}
    assert stats["lag_ms"]["count"] == 5


# ---------------------------------------------------------------------- queries mid-stream


def test_query_joins_mid_stream_from_a_queue(tiny):
    model, processor = tiny
    lines: queue.Queue[str] = queue.Queue()
    session = StreamingSession(model, processor, query=QUERY, threshold=1.0)
    source = _list_source(8)
    items = source.frames.items

    def frames_with_a_typed_line():
        for k, item in enumerate(items):
            if k == 3:
                lines.put("What colour is it now?")  # typed while frame 3 (t = 1.5 s) is next
            yield item

    source.frames.items = frames_with_a_typed_line()
    joined = []
    stats = StreamRunner(session, source, queries=lines, on_query=lambda t, text: joined.append((t, text))).run()
    assert joined == [(1.5, "What colour is it now?")]
    assert stats.queries == [{"time": 1.5, "text": "What colour is it now?"}]
    assert session.query == "What colour is it now?" and session.stats.frames == 8


def test_stdin_queries_reads_lines_in_a_thread():
    reader = StdinQueries(io.StringIO("what colour?\n\n   \nwhere is it?\n")).start()
    reader.thread.join(timeout=5)
    assert not reader.thread.is_alive()
    assert [reader.queue.get_nowait() for _ in range(reader.queue.qsize())] == ["what colour?", "where is it?"]


def test_cli_interactive_query_from_stdin(model_dir, tmp_path, capsys, monkeypatch):
    clip = _clip()
    monkeypatch.setattr(sys, "stdin", io.StringIO("Tell me when it turns red.\n"))
    stats_path = tmp_path / "stats.json"
    assert main(_stream(model_dir, clip, "--threshold", 1, "--interactive", "--stats", stats_path)) == 0
    stats = json.loads(stats_path.read_text())
    assert [q["text"] for q in stats["queries"]] == ["Tell me when it turns red."]
    assert 0.0 <= stats["queries"][0]["time"] < 6.1
    assert f"[{format_time(stats['queries'][0]['time'])}] (query joined) Tell me when it turns red." in capsys.readouterr().out


def test_stdin_is_not_read_without_a_terminal(model_dir, tmp_path, monkeypatch):
    class Untouchable(io.StringIO):
        def __iter__(self):
            raise AssertionError("stdin was read without --interactive")

    monkeypatch.setattr(sys, "stdin", Untouchable())
    clip = _clip()
    assert main(_stream(model_dir, clip, "--threshold", 1)) == 0


# ---------------------------------------------------------------------- bad sources


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bad_source(kind: str, tmp_path: Path) -> tuple[str, str]:
    """(source, expected part of the message) for each kind of bad source."""
    if kind == "missing file":
        return str(tmp_path / "missing.mp4"), "file not found"
    if kind == "not a video":
        (tmp_path / "notes.mp4").write_text("this is a text file\n")
        return str(tmp_path / "notes.mp4"), "cannot open as a video"
    if kind == "unreachable URL":
        return f"http://127.0.0.1:{_closed_port()}/live.mp4", "cannot open as a video"
    if kind == "empty folder":
        (tmp_path / "empty").mkdir()
        return str(tmp_path / "empty"), "no image files"
    if kind == "missing webcam":
        index = next(i for i in range(90, 200) if not Path(f"/dev/video{i}").exists())
        return str(index), "no such capture device"
    if kind == "ends early":
        full = _encode(tmp_path / "full.mp4", faststart=True).read_bytes()
        (tmp_path / "cut.mp4").write_bytes(full[: int(len(full) * 0.6)])  # header declares 5 s, data stops near 3 s
        return str(tmp_path / "cut.mp4"), "ended early"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["missing file", "not a video", "unreachable URL", "empty folder", "missing webcam", "ends early"])
def test_bad_sources_exit_nonzero_with_one_line(model_dir, tmp_path, capsys, kind):
    source, expected = _bad_source(kind, tmp_path)
    stats_path = tmp_path / "stats.json"
    rc = main(_stream(model_dir, source, "--threshold", 1, "--stats", stats_path))
    err = capsys.readouterr().err
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("streammind stream: error: ") and expected in lines[0] and "Traceback" not in err
    if kind == "ends early":  # the part before the cut was streamed, and the stats say what happened
        stats = json.loads(stats_path.read_text())
        assert 1 <= stats["frames"] < 10 and "ended early" in stats["error"]


def test_missing_model_is_one_line(tmp_path, capsys):
    assert main(["stream", str(tmp_path), "--model", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"streammind stream: error: {tmp_path / 'nope'}: no StreamMind checkpoint directory there"]


def test_stream_failing_mid_way_is_recorded(tiny):
    model, processor = tiny
    session = StreamingSession(model, processor, query=QUERY, threshold=1.0)
    source = _list_source(8, fail_after=3)
    stats = StreamRunner(session, source).run()
    assert stats.frames == 3 and source.frames.closed
    assert stats.error.startswith("stream ended early after 1.0 s: rtsp://cam/live: demuxing failed")
    empty = StreamRunner(session, _list_source(0)).run()
    assert empty.frames == 0 and "ended before its first frame" in empty.error


def test_broken_frames_mid_stream_are_skipped_and_counted(model_dir, tmp_path):
    """Corrupt packets in the middle of a clip: the stream goes on, the skips are counted."""
    pytest.importorskip("av")
    clean = _encode(tmp_path / "clean.mp4", n=40, fps=8)
    data = bytearray(clean.read_bytes())
    import av

    with av.open(str(clean)) as container:
        spans = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    for pos, size in spans[12:15]:
        data[pos : pos + size] = b"\x44" * size
    (tmp_path / "broken.mp4").write_bytes(bytes(data))
    stats_path = tmp_path / "stats.json"
    assert main(_stream(model_dir, tmp_path / "broken.mp4", "--threshold", 1, "--stats", stats_path)) == 0
    stats = json.loads(stats_path.read_text())
    assert stats["skipped"] >= 1 and stats["frames"] == 10 and stats["error"] is None


# ---------------------------------------------------------------------- pieces


def test_format_time():
    assert format_time(0) == "00:00.0"
    assert format_time(59.96) == "01:00.0"
    assert format_time(125.26) == "02:05.3"
    assert format_time(3725.0) == "62:05.0"


def test_latency_stats_percentiles_in_bounded_memory():
    values = np.random.default_rng(0).lognormal(mean=3.0, sigma=0.8, size=20000)
    stats = LatencyStats()
    for v in values:
        stats.add(float(v))
    summary = stats.summary()
    assert summary["count"] == 20000 and summary["max"] == pytest.approx(values.max(), abs=1e-3)
    for q, key in ((50, "p50"), (95, "p95")):
        assert summary[key] == pytest.approx(np.percentile(values, q, method="inverted_cdf"), rel=0.01)
    assert len(stats.bins) < 1500
    assert LatencyStats().summary() == {"count": 0, "p50": None, "p95": None, "max": None}


# ---------------------------------------------------------------------- other subcommands


def test_subcommands_dispatch_their_arguments(monkeypatch):
    calls = []
    fake = types.ModuleType("streammind.apps.convert")
    fake.main = lambda argv: calls.append(("convert", argv))
    monkeypatch.setitem(sys.modules, "streammind.apps.convert", fake)
    import streammind.apps.bench

    monkeypatch.setattr(streammind.apps.bench, "main", lambda argv: calls.append(("bench", argv)) or {"a": 1})
    assert main(["convert", "in.json", "--out", "x"]) == 0
    assert main(["bench", "step", "--frames", "3"]) == 0
    assert calls == [("convert", ["in.json", "--out", "x"]), ("bench", ["step", "--frames", "3"])]


def test_missing_subcommand_module_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "streammind.apps.convert", None)
    assert main(["convert", "--help"]) == 1
    assert "not available" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys):
    assert main(["stream", "clip.mp4"]) == 2  # --model is required
    assert capsys.readouterr().err.startswith("streammind stream: error: the following arguments are required: --model")
    assert main(["stream", "clip.mp4", "--model", "m", "--fps", "0"]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1
