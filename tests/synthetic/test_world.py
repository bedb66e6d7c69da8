"""Tests for the embedded synthetic world and its tokenizer (`streammind.synthetic.world`).

Run: .venv/bin/python -m pytest tests/synthetic/test_world.py -q

The checks on videos decode the real mp4 files with PyAV and read pixels independently
of the renderer where they can (colour at a slot's centre), so a renderer or encoder bug
cannot hide behind itself.
"""

import json
import random

import numpy as np
import pytest
from PIL import Image

from streammind.synthetic.world import (
    BACKGROUND,
    COLOURS,
    QUERIES,
    SHAPES,
    SLOTS,
    SPECIAL_TOKENS,
    SYSTEM_PROMPT,
    Event,
    WorldConfig,
    WorldObject,
    all_queries,
    all_replies,
    build_tokenizer,
    generate_world,
    main,
    render_frame,
    sample_video,
)

av = pytest.importorskip("av")

TINY = WorldConfig(seed=7, num_train=3, num_val=1, num_test=3)

# Written out by hand, not taken from the module: query text -> (event type, new colour or None).
EXPECTED_QUERIES = {
    "Tell me when a shape appears.": ("appear", None),
    "Tell me when a shape disappears.": ("disappear", None),
    "Tell me when something changes colour.": ("recolour", None),
    "Tell me when a shape moves.": ("move", None),
    "Tell me when something turns red.": ("recolour", "red"),
    "Tell me when something turns green.": ("recolour", "green"),
    "Tell me when something turns blue.": ("recolour", "blue"),
    "Tell me when something turns yellow.": ("recolour", "yellow"),
}


def _expected_text(e: dict) -> str:
    """Reply wording, restated by hand."""
    if e["type"] == "appear":
        return f"A {e['colour']} {e['shape']} appeared."
    if e["type"] == "disappear":
        return f"The {e['colour']} {e['shape']} disappeared."
    if e["type"] == "recolour":
        return f"The {e['old_colour']} {e['shape']} turned {e['colour']}."
    return f"The {e['colour']} {e['shape']} moved to the {e['slot']}."


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _decode(path):
    """All frames as (time in seconds, uint8 [H, W, 3]), plus the stream."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        info = (stream.codec_context.name, stream.codec_context.pix_fmt, stream.average_rate)
        frames = [(float(f.time), f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    return info, frames


def _slot_colour(frame: np.ndarray, slot: str) -> np.ndarray:
    """Mean RGB of a 4x4 patch at the slot's centre (inside every shape)."""
    size = frame.shape[0]
    cx, cy = int(size * (0.25 if slot == "left" else 0.75)), size // 2
    return frame[cy - 2 : cy + 2, cx - 2 : cx + 2].reshape(-1, 3).mean(0)


def _close(rgb, target, tol=20.0) -> bool:
    return float(np.abs(np.asarray(rgb, float) - np.asarray(target, float)).max()) <= tol


def _scenes(record):
    """Scene before and after each event, rebuilt from the record's fields."""
    objects = tuple(WorldObject(**o) for o in record["initial"])
    out = []
    for e in record["events"]:
        event = Event(**{k: v for k, v in e.items() if k != "text"})
        after = event.apply(objects)
        out.append((e, objects, after))
        objects = after
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    summary = generate_world(out, TINY)
    return out, summary


def _records(out):
    return {split: _read_jsonl(out / f"{split}.jsonl") for split in ("train", "val", "test")}


def test_layout_and_summary(world):
    out, summary = world
    assert summary["generated"] is True
    records = _records(out)
    for split, count in TINY.split_counts().items():
        assert len(records[split]) == count
        assert sorted(p.name for p in (out / "videos" / split).iterdir()) == [f"{i:04d}.mp4" for i in range(count)]
        for i, r in enumerate(records[split]):
            assert r["video"] == f"videos/{split}/{i:04d}.mp4"
            assert set(r) >= {"video", "query", "turns", "id", "events"}
            assert summary["splits"][split]["turns"] == sum(len(r["turns"]) for r in records[split])
    meta = json.loads((out / "world.json").read_text())
    assert meta["config"]["seed"] == TINY.seed
    assert meta["num_distinct_replies"] == 84 and meta["num_distinct_queries"] == 7  # the "moves" query is off by default


