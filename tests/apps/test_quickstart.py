"""The README's main job end to end on a fresh directory, at toy scale (it cannot learn here).

Run: .venv/bin/python -m pytest tests/apps/test_quickstart.py -q
"""

from __future__ import annotations

import json

from streammind.apps.quickstart import run, tiny_configs


def test_the_tiny_configs_ship_with_the_package():
    assert sorted(p.name for p in tiny_configs().iterdir() if p.name.endswith(".yaml")) == ["perframe.yaml", "stage1.yaml", "stage2.yaml"]


def test_quickstart_runs_from_nothing_and_writes_the_metrics(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the configs come from the package, not from the working directory
    out, world = tmp_path / "run", tmp_path / "world"
    result = run(["--out", str(out), "--world", str(world), "--num-train", "4", "--num-test", "2",
                   "--stage1-epochs", "1", "--stage2-epochs", "1", "--tower-steps", "5"])
    assert (world / "tokenizer" / "tokenizer.json").exists()
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result))
    assert {"trigger_acc", "timval", "trigger_f1_1s", "reply_exact_match", "num_videos"} <= set(metrics)
    assert metrics["num_videos"] == 2
    assert (out / "stage2" / "model.safetensors").exists()
    assert (out / "tower" / "pretrain_metrics.json").exists() and "tower_s" in metrics["timings"]
    assert (out / "eval_test" / "predictions.jsonl").read_text().count("\n") == 2
    printed = capsys.readouterr().out
    assert "streaming videos/test/0000.mp4" in printed and "ground truth:" in printed
