"""The extraction pass (streammind.features) and the rule it exists for: data workers never touch the model.

Run: .venv/bin/python -m pytest tests/training/test_features.py -q
"""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from torch.utils.data import DataLoader

from streammind import save_model
from streammind.apps.cli import main as cli_main
from streammind.media.video import read_video
from streammind.training.annotations import load_annotations
from streammind.training.collator import StreamCollator
from streammind.training.datasets import StreamDataset
from streammind.training.features import Clip, FeatureCache, clips_of, extract_features, load_vision, shard, vision_cache_key
from streammind.vision import VisionEncoder
from tests.helpers import REPO, make_tiny

FPS = 2.0


@pytest.fixture
def tower(tiny_tokenizer):
    """A tiny model whose tower counts the frames it encodes (`model.encoded`)."""
    model, processor = make_tiny(tiny_tokenizer)
    model.encoded = []
    forward = model.vision.forward

    def counting(pixel_values):
        model.encoded.append(len(pixel_values))
        return forward(pixel_values)

    model.vision.forward = counting
    return model, processor


def _clips(world, split="train"):
    return clips_of(load_annotations(world / f"{split}.jsonl"), world)


def _frames(clip: Clip) -> int:
    return len(read_video(clip.video, fps=FPS, start=clip.start, end=clip.end).times)


def _extract(model, processor, cache, clips, **kwargs):
    return extract_features(model.vision, processor.frame_processor, cache, clips, FPS, progress=False, **kwargs)


def test_shards_cover_every_clip_exactly_once(small_world):
    records = [r for split in ("train", "val", "test") for r in load_annotations(small_world / f"{split}.jsonl")]
    clips = clips_of(records + records[:3], small_world)  # a second pass over the same clips adds none
    assert len(clips) == len(records) == 10
    for n in (1, 2, 3, 4, 11):
        shards = [shard(clips, i, n) for i in range(n)]
        assert sorted(map(repr, sum(shards, []))) == sorted(map(repr, clips))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError, match="0 <= I < N"):
        shard(clips, 2, 2)


def test_features_equal_the_models_own_and_a_rerun_skips_what_is_cached(small_world, tower, tmp_path):
    model, processor = tower
    cache = FeatureCache(tmp_path, vision_cache_key(model.config, model.vision))
    clips = _clips(small_world)
    frames = {c: _frames(c) for c in clips}

    first = _extract(model, processor, cache, shard(clips, 0, 2), batch_size=16)
    assert (first.extracted, first.cached, first.failed) == (3, 0, {})
    assert sum(model.encoded) == first.frames == sum(frames[c] for c in shard(clips, 0, 2))
    assert max(model.encoded) <= 16  # clips are packed, then chunked to the batch size

    model.encoded.clear()
    second = _extract(model, processor, cache, clips, num_workers=2)  # decoding in worker processes
    assert (second.extracted, second.cached) == (3, 3)
    assert sum(model.encoded) == sum(frames[c] for c in shard(clips, 1, 2))  # only the clips the first run left

    model.encoded.clear()
    third = _extract(model, processor, cache, clips)
    assert (third.extracted, third.cached, model.encoded) == (0, 6, [])

    for clip in clips:
        features, times = cache.load(clip.video, FPS, clip.start, clip.end)
        decoded = read_video(clip.video, fps=FPS, start=clip.start, end=clip.end)
        with torch.no_grad():
            expected = model.get_frame_features(processor.preprocess_frames(decoded.frames)[None])[0]
        assert features.shape == (frames[clip], model.config.vision_dim) and (times == decoded.times).all()
        torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)


def test_a_killed_run_leaves_whole_files_and_resumes(small_world, tower, tmp_path):
    model, processor = tower
    cache = FeatureCache(tmp_path, vision_cache_key(model.config, model.vision))
    clips = _clips(small_world)
    forward = model.vision.forward

    def dies_on_the_third_batch(pixel_values):
        if len(model.encoded) == 2:
            raise KeyboardInterrupt
        return forward(pixel_values)

    model.vision.forward = dies_on_the_third_batch
    with pytest.raises(KeyboardInterrupt):
        _extract(model, processor, cache, clips, batch_size=20)
    written = sorted(cache.directory.glob("*.pt"))
    assert 0 < len(written) < len(clips)
    assert all(torch.load(p, weights_only=True)["features"].shape[0] > 0 for p in written)

    model.vision.forward = forward
    model.encoded.clear()
    resumed = _extract(model, processor, cache, clips)
    assert (resumed.cached, resumed.extracted) == (len(written), len(clips) - len(written))
    assert len(list(cache.directory.glob("*.pt"))) == len(clips)