def test_determinism(world, tmp_path):
    out, _ = world
    again = tmp_path / "again"
    generate_world(again, TINY)
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "world.json"):
        assert (out / name).read_bytes() == (again / name).read_bytes(), name
    # Same build of PyAV/x264 here, so the encoded bytes match too.
    for split, count in TINY.split_counts().items():
        for i in range(count):
            rel = f"videos/{split}/{i:04d}.mp4"
            assert (out / rel).read_bytes() == (again / rel).read_bytes(), rel
    other = tmp_path / "other"
    generate_world(other, WorldConfig(seed=TINY.seed + 1, num_train=3, num_val=1, num_test=3))
    assert (out / "train.jsonl").read_bytes() != (other / "train.jsonl").read_bytes()


def test_reuse_and_regenerate(tmp_path):
    config = WorldConfig(seed=1, num_train=2, num_val=1, num_test=1)
    assert generate_world(tmp_path, config)["generated"] is True
    assert generate_world(tmp_path, config)["generated"] is False
    smaller = WorldConfig(seed=1, num_train=1, num_val=1, num_test=1)
    assert generate_world(tmp_path, smaller)["generated"] is True
    assert [p.name for p in (tmp_path / "videos" / "train").iterdir()] == ["0000.mp4"]  # stale files removed
    assert len(_read_jsonl(tmp_path / "train.jsonl")) == 1


def test_videos_decode_with_expected_timing(world):
    out, _ = world
    for records in _records(out).values():
        for r in records:
            (codec, pix_fmt, rate), frames = _decode(out / r["video"])
            assert (codec, pix_fmt, rate) == ("h264", "yuv420p", TINY.fps)
            assert r["fps"] == TINY.fps
            assert TINY.min_duration <= r["duration"] <= TINY.max_duration
            assert len(frames) == round(r["duration"] * TINY.fps)
            assert [t for t, _ in frames] == [k / TINY.fps for k in range(len(frames))]
            assert frames[0][1].shape == (TINY.frame_size, TINY.frame_size, 3)


def test_pixels_change_exactly_at_event_times(world):
    out, _ = world
    background = np.asarray(BACKGROUND)
    seen_types = set()
    for records in _records(out).values():
        for r in records:
            seen_types.update(e["type"] for e in r["events"])
            _, frames = _decode(out / r["video"])
            by_time = dict(frames)
            # Every decoded frame matches the rendered scene of its time (so nothing happens between events).
            for e, before, after in _scenes(r):
                t = e["time"]
                at, prev_sampled, prev_frame = by_time[t], by_time[t - 0.5], by_time[t - 1 / TINY.fps]
                assert np.abs(at.astype(int) - render_frame(after, TINY.frame_size)).mean() < 8
                assert np.abs(prev_frame.astype(int) - render_frame(before, TINY.frame_size)).mean() < 8
                assert np.abs(prev_sampled.astype(int) - render_frame(before, TINY.frame_size)).mean() < 8
                # Independent check of the event's region and colour between the 2 fps frames t - 0.5 and t.
                new, old = COLOURS[e["colour"]], COLOURS.get(e["old_colour"])
                slot_at, slot_prev = _slot_colour(at, e["slot"]), _slot_colour(prev_sampled, e["slot"])
                if e["type"] == "appear":
                    assert _close(slot_prev, background) and _close(slot_at, new)
                elif e["type"] == "disappear":
                    assert _close(slot_prev, new) and _close(slot_at, background)
                elif e["type"] == "recolour":
                    assert _close(slot_prev, old) and _close(slot_at, new)
                else:
                    assert _close(slot_prev, background) and _close(slot_at, new)
                    assert _close(_slot_colour(prev_sampled, e["old_slot"]), new)
                    assert _close(_slot_colour(at, e["old_slot"]), background)
    assert seen_types == {"appear", "disappear", "recolour", "move"}  # the tiny world covers every branch


def test_event_times_and_text(world):
    out, _ = world
    for records in _records(out).values():
        for r in records:
            times = [e["time"] for e in r["events"]]
            assert all(t * 2 == int(t * 2) for t in times), times
            assert times[0] >= TINY.min_event_time and times[-1] <= r["duration"] - TINY.end_margin
            assert all(b - a >= TINY.min_gap for a, b in zip(times, times[1:])), times
            for e, before, _ in _scenes(r):
                assert e["text"] == _expected_text(e)
                if e["type"] in ("disappear", "recolour"):
                    assert WorldObject(e["shape"], e["old_colour"] or e["colour"], e["slot"]) in before
                if e["type"] == "appear":
                    assert e["slot"] not in {o.slot for o in before} and e["shape"] not in {o.shape for o in before}


