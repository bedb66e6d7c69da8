"""The per-frame-LLM baseline: layout, loss, streaming equals the parallel forward, save/load,
teacher forcing, and training through `streammind train`.

Run: .venv/bin/python -m pytest tests/model/test_perframe.py -q
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import CLIPVisionModel

from streammind import load_model, save_model
from streammind.modeling_perframe import PerFrameLLMConfig, build_per_frame_llm, stream_lm_loss
from streammind.processing import IGNORE_INDEX, ChatTurn
from streammind.streaming import SessionInputError, StreamingSession
from streammind.streaming_perframe import PerFrameSession, default_threshold, open_session, teacher_forced
from tests.helpers import REPO, make_tiny

QUERY = "Tell me when a shape appears."


def make_baseline(tokenizer, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model, processor = build_per_frame_llm(PerFrameLLMConfig.from_preset("perframe-tiny", **overrides), tokenizer)
    return model.eval(), processor


@pytest.fixture
def baseline(tiny_tokenizer):
    return make_baseline(tiny_tokenizer)


def random_frames(n, seed=0, size=40):
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size + 8, 3), dtype=np.uint8)


def forward_logits(model, processor, frames, ids):
    """Logits [S, V] of the parallel forward over a dialogue `ids` holding `len(frames)` frames."""
    with torch.no_grad():
        return model(pixel_values=processor.preprocess_frames(frames)[None], input_ids=torch.tensor([ids])).logits[0]


def respond_probs(processor, logits, ids):
    """p(respond) = 1 - p(separator) at every frame's last placeholder."""
    ids = torch.tensor(ids)
    last = torch.nonzero(ids == processor.video_token_id).flatten().view(-1, processor.tokens_per_frame)[:, -1]
    return 1 - logits[last].softmax(-1)[:, processor.separator_id]


def test_layout_supervises_separators_close_and_replies(baseline):
    _, processor = baseline
    ids, labels = processor.encode_conversation([ChatTurn(3, QUERY, "A red circle appeared."), ChatTurn(2, None, "The red circle disappeared.")])
    F = processor.tokens_per_frame
    assert F == 10 and ids.count(processor.video_token_id) == 5 * F
    assert ids[: len(processor.encode_prompt(QUERY))] == processor.encode_prompt(QUERY)
    supervised = [i for i, label in zip(ids, labels) if label != IGNORE_INDEX]
    close = processor.close_ids
    reply1, reply2 = processor.encode_reply("A red circle appeared."), processor.encode_reply("The red circle disappeared.")
    # Two silent frames (separators), the speaking frame's close + reply + EOS; then one silent frame and a reply.
    sep = processor.separator_id
    assert supervised == [sep, sep] + close + reply1 + [sep] + close + reply2
    # Every supervised decision directly follows a frame's last placeholder.
    decisions = [p for p in range(1, len(ids)) if ids[p - 1] == processor.video_token_id and ids[p] != processor.video_token_id]
    assert [ids[p] for p in decisions] == [sep, sep, close[0], sep, close[0]]
    assert all(labels[p] == ids[p] for p in decisions)
    # Reply labels keep only the replies and their EOS.
    kept = processor.reply_labels(torch.tensor(ids), torch.tensor(labels))
    assert [i for i, label in zip(ids, kept.tolist()) if label != IGNORE_INDEX] == reply1 + reply2


def test_loss_matches_a_hand_computed_value():
    # Every row's probabilities are (1/4, 1/2, 1/4): CE of target 1 is ln 2, of target 0 ln 4.
    logits = torch.log(torch.tensor([1.0, 2.0, 1.0])).expand(1, 4, 3)
    labels = torch.tensor([[IGNORE_INDEX, 1, 0, IGNORE_INDEX]])
    frame_inputs = torch.tensor([[True, False, True, False]])
    # Position 0 (a frame input, weight 0.5) predicts 1; position 1 (weight 1) predicts 0;
    # position 2 predicts an ignored label: (0.5 ln 2 + 2 ln 2) / 2 supervised labels.
    loss = stream_lm_loss(logits, labels, frame_inputs, stream_loss_weight=0.5)
    assert loss.item() == pytest.approx(1.25 * math.log(2), abs=1e-6)
    assert stream_lm_loss(logits, labels, frame_inputs, 1.0).item() == pytest.approx(1.5 * math.log(2), abs=1e-6)