def test_undecodable_and_missing_videos_are_counted_and_noted(small_world, tower, tmp_path):
    model, processor = tower
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    cache = FeatureCache(tmp_path / "cache", vision_cache_key(model.config, model.vision))
    good = _clips(small_world)[0]
    broken, missing = Clip(str(tmp_path / "broken.mp4")), Clip(str(tmp_path / "missing.mp4"))
    stats = _extract(model, processor, cache, [broken, good, missing], num_workers=1)
    assert stats.extracted == 1 and set(stats.failed) == {broken, missing}
    assert stats.failed[broken].startswith("undecodable_video: ") and stats.failed[missing].startswith("missing_video: ")
    assert cache.failure(broken.video, FPS, None, None)[0] == "undecodable_video"
    assert "1 extracted, 0 already cached, 2 failed" in stats.summary()


def test_cli_reads_only_the_tower_of_a_saved_model_and_shards(small_world, tiny_tokenizer, tmp_path, capsys):
    model, processor = make_tiny(tiny_tokenizer)
    save_model(model, processor, tmp_path / "model")
    config, vision = load_vision(tmp_path / "model")
    assert vision_cache_key(config, vision) == vision_cache_key(model.config, model.vision)
    base = ["features", str(small_world / "train.jsonl"), str(small_world / "val.jsonl"), "--data-root", str(small_world),
            "--model", str(tmp_path / "model"), "--out", str(tmp_path / "cache"), "--device", "cpu", "--no-progress", "--num-workers", "0"]
    for i in range(3):
        assert cli_main([*base, "--shard", str(i), "3", "--summary", str(tmp_path / f"shard{i}.json")]) == 0
    assert "streammind features: 3 clips: 3 extracted" in capsys.readouterr().out
    assert len(list((tmp_path / "cache").rglob("*.pt"))) == 7  # 6 train + 1 val clips, each extracted by one shard
    assert cli_main(base) == 0
    assert "7 clips: 0 extracted, 7 already cached" in capsys.readouterr().out
    assert cli_main([*base, "--shard", "3", "3"]) == 2
    assert "streammind features: error: --shard" in capsys.readouterr().err


def _scan_for_modules(obj) -> list[str]:
    """Type names of every nn.Module reached while pickling `obj` (what a spawned worker would receive)."""
    found = []

    class Spy(pickle.Pickler):
        def reducer_override(self, o):
            if isinstance(o, torch.nn.Module):
                found.append(type(o).__name__)
            return NotImplemented

    import io

    Spy(io.BytesIO()).dump(obj)
    return found


def test_data_workers_never_build_or_call_the_tower(small_world, tower, tmp_path, monkeypatch):
    """The issue-10 regression: with a feature cache, loader workers only read files."""
    model, processor = tower
    cache = FeatureCache(tmp_path / "cache", vision_cache_key(model.config, model.vision))
    _extract(model, processor, cache, _clips(small_world))
    dataset = StreamDataset(small_world / "train.jsonl", small_world, processor, stage="both", feature_cache=cache)
    assert _scan_for_modules(dataset) == []  # nothing of the model is reachable from the dataset

    calls = tmp_path / "tower_calls"

    def forbidden(self, *args, **kwargs):
        with open(calls, "a") as f:  # a file: the calls of forked workers are visible here
            f.write(f"{os.getpid()}\n")
        raise AssertionError("a data worker touched the vision tower")

    monkeypatch.setattr(VisionEncoder, "forward", forbidden)
    monkeypatch.setattr(VisionEncoder, "__init__", forbidden)
    loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=StreamCollator.from_processor(processor),
                        multiprocessing_context="fork")
    batches = list(loader)
    assert not calls.exists()
    assert sum(len(b["frame_features"]) for b in batches) == len(dataset) == 6
    for k, batch in enumerate(batches):
        assert all(v.device.type == "cpu" for v in batch.values())
        for row in range(len(batch["frame_features"])):
            expected = dataset[2 * k + row]["frame_features"]
            torch.testing.assert_close(batch["frame_features"][row, : len(expected)], expected, rtol=0, atol=0)