def test_turns_are_exactly_the_matching_events(world):
    out, _ = world
    for records in _records(out).values():
        for r in records:
            event_type, colour = EXPECTED_QUERIES[r["query"]]
            matching = [e for e in r["events"] if e["type"] == event_type and colour in (None, e["colour"])]
            assert r["turns"] == [{"time": e["time"], "text": e["text"]} for e in matching]
            assert 1 <= len(r["turns"]) < len(r["events"])  # at least one answer and one distractor


@pytest.mark.parametrize("max_objects,move_queries", [(1, False), (2, True)])
def test_sampler_constraints_and_coverage(max_objects, move_queries):
    """Many scripts without encoding: constraints always hold and every query / event type occurs."""
    config = WorldConfig(max_objects=max_objects, move_queries=move_queries)
    seen_queries, seen_types = set(), set()
    for i in range(400):
        spec = sample_video(random.Random(f"sampler/{i}"), config)
        seen_queries.add(spec.query.text)
        seen_types.update(e.type for e in spec.events)
        times = [e.time for e in spec.events]
        assert times[0] >= config.min_event_time and times[-1] <= spec.duration - config.end_margin
        assert all(config.min_gap <= b - a <= config.max_gap for a, b in zip(times, times[1:]))
        assert 1 <= len(spec.turns()) < len(spec.events)
        scene = spec.initial
        for e in spec.events:
            scene = e.apply(scene)
            assert len({o.slot for o in scene}) == len(scene) == len({o.shape for o in scene}) <= config.max_objects
    assert seen_queries == {q for q in EXPECTED_QUERIES if move_queries or "moves" not in q}
    assert seen_types == {"appear", "disappear", "recolour", "move"}


def test_scenes_distinct_at_32px():
    """Every single-shape scene (and the empty one) stays clearly apart after a resize to 32x32."""
    scenes = [()] + [(WorldObject(s, c, sl),) for s in SHAPES for c in COLOURS for sl in SLOTS]
    small = [np.asarray(Image.fromarray(render_frame(x, 64)).resize((32, 32), Image.BILINEAR), float) for x in scenes]
    gaps = [np.abs(a - b).mean() for i, a in enumerate(small) for b in small[i + 1 :]]
    assert min(gaps) > 4.0


def test_config_validation():
    with pytest.raises(ValueError, match="fps"):
        WorldConfig(fps=5)
    with pytest.raises(ValueError, match="multiple"):
        WorldConfig(min_gap=2.25)
    with pytest.raises(ValueError, match="too short"):
        WorldConfig(min_duration=4.0)


def test_query_and_reply_inventory():
    assert all_queries() == list(EXPECTED_QUERIES)
    assert [q.text for q in QUERIES] == all_queries()
    replies = all_replies()
    assert len(replies) == len(set(replies)) == 84
    assert "A red circle appeared." in replies and "The blue square turned green." in replies


def test_tokenizer_round_trip_and_reload(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = build_tokenizer(tmp_path / "tok")
    assert 300 <= len(tokenizer) <= 600
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS.values()] == [0, 1, 2, 3]
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token, tokenizer.pad_token) == (
        "<s>",
        "</s>",
        "<unk>",
        "<pad>",
    )
    prompt = f"<s>[INST] <<SYS>>\n{SYSTEM_PROMPT}\n<</SYS>>\n\n{all_queries()[0]} [/INST] A red circle appeared.</s>"
    strings = all_queries() + all_replies() + [" " + r for r in all_replies()] + [prompt, "\n \n", "Unseen: ñ 42!"]
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    for s in strings:
        ids = tokenizer.encode(s, add_special_tokens=False)
        assert tokenizer.decode(ids) == s
        assert reloaded.encode(s, add_special_tokens=False) == ids
        assert tokenizer.unk_token_id not in ids
    assert tokenizer.encode(prompt, add_special_tokens=False)[0] == tokenizer.bos_token_id
    assert tokenizer.encode(prompt, add_special_tokens=False)[-1] == tokenizer.eos_token_id
    assert tokenizer.encode("x") == tokenizer.encode("x", add_special_tokens=False)  # no implicit BOS/EOS
    # Every reply word after the leading space is one token, so replies stay short.
    assert max(len(tokenizer.encode(" " + r, add_special_tokens=False)) for r in all_replies()) <= 8
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    assert build_tokenizer().get_vocab() == tokenizer.get_vocab()  # deterministic training


def test_cli_main(tmp_path, capsys):
    assert main([str(tmp_path), "--seed", "3", "--num_train", "1", "--num_val", "1", "--num_test", "1"]) == 0
    summary = json.loads((tmp_path / "world.json").read_text())
    assert summary["config"]["seed"] == 3
    assert (tmp_path / "tokenizer" / "tokenizer.json").is_file()
    assert "84 replies" in capsys.readouterr().out
