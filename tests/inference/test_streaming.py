"""StreamingSession: streaming equals the parallel forward; reset clears everything; replies.

Run: .venv/bin/python -m pytest tests/inference/test_streaming.py -q
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streammind import StreamingSession
from streammind.engine import Engine
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


def play(session, events, fps=2.0):
    """Frames and joining queries (strings) in order; the push result of every frame (None when
    silent), frame k at time k / fps."""
    results = []
    for event in events:
        if isinstance(event, str):
            session.add_query(event)
        else:
            results.append(session.push(event, len(results) / fps))
    return results


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


def test_a_long_turn_streams_the_same_tokens_as_the_parallel_path(tiny_tokenizer):
    """The gate first fires after more than max_turn_frames frames: the reply reads the same
    sampled tokens as `select_turn_tokens` over the parallel perception tokens."""
    model, processor = make_tiny(tiny_tokenizer, max_turn_frames=4, sampling_ratio=0.5, max_reply_tokens=2)
    frames = random_frames(12, seed=13)
    probe = StreamingSession(model, processor, query=QUERY, threshold=1.0)
    stream(probe, frames)
    probs = probe.stats.probs
    # The first frame past the bound whose p(respond) beats every earlier frame's.
    fire = next(f for f in range(5, len(frames)) if probs[f] > max(probs[:f]))
    session = StreamingSession(model, processor, query=QUERY, threshold=max(probs[:fire]))
    replies = stream(session, frames[: fire + 1])
    assert [r.frame_index for r in replies] == [fire]
    tokens, _ = parallel_reference(model, processor, frames[: fire + 1])
    with torch.no_grad():
        expected = model.select_turn_tokens(tokens[None], torch.tensor([[fire + 1]]))[0]
    streamed = session.turns[0].video_tokens
    assert streamed.shape == expected.shape == (processor.placeholders_for(fire + 1), model.config.hidden_size)
    assert (streamed - expected).abs().max() <= 1e-5


def test_per_frame_gate_streams_the_parallel_probabilities(tiny_tokenizer):
    """In per-frame mode the gate reads only the newest token: streamed p(respond) equals the
    parallel per-frame logits (a turn context would make later frames differ)."""
    model, processor = make_tiny(tiny_tokenizer, gate_mode="per_frame", max_reply_tokens=2)
    frames = random_frames(6, seed=17)
    probe = StreamingSession(model, processor, query=QUERY, threshold=1.0)
    stream(probe, frames)
    pixels = processor.preprocess_frames(frames)[None]
    with torch.no_grad():
        tokens = model.get_perception_tokens(pixel_values=pixels)
        logits = model.gate_logits(tokens, torch.ones(1, 6, dtype=torch.bool), None, None)
    expected = logits.softmax(-1)[0, :, 1]
    assert (torch.tensor(probe.stats.probs) - expected).abs().max() <= 1e-5


def peaked(tiny):
    """The tiny model with 10x larger LLM logits: a random LLM's top two logits can be within
    float noise of each other, and then greedy decoding with and without a cache (or with
    different matmul shapes) may pick different tokens; with peaked logits such ties vanish."""
    model, processor = tiny
    with torch.no_grad():
        model.language_model.lm_head.weight.mul_(10.0)
    return model, processor


def reference_dialogue(model, processor, frames, events, max_new, budget):
    """The replies a stream should give when the gate fires on every frame, rebuilt from the
    processor's turn rendering and full LLM passes (no cache): `events` is a list of frames
    and query strings in arrival order. Each turn holds the user text that arrived since the
    last reply (the query on the first turn), its frame's token, the greedy reply and EOS. When
    the next turn would not fit `budget` tokens with a full reply, the oldest turns are dropped
    until the kept ones fit half the budget (and leave room for the new turn), the oldest kept
    turn re-opening the conversation (BOS, system prompt, its user text or else the query). Returns the
    replies, the number of turns kept at each eviction and the final context length."""
    pixels = processor.preprocess_frames(np.stack([e for e in events if not isinstance(e, str)]))[None]
    tokens = model.get_perception_tokens(pixel_values=pixels)[0]
    embed = model.language_model.get_input_embeddings()
    eos = processor.eos_token_id
    turns, replies, query, pending, frame, kept_per_rebuild = [], [], None, None, 0, []
    for event in events:
        if isinstance(event, str):
            query, pending = event, event if pending is None else f"{pending}\n{event}"
            continue
        video = tokens[frame : frame + 1]
        frame += 1

        def render(kept, user, first_is_new):
            parts = []
            for j, (u, v, r) in enumerate(kept):
                ids = processor.encode_turn_prefix(u if j > 0 else (u or query), 1, first=j == 0)
                parts += [model.merge_video_tokens(torch.tensor([ids]), v), embed(torch.tensor([r]))]
            ids = processor.encode_turn_prefix(user, 1, first=first_is_new)
            return parts, model.merge_video_tokens(torch.tensor([ids]), video)

        user = pending if turns else (pending or query)
        parts, prefix = render(turns, user, not turns)
        length = sum(p.shape[1] for p in parts)
        need = prefix.shape[1] + max_new + 1
        if length + need > budget:
            kept, total = [], 0
            for u, v, r in reversed(turns):
                size = len(processor.encode_turn_prefix(u, 1, first=False)) + len(r)
                opening = len(processor.encode_turn_prefix(u or query, 1, first=True)) - len(processor.encode_turn_prefix(u, 1, first=False))
                if total + size + opening > min(budget // 2, budget - need):
                    break
                kept.insert(0, (u, v, r))
                total += size
            turns = kept
            kept_per_rebuild.append(len(kept))
            user = user if turns else (user or query)
            parts, prefix = render(turns, user, not turns)
        context = torch.cat(parts + [prefix], dim=1)
        generated = []
        while True:
            next_id = int(model.language_model(inputs_embeds=context).logits[0, -1].argmax())
            if next_id == eos or len(generated) >= max_new:
                break
            generated.append(next_id)
            context = torch.cat([context, embed(torch.tensor([[next_id]]))], dim=1)
        turns.append((user, video, generated + [eos]))
        replies.append(processor.decode(generated))
        pending = None
        length = context.shape[1] + 1  # with the closing EOS
    return replies, kept_per_rebuild, length


@pytest.mark.parametrize(
    "scenario",
    ["queries mid-stream, eviction", "a query before the first reply, short replies", "an LLM with a sliding window",
     "eviction keeping several turns"],
)
def test_streamed_dialogue_equals_the_rendered_conversation(tiny_tokenizer, scenario):
    """Replies, user texts across turns, mid-stream queries and context eviction, against the
    processor's rendering run without a cache (the gate fires on every frame)."""
    frames = random_frames(9, seed=19)
    # One frame per turn (the gate fires on every frame): the query rule counts a full turn memory.
    overrides, max_new = dict(max_context_tokens=150, max_reply_tokens=3, max_turn_frames=1), None
    events = [frames[0], frames[1], "Now say when it turns red.", "And when it stops.", frames[2], frames[3], frames[4],
              "Count the shapes.", *frames[5:]]
    if scenario.startswith("a query before"):
        events = ["Also say when it turns red.", *frames[:4], "Count the shapes.", *frames[4:]]
        max_new = 1
    if scenario.startswith("an LLM with"):
        overrides = dict(max_context_tokens=400, max_reply_tokens=3, text_config={"sliding_window": 24})
    if scenario.startswith("eviction keeping"):  # half the budget holds the opening and a few turns
        frames = random_frames(24, seed=29)  # evictions at frames 12 and 22, with no query pending
        events = [*frames[:5], "Now say when it turns red.", *frames[5:9], "Count the shapes.", *frames[9:]]
        overrides = dict(max_context_tokens=240, max_reply_tokens=3, max_turn_frames=1)
    model, processor = peaked(make_tiny(tiny_tokenizer, **overrides))
    session = StreamingSession(model, processor, query=QUERY, threshold=0.0, max_new_tokens=max_new)
    replies = play(session, events)
    assert all(reply is not None and reply.frame_index == t and reply.time == t / 2 for t, reply in enumerate(replies))
    streamed = [reply.text for reply in replies]
    assert session.stats.replies == len(frames) == session.stats.frames and session.llm_length <= overrides["max_context_tokens"]
    with torch.no_grad():
        expected, kept, length = reference_dialogue(model, processor, frames, [QUERY, *events], max_new=max_new or 3,
                                                        budget=overrides["max_context_tokens"])
    assert streamed == expected
    assert session.stats.llm_rebuilds == len(kept) and session.llm_length == length
    if scenario.startswith("queries"):
        assert len(kept) >= 2
    if scenario.startswith("eviction keeping"):
        assert len(kept) == 2 and min(kept) >= 2, kept  # the context was rebuilt from several kept turns


