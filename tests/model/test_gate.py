"""The Cognition Gate: the parallel layout and window rule (`gate_layout` against a
frame-by-frame reference, `turn_position`, the turn-memory bound, the loss settings) and its
behaviour by value: the loss as a hand-computed number, the decision rule at the threshold, and
the per-frame logits of a batch against one plain forward per gate segment.

Run: .venv/bin/python -m pytest tests/model/test_gate.py -q
"""

from __future__ import annotations

import math

import pytest
import torch

from streammind import StreamingSession
from streammind.gate import GateLossConfig, gate_layout, gate_loss, turn_position
from streammind.sampling import memory_frames
from tests.helpers import make_tiny


def reference_segments(length: int, respond: list[bool], window: int) -> list[list[int]]:
    """Segments of one row, frame by frame: a new one at t = 0, after a response, and after `window` frames."""
    segments, run = [], 0
    for t in range(length):
        if t == 0 or respond[t - 1] or run == window:
            segments.append([])
            run = 0
        segments[-1].append(t)
        run += 1
    return segments


@pytest.mark.parametrize("window", [1, 2, 3, 7])
def test_gate_layout_matches_the_frame_by_frame_rule(window):
    g = torch.Generator().manual_seed(window)
    B, T = 4, 17
    lengths = [17, 9, 1, 12]
    frame_mask = torch.arange(T)[None] < torch.tensor(lengths)[:, None]
    respond = torch.rand(B, T, generator=g) < 0.2
    layout = gate_layout(frame_mask, respond, window)
    expected = []
    for b, n in enumerate(lengths):
        expected += [(b, [b * T + t for t in seg]) for seg in reference_segments(n, respond[b].tolist(), window)]
    assert layout.sample.tolist() == [b for b, _ in expected]
    got = [[i for i in row if i >= 0] for row in layout.frames.tolist()]
    assert got == [frames for _, frames in expected]
    assert layout.frames.shape[1] == max(len(frames) for _, frames in expected)


def test_gate_layout_of_an_empty_batch():
    layout = gate_layout(torch.zeros(2, 3, dtype=torch.bool), torch.zeros(2, 3, dtype=torch.bool), 4)
    assert layout.sample.shape == (0,) and layout.frames.shape == (0, 0)


def test_turn_position_is_the_window_rule_on_ints_and_tensors():
    assert [turn_position(n, 4) for n in range(9)] == [0, 1, 2, 3, 0, 1, 2, 3, 0]
    assert turn_position(torch.tensor([0, 3, 4, 5]), 4).tolist() == [0, 3, 0, 1]
    assert turn_position(7, 1) == 0  # the per-frame gate


def test_memory_frames_keeps_the_newest():
    assert [memory_frames(n, 5) for n in (0, 3, 5, 9)] == [0, 3, 5, 5]


def test_gate_loss_config_checks_its_settings():
    assert GateLossConfig() == GateLossConfig(kind="ce", class_weights=(0.15, 0.85), focal_gamma=2.0)
    with pytest.raises(ValueError, match="unknown gate loss 'hinge'"):
        GateLossConfig(kind="hinge")
    with pytest.raises(ValueError, match="silent, respond"):
        GateLossConfig(class_weights=(1.0,))


# ---------------------------------------------------------------------------------- loss

# Three real frames and one ignored: logits (silent, respond) and labels.
LOGITS = [[2.0, 0.0], [0.0, 1.0], [1.0, -1.0], [5.0, -5.0]]
LABELS = [0, 1, 1, -100]
WEIGHTS = [0.25, 2.0]


def _loss(logits, labels, weights, kind, gamma=2.0):
    return gate_loss(logits, labels, GateLossConfig(kind=kind, class_weights=tuple(weights), focal_gamma=gamma))


def _log_p_true(logit_pair, label):
    z = [math.exp(v) for v in logit_pair]
    return math.log(z[label] / sum(z))


