"""The long-memory world: its turns are exactly the disappearances of the shape that appeared
first, one of them minutes later with a distractor before it; the default world is unchanged.

Run: .venv/bin/python -m pytest tests/synthetic/test_world_long_memory.py -q
"""

from __future__ import annotations

import json
import random

import pytest

from streammind.synthetic.world import LONG_MEMORY_QUERY, QUERIES, WorldConfig, generate_world, sample_video

CONFIG = WorldConfig(long_memory=True, min_duration=140.0, max_duration=160.0, memory_gap=120.0, fps=2)


@pytest.mark.parametrize("index", range(40))
def test_turns_are_the_first_shapes_disappearances(index):
    spec = sample_video(random.Random(f"0/train/{index}"), CONFIG)
    assert spec.query == LONG_MEMORY_QUERY and not spec.initial
    appear = [e for e in spec.events if e.type == "appear"]
    first = appear[0]
    assert spec.first_shape == first.shape and spec.events[0] is first
    expected = [{"time": e.time, "text": e.text} for e in spec.events if e.type == "disappear" and e.shape == first.shape]
    assert spec.turns() == expected
    # Whole seconds, one shape on screen at a time, within the video.
    assert all(float(e.time).is_integer() for e in spec.events)
    assert all(0 < e.time <= spec.duration - CONFIG.end_margin for e in spec.events)
    on_screen = 0
    for e in spec.events:
        on_screen += {"appear": 1, "disappear": -1}.get(e.type, 0)
        assert on_screen in (0, 1)
    # A turn at least memory_gap after the first appearance, with another shape vanishing before it.
    late = [t for t in spec.turns() if t["time"] >= first.time + CONFIG.memory_gap]
    assert late
    assert any(e.type == "disappear" and e.shape != first.shape and e.time < late[-1]["time"] for e in spec.events)


def test_config_rules():
    with pytest.raises(ValueError, match="room"):
        WorldConfig(long_memory=True, min_duration=60.0, max_duration=70.0, memory_gap=120.0)
    with pytest.raises(ValueError, match="one shape"):
        WorldConfig(long_memory=True, min_duration=140.0, max_duration=160.0, max_objects=2)
    assert WorldConfig(long_memory=True, min_duration=140.0, max_duration=160.0).queries() == (LONG_MEMORY_QUERY,)
    assert LONG_MEMORY_QUERY not in QUERIES  # the tokenizer's corpus (and so the default world's ids) is unchanged


def test_the_default_world_is_unchanged_by_the_option():
    default = WorldConfig()
    for index in range(20):
        spec = sample_video(random.Random(f"0/train/{index}"), default)
        assert spec.turns() == [{"time": e.time, "text": e.text} for e in spec.events if spec.query.matches(e)]


def test_generate_a_small_long_memory_world(tmp_path):
    config = WorldConfig(long_memory=True, min_duration=34.0, max_duration=36.0, memory_gap=12.0, fps=2, num_train=2, num_val=0, num_test=1)
    summary = generate_world(tmp_path, config)
    records = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert summary["splits"]["train"]["videos"] == 2 and len(records) == 2
    assert all(r["query"] == LONG_MEMORY_QUERY.text and r["query_key"] == "first_disappears" and r["turns"] for r in records)
