"""Adversarial streaming inputs: flags out of range, over-long queries, outputs that cannot be
written, network sources that never answer or stall, Ctrl-C while waiting on the network.

Run: .venv/bin/python -m pytest tests/adversarial/test_stream_inputs.py -q

`streammind stream` runs in-process through `streammind.apps.cli.main`; the Ctrl-C case runs the
real command in a subprocess and sends it SIGINT. The network servers are on 127.0.0.1: one
accepts connections and never sends a byte, one sends the first half of an MPEG-TS clip and
then stalls. Every case finishes in seconds.
"""

from __future__ import annotations

import io
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from streammind import StreamingSession
from streammind.apps.cli import main
from streammind.apps.runtime import StreamRunner
from streammind.streaming import SessionInputError
from tests.helpers import REPO, one_error_line

PROG = "streammind stream"
LONG_QUERY = " ".join(["tell me when the red circle moves"] * 400)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frames")
    for k in range(4):
        Image.fromarray(np.full((24, 32, 3), 50 * k, dtype=np.uint8)).save(folder / f"{k}.png")
    return folder


def _stream(model_dir, source, *extra):
    return ["stream", str(source), "--model", str(model_dir), *map(str, extra)]


@pytest.mark.parametrize("flags, expected", [
    (["--fps", "inf"], "argument --fps: must be a finite number > 0, got inf"),
    (["--fps", "nan"], "argument --fps: must be a finite number > 0, got nan"),
    (["--fps", "0"], "argument --fps: must be a finite number > 0, got 0"),
    (["--threshold", "nan"], "argument --threshold: must be a finite number in [0, 1], got nan"),
    (["--threshold", "1.5"], "argument --threshold: must be a finite number in [0, 1], got 1.5"),
    (["--max-new-tokens", "-1"], "argument --max-new-tokens: must be an integer >= 1, got -1"),
    (["--max-new-tokens", "0"], "argument --max-new-tokens: must be an integer >= 1, got 0"),
    (["--open-timeout", "inf"], "argument --open-timeout: must be a finite number > 0, got inf"),
    (["--max-lag", "-2"], "argument --max-lag"),
])
def test_flags_out_of_range(flags, expected, model_dir, images, capsys):
    assert main(_stream(model_dir, images, *flags)) == 2
    line = one_error_line(capsys.readouterr().err, PROG)
    assert expected in line, line


def test_query_over_the_budget_is_refused(model_dir, images, capsys):
    assert main(_stream(model_dir, images, "--query", LONG_QUERY)) == 2
    line = one_error_line(capsys.readouterr().err, PROG, alone=False)
    assert f"{PROG}: error: --query: the query is too long:" in line and "max_context_tokens" in line, line


def test_session_checks_its_inputs(tiny):
    model, processor = tiny
    for kwargs, expected in (({"threshold": float("nan")}, "threshold must be a finite number in"),
                             ({"threshold": -0.1}, "threshold must be a finite number in"),
                             ({"max_new_tokens": -1}, "max_new_tokens must be an integer >= 1"),
                             ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
                             ({"query": LONG_QUERY}, "the query is too long")):
        with pytest.raises(SessionInputError, match=expected):
            StreamingSession(model, processor, **kwargs)
    session = StreamingSession(model, processor, query="Tell me when a shape appears.", threshold=1.0)
    with pytest.raises(SessionInputError, match="too long"):
        session.add_query(LONG_QUERY)
    assert session.query == "Tell me when a shape appears." and session.pending_user == "Tell me when a shape appears."


def test_a_query_over_the_budget_mid_stream_is_refused_and_the_stream_goes_on(tiny, images):
    from streammind.media.sources import open_source

    model, processor = tiny
    session = StreamingSession(model, processor, query="Tell me when a shape appears.", threshold=1.0)
    lines: queue.Queue[str] = queue.Queue()
    lines.put(LONG_QUERY)
    lines.put("Tell me when something turns red.")
    stats = StreamRunner(session, open_source(str(images), fps=2.0), queries=lines).run()
    assert stats.frames == 4 and stats.error is None
    assert "refused" in stats.queries[0] and "too long" in stats.queries[0]["refused"]
    assert stats.queries[1] == {"time": 0.0, "text": "Tell me when something turns red."}


