"""StreamDataset: turn ends, gate labels, dialogue rendering, bad input (raise or counted skip), caches.

Run: .venv/bin/python -m pytest tests/training/test_datasets.py -q
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from streammind.errors import BadSample
from streammind.media.video import av
from streammind.training.annotations import StreamAnnotation, Turn, load_annotations
from streammind.training.collator import StreamCollator
from streammind.training.datasets import MissingFeatures, StreamDataset, turn_end_frames
from streammind.training.features import FeatureCache, clips_of, extract_features, vision_cache_key
from tests.helpers import make_tiny
from tests.media.test_video import _encode

HAS_AV = av is not None


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


def test_video_paths_that_leave_the_data_root_are_refused_unless_allowed(small_world, tiny_tokenizer, tmp_path):
    """By default a record whose video path is absolute or climbs out of data_root with `..`
    (after normalisation: `sub/../../x` climbs out, `sub/../x` does not) is a bad sample
    (`outside_data_root`); with allow_outside_root=True all of them are used."""
    import shutil

    _, processor = make_tiny(tiny_tokenizer)
    good = json.loads((small_world / "train.jsonl").read_text().splitlines()[0])
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    shutil.copy(small_world / good["video"], root / "ok.mp4")
    shutil.copy(small_world / good["video"], tmp_path / "outside.mp4")
    videos = ["ok.mp4", "../outside.mp4", str(tmp_path / "outside.mp4"), "sub/../../outside.mp4", "sub/../ok.mp4"]
    path = _write(tmp_path / "anns.jsonl", [{**good, "video": v} for v in videos])
    with pytest.raises(BadSample, match=r"^\.\./outside\.mp4 \(id train-0000\): video path \.\./outside\.mp4 leaves data_root") as err:
        StreamDataset(path, root, processor)
    assert err.value.reason == "outside_data_root"
    skipping = StreamDataset(path, root, processor, on_error="skip")
    assert [skipping.records[i].video for i in skipping.index] == ["ok.mp4", "sub/../ok.mp4"]
    assert dict(skipping.skipped) == {"outside_data_root": 3}
    allowed = StreamDataset(path, root, processor, allow_outside_root=True)
    assert allowed.index == [0, 1, 2, 3, 4] and dict(allowed.skipped) == {}
    assert allowed[1]["input_ids"] == allowed[0]["input_ids"]  # the same clip, read from outside the root


def test_a_dataset_with_no_usable_record_says_why_each_was_skipped(small_world, tiny_tokenizer, tmp_path):
    """`no_usable_records` names the annotations (the file, or "the annotation records" for
    records passed in memory) and the skips as "reason: count" sorted by reason and joined by
    ", "; with no record at all it says the file holds none."""
    _, processor = make_tiny(tiny_tokenizer)
    good = json.loads((small_world / "train.jsonl").read_text().splitlines()[0])
    rows = [{**good, "turns": []}, {**good, "video": "missing.mp4"}, {**good, "video": "missing2.mp4"}]
    path = _write(tmp_path / "anns.jsonl", rows)
    skipped = "every record was skipped (missing_video: 2, no_turns: 1)"
    for source, name in ((path, str(path)), (load_annotations(path), "the annotation records")):
        with pytest.raises(BadSample) as err:
            StreamDataset(source, small_world, processor, on_error="skip")
        assert err.value.reason == "no_usable_records"
        assert str(err.value) == f"{name}: no usable example, {skipped}"
    with pytest.raises(BadSample) as err:
        StreamDataset([], small_world, processor)
    assert str(err.value) == "the annotation records: no usable example, every record was skipped (the file holds no record)"


def test_a_windowed_clip_reads_its_own_failure_note_and_names_the_fill_command(small_world, tiny_tokenizer, tmp_path):
    """With a feature cache, a clip of a window [start, end) that the extraction pass could not
    decode (a note under that same window) is a bad sample with the note's reason; a note
    under another window (the whole video) does not apply, and the clip is then missing:
    `MissingFeatures` names the clip, its fps and window, and the command that fills the
    cache, with `<annotations.jsonl>` standing for records passed in memory."""
    _, processor = make_tiny(tiny_tokenizer)
    good = load_annotations(small_world / "train.jsonl")[0]
    record = StreamAnnotation(video=good.video, query=good.query, start=1.0, end=4.0, turns=[Turn(3.0, "Now.")])
    cache = FeatureCache(tmp_path / "cache", "key")
    video = str(small_world / good.video)
    ds = StreamDataset([record], small_world, processor, feature_cache=cache)
    cache.mark_failed(video, 2.0, None, None, "undecodable_video", "the whole video")
    with pytest.raises(MissingFeatures) as err:
        ds[0]
    message = str(err.value)
    assert message.startswith(f"{video} (fps 2, window [1.0, 4.0)) is not in the feature cache {cache.directory}; ")
    assert (f"fill it first on the training device: streammind features <annotations.jsonl> --data-root {small_world} "
            f"(--model <saved model> | --clip <tower>) --out {cache.root} --fps 2 ") in message
    cache.mark_failed(video, 2.0, 1.0, 4.0, "empty_video", "no frame in the window")
    with pytest.raises(BadSample) as err:
        ds[0]
    assert err.value.reason == "empty_video" and str(err.value).endswith(": no frame in the window")


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


@pytest.mark.skipif(not HAS_AV, reason="PyAV is needed to encode the test clip")
def test_a_window_from_a_non_zero_start_picks_frames_and_turns_by_timestamp(tiny_tokenizer, tmp_path):
    """Frames at start + k / fps, each the last frame shown at that time; turns end on those frames.

    The clip has 20 frames at 7 fps, frame i a flat gray level encoding i. A record covering
    [1.0, 2.5) sampled at 2 fps reads the times 1.0, 1.5, 2.0, i.e. frames floor(7 t) = 7, 10,
    14. A turn at 1.5 s ends on the second of them, one at 2.2 s on the third.
    """
    _, processor = make_tiny(tiny_tokenizer)
    _encode(tmp_path / "clip.mp4")
    record = StreamAnnotation(video="clip.mp4", query="Tell me when it gets brighter.", start=1.0, end=2.5,
                              turns=[Turn(time=1.5, text="Brighter."), Turn(time=2.2, text="Brighter again.")])
    ex = StreamDataset([record], tmp_path, processor, stage="both", fps=2.0)[0]
    assert ex["turn_ends"] == [2, 3]
    assert ex["gate_labels"] == [0, 1, 1]
    assert _levels(processor, ex["pixel_values"]) == [7, 10, 14]
    # Stage 1 keeps the frames up to the last turn; each turn's placeholders count its own frames.
    s1 = StreamDataset([record], tmp_path, processor, stage=1, fps=2.0)[0]
    assert s1["pixel_values"].shape[0] == 3
    n_video = s1["input_ids"].count(processor.video_token_id)
    assert n_video == processor.placeholders_for(2) + processor.placeholders_for(1)


def test_turn_end_frames_boundaries():
    times = np.array([1.0, 1.5, 2.0])  # a window starting at 1.0 s
    assert turn_end_frames(times, [1.0 - 1e-7, 1.5, 2.5]) == [1, 2, 3]  # slack at the start; up to last + step
    with pytest.raises(BadSample, match="before the first frame"):
        turn_end_frames(times, [0.99])
    with pytest.raises(BadSample, match="past the video's end"):
        turn_end_frames(times, [2.5 + 1e-5])
    # One frame: no step to bound the end by, so any later turn ends on it.
    assert turn_end_frames(np.array([2.0]), [2.0]) == [1]
    assert turn_end_frames(np.array([2.0]), [99.0]) == [1]
    with pytest.raises(BadSample, match="past the video's end"):  # two frames give the step
        turn_end_frames(np.array([0.0, 0.5]), [1.5])
    with pytest.raises(BadSample, match="same frame"):
        turn_end_frames(np.array([2.0]), [2.0, 3.0])


def _clip_records(tmp_path):
    """Three records over one 20-frame 7 fps clip (frame i is gray level i), different windows."""
    _encode(tmp_path / "clip.mp4")
    return [
        StreamAnnotation(video="clip.mp4", query="First query.", turns=[Turn(0.5, "One."), Turn(1.0, "Two.")]),
        StreamAnnotation(video="clip.mp4", query="Second query.", start=1.0, turns=[Turn(1.5, "Three.")]),
        StreamAnnotation(video="clip.mp4", query="Third query.", start=2.0, end=2.8, turns=[Turn(2.5, "Four.")]),
    ]


def _levels(processor, pixel_values):
    """The frame numbers of flat gray clip frames: undo the normalisation at the image centre
    (inside the padded square) and invert the gray level."""
    mean, std = processor.config.image_mean[0], processor.config.image_std[0]
    size = pixel_values.shape[-1]
    return [int(round(((float(v) * std + mean) * 255 - 8) / 6)) for v in pixel_values[:, 0, size // 2, size // 2]]


@pytest.mark.skipif(not HAS_AV, reason="PyAV is needed to encode the test clip")
def test_stages_give_their_own_keys_and_frames(tiny_tokenizer, tmp_path):
    _, processor = make_tiny(tiny_tokenizer)
    records = _clip_records(tmp_path)
    default = StreamDataset(records, tmp_path, processor, fps=2.0)[0]  # stage 1 by default
    assert set(default) == {"pixel_values", "input_ids", "labels", "turn_ends"}
    assert default["turn_ends"] == [2, 3] and default["pixel_values"].shape[0] == 3  # frames up to the last turn
    assert tiny_tokenizer.decode(default["input_ids"]).count("First query.") == 1  # the query opens turn 0 only
    gate = StreamDataset(records, tmp_path, processor, stage=2, fps=2.0)[0]
    assert set(gate) == {"pixel_values", "gate_labels", "gate_prompt_ids"}
    assert gate["gate_labels"] == [0, 1, 1, 0, 0, 0]  # all 6 frames of the 20/7 s clip at 2 fps
    assert gate["gate_prompt_ids"] == processor.encode_gate_prompt("First query.")
    assert _levels(processor, gate["pixel_values"]) == [0, 3, 7, 10, 14, 17]


@pytest.mark.skipif(not HAS_AV, reason="PyAV is needed to encode the test clip")
def test_decoded_and_feature_caches_keep_windows_apart(tiny_tokenizer, tmp_path, monkeypatch):
    model, processor = make_tiny(tiny_tokenizer)
    records = _clip_records(tmp_path)
    plain = StreamDataset(records, tmp_path, processor, stage=2, fps=2.0)
    expected = [plain[i]["pixel_values"] for i in range(3)]
    assert [_levels(processor, e)[0] for e in expected] == [0, 7, 14]
    import streammind.training.datasets as stream_module

    calls = []
    real_read = stream_module.read_video
    monkeypatch.setattr(stream_module, "read_video", lambda *a, **k: calls.append(k["start"]) or real_read(*a, **k))
    cached = StreamDataset(records, tmp_path, processor, stage=2, fps=2.0, cache_decoded=True)
    for _ in range(2):
        for i in range(3):
            assert torch.equal(cached[i]["pixel_values"], expected[i])
    assert calls == [None, 1.0, 2.0]  # each clip decoded once
    calls.clear()
    uncached = StreamDataset(records, tmp_path, processor, stage=2, fps=2.0)
    uncached[0], uncached[0]
    assert calls == [None, None]  # no cache by default
    # Pooled features on disk (the extraction pass), under a nested root that does not exist yet:
    # one file per window, each read back by the dataset for its own record.
    cache = FeatureCache(tmp_path / "cache" / "nested", vision_cache_key(model.config, model.vision))
    stats = extract_features(model.vision, processor.frame_processor, cache, clips_of(records, tmp_path), 2.0, num_workers=0, progress=False)
    assert stats.failed == {}
    with_features = StreamDataset(records, tmp_path, processor, stage=2, fps=2.0, feature_cache=cache, cache_decoded=True)
    with torch.no_grad():
        first = [with_features[i]["frame_features"] for i in range(3)]
        again = [with_features[i]["frame_features"] for i in range(3)]
        for i in range(3):
            assert torch.equal(first[i], again[i])
            assert torch.allclose(first[i], model.vision(expected[i]), atol=1e-5)
    assert len(list((tmp_path / "cache").rglob("*.pt"))) == 3
    features, times = cache.load(str(tmp_path / "clip.mp4"), 2.0, 1.0, None)
    assert times.dtype == np.float64 and times.tolist() == [1.0, 1.5, 2.0, 2.5] and torch.equal(features, first[1])
    assert cache.load(str(tmp_path / "clip.mp4"), 2.0, 1.0, 2.6) is None  # another window is another entry
    assert torch.equal(cache.load(str(tmp_path / "clip.mp4"), 2.0, 2.0, 2.8)[0], first[2])  # stored under its own end
    # Another rate: the dataset's fps reaches the decoder.
    assert StreamDataset(records[:1], tmp_path, processor, stage=2, fps=3.5)[0]["pixel_values"].shape[0] == 10


@pytest.mark.skipif(not HAS_AV, reason="PyAV is needed to encode the test clip")
def test_turns_may_end_one_frame_period_after_the_video(tiny_tokenizer, tmp_path):
    _, processor = make_tiny(tiny_tokenizer)
    _encode(tmp_path / "clip.mp4")
    duration = 20 / 7

    def kept(t, end=None):
        """The examples kept of a second record whose one turn is at t (the first is always fine)."""
        records = [StreamAnnotation(video="clip.mp4", query="Q.", turns=[Turn(1.0, "Fine.")]),
                   StreamAnnotation(video="clip.mp4", query="Q.", end=end, turns=[Turn(t, "Late.")])]
        ds = StreamDataset(records, tmp_path, processor, fps=2.0, on_error="skip")
        return len(ds), dict(ds.skipped)

    assert kept(duration) == (2, {}) and kept(duration + 0.5) == (2, {})
    assert kept(duration + 0.5 + 1e-5) == (1, {"turn_past_end": 1})
    # A window declared past the video's end: the turn is still past the video, found up front.
    assert kept(50.0, end=100.0) == (1, {"turn_past_end": 1})


@pytest.mark.skipif(not HAS_AV, reason="PyAV is needed to encode the test clip")
def test_a_sample_that_breaks_later_is_counted_and_replaced_by_the_next(tiny_tokenizer, tmp_path, caplog):
    _, processor = make_tiny(tiny_tokenizer)
    records = _clip_records(tmp_path)
    import shutil

    for i, rec in enumerate(records):
        shutil.copy(tmp_path / "clip.mp4", tmp_path / f"clip{i}.mp4")
        rec.video = f"clip{i}.mp4"
    ds = StreamDataset(records, tmp_path, processor, fps=2.0, on_error="skip")
    second = ds[1]
    (tmp_path / "clip0.mp4").write_bytes(b"broken after validation")
    replaced = ds[0]
    assert replaced["input_ids"] == second["input_ids"] and replaced["turn_ends"] == second["turn_ends"]
    assert dict(ds.skipped) == {"undecodable_video": 1}
    ds[0]
    assert dict(ds.skipped) == {"undecodable_video": 2}
    strict = StreamDataset(records[1:], tmp_path, processor, fps=2.0)
    (tmp_path / "clip1.mp4").write_bytes(b"broken too")
    with pytest.raises(BadSample, match="clip1.mp4"):
        strict[0]


def test_collator_pads_every_key_by_value():
    collate = StreamCollator(pad_token_id=3, gate_window=2)
    a = dict(frame_features=torch.ones(3, 2), input_ids=[5, 6, 7], labels=[-100, 6, 7], turn_ends=[1, 3],
             gate_labels=[0, 0, 1], gate_prompt_ids=[1, 9])
    b = dict(frame_features=torch.full((1, 2), 2.0), input_ids=[8], labels=[8], turn_ends=[1], gate_labels=[1], gate_prompt_ids=[1, 9, 9, 4])
    batch = collate([a, b])
    assert set(batch) == {"frame_features", "frame_mask", "input_ids", "labels", "attention_mask", "turn_ends", "gate_labels",
                          "gate_segment_sample", "gate_segment_frames", "gate_prompt_ids", "gate_prompt_mask"}
    assert torch.equal(batch["frame_features"], torch.tensor([[[1.0, 1.0]] * 3, [[2.0, 2.0], [0.0, 0.0], [0.0, 0.0]]]))
    assert torch.equal(batch["frame_mask"], torch.tensor([[True, True, True], [True, False, False]]))
    expected = {
        "input_ids": [[5, 6, 7], [8, 3, 3]],
        "labels": [[-100, 6, 7], [8, -100, -100]],
        "attention_mask": [[1, 1, 1], [1, 0, 0]],
        "turn_ends": [[1, 3], [1, -1]],
        "gate_labels": [[0, 0, 1], [1, -100, -100]],
        # The gate's segments (window 2): row 0 as [0, 1] and [2]; row 1's one frame, flat index 3.
        "gate_segment_sample": [0, 0, 1],
        "gate_segment_frames": [[0, 1], [2, -1], [3, -1]],
        "gate_prompt_ids": [[1, 9, 3, 3], [1, 9, 9, 4]],
        "gate_prompt_mask": [[1, 1, 0, 0], [1, 1, 1, 1]],
    }
    for key, value in expected.items():
        assert batch[key].dtype == torch.long and batch[key].tolist() == value, key
    # Per-frame gate mode: empty prompts collate to width 0.
    no_prompt = collate([{**a, "gate_prompt_ids": []}, {**b, "gate_prompt_ids": []}])
    assert no_prompt["gate_prompt_ids"].shape == no_prompt["gate_prompt_mask"].shape == (2, 0)
    pixels = collate([{"pixel_values": torch.ones(2, 3, 4, 4)}, {"pixel_values": torch.ones(1, 3, 4, 4)}])
    assert set(pixels) == {"pixel_values", "frame_mask"} and pixels["pixel_values"].shape == (2, 2, 3, 4, 4)
    with pytest.raises(ValueError, match="different keys"):
        collate([a, {k: v for k, v in b.items() if k != "gate_labels"}, a])
    with pytest.raises(ValueError, match="empty batch"):
        collate([])
    with pytest.raises(ValueError, match="gate labels need the gate window"):
        StreamCollator(pad_token_id=3)([a, b])
    assert "gate_segment_frames" not in StreamCollator(pad_token_id=3)([{k: v for k, v in a.items() if k != "gate_labels"}])


def test_the_collator_of_a_model_takes_its_padding_and_gate_window(tiny_tokenizer):
    """from_processor reads the processor's padding id and the config's gate window; a model
    without a gate (the per-frame-LLM baseline's config has no window) gets no window."""
    from streammind.modeling_perframe import PerFrameLLMConfig
    from tests.helpers import make_tiny

    _, processor = make_tiny(tiny_tokenizer, gate_window=5)
    collate = StreamCollator.from_processor(processor)
    assert (collate.pad_token_id, collate.gate_window) == (processor.pad_token_id, 5)
    processor.config = PerFrameLLMConfig()
    assert not hasattr(processor.config, "gate_context_window")
    assert StreamCollator.from_processor(processor).gate_window is None
