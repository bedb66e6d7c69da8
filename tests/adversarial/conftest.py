"""Shared pieces of the adversarial suite: a saved tiny model, checksums of a file tree, a
loopback server that accepts connections and never answers.

Run: .venv/bin/python -m pytest tests/adversarial -q
"""

from __future__ import annotations

import hashlib
import socket
import threading
from pathlib import Path

import pytest

from streammind import save_model
from tests.conftest import make_tiny


def tree_checksums(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under `root` (a file: just that one)."""
    root = Path(root)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root) if p != root else p.name): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def one_error_line(err: str, prog: str, alone: bool = True) -> str:
    """The stderr line of a reported error: no traceback, exactly one error line and it comes last;
    `alone`: nothing else on stderr (False for commands that log progress first)."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err, err
    errors = [line for line in lines if line.startswith(f"{prog}: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert not alone or len(lines) == 1, err
    return errors[0]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tiny_tokenizer_dir):
    """A saved tiny StreamMind model (read-only: tests copy it before changing anything)."""
    from transformers import AutoTokenizer

    model, processor = make_tiny(AutoTokenizer.from_pretrained(tiny_tokenizer_dir))
    out = tmp_path_factory.mktemp("adversarial_model")
    save_model(model, processor, out)
    return out


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never sends a byte; `connected` is set at the first."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.connected = threading.Event()
        self.conns: list[socket.socket] = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(conn)
            self.connected.set()

    def close(self) -> None:
        self._stop.set()
        for conn in self.conns:
            conn.close()
        self.sock.close()


@pytest.fixture
def silent_server():
    server = SilentServer()
    yield server
    server.close()
