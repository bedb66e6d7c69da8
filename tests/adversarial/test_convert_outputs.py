"""Adversarial conversions: destinations that would destroy the source or an earlier result,
garbage source files, crashes part way; the annotation converters' outputs.

Run: .venv/bin/python -m pytest tests/adversarial/test_convert_outputs.py -q

`streammind convert` runs in-process through `streammind.apps.cli.main` (exit status returned);
the annotation converters through `run_command`, as their entry point does. Every case
checks the one-line message, the status, and the checksums of the source (and of any
earlier destination) before and after.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from transformers import AutoTokenizer

from streammind import load_model
from streammind.apps.cli import main
from streammind.errors import run_command
from streammind.training import annotation_converters as converters
from tests.helpers import one_error_line, tree_checksums
from tests.source_checkpoints import GATE_HEADS, make_original

PROG = "streammind convert"


@pytest.fixture(scope="module")
def source(tmp_path_factory, tiny_tokenizer_dir):
    """An original-StreamMind checkpoint at tiny sizes (one .bin file)."""
    src, _ = make_original(tmp_path_factory.mktemp("convert_src"), AutoTokenizer.from_pretrained(tiny_tokenizer_dir), "bin")
    return src


def _convert(src, dst, *extra):
    return main(["convert", "--from", "streammind-original", str(src), str(dst), "--gate-heads", str(GATE_HEADS),
                 "--dtype", "float32", "--no-progress", *map(str, extra)])


def test_destination_that_is_or_overlaps_the_source_is_refused(source, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(source, src)
    before = tree_checksums(src)
    for dst, expected in ((src, "the destination is the source itself"), (src / "converted", "lies inside the source"),
                          (tmp_path, "contains the source")):
        assert _convert(src, dst, "--overwrite") == 2
        line = one_error_line(capsys.readouterr().err, PROG)
        assert expected in line, line
        assert tree_checksums(src) == before
    assert not (src / "converted").exists()


def test_non_empty_destination_needs_overwrite_and_is_then_replaced_whole(source, model_dir, tmp_path, capsys):
    dst = tmp_path / "dst"
    shutil.copytree(model_dir, dst)
    (dst / "notes.txt").write_text("an earlier result")
    before, source_before = tree_checksums(dst), tree_checksums(source)
    assert _convert(source, dst) == 2
    assert "already exists and is not empty; pass --overwrite" in one_error_line(capsys.readouterr().err, PROG)
    assert tree_checksums(dst) == before

    assert _convert(source, dst, "--overwrite") == 0
    assert not (dst / "notes.txt").exists() and (dst / "conversion_report.json").is_file()
    model, _ = load_model(dst)
    assert model.config.gate_mode == "per_frame"
    assert tree_checksums(source) == source_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst"]  # no temporary or set-aside directory left


def test_a_crash_while_writing_leaves_the_destination_as_it_was(source, model_dir, tmp_path, monkeypatch, capsys):
    import streammind.apps.convert as convert

    dst = tmp_path / "dst"
    shutil.copytree(model_dir, dst)
    before = tree_checksums(dst)

    def save_half_then_die(model, processor, directory):
        (directory / "config.json").write_text("{}")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(convert, "save_model", save_half_then_die)
    assert _convert(source, dst, "--overwrite") == 1  # a failure at run time, not a bad input
    assert "No space left on device" in one_error_line(capsys.readouterr().err, PROG)
    assert tree_checksums(dst) == before and sorted(p.name for p in tmp_path.iterdir()) == ["dst"]


def _garbage(kind, src):
    rng = np.random.default_rng(0)
    if kind == "config.json not JSON":
        (src / "config.json").write_text("model_type: mistral\n")
        return "config.json:1: not valid JSON"
    if kind == "config.json a list":
        (src / "config.json").write_text("[]")
        return "config.json: expected a JSON object, got list"
    if kind == "config.json of another model":
        (src / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
        return "only Mistral-based VideoLLaMA2 checkpoints are supported"
    if kind == "config.json with nonsense sizes":
        config = json.loads((src / "config.json").read_text())
        (src / "config.json").write_text(json.dumps({**config, "hidden_size": "wide"}))
        return "not a usable Mistral config"
    if kind == "weights are random bytes":
        (src / "pytorch_model.bin").write_bytes(rng.integers(0, 256, 2048, dtype=np.uint8).tobytes())
        return "pytorch_model.bin: not a readable torch checkpoint"
    if kind == "weights are a text file":
        (src / "pytorch_model.bin").unlink()
        (src / "model.safetensors").write_text("not weights\n")
        return "model.safetensors: not a readable safetensors file"
    if kind == "index is garbage":
        (src / "pytorch_model.bin.index.json").write_text("{\"weight_map\": 3}")
        return "pytorch_model.bin.index.json: not a weights index"
    if kind == "tokenizer is garbage":
        (src / "tokenizer.json").write_bytes(rng.integers(0, 256, 512, dtype=np.uint8).tobytes())
        return "cannot load the tokenizer"
    raise ValueError(kind)


GARBAGE = ["config.json not JSON", "config.json a list", "config.json of another model", "config.json with nonsense sizes",
           "weights are random bytes", "weights are a text file", "index is garbage", "tokenizer is garbage"]


@pytest.mark.parametrize("kind", GARBAGE)
def test_garbage_sources_are_one_line(kind, source, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(source, src)
    expected = _garbage(kind, src)
    before = tree_checksums(src)
    assert _convert(src, tmp_path / "out") == 2
    line = one_error_line(capsys.readouterr().err, PROG)
    assert expected in line, line
    assert tree_checksums(src) == before and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------- annotation converters

CONVERTERS = "streammind convert-annotations"


def _ego4d(path, streams):
    path.write_text(json.dumps(streams))
    return path


def test_annotation_converter_never_replaces_an_output_by_accident(tmp_path, capsys):
    src = _ego4d(tmp_path / "narration.json", {"v1": {"p1": [{"time": 1.2, "text": "#C C opens the door"}]}})
    src_before = tree_checksums(src)
    assert run_command(CONVERTERS, converters.main, ["ego4d", str(src), str(src), "--overwrite"]) == 2
    assert "OUT is the source file itself" in one_error_line(capsys.readouterr().err, CONVERTERS)
    assert tree_checksums(src) == src_before

    out = tmp_path / "out.jsonl"
    out.write_text('{"video": "earlier.mp4", "query": "q", "turns": []}\n')
    out_before = tree_checksums(out)
    assert run_command(CONVERTERS, converters.main, ["ego4d", str(src), str(out)]) == 2
    assert "already exists; pass --overwrite" in one_error_line(capsys.readouterr().err, CONVERTERS)
    assert tree_checksums(out) == out_before

    empty = _ego4d(tmp_path / "empty.json", {"v1": {"p1": []}, "v2": {}})  # every pass without narration
    assert run_command(CONVERTERS, converters.main, ["ego4d", str(empty), str(out), "--overwrite"]) == 2
    assert "yields no record" in one_error_line(capsys.readouterr().err, CONVERTERS)
    assert tree_checksums(out) == out_before

    assert run_command(CONVERTERS, converters.main, ["ego4d", str(src), str(out), "--overwrite"]) == 0
    assert json.loads(out.read_text())["video"] == "v1.mp4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.json", "narration.json", "out.jsonl"]


@pytest.mark.parametrize("payload, expected", [(b"\xff\xfe garbage \x00", "not UTF-8 text"), (b"{\"v1\": ", "invalid JSON"),
                                               (b"[1, 2]", "expected an object")])
def test_annotation_converter_garbage_input(payload, expected, tmp_path, capsys):
    src = tmp_path / "narration.json"
    src.write_bytes(payload)
    assert run_command(CONVERTERS, converters.main, ["ego4d", str(src), str(tmp_path / "out.jsonl")]) == 2
    line = one_error_line(capsys.readouterr().err, CONVERTERS)
    assert str(src) in line and expected in line, line
    assert not (tmp_path / "out.jsonl").exists()
