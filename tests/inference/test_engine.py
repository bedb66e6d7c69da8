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


def peaked_llm(model, processor):
    """10x larger LLM logits: no near-ties in greedy decoding between two equal computations."""
    with torch.no_grad():
        model.language_model.lm_head.weight.mul_(10.0)
    return model, processor


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
    assert [r.prob for r in clip_replies] == pytest.approx([probs[i] for i, _ in replies], abs=1e-5)
    assert session.gate_frames == (1 if gate_mode == "per_frame" else (len(frames) - 1 - replies[-1][0]) % 5)


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


def test_streams_stepped_in_any_slot_order_equal_each_stream_alone(tiny):
    """Slots given out of order (not a consecutive range): the rows are gathered by index."""
    model, processor = tiny
    clips = [random_frames(3, seed=50), random_frames(3, seed=51)]
    engine = Engine(model, processor, max_streams=3)
    slots = [engine.open_stream(QUERIES[0]), engine.open_stream(QUERIES[1]), engine.open_stream(QUERIES[2])]
    probs = np.array([engine.step([slots[2], slots[0]], np.stack([clips[1][i], clips[0][i]])) for i in range(3)])
    for j, (clip, query) in enumerate([(clips[1], QUERIES[2]), (clips[0], QUERIES[0])]):
        expected, _ = alone(model, processor, clip, query)
        np.testing.assert_allclose(probs[:, j], expected, atol=1e-5)


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


def test_state_bytes_of_the_llm_context_by_value(tiny_tokenizer):
    """A head width other than hidden / heads, fewer key-value heads than heads, and bf16."""
    model, processor = make_tiny(tiny_tokenizer, max_context_tokens=300,
                                 text_config={"head_dim": 16, "num_attention_heads": 4, "num_key_value_heads": 2})
    model = model.to(torch.bfloat16)
    lm = model.language_model.config
    assert (lm.hidden_size, lm.num_hidden_layers, lm.head_dim) == (128, 2, 16)  # 16, not 128 / 4
    sizes = Engine(model, processor, max_streams=2).state_bytes()
    assert sizes["llm_context_max"] == 2 * 2 * 2 * 16 * 300 * 2  # keys and values, layers, kv heads, head width, positions, bytes
    assert set(sizes) == {"epfe_state", "turn_memory", "gate_cache", "llm_context_max"}


@pytest.mark.parametrize("static", [True, False])
def test_the_dynamic_cache_path_replies_as_the_static_one(tiny_tokenizer, static):
    """With the engine forced onto the dynamic-cache path (the one LLM architectures without a
    static decoder take) or not: two streams replying in turns equal each stream alone, also after
    a third stream replied (taking the LLM context) and was closed."""
    model, processor = make_tiny(tiny_tokenizer, max_reply_tokens=4)
    clips = [random_frames(4, seed=7), random_frames(4, seed=8)]
    engine = Engine(model, processor, max_streams=3)
    engine._llm_static = static
    slots = [engine.open_stream(QUERIES[0]), engine.open_stream(QUERIES[1])]
    texts = [[], []]
    for i in range(4):
        engine.step(slots, [clips[0][i], clips[1][i]])
        for j, slot in enumerate(slots):
            texts[j].append(engine.respond(slot))
        if i in (1, 2):  # a third stream replies, so it holds the LLM context, and is closed
            extra = engine.open_stream(QUERIES[2])
            engine.step([extra], clips[1][:1])
            engine.respond(extra)
            engine.close_stream(extra)
    for j in range(2):
        _, expected = alone(model, processor, clips[j], QUERIES[j], threshold=0.0, max_new_tokens=4)
        assert texts[j] == [t for _, t in expected]


@pytest.mark.parametrize("static", [True, False])
def test_a_closed_stream_that_does_not_hold_the_llm_leaves_the_holder_s_context(tiny_tokenizer, static):
    model, processor = make_tiny(tiny_tokenizer, max_reply_tokens=4)
    clip = random_frames(3, seed=11)
    engine = Engine(model, processor, max_streams=2)
    engine._llm_static = static
    slot, other = engine.open_stream(QUERIES[0]), engine.open_stream(QUERIES[1])
    texts = []
    for i in range(3):
        engine.step([slot], clip[i : i + 1])
        texts.append(engine.respond(slot))
        if i == 0:
            engine.close_stream(other)  # never replied: slot still holds the LLM context
    _, expected = alone(model, processor, clip, QUERIES[0], threshold=0.0, max_new_tokens=4)
    assert texts == [t for _, t in expected]


