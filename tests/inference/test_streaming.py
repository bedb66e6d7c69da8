"""StreamingSession: streaming equals the parallel forward; reset clears everything; replies.

Run: .venv/bin/python -m pytest tests/inference/test_streaming.py -q
"""

from __future__ import annotations

import numpy as np
import torch

from streammind import StreamingSession
from tests.helpers import make_tiny

QUERY = "Tell me when a shape appears."


def random_frames(n, seed=0, size=40):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, size, size + 8, 3), dtype=np.uint8)


def parallel_reference(model, processor, frames, respond=None):
    """Perception tokens and gate p(respond) from the parallel (training) path."""
    pixels = processor.preprocess_frames(frames)[None]
    prompt = torch.tensor(processor.encode_gate_prompt(QUERY))[None]
    with torch.no_grad():
        tokens = model.get_perception_tokens(pixel_values=pixels)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool)
        logits = model.gate_logits(tokens, mask, None, prompt, respond=respond)
    return tokens[0], logits.softmax(-1)[0, :, 1]


def stream(session, frames, fps=2.0):
    replies = []
    for i, frame in enumerate(frames):
        reply = session.push(frame, i / fps)
        if reply is not None:
            replies.append(reply)
    return replies


def test_streaming_equals_parallel_when_silent(tiny):
    model, processor = tiny
    frames = random_frames(12)
    session = StreamingSession(model, processor, query=QUERY, threshold=1.0)
    stream(session, frames)
    tokens, probs = parallel_reference(model, processor, frames)
    streamed = torch.tensor(session.stats.probs)
    assert (streamed - probs).abs().max() <= 1e-5
    # The turn memory holds the parallel path's tokens of every frame so far (no reply yet).
    assert (session.turn_tokens() - tokens).abs().max() <= 1e-5


def test_streaming_equals_parallel_with_responses_and_window(tiny_tokenizer):
    """With the gate firing, the turn resets; with a tiny window, the context restarts."""
    model, processor = make_tiny(tiny_tokenizer, gate_window=4, max_reply_tokens=3)
    frames = random_frames(15, seed=3)
    probe = StreamingSession(model, processor, query=QUERY, threshold=1.0)
    stream(probe, frames)
    threshold = float(np.quantile(probe.stats.probs[:-1], 0.8))  # fire on some frames
    session = StreamingSession(model, processor, query=QUERY, threshold=threshold)
    replies = stream(session, frames)
    assert replies, "the chosen threshold should make the gate fire"
    fired = torch.zeros(1, len(frames), dtype=torch.bool)
    fired[0, [r.frame_index for r in replies]] = True
    _, probs = parallel_reference(model, processor, frames, respond=fired)
    assert (torch.tensor(session.stats.probs) - probs).abs().max() <= 1e-5
    assert all(r.prob > threshold for r in replies)
    assert [r.time for r in replies] == [r.frame_index / 2.0 for r in replies]


def test_reset_clears_all_state(tiny):
    model, processor = tiny
    frames = random_frames(6, seed=5)
    session = StreamingSession(model, processor, query=QUERY, threshold=0.0, max_new_tokens=2)
    first = stream(session, frames)
    assert session.llm_length > 0 and session.stats.frames == 6
    session.reset()
    assert session.llm_length == 0 and session.turn_tokens().shape[0] == 0 and not session.turns
    assert session.stats.frames == 0 and session.gate_frames == 0
    state = session.engine.perception_state
    assert float(state.ssm_state[session.slot].abs().sum()) == 0.0 and float(state.conv_state[session.slot].abs().sum()) == 0.0
    again = stream(session, frames)
    assert [(r.time, r.text) for r in again] == [(r.time, r.text) for r in first]


def test_llm_cache_matches_a_full_prefill(tiny):
    """Replies use the cached conversation; its logits equal re-running the whole dialogue."""
    model, processor = tiny
    session = StreamingSession(model, processor, query=QUERY, threshold=0.0, max_new_tokens=3)
    for i, frame in enumerate(random_frames(3, seed=7)):
        session.push(frame, i / 2)
    assert len(session.turns) == 3
    # Rebuild the conversation from the recorded turns in one pass.
    embeds = []
    for j, turn in enumerate(session.turns):
        ids = processor.encode_turn_prefix(turn.user, turn.video_tokens.shape[0], first=j == 0)
        embeds.append(model.merge_video_tokens(torch.tensor([ids]), turn.video_tokens))
        embeds.append(model.language_model.get_input_embeddings()(torch.tensor([turn.reply_ids])))
    full = torch.cat(embeds, dim=1)
    assert full.shape[1] == session.llm_length
    with torch.no_grad():
        logits = model.language_model(inputs_embeds=full).logits[0]
    # The greedy reply tokens are the argmax of the full pass at the preceding positions.
    pos = 0
    for j, turn in enumerate(session.turns):
        pos += embeds[2 * j].shape[1]
        predicted = logits[pos - 1 : pos - 1 + len(turn.reply_ids)].argmax(-1).tolist()
        eos_forced = len(turn.reply_ids) - 1 == session.max_new_tokens
        expect = turn.reply_ids if not eos_forced else turn.reply_ids[:-1]
        assert predicted[: len(expect)] == expect
        pos += len(turn.reply_ids)


def test_context_budget_evicts_old_turns(tiny_tokenizer):
    model, processor = make_tiny(tiny_tokenizer, max_context_tokens=160, max_reply_tokens=4)
    session = StreamingSession(model, processor, query=QUERY, threshold=0.0)
    for i, frame in enumerate(random_frames(30, seed=9)):
        session.push(frame, i / 2)
        assert session.llm_length <= 160
    assert session.stats.llm_rebuilds > 0 and session.stats.replies == 30


def test_query_joins_mid_stream(tiny):
    model, processor = tiny
    session = StreamingSession(model, processor, query=None, threshold=1.0)
    frames = random_frames(4, seed=11)
    for i, frame in enumerate(frames[:2]):
        session.push(frame, i / 2)
    session.add_query(QUERY)
    assert session.query == QUERY and session.pending_user == QUERY
    for i, frame in enumerate(frames[2:], start=2):
        session.push(frame, i / 2)
    assert session.stats.frames == 4
