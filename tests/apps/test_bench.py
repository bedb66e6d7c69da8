"""`streammind bench`: the whole engine benchmark runs end to end (tiny preset, CPU, --quick) and
reports every section; the long-stream `step` command reports its windows and memory.

Run: .venv/bin/python -m pytest tests/apps/test_bench.py -q
"""

from __future__ import annotations

import json

from streammind.apps import bench


def test_bench_all_quick_reports_every_section(tmp_path):
    out = tmp_path / "engine"
    assert bench.main(["--preset", "tiny", "--quick", "--height", "48", "--width", "64", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert set(result["live"]["windows"]) == {"0-100", "100-200"}
    assert result["live"]["turn_memory_end"] == 128 and result["live"]["gate_frames_end"] == 200  # no reply: one turn (window 256)
    assert result["file_mode"]["frames"] == 64 and result["file_mode"]["frames_per_s"] > 0
    assert set(result["aggregate"]) == {"1", "4"}
    assert set(result["replies"]["turns"]) == {"4", "10"} and result["replies"]["decode_tokens_per_s"] > 0
    assert result["replies"]["stall"]["ticks"] >= 1
    per_frame = result["per_frame_llm"]
    # KV bytes per stream-hour: 10 tokens per frame x fps x 3600 x (2 x layers x kv heads x head dim x 4 bytes, fp32).
    text = {"layers": 2, "kv_heads": 2, "head_dim": 32}
    per_token = 2 * text["layers"] * text["kv_heads"] * text["head_dim"] * 4
    assert per_frame["kv_bytes_per_token"] == per_token
    assert per_frame["kv_bytes_per_stream_hour"] == {"2": per_token * 10 * 2 * 3600, "30": per_token * 10 * 30 * 3600}
    assert result["parity"]["max_abs_diff_gate_prob_vs_parallel"] <= 1e-5
    table = out.with_suffix(".md").read_text()
    for row in ("a. one live stream, frames 0-100", "file mode", "b. 4 streams batched", "c. fire -> first token, 10-frame turn",
                "c. decode, batch 1", "d. per-frame LLM (10 tokens/frame), context 256", "e. our state per stream", "parity"):
        assert row in table, row


def test_bench_step_reports_windows_and_memory(tmp_path):
    out = tmp_path / "step"
    assert bench.main(["step", "--preset", "tiny", "--frames", "40", "--height", "48", "--width", "64", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert list(result["latency_windows"]) == ["4-14", "10-20", "20-30", "30-40"]
    assert result["memory"][0]["frame"] == 0 and result["memory"][-1]["frame"] == 40
    assert result["stream_vs_parallel"]["max_abs_diff_gate_prob_vs_parallel"] <= 1e-5