def test_train_fills_a_cold_cache_once_then_never_calls_the_tower(small_world, small_tower, tmp_path, monkeypatch):
    from streammind.training.train import train as train_main

    encoded = []
    forward = VisionEncoder.forward

    def counting(self, pixel_values):
        encoded.append(len(pixel_values))
        return forward(self, pixel_values)

    monkeypatch.setattr(VisionEncoder, "forward", counting)
    args = ["--train_annotations", str(small_world / "train.jsonl"), "--data_root", str(small_world), "--report_to", "none",
            "--max_steps", "3", "--per_device_train_batch_size", "2", "--feature_cache_dir", str(tmp_path / "cache")]
    stage1 = ["--tokenizer_path", str(small_world / "tokenizer"), "--clip_path", str(small_tower)]
    out = train_main([str(REPO / "configs" / "tiny" / "stage1.yaml"), *args, *stage1, "--output_dir", str(tmp_path / "s1")])
    clips = _clips(small_world)
    assert sum(encoded) == sum(_frames(c) for c in clips)  # every clip once, in the pass; training steps read the cache
    assert len(list((tmp_path / "cache").rglob("*.pt"))) == len(clips)

    encoded.clear()
    train_main([str(REPO / "configs" / "tiny" / "stage2.yaml"), *args, "--init_from", out, "--output_dir", str(tmp_path / "s2")])
    assert encoded == []  # warm: stage 2 has the same tower, hence the same key

    # The standalone pass finds the training run's cache, from the saved model and from the tower directory.
    for source in (["--model", out], ["--clip", str(small_tower), "--preset", "tiny"]):
        summary = cli_main(["features", str(small_world / "train.jsonl"), "--data-root", str(small_world), *source,
                            "--out", str(tmp_path / "cache"), "--device", "cpu", "--no-progress", "--summary", str(tmp_path / "f.json")])
        assert summary == 0
        assert '"cached": 6' in (tmp_path / "f.json").read_text() and '"extracted": 0' in (tmp_path / "f.json").read_text()


def test_vision_cache_key_is_16_hex_digits_of_the_settings_in_any_field_order(tiny):
    """The key is 16 hex digits; it covers the tower's config fields (one that changes the
    features without changing any weight changes it), does not depend on the order the config
    lists its fields in (a config read back from JSON or a hub may list them in another order),
    and hashes a setting JSON cannot hold (a Path) by its text, as the same string would be."""
    import copy
    import re
    from pathlib import Path
    from types import SimpleNamespace

    model, _ = tiny
    key = vision_cache_key(model.config, model.vision)
    assert re.fullmatch(r"[0-9a-f]{16}", key)

    fields = model.config.vision_config.to_dict()
    assert len(fields) > 2

    def key_with(vision_fields: dict) -> str:
        config = SimpleNamespace(vision_config=SimpleNamespace(to_dict=lambda: dict(vision_fields)),
                                 **{name: getattr(model.config, name) for name in
                                    ("vision_feature_layer", "frame_pooling", "image_preprocess", "image_mean", "image_std")})
        return vision_cache_key(config, model.vision)

    assert key_with(fields) == key
    assert key_with(dict(reversed(list(fields.items())))) == key  # same settings, other field order
    assert key_with({**fields, "extra": Path("towers/clip")}) == key_with({**fields, "extra": "towers/clip"})
    assert key_with({**fields, "extra": "towers/clip"}) != key

    eps = copy.deepcopy(model.config)  # same weights, another layer-norm epsilon: other features
    eps.vision_config.layer_norm_eps = model.config.vision_config.layer_norm_eps * 10
    assert vision_cache_key(eps, model.vision) != key