def _hand_loss(gamma: float | None) -> float:
    """sum_i w_{y_i} * focus_i * (-log p_{y_i}) / sum_i w_{y_i} over the labelled frames."""
    num = den = 0.0
    for pair, y in zip(LOGITS, LABELS):
        if y == -100:
            continue
        logp = _log_p_true(pair, y)
        focus = 1.0 if gamma is None else (1.0 - math.exp(logp)) ** gamma
        num += WEIGHTS[y] * focus * -logp
        den += WEIGHTS[y]
    return num / den


def test_cross_entropy_is_the_class_weighted_mean():
    logits, labels = torch.tensor([LOGITS]), torch.tensor([LABELS])
    loss = _loss(logits, labels, WEIGHTS, "ce")
    # Written out: 0.25 * log(1 + e^-2) + 2 * log(1 + e^-1) + 2 * log(1 + e^2), over 0.25 + 2 + 2.
    by_hand = (0.25 * math.log1p(math.exp(-2)) + 2 * math.log1p(math.exp(-1)) + 2 * math.log1p(math.exp(2))) / 4.25
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)
    assert loss.item() == pytest.approx(_hand_loss(None), rel=1e-6)
    # Weighting matters: equal weights give the plain mean, a different number.
    plain = _loss(logits, labels, [1.0, 1.0], "ce")
    assert plain.item() == pytest.approx(
        (math.log1p(math.exp(-2)) + math.log1p(math.exp(-1)) + math.log1p(math.exp(2))) / 3, rel=1e-6
    )


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0, 3.5])
def test_focal_loss_by_hand(gamma):
    logits, labels = torch.tensor([LOGITS]), torch.tensor([LABELS])
    loss = _loss(logits, labels, WEIGHTS, "focal", gamma)
    assert loss.item() == pytest.approx(_hand_loss(gamma), rel=1e-6)
    if gamma == 0.0:  # no focusing: the weighted cross-entropy
        assert loss.item() == pytest.approx(_loss(logits, labels, WEIGHTS, "ce").item(), rel=1e-6)


def test_loss_accepts_batches_and_low_precision_logits():
    logits = torch.tensor([LOGITS[:2], LOGITS[2:]], dtype=torch.bfloat16)
    labels = torch.tensor([LABELS[:2], LABELS[2:]])
    for kind in ("ce", "focal"):
        loss = _loss(logits, labels, WEIGHTS, kind)
        assert loss.dtype == torch.float32
        # The bf16 logits here are exact (small integers), so the value is the fp32 one.
        assert loss.item() == pytest.approx(_hand_loss(None if kind == "ce" else 2.0), rel=1e-6)
    with pytest.raises(ValueError, match="'hinge'"):
        _loss(logits, labels, WEIGHTS, "hinge")


def test_weights_summing_below_one_still_give_the_weighted_mean():
    """The default weights (0.15, 0.85) on silent frames only: the mean is not divided by 1."""
    logits, labels = torch.tensor([[[1.0, 0.0], [0.5, 0.5]]]), torch.tensor([[0, -100]])
    logp = _log_p_true([1.0, 0.0], 0)
    assert _loss(logits, labels, [0.15, 0.85], "ce").item() == pytest.approx(-logp, rel=1e-6)
    assert _loss(logits, labels, [0.15, 0.85], "focal", 2.0).item() == pytest.approx(-((1 - math.exp(logp)) ** 2) * logp, rel=1e-6)


def test_focal_loss_of_all_ignored_frames_is_zero_not_nan():
    logits = torch.zeros(1, 3, 2, requires_grad=True)
    loss = _loss(logits, torch.full((1, 3), -100), WEIGHTS, "focal")
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros(1, 3, 2))


# ---------------------------------------------------------------------- decision boundary