def test_eviction_at_every_budget_near_the_boundaries(tiny_tokenizer):
    """A sweep of context budgets, so that some turn fills the budget exactly and some kept turn
    fits its bound exactly: replies, evictions and the context length equal the reference's at
    every budget (an off-by-one in either bound changes one of them)."""
    model, processor = peaked(make_tiny(tiny_tokenizer, max_reply_tokens=3, max_turn_frames=1))
    frames = random_frames(8, seed=31)
    events = [*frames[:3], "Now say when it turns red.", *frames[3:]]
    evicting = 0
    for budget in [*range(118, 168, 3), 184, 185]:  # 184 and 185: a kept turn fills its bound exactly
        model.config.max_context_tokens = processor.config.max_context_tokens = budget
        session = StreamingSession(model, processor, query=QUERY, threshold=0.0)
        streamed = [reply.text for reply in play(session, events)]
        with torch.no_grad():
            expected, kept, length = reference_dialogue(model, processor, frames, [QUERY, *events], max_new=3, budget=budget)
        assert (streamed, session.stats.llm_rebuilds, session.llm_length) == (expected, len(kept), length), budget
        evicting += bool(kept)
    assert evicting >= 5  # most budgets evict


def test_a_turn_longer_than_half_the_budget_keeps_room_for_itself(tiny_tokenizer):
    """A long query joins: its turn needs more than half the budget, so the kept turns must fit
    what is left of the budget after it (not half the budget), and the context stays within it."""
    model, processor = peaked(make_tiny(tiny_tokenizer, max_reply_tokens=3, max_turn_frames=1, max_context_tokens=200))
    follow = lambda text: len(processor.encode_turn_prefix(text, 1, first=False))  # noqa: E731
    long_query = "red"
    while follow(long_query + " red") + 3 + 1 <= 120:  # more than half of 200
        long_query += " red"
    frames = random_frames(6, seed=47)
    # The turn after "Count them." can re-open the conversation with its own short text.
    events = [*frames[:3], "Count them.", frames[3], long_query, *frames[4:]]
    session = StreamingSession(model, processor, query=QUERY, threshold=0.0)
    streamed = [reply.text for reply in play(session, events)]
    with torch.no_grad():
        expected, kept, length = reference_dialogue(model, processor, frames, [QUERY, *events], max_new=3, budget=200)
    assert streamed == expected and session.stats.llm_rebuilds == len(kept) >= 1 and session.llm_length == length <= 200