def test_forward_loss_is_the_stream_loss_of_its_logits(baseline):
    model, processor = baseline
    frames = random_frames(3)
    ids, labels = processor.encode_conversation([ChatTurn(3, QUERY, "A red circle appeared.")])
    with torch.no_grad():
        out = model(pixel_values=processor.preprocess_frames(frames)[None], input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
    ids_t = torch.tensor([ids])
    expected = stream_lm_loss(out.logits, torch.tensor([labels]), ids_t == processor.video_token_id, model.config.stream_loss_weight)
    assert torch.equal(out.loss, expected)
    with pytest.raises(ValueError, match="placeholder"):
        model(pixel_values=processor.preprocess_frames(frames[:2])[None], input_ids=ids_t)


def test_streaming_equals_parallel_when_silent(baseline):
    model, processor = baseline
    frames = random_frames(7)
    session = PerFrameSession(model, processor, query=QUERY, threshold=1.0)
    for i, frame in enumerate(frames):
        assert session.push(frame, i / 2) is None
    ids, _ = processor.encode_conversation([ChatTurn(7, QUERY, None)])
    expected = respond_probs(processor, forward_logits(model, processor, frames, ids), ids)
    assert (torch.tensor(session.stats.probs) - expected).abs().max() <= 1e-5
    assert session.length == len(ids)  # the cache holds exactly the dialogue so far


def test_streaming_equals_parallel_with_replies(baseline):
    """The session's replies and later decisions are the forward's over the dialogue it built."""
    model, processor = baseline
    frames = random_frames(5, seed=2)
    probe = PerFrameSession(model, processor, query=QUERY, threshold=1.0)
    probe.push_clip(frames, np.arange(5) / 2)
    threshold = float(np.sort(probe.stats.probs)[2])  # fires on the two most confident frames
    session = PerFrameSession(model, processor, query=QUERY, threshold=threshold, max_new_tokens=3)
    ids, fired, replies = processor.encode_prompt(QUERY), [], []
    for i, frame in enumerate(frames):
        reply = session.push(frame, i / 2)
        ids += [processor.video_token_id] * processor.tokens_per_frame
        if reply is None:
            ids.append(processor.separator_id)
            continue
        fired.append(i)
        ids += processor.close_ids
        generated = []  # greedy decoding through the plain forward, no cache
        while len(generated) < 3:
            next_id = int(forward_logits(model, processor, frames[: i + 1], ids + generated)[-1].argmax())
            if next_id == processor.eos_token_id:
                break
            generated.append(next_id)
        assert reply.text == processor.decode(generated)
        replies.append(reply)
        ids += generated + [processor.eos_token_id] + processor.encode_turn_open()
    assert len(fired) == 2
    logits = forward_logits(model, processor, frames, ids[: -1 if ids[-1] == processor.separator_id else len(ids)])
    expected = respond_probs(processor, logits, ids)
    assert (torch.tensor(session.stats.probs) - expected).abs().max() <= 1e-5
    # Frame by frame and a clip at a time (several frames per LLM call) agree.
    clip = PerFrameSession(model, processor, query=QUERY, threshold=threshold, max_new_tokens=3, chunk_size=4)
    clip_replies = clip.push_clip(frames, np.arange(5) / 2)
    assert [(r.time, r.text, r.frame_index) for r in clip_replies] == [(r.time, r.text, r.frame_index) for r in replies]
    assert np.abs(np.array(clip.stats.probs) - np.array(session.stats.probs)).max() <= 1e-5
    assert clip.length == session.length


def test_reset_and_context_restart(baseline):
    model, processor = baseline
    session = PerFrameSession(model, processor, query=QUERY, threshold=1.0)
    session.push_clip(random_frames(3), [0.0, 0.5, 1.0])
    session.reset(query="Tell me when a shape disappears.")
    assert session.length == 0 and session.stats.frames == 0 and session.pending == processor.encode_prompt("Tell me when a shape disappears.")
    # A context of a few frames restarts from the prompt when full; the session keeps going.
    small, proc = make_baseline(processor.tokenizer, max_context_tokens=200, max_reply_tokens=2)
    short = PerFrameSession(small, proc, query=QUERY, threshold=1.0)
    short.push_clip(random_frames(12), np.arange(12) / 2)
    assert short.stats.llm_rebuilds >= 1 and short.length <= 200 and short.stats.frames == 12
    with pytest.raises(SessionInputError):
        PerFrameSession(small, proc, query="word " * 200)
    with pytest.raises(SessionInputError):
        PerFrameSession(model, processor, threshold=1.5)


def test_teacher_forced_pass_equals_the_parallel_forward(baseline):
    model, processor = baseline
    frames = random_frames(6, seed=4)
    turns = [ChatTurn(2, QUERY, "A red circle appeared."), ChatTurn(4, None, "The red circle disappeared.")]
    ids, labels = processor.encode_conversation(turns)
    batch = {"pixel_values": processor.preprocess_frames(frames)[None], "input_ids": torch.tensor([ids]), "labels": torch.tensor([labels])}
    ends, windows = [2, 6], [3, 6]  # turn 0 is timed late over one following frame
    logits, reply_labels, turn_probs = teacher_forced(model, processor, batch, ends, windows)
    full = forward_logits(model, processor, frames, ids)
    assert (logits - full).abs().max() <= 1e-5
    probs = respond_probs(processor, full, ids)
    assert (torch.tensor(turn_probs[0][0]) - probs[:2]).abs().max() <= 1e-5
    assert (torch.tensor(turn_probs[1][0]) - probs[2:]).abs().max() <= 1e-5
    # The late window: turn 0's frames, then frame 2 after a separator instead of the reply.
    late_ids, _ = processor.encode_conversation([ChatTurn(3, QUERY, None)])
    late = respond_probs(processor, forward_logits(model, processor, frames[:3], late_ids), late_ids)
    assert len(turn_probs[0][1]) == 1 and abs(float(turn_probs[0][1][0]) - float(late[2])) <= 1e-5
    assert len(turn_probs[1][1]) == 0
    assert torch.equal(reply_labels, processor.reply_labels(torch.tensor(ids), torch.tensor(labels)))


def test_save_load_round_trip_is_bit_exact(baseline, tmp_path):
    model, processor = baseline
    save_model(model, processor, tmp_path)
    loaded, proc2 = load_model(tmp_path)
    assert type(loaded) is type(model) and type(proc2) is type(processor)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    frames = random_frames(2)
    ids, _ = processor.encode_conversation([ChatTurn(2, QUERY, "A red circle appeared.")])
    assert torch.equal(forward_logits(model, processor, frames, ids), forward_logits(loaded, proc2, frames, ids))
    assert proc2.separator_id == processor.separator_id and proc2.close_ids == processor.close_ids
    assert loaded.config.to_dict()["frame_pooling"] == "cls+3x3"


def test_the_factory_opens_the_right_session(baseline, tiny):
    model, processor = baseline
    assert isinstance(open_session(model, processor, threshold=0.3), PerFrameSession)
    assert isinstance(open_session(*tiny), StreamingSession)
    assert default_threshold(model) == model.config.respond_threshold and default_threshold(tiny[0]) == tiny[0].config.gate_threshold


def test_config_validation():
    with pytest.raises(ValueError, match="frame_pooling"):
        PerFrameLLMConfig.from_preset("perframe-tiny", frame_pooling="mean")
    with pytest.raises(ValueError, match="square"):
        PerFrameLLMConfig.from_preset("perframe-tiny", frame_pooling="cls+2x3")
    with pytest.raises(ValueError, match="unknown|Unknown"):
        PerFrameLLMConfig.from_preset("perframe-tiny", gate_window=3)


def test_train_builds_the_baseline_from_its_preset(small_world, small_tower, tmp_path):
    from streammind.training.train import train as main

    out = main([str(REPO / "configs" / "tiny" / "perframe.yaml"),
                "--train_annotations", str(small_world / "train.jsonl"), "--data_root", str(small_world),
                "--output_dir", str(tmp_path / "m"), "--max_steps", "2", "--per_device_train_batch_size", "2",
                "--report_to", "none", "--tokenizer_path", str(small_world / "tokenizer"), "--clip_path", str(small_tower),
                "--feature_cache_dir", str(tmp_path / "features")])
    model, _ = load_model(out)
    assert model.config.model_type == "streammind_per_frame_llm"
    tower = CLIPVisionModel.from_pretrained(small_tower).state_dict()
    assert all(torch.equal(model.vision.clip.state_dict()[k], v) for k, v in tower.items())  # the tower stays frozen
    cached = torch.load(next((tmp_path / "features").rglob("*.pt")), weights_only=True)["features"]
    assert cached.shape[1:] == (10, model.config.vision_config.hidden_size)  # CLS + 3x3 per frame


def test_perception_without_mamba_streams_like_its_forward(tiny_tokenizer):
    """The no-Mamba ablation: tokens depend on their own frame only, and the engine runs it."""
    model, processor = make_tiny(tiny_tokenizer, perception_temporal="none")
    assert model.perception.block is None
    frames = random_frames(5)
    session = StreamingSession(model, processor, query=QUERY, threshold=1.0)
    for i, frame in enumerate(frames):
        session.push(frame, i / 2)
    with torch.no_grad():
        tokens = model.get_perception_tokens(pixel_values=processor.preprocess_frames(frames)[None])[0]
        alone = model.get_perception_tokens(pixel_values=processor.preprocess_frames(frames[3:4])[None])[0]
    assert (session.turn_tokens() - tokens).abs().max() <= 1e-5
    assert (tokens[3] - alone[0]).abs().max() <= 1e-6
