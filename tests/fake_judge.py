"""A fake LLM judge for the tests: an OpenAI-compatible chat-completions server on loopback.

`FakeServer(respond)` answers each POST with `respond(body, n) -> (status, content, headers)`;
`fake_verdict` is the Video-ChatGPT judge's scripted reply (`SCORES`). No request leaves the
machine; `FAKE_KEY` is the bearer token the tests configure.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAKE_KEY = "dummy-key-for-tests"


class FakeServer:
    """An OpenAI-compatible /v1/chat/completions on 127.0.0.1; `respond(body, n)` -> (status, content, headers)."""

    def __init__(self, respond):
        self.respond = respond
        self.requests = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status, content, headers = server.respond(body, len(server.requests))
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}) if status == 200 else content
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(payload.encode())

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


SCORES = {
    ("correctness", "A red circle appears, then a blue square."): "4",
    ("detail orientation", "A red circle appears, then a blue square."): "{'score': 3}",
    ("contextual understanding", "A red circle appears, then a blue square."): "5",
    ("correctness", "A green triangle moves to the left."): "2",
    ("detail orientation", "A green triangle moves to the left."): "Score: 1",
    ("contextual understanding", "A green triangle moves to the left."): "3",
    ("correctness", "Red."): "I cannot tell from this.",  # never usable: unparsed
    ("detail orientation", "Red."): "5",
    ("contextual understanding", "Red."): "4",
    ("temporal understanding", "A blue square."): "2",
    ("temporal understanding", "A yellow star appears."): "5",  # never asked: v_gamma has no video
    ("consistency", "To the left."): "5",
    ("consistency", "Two."): "1",
}
# Expected, with the failed video and the unparsed verdict counted as 0:
#   correctness   (4 + 2 + 0) / 3 = 2.0   judged (4 + 2) / 2 = 3.0
#   detail        (3 + 1 + 5) / 3 = 3.0   judged 3.0
#   context       (5 + 3 + 4) / 3 = 4.0   judged 4.0
#   temporal      (2 + 0) / 2     = 1.0   judged 2 / 1 = 2.0
#   consistency   (5 + 1) / 2     = 3.0   judged 3.0
#   average (2 + 3 + 4 + 1 + 3) / 5 = 2.6, judged (3 + 3 + 4 + 2 + 3) / 5 = 3.0
EXPECTED = {"correctness": 2.0, "detail_orientation": 3.0, "contextual_understanding": 4.0, "temporal_understanding": 1.0,
            "consistency": 3.0, "average": 2.6, "correctness_judged": 3.0, "detail_orientation_judged": 3.0,
            "contextual_understanding_judged": 4.0, "temporal_understanding_judged": 2.0, "consistency_judged": 3.0,
            "average_judged": 3.0}


def fake_verdict(body, scores=SCORES):
    """The reply of the fake judge to one request body."""
    system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
    dimension = next(d for d in ("correctness", "detail orientation", "contextual understanding", "temporal understanding", "consistency")
                     if f"Grade {d}" in system)
    reference = next(line.split(": ", 1)[1] for line in user.splitlines() if line.startswith("Correct answer"))
    return 200, scores[(dimension, reference)], {}
