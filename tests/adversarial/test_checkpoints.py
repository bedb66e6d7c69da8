"""Adversarial model directories: every bad one is refused with one line (exit 2), never built
with default sizes or loaded with freshly initialised tensors; saving never leaves half a model.

Run: .venv/bin/python -m pytest tests/adversarial/test_checkpoints.py -q

Each case copies a saved tiny model, breaks one thing, runs `streammind stream` in-process
(`streammind.apps.cli.main`, which returns the exit status) and checks the message, the status
and that the directory was not touched. One case runs the real `python -m` entry point in a
subprocess for `--debug` / STREAMMIND_DEBUG.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from streammind import load_model, save_model
from streammind.apps.cli import main
from streammind.builder import CheckpointError
from tests.helpers import REPO, one_error_line, tree_checksums

PROG = "streammind stream"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder of three small frames: a source that always opens."""
    folder = tmp_path_factory.mktemp("frames")
    for k in range(3):
        Image.fromarray(np.full((24, 32, 3), 40 * k, dtype=np.uint8)).save(folder / f"{k}.png")
    return folder


def _edit_weights(directory, edit):
    path = directory / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def _drop(tensors, *prefixes):
    for key in [k for k in tensors if k.startswith(prefixes)]:
        del tensors[key]


def _break(kind, d):
    """Break a copied model directory `d`; returns the part of the message expected."""
    if kind == "corrupt config.json":
        (d / "config.json").write_text('{"model_type": "streammind", "vision_config": {\n  oops')
        return "config.json:2: not valid JSON"
    if kind == "empty config {}":
        (d / "config.json").write_text("{}")
        return "a config without model_type, not a StreamMind one"
    if kind == "sub-configs not named":
        (d / "config.json").write_text(json.dumps({"model_type": "streammind", "gate_threshold": 0.5}))
        return "must name its sub-configs, but ['vision_config', 'text_config'] are missing"
    if kind == "a field of the wrong type":
        config = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**config, "gate_threshold": "high"}))
        return "gate_threshold"
    if kind == "another architecture":
        from transformers import MistralConfig

        MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2).save_pretrained(d)
        return "a 'mistral' model config, not a StreamMind one"
    if kind == "truncated weights":
        data = (d / "model.safetensors").read_bytes()
        (d / "model.safetensors").write_bytes(data[: len(data) // 2])
        return "model.safetensors: truncated"
    if kind == "random weights":
        (d / "model.safetensors").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        return "model.safetensors: not a safetensors file"
    if kind == "missing weights":
        (d / "model.safetensors").unlink()
        return "no weights (model.safetensors or its index) in the directory"
    if kind == "missing tokenizer":
        (d / "tokenizer.json").unlink()
        return "no tokenizer"
    if kind == "missing tensors":
        _edit_weights(d, lambda t: _drop(t, "gate.head.", "perception.block.mixer.A_log"))
        return "missing: gate.head.bias, gate.head.weight, perception.block.mixer.A_log"
    if kind == "unexpected tensors":
        _edit_weights(d, lambda t: t.update({"gate.extra.weight": torch.zeros(3)}))
        return "unexpected: gate.extra.weight"
    raise ValueError(kind)


KINDS = ["corrupt config.json", "empty config {}", "sub-configs not named", "a field of the wrong type", "another architecture", "truncated weights",
         "random weights", "missing weights", "missing tokenizer", "missing tensors", "unexpected tensors"]


@pytest.mark.parametrize("kind", KINDS)
def test_bad_model_directory_is_one_line_exit_2(kind, model_dir, images, tmp_path, capsys):
    bad = tmp_path / "model"
    shutil.copytree(model_dir, bad)
    expected = _break(kind, bad)
    before = tree_checksums(bad)
    assert main(["stream", str(images), "--model", str(bad), "--threshold", "1"]) == 2
    line = one_error_line(capsys.readouterr().err, PROG)
    assert str(bad) in line and expected in line, line
    assert tree_checksums(bad) == before  # loading never writes
    with pytest.raises(CheckpointError) as library:  # the library says the same
        load_model(bad)
    assert expected in str(library.value)


def test_partial_load_is_an_explicit_opt_out(model_dir, images, tmp_path, capsys):
    partial = tmp_path / "partial"
    shutil.copytree(model_dir, partial)
    _break("missing tensors", partial)
    assert main(["stream", str(images), "--model", str(partial), "--threshold", "1", "--allow-partial-load"]) == 0
    assert "3 frames" in capsys.readouterr().err
    model, _ = load_model(partial, strict=False)
    assert model.gate.head.weight.shape[0] == 2


def test_debug_shows_the_traceback_through_the_real_entry_point(tmp_path, images, capsys):
    bad = tmp_path / "model"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    argv = ["stream", str(images), "--model", str(bad)]
    assert main(argv) == 2
    plain = one_error_line(capsys.readouterr().err, PROG)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    debug = subprocess.run([sys.executable, "-m", "streammind", "--debug", *argv], env=env, capture_output=True, text=True, timeout=120)
    assert debug.returncode == 2 and "Traceback (most recent call last)" in debug.stderr and "CheckpointError" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == plain


def test_debug_environment_variable(tmp_path, images, capsys, monkeypatch):
    (tmp_path / "config.json").write_text("[1, 2]")
    monkeypatch.setenv("STREAMMIND_DEBUG", "1")
    assert main(["stream", str(images), "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].endswith("config.json: expected a JSON object, got list")


# ---------------------------------------------------------------------- atomic saving


def test_a_crash_while_saving_leaves_the_old_model_whole(model_dir, tmp_path, monkeypatch, tiny_tokenizer):
    target = tmp_path / "model"
    shutil.copytree(model_dir, target)
    (target / "notes.txt").write_text("kept")
    before = tree_checksums(target)
    model, processor = load_model(target)
    with torch.no_grad():
        model.gate.head.bias.add_(1.0)  # a different model, so a half-written mix would show

    import transformers.modeling_utils as modeling_utils

    real = modeling_utils.safe_save_file

    def crash_half_way(tensors, filename, metadata=None):
        real(dict(list(tensors.items())[: len(tensors) // 2]), filename, metadata=metadata)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(modeling_utils, "safe_save_file", crash_half_way)
    with pytest.raises(OSError, match="No space left"):
        save_model(model, processor, target)
    monkeypatch.setattr(modeling_utils, "safe_save_file", real)
    assert tree_checksums(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary left behind
    load_model(target)  # still a complete model

    save_model(model, processor, target)  # a save that finishes replaces the model, keeps other files
    reloaded, _ = load_model(target)
    assert torch.equal(reloaded.gate.head.bias, model.gate.head.bias) and (target / "notes.txt").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
