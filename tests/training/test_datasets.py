"""StreamDataset: turn ends, gate labels, dialogue rendering, bad input (raise or counted skip), caches.

Run: .venv/bin/python -m pytest tests/training/test_datasets.py -q
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from streammind.errors import BadSample
from streammind.training.annotations import load_annotations
from streammind.training.collator import StreamCollator
from streammind.training.datasets import MissingFeatures, StreamDataset, turn_end_frames
from streammind.training.features import FeatureCache, vision_cache_key
from tests.helpers import make_tiny


def test_turn_end_frames_rule():
    times = np.arange(0, 5, 0.5)  # 0.0 .. 4.5
    # A turn at 1.0 ends on the frame at 1.0; at 1.2 on the last frame before (1.0) -> same frame.
    assert turn_end_frames(times, [1.0, 2.2, 4.9]) == [3, 5, 10]
    with pytest.raises(BadSample, match="same frame"):
        turn_end_frames(times, [1.0, 1.2])
    with pytest.raises(BadSample, match="past the video's end"):
        turn_end_frames(times, [6.0])
    with pytest.raises(BadSample, match="no frames"):
        turn_end_frames(np.array([]), [1.0])


def test_examples_follow_the_annotations(small_world, tiny_tokenizer):
    model, processor = make_tiny(tiny_tokenizer)
    records = load_annotations(small_world / "train.jsonl")
    both = StreamDataset(records, small_world, processor, stage="both")
    ex = both[0]
    rec = records[0]
    n = len(ex["gate_labels"])
    assert ex["pixel_values"].shape[0] == n
    times = np.arange(n) / 2.0
    expected_ends = [int(np.searchsorted(times, t.time + 1e-6, side="right")) for t in rec.turns]
    assert ex["turn_ends"] == expected_ends
    assert [i for i, g in enumerate(ex["gate_labels"]) if g == 1] == [e - 1 for e in expected_ends]
    text = tiny_tokenizer.decode(ex["input_ids"])
    assert rec.query in text and all(t.text in text for t in rec.turns)
    # Stage 1 drops frames after the last reply; stage 2 keeps them all.
    assert StreamDataset(records, small_world, processor, stage=1)[0]["pixel_values"].shape[0] == expected_ends[-1]
    batch = StreamCollator.from_processor(processor)([both[0], both[1]])
    out = model(**batch)
    assert torch.isfinite(out.loss)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bad_records_raise_or_are_counted(small_world, tiny_tokenizer, tmp_path):
    _, processor = make_tiny(tiny_tokenizer)
    good = json.loads((small_world / "train.jsonl").read_text().splitlines()[0])
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    import shutil

    shutil.copy(small_world / good["video"], tmp_path / "ok.mp4")
    rows = [
        {**good, "video": "ok.mp4"},
        {**good, "video": "missing.mp4"},
        {**good, "video": "broken.mp4"},
        {**good, "video": "ok.mp4", "turns": []},
        {**good, "video": "ok.mp4", "turns": [{"time": 999.0, "text": "late"}]},
    ]
    path = _write(tmp_path / "anns.jsonl", rows)
    with pytest.raises(BadSample, match="missing.mp4"):
        StreamDataset(path, tmp_path, processor, on_error="raise")
    ds = StreamDataset(path, tmp_path, processor, on_error="skip")
    assert len(ds) == 1
    assert dict(ds.skipped) == {"missing_video": 1, "undecodable_video": 1, "no_turns": 1, "turn_past_end": 1}


def test_feature_cache_round_trip_and_key(small_world, tiny_tokenizer, tmp_path, monkeypatch):
    model, processor = make_tiny(tiny_tokenizer)
    key = vision_cache_key(model.config, model.vision)
    cache = FeatureCache(tmp_path, key)
    records = load_annotations(small_world / "train.jsonl")[:2]
    uncached = StreamDataset(records, small_world, processor, stage=2)[0]
    with torch.no_grad():
        features = model.vision(uncached["pixel_values"])
    video = str(small_world / records[0].video)
    cache.store(video, 2.0, None, None, features, np.arange(len(features)) / 2.0)
    assert cache.contains(video, 2.0, None, None) and not cache.contains(video, 4.0, None, None)
    assert len(list(tmp_path.rglob("*.pt"))) == 1 and not list(tmp_path.rglob("*.tmp"))
    # A cache hit never decodes the video: frame times come from the cache too.
    import streammind.training.datasets as stream_module

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cached clip was decoded")

    monkeypatch.setattr(stream_module, "read_video", no_decoding)
    for stage in (1, 2):
        hit = StreamDataset(records, small_world, processor, stage=stage, feature_cache=cache)[0]
        assert torch.equal(hit["frame_features"], features[: len(hit["frame_features"])])
    assert hit["gate_labels"] == uncached["gate_labels"]
    # With cache_decoded, a clip's file is read once, not once per epoch.
    reads = []
    monkeypatch.setattr(FeatureCache, "load", lambda self, *a: reads.append(a) or (features, np.arange(len(features)) / 2.0))
    kept = StreamDataset(records, small_world, processor, stage=2, feature_cache=cache, cache_decoded=True)
    assert torch.equal(kept[0]["frame_features"], kept[0]["frame_features"]) and len(reads) == 1
    StreamDataset(records, small_world, processor, stage=2, feature_cache=cache)[0]
    assert len(reads) == 2
    # Anything that changes features changes the key.
    other, _ = make_tiny(tiny_tokenizer, seed=1)
    assert vision_cache_key(other.config, other.vision) != key
    pooled, _ = make_tiny(tiny_tokenizer, frame_pooling="max")  # the tiny preset pools by mean
    assert vision_cache_key(pooled.config, pooled.vision) != key
    # Metadata of the tower's config does not: a tower named by another path is the same tower.
    model.config.vision_config._name_or_path = "somewhere/else"
    assert vision_cache_key(model.config, model.vision) == key
    assert vision_cache_key(model.config, model.vision.to(torch.bfloat16)) != key  # another dtype, other features


def test_a_clip_missing_from_the_cache_names_the_clip_and_the_command(small_world, tiny_tokenizer, tmp_path):
    model, processor = make_tiny(tiny_tokenizer)
    cache = FeatureCache(tmp_path, vision_cache_key(model.config, model.vision))
    ds = StreamDataset(small_world / "train.jsonl", small_world, processor, feature_cache=cache)
    record = ds.records[ds.index[0]]
    with pytest.raises(MissingFeatures, match=rf"{record.video}.*streammind features .*train.jsonl --data-root .* --out {tmp_path}"):
        ds[0]
    # A clip the extraction pass could not decode is a bad sample: raised or skipped and counted.
    cache.mark_failed(str(small_world / record.video), 2.0, record.start, record.end, "undecodable_video", "moov atom not found")
    with pytest.raises(BadSample, match="moov atom not found"):
        ds[0]
    skipping = StreamDataset(small_world / "train.jsonl", small_world, processor, feature_cache=cache, on_error="skip")
    with pytest.raises(MissingFeatures):  # the next clip is simply not cached: that is never skipped
        skipping[0]
    assert skipping.skipped == {"undecodable_video": 1}
