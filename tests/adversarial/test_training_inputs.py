"""Adversarial training inputs: flags, YAML, types, files, datasets, interrupted checkpoints.

Run: .venv/bin/python -m pytest tests/adversarial/test_training_inputs.py -q

`streammind train` runs in-process through `streammind.apps.cli.main` (exit status returned).
Settings must fail before any model is built: `streammind.training.train.build` is replaced by a
function that fails the test if it is reached.
"""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import yaml

import streammind.training.train as train
from streammind.apps.cli import main
from streammind.errors import BadSample
from streammind.training.datasets import StreamDataset
from tests.helpers import REPO, one_error_line, tree_checksums
from tests.helpers import stage_args as _stage_args

PROG = "streammind train"
STAGE1 = REPO / "configs" / "tiny" / "stage1.yaml"


@pytest.fixture
def no_model(monkeypatch):
    def build(*args, **kwargs):
        raise AssertionError("a model was built before the settings were checked")

    monkeypatch.setattr(train, "build", build)


def _yaml(tmp_path, text=None, **overrides):
    """The tiny stage-1 YAML with `overrides`, or `text` verbatim."""
    path = tmp_path / "stage.yaml"
    if text is None:
        cfg = yaml.safe_load(STAGE1.read_text())
        cfg.update(overrides)
        text = yaml.safe_dump(cfg)
    path.write_text(text)
    return path


def _train(argv, capsys) -> tuple[int, str]:
    code = main(["train", *map(str, argv)])
    return code, one_error_line(capsys.readouterr().err, PROG, alone=False) if code else ""


@pytest.mark.parametrize("overrides, expected", [
    ({"lora": "no"}, "lora must be true or false (YAML 1.2: yes/no/on/off are strings), got 'no'"),
    ({"bf16": "no"}, "bf16 must be true or false"),
    ({"cache_decoded": "no"}, "cache_decoded must be true or false"),
    ({"num_train_epochs": "many"}, "num_train_epochs must be a number, got 'many'"),
    ({"seed": 1.5}, "seed must be an integer, got 1.5"),
    ({"trainable": "perception"}, "trainable must be a list (e.g. [a, b], or [a] for one item), got 'perception'"),
    ({"lora_target_modules": ["q_proj", 3]}, "lora_target_modules must be a list"),
    ({"output_dir": 2024}, "output_dir must be a string or null, got 2024"),
    ({"fps": float("inf")}, "fps must be a finite number > 0, got inf"),
    ({"on_bad_sample": "ignore"}, "on_bad_sample must be 'raise' or 'skip', got 'ignore'"),
])
def test_yaml_values_of_the_wrong_type(overrides, expected, tmp_path, capsys, no_model):
    path = _yaml(tmp_path, **overrides)
    before = tree_checksums(path)
    code, line = _train([path], capsys)
    assert code == 2 and line.startswith(f"{PROG}: error: {path}: ") and expected in line, line
    assert tree_checksums(path) == before


def test_yaml_1_2_no_is_a_string_where_a_string_is_wanted(tmp_path):
    _, _, args, _ = train.parse_args([str(_yaml(tmp_path, save_strategy="no"))])
    assert args.save_strategy == "no"


@pytest.mark.parametrize("flags, expected", [
    (["--learning_rate"], "--learning_rate needs a value (--learning_rate VALUE or --learning_rate=VALUE; booleans too"),
    (["--lora", "--learning_rate", "1e-4"], "--lora needs a value"),
    (["--lora", "no"], "--lora: lora must be true or false"),
    (["--num_train_epochs=lots"], "--num_train_epochs: num_train_epochs must be a number"),
    (["--trainable", "gate"], "--trainable: trainable must be a list"),
    (["--fps", "inf"], "--fps: fps must be a number or null, got 'inf'"),
    (["--output_dir", "[unclosed"], "--output_dir: not a valid value '[unclosed'"),
    (["learning_rate", "1e-4"], "expected --key, got 'learning_rate'"),
])
def test_command_line_flags(flags, expected, capsys, no_model):
    code, line = _train([STAGE1, *flags], capsys)
    assert code == 2 and expected in line, line


def test_flag_values_keep_their_dashes(tmp_path):
    _, _, args, _ = train.parse_args([str(STAGE1), "--output_dir=runs/my-run", "--learning_rate", "1e-4", "--trainable", "[gate]"])
    assert (args.output_dir, args.learning_rate, args.trainable) == ("runs/my-run", 1e-4, ["gate"])


@pytest.mark.parametrize("text, expected", [
    ("stage: 1\ntrainable: [perception\noutput_dir: x\n", ":3: not valid YAML"),
    ("- stage: 1\n- trainable: [gate]\n", "expected a mapping of settings (key: value lines), got a YAML list"),
    ("just a sentence\n", "expected a mapping of settings (key: value lines), got a YAML str"),
    ("\x00\x01", "not valid YAML"),
])
def test_broken_yaml(text, expected, tmp_path, capsys, no_model):
    path = _yaml(tmp_path, text=text)
    code, line = _train([path], capsys)
    assert code == 2 and str(path) in line and expected in line, line


