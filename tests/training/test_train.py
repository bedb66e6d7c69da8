"""Training: YAML parsing, set_trainable, stage 1 -> stage 2 in-process, resume, 2-process DDP.

Run: .venv/bin/python -m pytest tests/training/test_train.py -q
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml
from transformers import CLIPVisionModel, TrainingArguments

from streammind import load_model
from streammind.gate import GateLossConfig, gate_loss
from streammind.training.arguments import ConfigError, ModelArguments, _load_yaml, parse_args
from streammind.training.train import StreamMindTrainer, set_trainable, train
from tests.helpers import REPO, batch_of_two, make_tiny, stage_args

CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(REPO)) for p in CONFIGS])
def test_every_stage_yaml_parses_with_no_unknown_keys(path):
    model_args, data_args, train_args, resolved = parse_args([str(path)])
    assert train_args.stage in (1, 2) and train_args.trainable
    assert set(resolved) >= {"stage", "trainable", "output_dir"}


def test_cli_overrides_and_unknown_keys(tmp_path):
    cfg = REPO / "configs" / "tiny" / "stage1.yaml"
    _, data_args, args, _ = parse_args([str(cfg), "--learning_rate", "1e-4", "--trainable", "[gate]", "--fps=4"])
    assert args.learning_rate == 1e-4 and args.trainable == ["gate"] and data_args.fps == 4
    with pytest.raises(ValueError, match="learnig_rate"):
        parse_args([str(cfg), "--learnig_rate", "1e-4"])
    assert _load_yaml("save_strategy: no")["save_strategy"] == "no"


def test_model_source_must_be_unique():
    with pytest.raises(ValueError, match="exactly one model source"):
        ModelArguments(init_from="a", preset="tiny", tokenizer_path="t")


def test_set_trainable_raises_on_unmatched_and_counts(tiny_tokenizer):
    model, _ = make_tiny(tiny_tokenizer)
    table = set_trainable(model, ["gate", "perception.post_proj"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("gate.", "perception.post_proj.")) for n in trainable)
    assert "gate" in table and "total" in table
    with pytest.raises(ValueError, match=r"\['gait'\] match no parameter"):
        set_trainable(model, ["gate", "gait"])
    set_trainable(model, ["*.A_log"])
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["perception.block.mixer.A_log"]


def test_stage1_then_stage2_train_what_they_declare(small_world, small_tower, tmp_path):
    out1 = train(stage_args(small_world, small_tower, tmp_path / "s1", 1))
    assert (tmp_path / "s1" / "run_config.yaml").exists()
    run_config = yaml.safe_load((tmp_path / "s1" / "run_config.yaml").read_text())
    assert run_config["stage"] == 1 and run_config["gate_loss"] == "ce"  # the gate loss is recorded with the run
    stage1, _ = load_model(out1)
    tower = CLIPVisionModel.from_pretrained(small_tower).state_dict()
    assert all(torch.equal(stage1.vision.clip.state_dict()[k], v) for k, v in tower.items())  # frozen in stage 1
    assert len(list((tmp_path / "features").rglob("*.pt"))) == 6  # one file of pooled features per training video
    out2 = train(stage_args(small_world, small_tower, tmp_path / "s2", 2, ["--init_from", out1]))
    stage2, _ = load_model(out2)
    changed = {n.split(".")[0] for n, p in stage2.state_dict().items() if not torch.equal(p, stage1.state_dict()[n])}
    assert changed == {"gate"}
    assert len(list((tmp_path / "features").iterdir())) == 1  # stage 2 found the same tower, hence the same cache key


def test_resume_continues_from_the_last_checkpoint(small_world, small_tower, tmp_path):
    out = tmp_path / "run"
    train(stage_args(small_world, small_tower, out, 1, ["--save_steps", "1", "--save_total_limit", "2"]))
    (out / "checkpoint-7").mkdir()  # a run killed while saving: no trainer_state.json, so it is passed over
    (out / "checkpoint-7" / "model.safetensors").write_bytes(b"partial")
    train(stage_args(small_world, small_tower, out, 1, ["--max_steps", "3", "--resume_from_checkpoint", "auto", "--save_steps", "1"]))
    assert (out / "incomplete-checkpoint-7").is_dir() and not (out / "checkpoint-7").exists()
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert [h["step"] for h in state["log_history"] if "loss" in h] == [1, 2, 3]


def test_two_process_cpu_ddp_through_the_launcher(small_world, small_tower, tmp_path):
    """scripts/finetune_stage1.sh with NPROC_PER_NODE=2 runs torchrun (gloo) and trains the tiny preset."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHON": sys.executable,
           "NPROC_PER_NODE": "2", "MASTER_PORT": str(port)}
    args = stage_args(small_world, small_tower, tmp_path / "ddp", 1)
    proc = subprocess.run([str(REPO / "scripts" / "finetune_stage1.sh"), *args], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "ddp" / "model.safetensors").exists()
    assert proc.stderr.count("world size 2") == 1  # logged by rank 0 only


