"""The inference engine: batches of streams, chunks of frames, the LLM context shared by streams,
and (on a GPU) CUDA graphs and device-side preprocessing, each against the plain path.

Run: .venv/bin/python -m pytest tests/inference/test_engine.py -q        (GPU parts: -m gpu on a CUDA machine)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streammind import StreamingSession
from streammind.engine import Engine
from streammind.streaming import push_clip_chunks
from tests.helpers import make_tiny

QUERIES = ["Tell me when a shape appears.", "Say when something turns red.", "Narrate the moves."]


def random_frames(n, seed=0, size=40):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, size, size + 8, 3), dtype=np.uint8)


def parallel_probs(model, processor, frames, query, respond=None):
    """Gate p(respond) of every frame from the model's parallel (training) forward."""
    pixels = processor.preprocess_frames(frames)[None]
    prompt = torch.tensor(processor.encode_gate_prompt(query))[None]
    with torch.no_grad():
        tokens = model.get_perception_tokens(pixel_values=pixels)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool)
        return model.gate_logits(tokens, mask, None, prompt, respond=respond).softmax(-1)[0, :, 1]


def alone(model, processor, frames, query, threshold=1.0, max_new_tokens=3):
    session = StreamingSession(model, processor, query=query, threshold=threshold, max_new_tokens=max_new_tokens)
    replies = [(i, r.text) for i, f in enumerate(frames) if (r := session.push(f, i / 2)) is not None]
    return np.array(session.stats.probs), replies


def test_streams_in_one_batch_equal_each_stream_alone(tiny):
    model, processor = tiny
    clips = [random_frames(9, seed=s) for s in range(3)]
    engine = Engine(model, processor, max_streams=4)
    slots = [engine.open_stream(q) for q in QUERIES]
    probs = np.stack([engine.step(slots, [clip[i] for clip in clips]) for i in range(9)], axis=1)  # [3, 9]
    for j, (clip, query) in enumerate(zip(clips, QUERIES)):
        expected = parallel_probs(model, processor, clip, query).numpy()
        np.testing.assert_allclose(probs[j], expected, atol=1e-5)
        np.testing.assert_allclose(probs[j], alone(model, processor, clip, query)[0], atol=1e-6)


def test_a_streams_result_does_not_depend_on_its_batch_mates(tiny):
    model, processor = tiny
    target, other_a, other_b = random_frames(6, seed=1), random_frames(6, seed=2), random_frames(6, seed=3)
    results = []
    for other in (other_a, other_b):
        engine = Engine(model, processor, max_streams=2)
        slots = [engine.open_stream(QUERIES[0]), engine.open_stream(QUERIES[1])]
        results.append(np.array([engine.step(slots, [target[i], other[i]])[0] for i in range(6)]))
    np.testing.assert_array_equal(results[0], results[1])


def test_streams_join_and_leave_without_leaking_state(tiny):
    model, processor = tiny
    engine = Engine(model, processor, max_streams=2)
    first = engine.open_stream(QUERIES[0])
    second = engine.open_stream(QUERIES[1])
    for frame in random_frames(5, seed=4):
        engine.step([first, second], [frame, frame])
    engine.close_stream(first)
    with pytest.raises(KeyError, match="no open stream"):
        engine.step([first], random_frames(1))
    reopened = engine.open_stream(QUERIES[2])  # takes the freed slot, with a fresh state
    assert reopened == first
    clip = random_frames(7, seed=5)
    probs = [engine.step([reopened], clip[i])[0] for i in range(7)]
    np.testing.assert_allclose(probs, parallel_probs(model, processor, clip, QUERIES[2]).numpy(), atol=1e-5)
    with pytest.raises(RuntimeError, match="slots are in use"):
        engine.open_stream(), engine.open_stream()


@pytest.mark.parametrize("gate_mode", ["query", "per_frame"])
@pytest.mark.parametrize("chunk", [1, 4, 7])
def test_chunks_of_frames_equal_frame_by_frame(tiny_tokenizer, gate_mode, chunk):
    """File mode: CLIP batched, EPFE scanned, the gate redone after each reply's reset."""
    model, processor = make_tiny(tiny_tokenizer, gate_window=5, max_reply_tokens=3, gate_mode=gate_mode)
    frames = random_frames(17, seed=6)
    probe, _ = alone(model, processor, frames, QUERIES[0])
    threshold = float(np.quantile(probe[:-1], 0.75))
    probs, replies = alone(model, processor, frames, QUERIES[0], threshold=threshold)
    assert 2 <= len(replies) < 17, "the threshold should make the gate fire a few times"
    session = StreamingSession(model, processor, query=QUERIES[0], threshold=threshold, max_new_tokens=3)
    clip_replies = push_clip_chunks(session, [(i / 2, f) for i, f in enumerate(frames)], chunk_size=chunk)
    np.testing.assert_allclose(session.stats.probs, probs, atol=1e-5)
    assert [(r.frame_index, r.text) for r in clip_replies] == replies
    assert [r.time for r in clip_replies] == [i / 2 for i, _ in replies]


