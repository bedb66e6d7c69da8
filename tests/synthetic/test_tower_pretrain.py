"""CLIP-style pretraining of the tiny tower on the synthetic world (`streammind.tower_pretrain`).

Run: .venv/bin/python -m pytest tests/synthetic/test_tower_pretrain.py -q
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, CLIPVisionModel

from streammind.builder import build_model
from streammind.configuration import StreamMindConfig
from streammind.synthetic.tower_pretrain import SceneTextEncoder, _attribute_accuracy, load_scene_frames, pretrain_tower, scene_words
from streammind.synthetic.world import WorldObject, all_scenes, render_frame
from streammind.training.arguments import ModelArguments
from streammind.training.train import build

pytest.importorskip("av")


def test_every_scene_has_its_own_caption():
    one, two = all_scenes(1), all_scenes(2)
    # empty + 3 shapes x 4 colours x 2 slots; plus left/right pairs of different shapes.
    assert len(one) == 25 and len(two) == 25 + 12 * 8
    assert len(set(two)) == len(two) and all(len({o.shape for o in s}) == len(s) for s in two)
    bags = {frozenset(scene_words(s)) for s in two}
    assert len(bags) == len(two)  # the text side can tell every scene apart, bindings included
    text = SceneTextEncoder(two, dim=8)
    emb = text()
    assert emb.shape == (len(two), 8) and torch.allclose(emb.norm(dim=-1), torch.ones(len(two)))


def test_frame_labels_match_the_decoded_pixels(small_world):
    scenes = all_scenes(2)
    frames, labels = load_scene_frames(small_world, "train", fps=2.0, progress=False)
    assert len(frames) == len(labels) and len(frames) > 100
    seen = {scenes[i] for i in labels}
    assert () in seen and any(len(s) == 1 for s in seen)
    # Each decoded frame is nearest to the rendering of its own scene among all scenes.
    rendered = np.stack([render_frame(s, frames.shape[1]) for s in scenes]).astype(np.int16)
    for frame, label in zip(frames, labels):
        distance = np.abs(rendered - frame.astype(np.int16)).mean(axis=(1, 2, 3))
        assert distance.argmin() == label and distance[label] < 8


def test_attribute_accuracy_counts_each_attribute():
    scenes = [(), (WorldObject("circle", "red", "left"),), (WorldObject("square", "red", "left"),), (WorldObject("circle", "blue", "right"),)]
    m = _attribute_accuracy(np.array([1, 2, 3, 0]), np.array([1, 1, 1, 0]), scenes)
    assert m == {"scene_acc": 0.5, "colour_acc": 0.75, "shape_acc": 0.75, "slot_acc": 0.75}


def test_pretraining_learns_and_the_tower_loads_into_a_preset(small_world, tmp_path):
    metrics = pretrain_tower(small_world, tmp_path / "tower", steps=60, batch_size=64, progress=False)
    assert metrics["final_loss"] < 0.25 * metrics["first_loss"]
    assert json.loads((tmp_path / "tower" / "pretrain_metrics.json").read_text()) == metrics
    tower = CLIPVisionModel.from_pretrained(tmp_path / "tower")
    model, _ = build(ModelArguments(preset="tiny", tokenizer_path=str(small_world / "tokenizer"), clip_path=str(tmp_path / "tower")),
                     torch.device("cpu"))
    loaded = model.vision.clip.state_dict()
    assert loaded.keys() == tower.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in tower.state_dict().items())


def test_bad_inputs_name_the_problem(small_world, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a synthetic world"):
        pretrain_tower(tmp_path, tmp_path / "tower", steps=1, progress=False)
    # Canonical annotations without the world's scene fields (initial / events).
    (tmp_path / "videos").symlink_to(small_world / "videos")
    record = {"video": "videos/train/0000.mp4", "query": "q", "turns": [{"time": 2.0, "text": "x"}], "id": "plain"}
    (tmp_path / "train.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(KeyError, match="'plain' has no 'initial' / 'events'"):
        load_scene_frames(tmp_path, "train", fps=2.0, progress=False)


def test_model_sources_and_a_mismatched_tower(small_world, small_tower):
    with pytest.raises(ValueError, match="llm_path needs clip_path"):
        ModelArguments(llm_path="x")
    with pytest.raises(ValueError, match="cannot be combined with init_from"):
        ModelArguments(init_from="x", clip_path="y")
    config = StreamMindConfig.from_preset("tiny", vision_config={"hidden_size": 32, "intermediate_size": 64})
    with pytest.raises(ValueError, match="config differs"):
        build_model(config, AutoTokenizer.from_pretrained(small_world / "tokenizer"), vision=CLIPVisionModel.from_pretrained(small_tower))