def _video_file(tmp_path):
    """Any file stands for a video: the cache keys clips by the file's path, size and mtime."""
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"0123456789")
    return str(video)


def test_feature_cache_files_are_keyed_by_window_and_notes_are_replaced(tmp_path):
    """Layout and life cycle of one clip's entry.

    - the file is `root/<model key>/<d>.pt`, d the first 20 hex digits of the SHA-1 of the JSON
      list [FORMAT, absolute path, size, integer mtime, fps, start, end];
    - `contains`, `load`, `mark_failed` and `failure` each address the clip of their own
      (start, end): an entry under [1, 3) is not one under [None, 3) or [1, None);
    - frame times are stored as float64 whatever they are given as (ints, float32);
    - a failure note can be written next to an existing entry (the directory exists), and a
      later `store` removes it, leaving only the `.pt` file.
    """
    import hashlib
    import json

    import numpy as np

    video = _video_file(tmp_path)
    cache = FeatureCache(tmp_path / "cache", "abc")
    stat = os.stat(video)
    clip_key = json.dumps([3, os.path.abspath(video), 10, int(stat.st_mtime), 2.0, 1.0, 3.0])
    digest = hashlib.sha1(clip_key.encode()).hexdigest()[:20]
    assert cache.FORMAT == 3
    assert cache.path(video, 2.0, 1.0, 3.0) == tmp_path / "cache" / "abc" / f"{digest}.pt"

    features = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    cache.store(video, 2.0, 1.0, 3.0, features, [1, 2])  # integer times
    assert cache.contains(video, 2.0, 1.0, 3.0)
    assert not cache.contains(video, 2.0, None, 3.0) and not cache.contains(video, 2.0, 1.0, None)
    loaded, times = cache.load(video, 2.0, 1.0, 3.0)
    assert torch.equal(loaded, features) and times.dtype == np.float64 and times.tolist() == [1.0, 2.0]
    cache.store(video, 2.0, 1.0, 3.0, features, np.array([1.1, 2.2], dtype=np.float32))
    times = cache.load(video, 2.0, 1.0, 3.0)[1]
    assert times.dtype == np.float64 and times.tolist() == np.array([1.1, 2.2], dtype=np.float32).astype(np.float64).tolist()

    assert cache.failure(video, 2.0, 1.0, 3.0) is None
    cache.mark_failed(video, 2.0, 1.0, 3.0, "undecodable_video", "moov atom not found")  # the directory exists already
    cache.mark_failed(video, 2.0, 1.0, 3.0, "empty_video", "no frame in the window")  # a second note replaces the first
    assert cache.failure(video, 2.0, 1.0, 3.0) == ("empty_video", "no frame in the window")
    assert cache.failure(video, 2.0, None, 3.0) is None and cache.failure(video, 2.0, 1.0, None) is None
    assert sorted(p.name for p in cache.directory.iterdir()) == [f"{digest}.failed", f"{digest}.pt"]

    cache.store(video, 2.0, 1.0, 3.0, features, [1, 2])
    assert cache.failure(video, 2.0, 1.0, 3.0) is None
    assert sorted(p.name for p in cache.directory.iterdir()) == [f"{digest}.pt"]


_UNPICKLED = []


def _unpickled(tag):
    """Runs if a cache file is unpickled with arbitrary code allowed."""
    _UNPICKLED.append(tag)
    return tag


class _Payload:
    def __reduce__(self):
        return _unpickled, ("ran",)


def test_cache_files_are_loaded_as_weights_only_even_when_the_environment_allows_more(tmp_path, monkeypatch):
    """`load` passes weights_only=True itself: a cache file that would run code when unpickled is
    refused, also where TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD turns torch's default off."""
    import pickle

    video = _video_file(tmp_path)
    cache = FeatureCache(tmp_path / "cache", "abc")
    cache.directory.mkdir(parents=True)
    torch.save({"features": torch.zeros(1, 2), "times": torch.zeros(1, dtype=torch.float64), "payload": _Payload()},
               cache.path(video, 2.0, None, None))
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    _UNPICKLED.clear()
    with pytest.raises(pickle.UnpicklingError):
        cache.load(video, 2.0, None, None)
    assert _UNPICKLED == []