def test_replies_of_streams_sharing_the_llm_equal_each_stream_alone(tiny_tokenizer):
    """Two streams reply in turns: each conversation's context is saved and restored around the other's."""
    model, processor = make_tiny(tiny_tokenizer, max_reply_tokens=4)
    clips = [random_frames(5, seed=7), random_frames(5, seed=8)]
    engine = Engine(model, processor, max_streams=2)
    slots = [engine.open_stream(QUERIES[0]), engine.open_stream(QUERIES[1])]
    texts = [[], []]
    for i in range(5):
        engine.step(slots, [clips[0][i], clips[1][i]])
        for j, slot in enumerate(slots):
            texts[j].append(engine.respond(slot))
    for j in range(2):
        _, expected = alone(model, processor, clips[j], QUERIES[j], threshold=0.0, max_new_tokens=4)
        assert texts[j] == [t for _, t in expected]
    assert engine.conversation(slots[0]).llm_length > 0 and len(engine.conversation(slots[1]).turns) == 5


def test_query_joining_mid_turn_reads_the_turn_again(tiny):
    """After set_query the gate sees the new prompt followed by the turn's frames, as if asked first."""
    model, processor = tiny
    frames = random_frames(8, seed=9)
    engine = Engine(model, processor)
    slot = engine.open_stream(None)
    for i in range(5):
        engine.step([slot], frames[i])
    engine.set_query(slot, QUERIES[1])
    later = [engine.step([slot], frames[i])[0] for i in range(5, 8)]
    np.testing.assert_allclose(later, parallel_probs(model, processor, frames, QUERIES[1]).numpy()[5:], atol=1e-5)
    assert engine.conversation(slot).pending_user == QUERIES[1]


def test_a_gate_prompt_longer_than_its_room_is_refused(tiny):
    model, processor = tiny
    engine = Engine(model, processor, max_prompt_tokens=16)
    with pytest.raises(ValueError, match="gate prompt .* tokens; the engine has room for 16"):
        engine.open_stream("a long query " * 20)


def test_state_bytes_per_stream(tiny):
    model, processor = tiny
    cfg = model.config
    engine = Engine(model, processor)
    sizes = engine.state_bytes()
    D, d_inner = cfg.hidden_size, model.perception.d_inner
    assert sizes["epfe_state"] == d_inner * cfg.perception_d_conv * 4 + d_inner * cfg.perception_d_state * 4  # fp32 model
    assert sizes["turn_memory"] == cfg.max_turn_frames * D * 4
    g = cfg.gate_config
    gate_positions = -(-(512 + cfg.gate_window) // 64) * 64
    assert sizes["gate_cache"] == 2 * g.num_hidden_layers * g.num_key_value_heads * (g.hidden_size // g.num_attention_heads) * gate_positions * 4


# ---- GPU: graphs and device preprocessing against the eager path ----------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_graphs_equal_eager_and_preprocessing_on_the_device_equals_the_cpu(tiny_tokenizer):
    model, processor = make_tiny(tiny_tokenizer, gate_window=6, max_reply_tokens=4)
    model = model.cuda()
    frames = random_frames(20, seed=10, size=64)
    pixels_cpu = processor.preprocess_frames(frames)
    pixels_gpu = processor.preprocess_frames(frames, device="cuda").cpu()
    assert (pixels_gpu - pixels_cpu).abs().max() <= 1e-4
    runs = {}
    for graphs in (False, True):
        engine = Engine(model, processor, max_streams=4, cuda_graphs=graphs)
        slots = [engine.open_stream(q) for q in QUERIES]
        probs = np.stack([engine.step(slots, [frames[i]] * 3) for i in range(20)])
        texts = [engine.respond(slot) for slot in slots]
        runs[graphs] = probs, texts
    np.testing.assert_allclose(runs[True][0], runs[False][0], atol=1e-4)
    assert runs[True][1] == runs[False][1]
    expected = parallel_probs(model.cpu(), processor, frames, QUERIES[0]).numpy()
    np.testing.assert_allclose(runs[True][0][:, 0], expected, atol=1e-4)