@pytest.mark.parametrize("static", [True, False])
def test_greedy_and_beam_search_on_both_llm_paths(tiny_tokenizer, static):
    """The offline answers (greedy ids, beam hypotheses) agree between the LLM's two paths."""
    from streammind.evaluation.answering import encode_prompt

    model, processor = make_tiny(tiny_tokenizer)
    embeds = encode_prompt(model, processor, random_frames(4, seed=12), "What happens?")
    reference = Engine(model, processor)
    engine = Engine(model, processor)
    engine._llm_static = static
    assert engine.generate(embeds, max_new_tokens=6) == reference.generate(embeds, max_new_tokens=6)
    hyps = engine.beam_search(embeds, max_new_tokens=5, num_beams=3, num_return_sequences=2, length_penalty=0.5)
    expected = reference.beam_search(embeds, max_new_tokens=5, num_beams=3, num_return_sequences=2, length_penalty=0.5)
    assert [(h.ids, h.finished) for h in hyps] == [(h.ids, h.finished) for h in expected] and len(hyps) == 2
    for h, e in zip(hyps, expected):
        assert h.logprob == pytest.approx(e.logprob, abs=1e-4) and h.score == pytest.approx(e.score, abs=1e-4)


def test_beam_search_scores_with_the_given_penalty_and_closes_at_the_processors_eos(tiny_tokenizer):
    """Engine.beam_search scores a hypothesis log-prob / length ** penalty (length with EOS), with
    the penalty it is given and 1.0 by default, and closes hypotheses at the processor's EOS."""
    from streammind.evaluation.answering import encode_prompt

    model, processor = make_tiny(tiny_tokenizer)
    embeds = encode_prompt(model, processor, random_frames(4, seed=12), "What happens?")
    engine = Engine(model, processor)
    for kwargs, penalty in [({}, 1.0), ({"length_penalty": 0.5}, 0.5), ({"length_penalty": 2.0}, 2.0)]:
        hyps = engine.beam_search(embeds, max_new_tokens=4, num_beams=3, **kwargs)
        lengths = [len(h.ids) + h.finished for h in hyps]
        assert max(lengths) > 1
        assert [h.score for h in hyps] == pytest.approx([h.logprob / n**penalty for h, n in zip(hyps, lengths)], rel=1e-6)
    # One new token, with the greedy one as EOS: the best hypothesis is the empty reply, closed
    # (every other one is a less likely single token, closed at the cap).
    first = engine.generate(embeds, max_new_tokens=1)[0]
    processor.eos_token_id = first
    hyps = engine.beam_search(embeds, max_new_tokens=1, num_beams=3)
    assert [(h.ids, h.finished) for h in hyps][0] == ([], True) and all(len(h.ids) == 1 and not h.finished for h in hyps[1:])


def test_greedy_decoding_across_an_attention_span_boundary(tiny_tokenizer):
    """The LLM context is read in spans of 1,024 positions: a prompt of 1,020 tokens and 8 greedy
    tokens cross from the first span into the second; every token equals the argmax of a plain
    forward over everything before it (the token written at position 1,024 must see itself)."""
    model, processor = make_tiny(tiny_tokenizer, max_context_tokens=1100)
    lm = model.language_model
    g = torch.Generator().manual_seed(5)
    embeds = lm.get_input_embeddings().weight[torch.randint(0, lm.config.vocab_size, (1, 1020), generator=g)].detach()
    processor.eos_token_id = -1  # no early stop: all 8 tokens are decoded
    ids = Engine(model, processor).generate(embeds, max_new_tokens=8)
    with torch.inference_mode():
        expected, current = [], embeds
        for _ in range(8):
            expected.append(int(lm(inputs_embeds=current, use_cache=False).logits[0, -1].argmax()))
            current = torch.cat([current, lm.get_input_embeddings()(torch.tensor([expected[-1:]]))], dim=1)
    assert ids == expected


def test_push_clip_chunks_uses_the_chunk_size_it_is_given():
    """push_clip_chunks calls push_clip with `chunk_size` frames at a time (the last call with the
    rest), and with the session's chunk size when none is given."""

    class Recorder:
        chunk_size = 3

        def __init__(self):
            self.calls = []

        def push_clip(self, frames, times):
            self.calls.append(list(times))
            return []

    frames = [(i / 2, np.zeros((2, 2, 3), np.uint8)) for i in range(5)]
    given, default = Recorder(), Recorder()
    assert push_clip_chunks(given, frames, chunk_size=2) == [] and push_clip_chunks(default, frames) == []
    assert given.calls == [[0.0, 0.5], [1.0, 1.5], [2.0]]
    assert default.calls == [[0.0, 0.5, 1.0], [1.5, 2.0]]