def test_session_settings_are_checked_by_value():
    from streammind.streaming import SessionInputError, check_max_new_tokens, check_threshold

    for good in (0, 0.0, 0.5, 1, 1.0):
        assert check_threshold(good) == float(good) and isinstance(check_threshold(good), float)
    for bad in (True, False, "0.5", None, float("nan"), float("inf"), -0.01, 1.01, 2):
        with pytest.raises(SessionInputError, match="threshold must be a finite number in \\[0, 1\\]"):
            check_threshold(bad)
    assert check_max_new_tokens(1) == 1 and check_max_new_tokens(7) == 7
    for bad in (True, 0, -1, 1.0, "3", None):
        with pytest.raises(SessionInputError, match="max_new_tokens must be an integer >= 1"):
            check_max_new_tokens(bad)


def test_session_push_clip_keeps_its_stats_across_calls(tiny_tokenizer):
    """Two push_clip calls: frames, probabilities, times, replies (with their probabilities, the
    session's reply cap and frame indices counted across calls), the last probability and the
    rebuild count; push_clip_chunks with the engine's chunk size by default and on_reply."""
    from streammind.streaming import push_clip_chunks

    model, processor = peaked(make_tiny(tiny_tokenizer, max_reply_tokens=4))
    frames = random_frames(6, seed=37)
    probe = StreamingSession(model, processor, query=QUERY, threshold=1.0)
    stream(probe, frames)
    threshold = float(np.quantile(probe.stats.probs, 0.5))
    one = StreamingSession(model, processor, query=QUERY, threshold=threshold, max_new_tokens=1)
    expected = [(r.frame_index, r.time, r.text, r.prob) for r in stream(one, frames)]
    assert expected and all(len(t.reply_ids) <= 2 for t in one.turns)  # one token at most, then EOS
    session = StreamingSession(model, processor, query=QUERY, threshold=threshold, max_new_tokens=1)
    times = [i / 2 for i in range(6)]
    replies = session.push_clip(frames[:4], times[:4]) + session.push_clip(frames[4:], times[4:])
    assert [(r.frame_index, r.time, r.text, r.prob) for r in replies] == [(i, t, x, pytest.approx(p, abs=1e-5)) for i, t, x, p in expected]
    assert session.stats.frames == 6 and session.stats.times == times and session.stats.replies == len(expected)
    np.testing.assert_allclose(session.stats.probs, one.stats.probs, atol=1e-5)
    assert session.last_prob == pytest.approx(one.stats.probs[-1], abs=1e-5) and session.stats.llm_rebuilds == 0
    chunked, seen = StreamingSession(model, processor, query=QUERY, threshold=threshold, max_new_tokens=1), []
    got = push_clip_chunks(chunked, list(zip(times, frames)), on_reply=seen.append)
    assert [(r.frame_index, r.text) for r in got] == [(i, x) for i, _, x, _ in expected] and seen == got