def test_set_trainable_prefixes_match_whole_name_components():
    """`gate` must not reach `gate_proj`, nor `layers.1` reach `layers.10`; globs may."""
    model = torch.nn.Module()
    model.gate = torch.nn.Linear(2, 3)
    model.gate_proj = torch.nn.Linear(2, 2)
    model.layers = torch.nn.ModuleList(torch.nn.Linear(2, 2, bias=False) for _ in range(12))

    def trainable():
        return {n for n, p in model.named_parameters() if p.requires_grad}

    table = set_trainable(model, ["gate", "layers.1"])
    assert trainable() == {"gate.weight", "gate.bias", "layers.1.weight"}
    rows = {line.split()[0]: [int(x.replace(",", "")) for x in line.split()[1:]] for line in table.splitlines()[1:]}
    assert rows == {"gate": [9, 0], "gate_proj": [0, 6], "layers": [4, 44], "total": [13, 50]}
    # Each call starts from everything frozen; an exact parameter name matches itself only.
    set_trainable(model, ["layers.11.weight"])
    assert trainable() == {"layers.11.weight"}
    set_trainable(model, ["layers.1*"])
    assert trainable() == {"layers.1.weight", "layers.10.weight", "layers.11.weight"}
    with pytest.raises(ValueError, match=r"\['gate.w'\] match no parameter"):
        set_trainable(model, ["gate.w"])


def test_command_line_forms(tmp_path, monkeypatch):
    """`--key value`, `--key=value` (the value may hold '='), dashes for underscores, booleans
    as values, launcher `--local_rank` arguments dropped, a .yml file, and sys.argv when no list
    is given; a bare `--flag` (before another flag or at the end) needs a value."""
    cfg = tmp_path / "stage.yml"
    cfg.write_text((REPO / "configs" / "tiny" / "stage1.yaml").read_text())
    argv = [str(cfg), "--local_rank=1", "--local-rank=1", "--run-name=a=b", "--cache_decoded", "true", "--logging-steps", "7",
            "--seed=3", "--fps", "4", "--remove_unused_columns=true"]
    monkeypatch.setattr(sys, "argv", ["prog", *argv])
    for given in (argv, None):
        _, data_args, args, resolved = parse_args(given)
        assert args.run_name == "a=b" and args.logging_steps == 7 and args.seed == 3 and data_args.fps == 4
        assert data_args.cache_decoded is True and resolved["remove_unused_columns"] is True
        assert "local_rank" not in resolved and "local-rank" not in resolved
    for bad in ([], ["--fps", "4"], [str(tmp_path / "stage.json")]):
        with pytest.raises(ConfigError, match="usage"):
            parse_args(bad)
    with pytest.raises(ConfigError, match="expected --key, got 'stray'"):
        parse_args([str(cfg), "stray"])
    for bare in (["--cache_decoded", "--seed", "3"], ["--seed", "3", "--cache_decoded"]):
        with pytest.raises(ConfigError, match="--cache_decoded needs a value"):
            parse_args([str(cfg), *bare])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_model_dtypes(dtype):
    assert ModelArguments(preset="tiny", tokenizer_path="t", torch_dtype=dtype).torch_dtype == dtype