def test_push_clip_keeps_the_newest_turn_frames_and_works_in_any_slot(tiny_tokenizer):
    """Chunks longer than the turn memory keep its newest max_turn_frames tokens (the parallel
    path's tokens), across chunks too, in a stream's own slot (not slot 0)."""
    model, processor = make_tiny(tiny_tokenizer, max_turn_frames=3)
    frames = random_frames(9, seed=13)
    pixels = processor.preprocess_frames(frames)[None]
    with torch.no_grad():
        tokens = model.get_perception_tokens(pixel_values=pixels)[0]  # [9, D]
    engine = Engine(model, processor, max_streams=2)
    engine.open_stream(QUERIES[0])
    slot = engine.open_stream(QUERIES[1])
    assert slot == 1
    first = engine.push_clip(slot, frames[:7], threshold=1.0)
    torch.testing.assert_close(engine.turn_tokens(slot), tokens[4:7], atol=1e-5, rtol=1e-5)
    engine.push_clip(slot, frames[7:], threshold=1.0)
    torch.testing.assert_close(engine.turn_tokens(slot), tokens[6:9], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(first.probs, parallel_probs(model, processor, frames[:7], QUERIES[1]).numpy(), atol=1e-5)
    # A bf16 model takes fp32 features: the same probabilities as its frame-by-frame steps.
    model = model.to(torch.bfloat16)
    clip, steps = Engine(model, processor), Engine(model, processor)
    a, b = clip.open_stream(QUERIES[0]), steps.open_stream(QUERIES[0])
    features = torch.randn(4, model.config.vision_dim)
    chunked = clip.push_clip(a, features=features, threshold=1.0).probs
    np.testing.assert_allclose(chunked, [steps.step_features([b], f[None])[0] for f in features], atol=2e-2)


def test_push_clip_fires_strictly_above_the_threshold_with_its_reply_cap(tiny_tokenizer):
    model, processor = make_tiny(tiny_tokenizer, max_reply_tokens=5)
    frames = random_frames(6, seed=17)
    engine = Engine(model, processor)
    probe = engine.push_clip(engine.open_stream(QUERIES[0]), frames, threshold=1.0).probs
    assert probe.dtype == np.float32
    top = int(np.argmax(probe))
    # A threshold equal to the highest probability: no frame is above it; just below it, that frame.
    fresh = Engine(model, processor)
    assert fresh.push_clip(fresh.open_stream(QUERIES[0]), frames, threshold=float(probe[top])).replies == []
    fresh = Engine(model, processor)
    slot = fresh.open_stream(QUERIES[0])
    result = fresh.push_clip(slot, frames, threshold=float(np.nextafter(probe[top], np.float32(0))), max_new_tokens=1)
    assert [(i, p) for i, p, _ in result.replies] == [(top, pytest.approx(float(probe[top])))]
    assert len(fresh.conversation(slot).turns[0].reply_ids) <= 2  # one token at most, then EOS


def test_a_bf16_model_replies_through_a_bf16_llm_context(tiny_tokenizer):
    model, processor = make_tiny(tiny_tokenizer, max_reply_tokens=2)
    model = model.to(torch.bfloat16)
    engine = Engine(model, processor)
    slot = engine.open_stream(QUERIES[0])
    engine.step([slot], random_frames(1, seed=18))
    assert isinstance(engine.respond(slot), str)
    assert engine._llm_kv.keys.dtype == torch.bfloat16 and engine._llm_kv.keys.device.type == "cpu"


def test_push_clip_replies_above_one_half_by_default(tiny_tokenizer):
    model, processor = make_tiny(tiny_tokenizer, max_reply_tokens=2)
    with torch.no_grad():
        model.gate.head.bias.copy_(torch.tensor([0.0, 8.0]))  # p(respond) near 1 on every frame
    engine = Engine(model, processor)
    result = engine.push_clip(engine.open_stream(QUERIES[0]), random_frames(3, seed=14))
    assert [i for i, _, _ in result.replies] == [0, 1, 2] and all(p > 0.99 for p in result.probs)


def test_generate_stops_at_eos_and_refuses_what_the_context_cannot_hold(tiny_tokenizer):
    from streammind.evaluation.answering import encode_prompt

    model, processor = make_tiny(tiny_tokenizer, max_context_tokens=200)
    embeds = encode_prompt(model, processor, random_frames(2, seed=15), "What happens?")
    engine = Engine(model, processor)
    ids = engine.generate(embeds, max_new_tokens=6)
    assert len(ids) == 6 and len(set(ids)) > 1
    # With the third token as EOS, generation stops before it.
    processor.eos_token_id = ids[2]
    assert engine.generate(embeds, max_new_tokens=6) == ids[:2]
    # The prompt, the new tokens and EOS must fit max_context_tokens, exactly.
    room = 200 - embeds.shape[1] - 1
    assert len(engine.generate(embeds, max_new_tokens=room)) <= room
    with pytest.raises(ValueError, match=f"a prompt of {embeds.shape[1]} tokens \\+ {room + 1} new ones exceeds max_context_tokens \\(200\\)"):
        engine.generate(embeds, max_new_tokens=room + 1)


def test_a_reply_decoded_a_few_tokens_at_a_time(tiny_tokenizer):
    """start_reply clears the turn memory at once; advance(n) decodes n tokens per call (each
    passed to on_token in order), returns False until the reply is done, then True; the text and
    the turn appear when done, equal to a whole `respond` on a twin stream."""
    model, processor = make_tiny(tiny_tokenizer, max_reply_tokens=5)
    model, processor = peaked_llm(model, processor)
    frames = random_frames(2, seed=16)
    engine = Engine(model, processor, max_streams=2)
    slot, twin = engine.open_stream(QUERIES[0]), engine.open_stream(QUERIES[0])
    engine.step([slot, twin], np.stack([frames[0], frames[0]]))
    expected = engine.respond(twin)
    seen = []
    task = engine.start_reply(slot, on_token=seen.append)
    assert engine.turn_tokens(slot).shape[0] == 0 and engine.gate_frames(slot) == 0
    assert task.text is None and task.done is False and len(engine.conversation(slot).turns) == 0
    rounds = []
    while True:
        done = task.advance(2)
        rounds.append(len(task.generated))
        if done:
            break
        assert done is False and task.text is None
    assert done is True and task.advance() is True  # nothing left to do
    n = len(engine.conversation(twin).turns[0].reply_ids) - 1  # the twin's tokens, EOS excluded
    assert n > 2 and rounds[0] == 2  # the first call stopped after two tokens
    assert rounds[:-1] == list(range(2, n, 2))[: len(rounds) - 1] and rounds[-1] == n and task.generated == seen
    assert task.text == expected and len(engine.conversation(slot).turns) == 1
    assert engine.conversation(slot).turns[0].reply_ids == engine.conversation(twin).turns[0].reply_ids


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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_compiled_layers_in_graphs_equal_the_layers_as_written(tiny_tokenizer):
    model, processor = make_tiny(tiny_tokenizer, gate_window=6, max_reply_tokens=4)
    compiled_against_written(model.cuda(), processor, random_frames(12, seed=11, size=64))


def test_an_unknown_compile_mode_is_refused(tiny):
    model, processor = tiny
    with pytest.raises(ValueError, match="compile must be one of"):
        Engine(model, processor, compile="fast")


def compiled_against_written(model, processor, frames):
    """Gate probabilities (3 streams), replies and a clip's probabilities with the layers compiled
    and as written."""
    runs = {}
    for mode in (None, "default"):
        engine = Engine(model, processor, max_streams=4, compile=mode)
        slots = [engine.open_stream(q) for q in QUERIES]
        probs = np.stack([engine.step(slots, [frames[i]] * 3) for i in range(len(frames))])
        texts = [engine.respond(slot) for slot in slots]
        clip = engine.push_clip(slots[0], frames, threshold=1.0)
        runs[mode] = probs, texts, clip.probs
    np.testing.assert_allclose(runs["default"][0], runs[None][0], atol=1e-4)
    np.testing.assert_allclose(runs["default"][2], runs[None][2], atol=1e-4)
    assert runs["default"][1] == runs[None][1]
    return runs


@pytest.mark.slow
def test_compiled_layers_equal_the_layers_as_written_on_the_cpu(tiny_tokenizer):
    model, processor = make_tiny(tiny_tokenizer, gate_window=6, max_reply_tokens=4)
    compiled_against_written(model, processor, random_frames(8, seed=11))