def test_queries_over_the_budget_are_refused_on_reset_and_when_joined(tiny_tokenizer):
    """A query is checked on reset with the session's reply cap and the engine's prompt room,
    and a joining query together with the ones still waiting; a refused one changes nothing."""
    from streammind.streaming import SessionInputError

    model, processor = make_tiny(tiny_tokenizer, max_context_tokens=120, max_turn_frames=1)
    session = StreamingSession(model, processor, query=QUERY, threshold=1.0, max_new_tokens=2)
    ids = lambda text: len(processor.encode_turn_prefix(text, processor.placeholders_for(1), first=True))  # noqa: E731
    text = "red"
    while ids(text + " red") + 2 + 1 <= 120:  # the longest query of reds whose first turn and reply fit
        text += " red"
    assert ids(text) + 3 <= 120 < ids(text + " red") + 3
    session.reset(query=text)  # fits
    assert session.query == text
    with pytest.raises(SessionInputError, match="the query is too long"):
        session.reset(query=text + " red")
    assert session.query == text
    small = StreamingSession(model, processor, query=QUERY, threshold=1.0, max_new_tokens=2)
    half = " ".join(text.split()[: len(text.split()) // 2 + 1])
    small.add_query(half)  # fits alone
    with pytest.raises(SessionInputError, match="the query is too long"):
        small.add_query(half)  # with the waiting one, it does not
    assert small.pending_user == f"{QUERY}\n{half}"
    # The prompt room counts too: the engine's, not the default 512.
    room = len(processor.encode_gate_prompt(QUERY)) + 2
    tight = StreamingSession(model, processor, query=QUERY, threshold=1.0, max_new_tokens=2, engine=Engine(model, processor, max_prompt_tokens=room))
    with pytest.raises(SessionInputError, match="too long for the gate"):
        tight.reset(query="red " * 30)
    with pytest.raises(SessionInputError, match="too long for the gate"):
        tight.add_query("red " * 30)


def test_the_query_rule_at_its_exact_bounds(tiny_tokenizer):
    """check_query: the first turn with a full turn memory, the reply cap and EOS may fill the LLM
    budget exactly, and the gate prompt its room exactly; one token more is refused, with the
    query's own token count in the message. A session checks its first query against its
    engine's room (512 tokens without one) and keeps the model, config and engine it was given."""
    from streammind.streaming import SessionInputError, check_query

    model, processor = make_tiny(tiny_tokenizer, max_turn_frames=2)
    query = "Say when the red square reaches the corner."
    need = len(processor.encode_turn_prefix(query, processor.placeholders_for(2), first=True)) + 3 + 1
    n_query = len(processor.tokenizer.encode(query, add_special_tokens=False))
    processor.config.max_context_tokens = need
    check_query(processor, query, 3)
    processor.config.max_context_tokens = need - 1
    with pytest.raises(SessionInputError, match=f"the query is too long: {n_query} tokens, .* needs {need} of the LLM's {need - 1}"):
        check_query(processor, query, 3)
    processor.config.max_context_tokens = 8192
    room = len(processor.encode_gate_prompt(query))
    check_query(processor, query, 3, max_prompt_tokens=room)
    with pytest.raises(SessionInputError, match=f"its prompt is {room} tokens, the room for it {room - 1}"):
        check_query(processor, query, 3, max_prompt_tokens=room - 1)
    engine = Engine(model, processor, max_prompt_tokens=room)
    session = StreamingSession(model, processor, query=query, engine=engine)
    assert session.engine is engine and session.model is model and session.config is model.config
    with pytest.raises(SessionInputError, match="too long for the gate"):
        StreamingSession(model, processor, query=query + " Now.", engine=Engine(model, processor, max_prompt_tokens=room))
    with pytest.raises(ValueError, match="another model"):
        StreamingSession(make_tiny(tiny_tokenizer)[0], processor, engine=engine)
    # Without an engine the room is 512: a gate prompt of 513 tokens is refused.
    words = ["red"]
    while len(processor.encode_gate_prompt(" ".join(words))) < 513:
        words.append("red")
    assert len(processor.encode_gate_prompt(" ".join(words))) == 513
    with pytest.raises(SessionInputError, match="its prompt is 513 tokens, the room for it 512"):
        StreamingSession(model, processor, query=" ".join(words))
    with pytest.raises(SessionInputError, match="its prompt is 513 tokens, the room for it 512"):
        check_query(processor, " ".join(words), 3)  # the default room
    assert StreamingSession(model, processor, query=" ".join(words[:-1])).query == " ".join(words[:-1])


def test_timestamps_are_recorded_for_pushed_features(tiny):
    model, processor = tiny
    session = StreamingSession(model, processor, query=QUERY, threshold=1.0)
    session.push_features(torch.randn(1, model.config.vision_dim), 0.25)
    session.push(random_frames(1, seed=41)[0], 0.75)
    assert session.stats.times == [0.25, 0.75] and len(session.stats.probs) == 2


def test_close_gives_the_slot_back(tiny):
    model, processor = tiny
    engine = Engine(model, processor, max_streams=1)
    session = StreamingSession(model, processor, query=QUERY, engine=engine)
    with pytest.raises(RuntimeError, match="all 1 stream slots are in use"):
        engine.open_stream(QUERY)
    session.close()
    assert engine.open_stream(QUERY) == session.slot


def test_a_query_after_a_reply_is_checked_alone(tiny_tokenizer):
    """After a reply no query waits: a query that fills the budget exactly is accepted (not
    checked with anything in front of it)."""
    model, processor = peaked(make_tiny(tiny_tokenizer, max_context_tokens=120, max_turn_frames=1, max_reply_tokens=2))
    session = StreamingSession(model, processor, query=QUERY, threshold=0.0, max_new_tokens=2)
    assert session.push(random_frames(1, seed=43)[0], 0.0) is not None and session.pending_user is None
    ids = lambda text: len(processor.encode_turn_prefix(text, processor.placeholders_for(1), first=True))  # noqa: E731
    text = "red"
    while ids(text + " red") + 3 <= 120:
        text += " red"
    assert ids(text) + 3 <= 120 < ids(f"None\n{text}") + 3
    session.add_query(text)
    assert session.pending_user == text


def test_reset_takes_a_new_query_and_the_config_threshold(tiny_tokenizer):
    model, processor = peaked(make_tiny(tiny_tokenizer, gate_threshold=0.0, max_reply_tokens=2))
    frames = random_frames(3, seed=23)
    session = StreamingSession(model, processor, query=QUERY)  # the config's threshold: fires on every frame
    assert session.threshold == 0.0 and session.last_prob == 0.0
    for i, frame in enumerate(frames):
        assert session.push(frame, i / 2) is not None
    assert session.last_prob == session.stats.probs[-1] > 0.0
    session.reset(query="Count the shapes.")
    assert session.query == "Count the shapes." and session.last_prob == 0.0
    again = [session.push(frame, i / 2).text for i, frame in enumerate(frames)]
    with torch.no_grad():
        expected, _, _ = reference_dialogue(model, processor, frames, ["Count the shapes.", *frames], max_new=2, budget=8192)
    assert again == expected
    session.reset()
    assert session.query == QUERY  # back to the session's own query


def test_a_bf16_model_streams_fp32_features(tiny_tokenizer):
    model, processor = make_tiny(tiny_tokenizer)
    model = model.to(torch.bfloat16)
    session = StreamingSession(model, processor, query=QUERY, threshold=1.0)
    state = session.engine.perception_state
    assert state.conv_state.dtype == torch.bfloat16 and state.ssm_state.dtype == torch.float32
    for i in range(3):
        assert session.push_features(torch.randn(1, model.config.vision_dim), i / 2) is None
    assert all(0.0 < p < 1.0 for p in session.stats.probs)