def test_model_argument_errors():
    with pytest.raises(ValueError, match="torch_dtype must be float32, bfloat16 or float16, got 'float64'"):
        ModelArguments(preset="tiny", tokenizer_path="t", torch_dtype="float64")
    with pytest.raises(ValueError, match="exactly one model source"):
        ModelArguments()
    with pytest.raises(ValueError, match="preset needs tokenizer_path"):
        ModelArguments(preset="tiny")
    with pytest.raises(ValueError, match="llm_path needs clip_path"):
        ModelArguments(llm_path="l")
    with pytest.raises(ValueError, match="clip_path cannot be combined with init_from"):
        ModelArguments(init_from="i", clip_path="c")
    assert ModelArguments(llm_path="l", clip_path="c").llm_path == "l"
    assert ModelArguments(preset="tiny", tokenizer_path="t", clip_path="c").clip_path == "c"


def test_set_trainable_table_and_unmatched_message():
    model = torch.nn.Module()
    model.gate = torch.nn.Linear(2, 3)
    model.perception = torch.nn.Linear(3, 1, bias=False)
    table = set_trainable(model, ["perception"])
    assert table.splitlines() == [
        "module               trainable        frozen",
        "gate                         0             9",
        "perception                   3             0",
        "total                        3             9",
    ]
    with pytest.raises(ValueError, match=r"\['gat', 'x'\] match no parameter; top-level modules are \['gate', 'perception'\]"):
        set_trainable(model, ["gat", "gate", "x"])


def test_the_trainer_hands_the_run_s_gate_loss_to_the_model(tiny, tmp_path):
    """Stage 2 chooses its loss (a training setting), whatever checkpoint it starts from."""
    model, processor = tiny
    batch, _ = batch_of_two(processor)
    focal = GateLossConfig(kind="focal", class_weights=(0.4, 0.6), focal_gamma=1.0)
    trainer = StreamMindTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[]),
                                gate_loss_config=focal)
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        out = model(**batch)
    assert torch.allclose(loss, out.lm_loss + gate_loss(out.gate_logits, batch["gate_labels"], focal))
    assert not torch.allclose(loss, out.loss)  # the default would have been the weighted cross-entropy


def test_gate_loss_settings_are_typed_training_arguments(small_world, small_tower, tmp_path):
    argv = stage_args(small_world, small_tower, tmp_path / "s2", 2, ["--init_from", str(tmp_path), "--gate_loss", "focal",
                                                                       "--gate_class_weights", "[0.3, 0.7]"])
    _, _, args, resolved = parse_args(argv)
    assert args.gate_loss_config() == GateLossConfig(kind="focal", class_weights=(0.3, 0.7), focal_gamma=2.0)
    assert (resolved["gate_loss"], resolved["gate_class_weights"], resolved["gate_focal_gamma"]) == ("focal", [0.3, 0.7], 2.0)
    with pytest.raises(ConfigError, match="unknown gate loss 'hinge'"):
        parse_args([*argv, "--gate_loss", "hinge"])


def test_wrong_types_name_the_setting_and_where_it_was_set(tmp_path):
    """A value of the wrong type raises ConfigError naming where it was set (the YAML file or the
    `--flag`), the setting, its expected type and the value."""
    cfg = tmp_path / "stage.yaml"
    cfg.write_text((REPO / "configs" / "tiny" / "stage1.yaml").read_text() + "seed: three\n")
    with pytest.raises(ConfigError, match=rf"^{cfg}: seed must be an integer, got 'three'$"):
        parse_args([str(cfg)])
    tiny = REPO / "configs" / "tiny" / "stage1.yaml"
    with pytest.raises(ConfigError, match=r"^--fps: fps must be a number or null, got 'fast'$"):
        parse_args([str(tiny), "--fps", "fast"])


def test_resolved_config_records_the_default_gate_loss():
    """A YAML that leaves the gate loss alone still records it with the run: cross-entropy with
    the (silent, respond) weights [0.15, 0.85] and focal gamma 2.0, as plain YAML values."""
    _, _, args, resolved = parse_args([str(REPO / "configs" / "tiny" / "stage1.yaml")])
    assert (resolved["gate_loss"], resolved["gate_class_weights"], resolved["gate_focal_gamma"]) == ("ce", [0.15, 0.85], 2.0)
    assert type(resolved["gate_class_weights"]) is list
    assert args.gate_loss_config() == GateLossConfig(kind="ce", class_weights=(0.15, 0.85), focal_gamma=2.0)