def test_respond_iff_probability_is_above_the_threshold(tiny):
    """A frame whose p(respond) equals the threshold stays silent; one ulp lower fires."""
    model, processor = tiny
    torch.manual_seed(0)
    features = torch.randn(3, 1, model.config.vision_dim)
    probe = StreamingSession(model, processor, query="Tell me when a shape appears.", threshold=1.0)
    for i, f in enumerate(features):
        assert probe.push_features(f, i / 2) is None
    p = probe.stats.probs[1]
    assert 0.0 < p < 1.0

    def first_reply(threshold):
        session = StreamingSession(model, processor, query="Tell me when a shape appears.", threshold=threshold, max_new_tokens=1)
        for i, f in enumerate(features[:2]):
            reply = session.push_features(f, i / 2)
            if reply is not None:
                return reply
        return None

    high = max(probe.stats.probs[0], p)  # nothing in the first two frames is above this
    assert first_reply(high) is None
    below = math.nextafter(high, 0.0)
    reply = first_reply(below)
    assert reply is not None and reply.prob == high and reply.frame_index == probe.stats.probs[:2].index(high)


# ------------------------------------------------------------------ logits of a gate batch


def _reference_logits(model, tokens, prompt_ids, segments):
    """Each segment [s, e) as its own unpadded sequence: embed(prompt) + tokens[s:e] -> gate."""
    out = torch.zeros(tokens.shape[0], 2)
    for s, e in segments:
        prompt = model.gate.embed(prompt_ids) if prompt_ids.numel() else tokens.new_zeros(0, tokens.shape[-1])
        seq = torch.cat([prompt, tokens[s:e]])[None]
        out[s:e] = model.gate(seq)[0, prompt.shape[0] :]
    return out