@pytest.mark.parametrize("flag", ["--output", "--stats"])
def test_output_naming_a_directory_fails_before_streaming(flag, model_dir, images, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(StreamRunner, "run", lambda self: pytest.fail("streamed before checking the outputs"))
    assert main(_stream(model_dir, images, flag, tmp_path)) == 2
    line = one_error_line(capsys.readouterr().err, PROG)
    assert line == f"{PROG}: error: {tmp_path}: {flag} names a directory; give a file path"
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(_stream(model_dir, images, flag, blocker / "out.json")) == 2
    assert "is not a directory" in one_error_line(capsys.readouterr().err, PROG)


def test_outputs_replace_an_earlier_file_only_when_complete(model_dir, images, tmp_path):
    output, stats = tmp_path / "replies.jsonl", tmp_path / "stats.json"
    output.write_text("earlier\n")
    assert main(_stream(model_dir, images, "--threshold", "0", "--max-new-tokens", "1", "--output", output, "--stats", stats)) == 0
    replies = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(replies) == 4 and json.loads(stats.read_text())["replies"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["replies.jsonl", "stats.json"]


# ---------------------------------------------------------------------- network sources


@pytest.mark.parametrize("scheme", ["http", "rtsp"])
def test_a_server_that_never_answers_times_out(scheme, model_dir, silent_server, tmp_path, capsys):
    url = f"{scheme}://127.0.0.1:{silent_server.port}/live"
    stats = tmp_path / "stats.json"
    began = time.monotonic()
    code = main(_stream(model_dir, url, "--open-timeout", "1", "--read-timeout", "1", "--stats", stats))
    assert time.monotonic() - began < 15
    assert code == 1 and silent_server.connected.is_set()
    line = one_error_line(capsys.readouterr().err, PROG, alone=False)
    assert url in line and ("no answer within 1 s (open timeout)" in line or "cannot open as a video" in line), line
    assert json.loads(stats.read_text())["error"] and json.loads(stats.read_text())["frames"] == 0


class StallingServer:
    """HTTP on 127.0.0.1 that sends the first half of an MPEG-TS clip, then nothing."""

    def __init__(self) -> None:
        import av

        buffer = io.BytesIO()
        with av.open(buffer, "w", format="mpegts") as container:
            stream = container.add_stream("libx264", rate=8)
            stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
            rng = np.random.default_rng(0)
            for i in range(40):
                frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), format="rgb24")
                frame.pts, frame.time_base = i, Fraction(1, 8)
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
        self.data = buffer.getvalue()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.done = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\n\r\n" + self.data[: len(self.data) // 2])
        self.done.wait(60)
        conn.close()

    def close(self) -> None:
        self.done.set()
        self.sock.close()


def test_a_stream_that_stalls_ends_with_the_read_timeout(model_dir, tmp_path, capsys):
    pytest.importorskip("av")
    server = StallingServer()
    try:
        stats = tmp_path / "stats.json"
        began = time.monotonic()
        code = main(_stream(model_dir, f"http://127.0.0.1:{server.port}/live.ts", "--threshold", "1", "--open-timeout", "2",
                            "--read-timeout", "1", "--stats", stats))
        assert time.monotonic() - began < 20
    finally:
        server.close()
    assert code == 1
    line = one_error_line(capsys.readouterr().err, PROG, alone=False)
    assert "stream ended early after" in line and "no data for 1 s (read timeout)" in line, line
    assert json.loads(stats.read_text())["frames"] > 0


def test_ctrl_c_stops_a_source_that_never_answers(model_dir, silent_server, tmp_path):
    stats = tmp_path / "stats.json"
    # PYTHONFAULTHANDLER: if the command hangs, SIGABRT makes it print every thread's stack (below).
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    command = [sys.executable, "-m", "streammind", *_stream(model_dir, f"http://127.0.0.1:{silent_server.port}/live.mp4",
                                                                  "--open-timeout", "60", "--read-timeout", "60", "--stats", stats)]
    # Started as a terminal starts a foreground command: SIGINT at its default. A process that
    # inherits SIGINT ignored (a job sent to the background by a script, nohup) keeps ignoring
    # it, as every Unix program does; a test suite run that way must not decide this test.
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert silent_server.connected.wait(60), "the command never connected"
        time.sleep(0.3)
        interrupted = time.monotonic()
        process.send_signal(signal.SIGINT)
        # Without the interrupt the command would wait out its 60 s timeouts; the bound leaves room
        # for a loaded machine (the interpreter's exit with torch loaded takes seconds there).
        try:
            _, err = process.communicate(timeout=45)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)
            _, err = process.communicate(timeout=30)
            pytest.fail(f"no exit 45 s after Ctrl-C; the command's threads:\n{err[-8000:]}")
        assert time.monotonic() - interrupted < 30
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == "streammind stream: interrupted" and "Traceback" not in err
    assert json.loads(stats.read_text())["interrupted"] is True
