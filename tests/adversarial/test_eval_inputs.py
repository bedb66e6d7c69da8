"""Adversarial evaluation inputs: malformed prediction / reference records, outputs that must
not be clobbered, and a judge endpoint that redirects elsewhere.

Run: .venv/bin/python -m pytest tests/adversarial/test_eval_inputs.py -q

`streammind score` runs in-process through `run_command` (what its entry
does). The judge servers listen on 127.0.0.1 and 127.0.0.2 (two hosts of the loopback net).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from streammind.errors import run_command
from streammind.evaluation import score
from streammind.evaluation.judge import JudgeConfig, JudgeConfigError
from streammind_eval.qa_open import QAJudge
from tests.helpers import one_error_line, tree_checksums

PROG = "streammind score"
REFERENCE = {"id": "v1", "video": "v1.mp4", "query": "Narrate.", "turns": [{"time": 1.0, "text": "You pick up a cup."}]}
PREDICTION = {"id": "v1", "video": "v1.mp4", "replies": [{"time": 1.2, "text": "You pick up a cup.", "prob": 0.9}]}
KEY = "sk-adversarial-0123456789"


def _lines(path, *rows):
    path.write_bytes(b"".join(row if isinstance(row, bytes) else (json.dumps(row) + "\n").encode() for row in rows))
    return path


@pytest.mark.parametrize("which, row, expected", [
    ("predictions", {"id": "v1", "replies": "none"}, ":2: 'replies' must be a list, got str"),
    ("predictions", {"id": "v1", "replies": [{"time": "soon", "text": "x"}]}, ":2: reply 0: 'time' must be a finite number of seconds"),
    ("predictions", b'{"id": "v1", "replies": [{"time": NaN, "text": "x"}]}\n', ":2: reply 0: 'time' must be a finite number"),
    ("predictions", {"id": "v1", "replies": [{"time": 1.0, "text": 3}]}, ":2: reply 0: 'text' must be a string (or null)"),
    ("predictions", {"replies": []}, ":2: a prediction needs an 'id' or a 'video'"),
    ("predictions", [1, 2], ":2: expected a JSON object, got list"),
    ("predictions", b"\xff\xfe\n", ":2: not UTF-8 text"),
    ("predictions", b'{"id": "v1", "repl\n', ":2: invalid JSON"),
    ("references", {"id": "v2", "video": "v2.mp4", "query": "N."}, ":2: missing key 'turns'"),
    ("references", {"id": "v2", "video": "v2.mp4", "query": "N.", "turns": [{"time": -1, "text": "x"}]}, ":2: turn 0: negative time"),
])
def test_bad_records_name_file_and_line(which, row, expected, tmp_path, capsys):
    files = {"predictions": _lines(tmp_path / "predictions.jsonl", PREDICTION),
             "references": _lines(tmp_path / "references.jsonl", REFERENCE)}
    first = PREDICTION if which == "predictions" else REFERENCE
    _lines(files[which], first, row)
    out = tmp_path / "metrics.json"
    out.write_text('{"earlier": true}\n')
    before = tree_checksums(tmp_path)
    argv = ["--predictions", str(files["predictions"]), "--references", str(files["references"]), "--out", str(out), "--skip-meteor"]
    assert run_command(PROG, score.main, argv) == 2
    line = one_error_line(capsys.readouterr().err, PROG, alone=False)
    assert f"{files[which]}{expected}" in line, line
    assert tree_checksums(tmp_path) == before


def test_out_naming_a_directory_is_refused_before_scoring(tmp_path, capsys):
    predictions = _lines(tmp_path / "p.jsonl", PREDICTION)
    references = _lines(tmp_path / "r.jsonl", REFERENCE)
    argv = ["--predictions", str(predictions), "--references", str(references), "--out", str(tmp_path), "--skip-meteor"]
    assert run_command(PROG, score.main, argv) == 2
    assert one_error_line(capsys.readouterr().err, PROG, alone=False).endswith(f"{tmp_path}: --out names a directory; give a file path")


@pytest.mark.parametrize("flags, expected", [(["--threshold", "nan"], "argument --threshold: must be a finite number in [0, 1], got nan"),
                                             (["--limit", "-1"], "--limit must be >= 0, got -1")])
def test_evaluator_flags_out_of_range(flags, expected, model_dir, small_world, tmp_path, capsys):
    from streammind_eval import synthetic

    argv = ["--model", str(model_dir), "--data-root", str(small_world), "--out", str(tmp_path / "out"), *flags]
    assert run_command("streammind eval synthetic", synthetic.main, argv) == 2
    assert expected in one_error_line(capsys.readouterr().err, "streammind eval synthetic", alone=False)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------- the judge client


class Endpoint:
    """An HTTP server on `host` whose POSTs answer `respond(path) -> (status, headers, body)`; it records requests."""

    def __init__(self, host, respond):
        self.requests = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                endpoint.requests.append({"path": self.path, "headers": dict(self.headers)})
                status, headers, body = respond(self.path)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


VERDICT = json.dumps({"choices": [{"message": {"content": '{"match": "yes", "score": 5}'}}]}).encode()


@pytest.fixture
def endpoints(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,127.0.0.2,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,127.0.0.2,localhost")
    started = []

    def start(host, respond):
        started.append(Endpoint(host, respond))
        return started[-1]

    yield start
    for endpoint in started:
        endpoint.close()


def _judge(url):
    return QAJudge(JudgeConfig(base_url=f"{url}/v1", model="judge", api_key=KEY, backoff_s=0.0, max_attempts=2, timeout_s=5.0))


@pytest.mark.parametrize("status", [302, 307, 308])
def test_a_redirect_to_another_host_is_refused_and_the_key_never_leaves(status, endpoints):
    other = endpoints("127.0.0.2", lambda path: (200, {"Content-Type": "application/json"}, VERDICT))
    first = endpoints("127.0.0.1", lambda path: (status, {"Location": f"{other.url}/v1/chat/completions"}, b""))
    with pytest.raises(JudgeConfigError, match=r"redirects to another host \(http://127\.0\.0\.2:\d+\); refused"):
        _judge(first.url).judge(question="q", prediction="p", reference="r")
    assert other.requests == []  # nothing at all reached the other host
    assert len(first.requests) == 1 and first.requests[0]["headers"]["Authorization"] == f"Bearer {KEY}"


def test_same_host_other_port_is_another_origin(endpoints):
    other = endpoints("127.0.0.1", lambda path: (200, {"Content-Type": "application/json"}, VERDICT))
    first = endpoints("127.0.0.1", lambda path: (307, {"Location": f"{other.url}/v1/chat/completions"}, b""))
    with pytest.raises(JudgeConfigError, match="another host"):
        _judge(first.url).judge(question="q", prediction="p", reference="r")
    assert other.requests == []


def test_same_origin_307_is_followed_with_the_key(endpoints):
    def respond(path):
        if path == "/v1/chat/completions":
            return 307, {"Location": "/v2/chat/completions"}, b""
        return 200, {"Content-Type": "application/json"}, VERDICT

    server = endpoints("127.0.0.1", respond)
    verdict, _ = _judge(server.url).judge(question="q", prediction="p", reference="r")
    assert verdict.match and verdict.score == 5
    assert [r["path"] for r in server.requests] == ["/v1/chat/completions", "/v2/chat/completions"]
    assert all(r["headers"]["Authorization"] == f"Bearer {KEY}" for r in server.requests)


def test_same_origin_302_would_turn_the_post_into_a_get(endpoints):
    server = endpoints("127.0.0.1", lambda path: (302, {"Location": "/elsewhere"}, b""))
    with pytest.raises(JudgeConfigError, match="HTTP 302"):
        _judge(server.url).judge(question="q", prediction="p", reference="r")
    assert len(server.requests) == 1