def _batch(model, processor, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    tokens = torch.randn(len(lengths), T, model.config.hidden_size, generator=g)
    mask = torch.arange(T)[None] < torch.tensor(lengths)[:, None]
    return tokens, mask


def test_gate_logits_are_one_plain_forward_per_segment(tiny_tokenizer):
    """Segments start at frame 0, after each frame labelled respond, and every `gate_window`
    frames; padding frames get zero logits; each video reads its own prompt."""
    model, processor = make_tiny(tiny_tokenizer, gate_window=3)
    # The second prompt is longer than the gate's width (128 tokens in the tiny preset).
    queries = ["Tell me when a shape appears.", "Say when it turns red. " * 30]
    prompts = [torch.tensor(processor.encode_gate_prompt(q)) for q in queries]
    tokens, mask = _batch(model, processor, [9, 5])
    labels = torch.full((2, 9), -100)
    labels[0, :9] = torch.tensor([0, 0, 1, 1, 0, 0, 0, 0, 0])
    labels[1, :5] = torch.tensor([1, 0, 0, 0, 0])
    width = max(len(p) for p in prompts)
    prompt_ids = torch.stack([torch.cat([p, torch.zeros(width - len(p), dtype=torch.long)]) for p in prompts])
    prompt_mask = torch.stack([torch.arange(width) < len(p) for p in prompts]).long()
    with torch.no_grad():
        logits = model.gate_logits(tokens, mask, labels, prompt_ids, prompt_mask)
        # Video 0: responds after frames 2 and 3, window 3 -> [0,3) [3,4) [4,7) [7,9).
        ref0 = _reference_logits(model, tokens[0], prompts[0], [(0, 3), (3, 4), (4, 7), (7, 9)])
        # Video 1: responds after frame 0 -> [0,1) [1,4) (window) [4,5); frames 5.. are padding.
        ref1 = _reference_logits(model, tokens[1, :5], prompts[1], [(0, 1), (1, 4), (4, 5)])
    assert logits.shape == (2, 9, 2) and len(prompts[1]) > model.config.hidden_size
    assert torch.allclose(logits[0], ref0, atol=1e-5)
    assert torch.allclose(logits[1, :5], ref1, atol=1e-5)
    assert torch.equal(logits[1, 5:], torch.zeros(4, 2))
    # The same batch through forward: the loss is the weighted CE of these logits.
    out_loss = gate_loss(logits, labels, GateLossConfig())
    assert out_loss.item() == pytest.approx(
        torch.nn.functional.cross_entropy(
            logits[labels != -100], labels[labels != -100], weight=torch.tensor(GateLossConfig().class_weights)
        ).item(),
        rel=1e-6,
    )


def test_gate_logits_respond_mask_overrides_labels_and_no_labels_means_one_turn(tiny_tokenizer):
    model, processor = make_tiny(tiny_tokenizer, gate_window=100)
    prompt = torch.tensor(processor.encode_gate_prompt("Tell me when a shape appears."))
    tokens, mask = _batch(model, processor, [6], seed=1)
    with torch.no_grad():
        silent = model.gate_logits(tokens, mask, None, prompt[None])
        fired = torch.tensor([[False, True, False, False, False, False]])
        after_1 = model.gate_logits(tokens, mask, torch.ones(1, 6, dtype=torch.long), prompt[None], respond=fired)
        ref_silent = _reference_logits(model, tokens[0], prompt, [(0, 6)])
        ref_fired = _reference_logits(model, tokens[0], prompt, [(0, 2), (2, 6)])
    assert torch.allclose(silent[0], ref_silent, atol=1e-5)
    assert torch.allclose(after_1[0], ref_fired, atol=1e-5)


def test_per_frame_gate_sees_only_its_own_token(tiny_tokenizer):
    model, processor = make_tiny(tiny_tokenizer, gate_mode="per_frame")
    tokens, mask = _batch(model, processor, [4, 2], seed=2)
    prompt = torch.tensor(processor.encode_gate_prompt("ignored in per-frame mode"))
    with torch.no_grad():
        logits = model.gate_logits(tokens, mask, None, torch.stack([prompt, prompt]))
        ref0 = _reference_logits(model, tokens[0], torch.zeros(0, dtype=torch.long), [(t, t + 1) for t in range(4)])
        ref1 = _reference_logits(model, tokens[1, :2], torch.zeros(0, dtype=torch.long), [(0, 1), (1, 2)])
    assert torch.allclose(logits[0], ref0, atol=1e-5)
    assert torch.allclose(logits[1, :2], ref1, atol=1e-5)
    assert torch.equal(logits[1, 2:], torch.zeros(2, 2))


def test_gate_window_defaults_and_the_per_frame_window(tiny_tokenizer):
    from streammind import StreamMindConfig

    defaults = StreamMindConfig()
    assert defaults.gate_window == defaults.gate_context_window == 600 and defaults.gate_mode != "per_frame"
    model, _ = make_tiny(tiny_tokenizer, gate_window=7)
    assert model.config.gate_context_window == 7
    model, _ = make_tiny(tiny_tokenizer, gate_mode="per_frame", gate_window=7)
    assert model.config.gate_context_window == 1


def test_frame_logits_of_no_segments_and_of_a_one_token_prompt(tiny):
    """No segments (every frame is padding): zero logits of the batch's shape. A one-token prompt
    is read like a longer one: the frames' logits are a plain forward after it."""
    model, _ = tiny
    gate = model.gate
    D = model.config.hidden_size
    tokens = torch.randn(2, 3, D, generator=torch.Generator().manual_seed(3))
    empty = gate_layout(torch.zeros(2, 3, dtype=torch.bool), torch.zeros(2, 3, dtype=torch.bool), 4)
    with torch.no_grad():
        none = gate.frame_logits(tokens, empty, torch.tensor([[5], [6]]))
    assert none.shape == (2, 3, 2) and not none.any()
    layout = gate_layout(torch.ones(1, 3, dtype=torch.bool), torch.zeros(1, 3, dtype=torch.bool), 4)
    with torch.no_grad():
        with_prompt = gate.frame_logits(tokens[:1], layout, torch.tensor([[5]]))
        without = gate.frame_logits(tokens[:1], layout, None)
        by_hand = gate(torch.cat([gate.embed(torch.tensor([[5]])), tokens[:1]], dim=1))[:, 1:]
    torch.testing.assert_close(with_prompt, by_hand, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(with_prompt, without, atol=1e-3)

