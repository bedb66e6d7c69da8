"""Fuzzing the annotation and prediction readers: random truncations and byte flips of valid
files must give a result or a one-line error (a `UserError` naming the file), never another
exception and never a hang.

Run: .venv/bin/python -m pytest tests/adversarial/test_fuzz_readers.py -q

Fixed seed, `CASES` mutations per reader, each call under a 2-second alarm, and the whole
reader's loop under `BUDGET_S` seconds.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from streammind.errors import UserError
from streammind.evaluation.offline import load_saved_predictions
from streammind.evaluation.score import load_predictions, load_references
from streammind.training.annotation_converters import convert_ego4d, convert_soccernet
from streammind.training.annotations import load_annotations, load_llava_json, load_offline_samples, read_json, save_offline_samples
from streammind_eval.qa_open import load_judgements

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CASES = 150
BUDGET_S = 20.0
SEED = 11

PREDICTIONS = [
    {"id": "v1", "video": "v1.mp4", "replies": [{"time": 1.5, "text": "You pick up a cup.", "prob": 0.9}, {"time": 9.0, "text": ""}]},
    {"id": "v2", "video": "v2.mp4", "replies": [], "error": "undecodable"},
    {"id": "v3", "prediction": "a red circle", "num_frames": 4},
]
JUDGEMENTS = [{"id": "v1", "match": "yes", "score": 5, "raw": "{}"}, {"id": "v2", "error": "judge failed"}]


def _soccer_labels() -> bytes:
    return json.dumps({"annotations": [{"gameTime": "1 - 00:01", "anonymized": "Kick-off."},
                                       {"gameTime": "2 - 45:10", "anonymized": "[TEAM] score."}]}).encode()


def _offline_jsonl(tmp_path) -> bytes:
    save_offline_samples(load_llava_json(FIXTURES / "llava_videochatgpt.json"), tmp_path / "offline.jsonl")
    return (tmp_path / "offline.jsonl").read_bytes()


READERS = {
    "stream annotations": (lambda p: load_annotations(p), lambda tmp: (FIXTURES / "stream_annotations.jsonl").read_bytes()),
    "offline samples": (lambda p: load_offline_samples(p), _offline_jsonl),
    "llava json": (lambda p: load_llava_json(p), lambda tmp: (FIXTURES / "llava_videochatgpt.json").read_bytes()),
    "ego4d narration": (lambda p: convert_ego4d(read_json(p), source=str(p)), lambda tmp: (FIXTURES / "ego4d_narration_stream.json").read_bytes()),
    "soccernet labels": (lambda p: convert_soccernet(read_json(p), match="m", source=str(p)), lambda tmp: _soccer_labels()),
    "predictions": (lambda p: load_predictions(p), lambda tmp: b"".join(json.dumps(r).encode() + b"\n" for r in PREDICTIONS[:2])),
    "references": (lambda p: load_references(p), lambda tmp: (FIXTURES / "stream_annotations.jsonl").read_bytes()),
    "saved predictions": (lambda p: load_saved_predictions([p]), lambda tmp: b"".join(json.dumps(r).encode() + b"\n" for r in PREDICTIONS)),
    "judgements": (lambda p: load_judgements(p), lambda tmp: b"".join(json.dumps(r).encode() + b"\n" for r in JUDGEMENTS)),
}


def mutate(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """One random corruption of `data` and a description of it."""
    buf = bytearray(data)
    kind = rng.integers(4)
    if kind == 0:
        cut = int(rng.integers(len(buf) + 1))
        return bytes(buf[:cut]), f"truncated at {cut}"
    if kind == 1:
        positions = rng.integers(len(buf), size=int(rng.integers(1, 9)))
        for pos in positions:
            buf[pos] = int(rng.integers(256))
        return bytes(buf), f"bytes set at {sorted(positions.tolist())}"
    if kind == 2:  # flip bits of structural characters, where JSON breaks in interesting ways
        structural = [i for i, b in enumerate(buf) if chr(b) in '{}[]:,"0123456789.-']
        positions = rng.choice(structural, size=min(len(structural), int(rng.integers(1, 5))), replace=False)
        for pos in positions:
            buf[pos] ^= 1 << int(rng.integers(8))
        return bytes(buf), f"bits flipped at {sorted(positions.tolist())}"
    cut = int(rng.integers(len(buf) + 1))
    pos = int(rng.integers(len(buf)))
    buf[pos] = int(rng.integers(256))
    return bytes(buf[:cut]), f"byte {pos} set, truncated at {cut}"


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang()


@pytest.mark.parametrize("name", list(READERS))
def test_fuzzed_files_give_a_result_or_a_one_line_error(name, tmp_path):
    read, valid = READERS[name]
    data = valid(tmp_path)
    path = tmp_path / "fuzzed"
    path.write_bytes(data)
    read(path)  # the unmutated file reads
    rng = np.random.default_rng([SEED, list(READERS).index(name)])
    outcomes = {"ok": 0, "error": 0}
    previous = signal.signal(signal.SIGALRM, _alarm)
    began = time.monotonic()
    try:
        for case in range(CASES):
            corrupted, how = mutate(data, rng)
            path.write_bytes(corrupted)
            signal.setitimer(signal.ITIMER_REAL, 2.0)
            try:
                read(path)
                outcomes["ok"] += 1
            except UserError as error:
                assert str(path) in str(error), f"{name}: case {case} ({how}): the message does not name the file: {error}"
                outcomes["error"] += 1
            except _Hang:
                pytest.fail(f"{name}: case {case} ({how}) did not finish in 2 s")
            except Exception as error:  # anything else would be a traceback for the user
                pytest.fail(f"{name}: case {case} ({how}) raised {type(error).__name__}: {error}")
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - began < BUDGET_S
    assert outcomes["error"] > CASES // 4  # the corruptions do break the files