def test_missing_files_before_any_model(tmp_path, capsys, no_model):
    code, line = _train([tmp_path / "nope.yaml"], capsys)
    assert code == 2 and line.endswith("nope.yaml: config file not found")
    code, line = _train([STAGE1, "--train_annotations", tmp_path / "missing.jsonl"], capsys)
    assert code == 2 and line.endswith("missing.jsonl: train_annotations not found")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"video": "a.mp4", "query": "q", "turns": []}\n{"video": 3}\n')
    code, line = _train([STAGE1, "--train_annotations", bad, "--data_root", tmp_path], capsys)
    assert code == 2 and f"{bad}:2: 'video' must be a string" in line
    code, line = _train([STAGE1, "--train_annotations", bad.with_name("x.jsonl"), "--data_root", tmp_path / "nowhere"], capsys)
    assert code == 2


# ---------------------------------------------------------------------- datasets


def _world_with_escapes(world, tmp_path):
    """A data root holding nothing but annotations whose videos lie outside it (relative and absolute)."""
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(world / "videos" / "train" / "0000.mp4", tmp_path / "outside.mp4")
    record = json.loads((world / "train.jsonl").read_text().splitlines()[0])
    records = [{**record, "video": "../outside.mp4"}, {**record, "video": str(tmp_path / "outside.mp4")}]
    annotations = tmp_path / "escape.jsonl"
    annotations.write_text("".join(json.dumps(r) + "\n" for r in records))
    return root, annotations


def test_video_paths_stay_inside_data_root(small_world, tmp_path, tiny):
    _, processor = tiny
    root, annotations = _world_with_escapes(small_world, tmp_path)
    with pytest.raises(BadSample, match=r"\.\./outside\.mp4 leaves data_root"):
        StreamDataset(annotations, root, processor)
    with pytest.raises(BadSample, match=r"no usable example, every record was skipped \(outside_data_root: 2\)"):
        StreamDataset(annotations, root, processor, on_error="skip")
    allowed = StreamDataset(annotations, root, processor, allow_outside_root=True)
    assert len(allowed) == 2 and allowed.skipped == {}


def test_every_record_skipped_is_one_line(small_world, small_tower, tmp_path, capsys):
    root, annotations = _world_with_escapes(small_world, tmp_path)
    argv = _stage_args(small_world, small_tower, tmp_path / "run", 1,
                       ["--train_annotations", annotations, "--data_root", root, "--on_bad_sample", "skip"])
    code, line = _train(argv, capsys)
    assert code == 2 and line.endswith(f"{annotations}: no usable example, every record was skipped (outside_data_root: 2)")


def _checkpoint_problems(out):
    return {p.name: train.checkpoint_problem(p) for p in sorted(out.glob("checkpoint-*"))}


def test_resume_auto_skips_checkpoints_a_crash_left_incomplete(small_world, small_tower, tmp_path, caplog):
    out = tmp_path / "run"
    keep = ["--save_steps", "1", "--save_total_limit", "5"]
    assert main(["train", *_stage_args(small_world, small_tower, out, 1, keep)]) == 0
    # A run killed while saving: checkpoint-2 lost its trainer_state.json (written last),
    # checkpoint-3 got only the first half of its weights.
    (out / "checkpoint-2" / "trainer_state.json").unlink()
    shutil.copytree(out / "checkpoint-1", out / "checkpoint-3")
    weights = (out / "checkpoint-3" / "model.safetensors").read_bytes()
    (out / "checkpoint-3" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    problems = _checkpoint_problems(out)
    assert problems["checkpoint-1"] is None and "no trainer_state.json" in problems["checkpoint-2"]
    assert "truncated" in problems["checkpoint-3"]

    with caplog.at_level(logging.INFO, logger="streammind.training.train"):
        assert main(["train", *_stage_args(small_world, small_tower, out, 1,
                                           ["--max_steps", "3", "--resume_from_checkpoint", "auto", *keep])]) == 0
    messages = [r.getMessage() for r in caplog.records if "resume_from_checkpoint auto" in r.getMessage()]
    assert any("skipping incomplete checkpoint-3" in m for m in messages)
    assert any("skipping incomplete checkpoint-2" in m for m in messages)
    assert any(m.endswith("checkpoint-1") for m in messages)
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and [h["step"] for h in state["log_history"] if "loss" in h] == [1, 2, 3]
    assert all(problem is None for problem in _checkpoint_problems(out).values())


def test_explicit_resume_from_an_incomplete_checkpoint_is_refused(tmp_path, capsys, no_model, small_world):
    partial = tmp_path / "checkpoint-7"
    partial.mkdir()
    code, line = _train([STAGE1, "--train_annotations", small_world / "train.jsonl", "--data_root", small_world,
                         "--output_dir", tmp_path, "--resume_from_checkpoint", partial], capsys)
    assert code == 2 and f"{partial}: cannot resume from this checkpoint: no trainer_state.json" in line, line
