"""The tiny model end to end: batched forward + backward, insertion checks, LLM parity, gate.

Run: .venv/bin/python -m pytest tests/model/test_model_tiny.py -q
"""

from __future__ import annotations

import pytest
import torch

from streammind.gate import GateLossConfig, gate_loss
from streammind.training.collator import StreamCollator
from tests.helpers import batch_of_two, make_example, make_tiny


def test_forward_backward_batch_of_two_videos_of_different_lengths(tiny):
    model, processor = tiny
    model.train()
    batch, _ = batch_of_two(processor)
    assert batch["pixel_values"].shape[:2] == (2, 9) and batch["frame_mask"].sum(1).tolist() == [9, 5]
    out = model(**batch)
    assert out.lm_loss is not None and out.gate_loss is not None
    assert torch.isfinite(out.loss) and torch.allclose(out.loss, out.lm_loss + out.gate_loss)
    assert out.gate_logits.shape == (2, 9, 2)
    out.loss.backward()
    for name in ("perception", "gate", "language_model"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(name) and p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.vision.parameters())


def test_padding_does_not_change_a_video_s_losses(tiny):
    """A video's gate logits are the same alone and next to a longer one (real batching)."""
    model, processor = tiny
    batch, (a, b) = batch_of_two(processor)
    collate = StreamCollator.from_processor(processor)
    with torch.no_grad():
        both = model(**batch).gate_logits
        alone = model(**collate([b])).gate_logits
    assert torch.allclose(both[1, :5], alone[0], atol=1e-5)


def test_placeholder_count_mismatch_names_both_numbers(tiny):
    model, processor = tiny
    batch, _ = batch_of_two(processor)
    ids = batch["input_ids"].clone()
    first = (ids[0] == processor.video_token_id).nonzero()[0, 0]
    ids[0, first] = processor.pad_token_id  # one placeholder too few
    n_slots = int((ids == processor.video_token_id).sum())
    with pytest.raises(ValueError, match=rf"{n_slots} video placeholder tokens but {n_slots + 1} perception tokens"):
        model(**{**batch, "input_ids": ids})


def test_tokens_land_on_the_placeholders(tiny):
    model, processor = tiny
    batch, _ = batch_of_two(processor)
    video = torch.randn(int((batch["input_ids"] == processor.video_token_id).sum()), model.config.hidden_size)
    embeds = model.merge_video_tokens(batch["input_ids"], video)
    mask = batch["input_ids"] == processor.video_token_id
    assert torch.equal(embeds[mask], video)
    text = model.language_model.get_input_embeddings()(batch["input_ids"])
    assert torch.equal(embeds[~mask], text[~mask])


def test_without_video_the_llm_is_untouched(tiny):
    """Our wrapper around the LLM gives the bare LLM's logits on text-only input."""
    model, processor = tiny
    ids = torch.tensor([processor.encode_turn_prefix("hello", 0, first=True)])
    with torch.no_grad():
        ours = model.language_model(inputs_embeds=model.merge_video_tokens(ids, torch.zeros(0, model.config.hidden_size))).logits
        bare = model.language_model(input_ids=ids).logits
    assert torch.equal(ours, bare)


def test_frame_features_path_equals_pixel_path(tiny):
    model, processor = tiny
    batch, _ = batch_of_two(processor)
    with torch.no_grad():
        feats = model.get_frame_features(batch["pixel_values"])
        a = model(**batch)
        b = model(**{**{k: v for k, v in batch.items() if k != "pixel_values"}, "frame_features": feats})
    assert torch.equal(a.gate_logits, b.gate_logits) and torch.equal(a.logits, b.logits)


@pytest.mark.parametrize("pooling", ["mean", "max", "cls"])
def test_vision_runs_only_the_layers_it_needs(tiny_tokenizer, pooling):
    model, _ = make_tiny(tiny_tokenizer, frame_pooling=pooling)
    clip = model.vision.clip
    size = clip.config.image_size
    pixels = torch.randn(3, 3, size, size)
    with torch.no_grad():
        hidden = clip(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]  # the full HF forward
        ref = {"mean": hidden[:, 1:].mean(1), "max": hidden[:, 1:].amax(1), "cls": hidden[:, 0]}[pooling]
        ours = model.vision(pixels)
    assert model.vision.num_layers_to_run == clip.config.num_hidden_layers - 1
    assert torch.allclose(ours, ref, atol=1e-6)


def test_focal_loss_and_per_frame_gate(tiny_tokenizer):
    model, processor = make_tiny(tiny_tokenizer, gate_mode="per_frame")
    batch, _ = batch_of_two(processor)
    out = model(**batch, gate_loss_config=GateLossConfig(kind="focal"))
    assert torch.isfinite(out.gate_loss)
    assert torch.allclose(out.gate_loss, gate_loss(out.gate_logits, batch["gate_labels"], GateLossConfig(kind="focal")))
    assert not torch.allclose(out.gate_loss, model(**batch).gate_loss)  # the default is the weighted cross-entropy
    # Per-frame mode: a frame's logit depends only on its own token.
    tokens = out.perception_tokens.detach()
    with torch.no_grad():
        single = model.gate(tokens[0, 3:4][None])[0, 0]
    assert torch.allclose(out.gate_logits[0, 3], single, atol=1e-5)


def test_gate_init_from_llm_copies_layers_and_checks_width(tiny_tokenizer):
    from streammind.builder import init_gate_from_llm

    model, _ = make_tiny(tiny_tokenizer)
    init_gate_from_llm(model)
    llm_layer = model.language_model.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(model.gate.decoder.layers[0].self_attn.q_proj.weight, llm_layer)
    assert torch.equal(model.gate.decoder.embed_tokens.weight, model.language_model.model.embed_tokens.weight)
    narrow, _ = make_tiny(tiny_tokenizer, gate_config={"model_type": "mistral", "hidden_size": 128, "intermediate_size": 96,
                                                       "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
                                                       "vocab_size": 600, "sliding_window": None})
    with pytest.raises(ValueError, match="layers"):
        init_gate_from_llm(narrow)


def test_long_turns_keep_their_newest_frames(tiny_tokenizer):
    """A turn longer than max_turn_frames reaches the LLM through its newest frames only,
    as the streaming memory drops the oldest; shorter turns keep all of theirs."""
    model, processor = make_tiny(tiny_tokenizer, max_turn_frames=3, sampling="all")
    D = model.config.hidden_size
    tokens = torch.arange(2 * 10 * D, dtype=torch.float32).view(2, 10, D)
    turn_ends = torch.tensor([[2, 8, 10], [6, -1, -1]])
    out = model.select_turn_tokens(tokens, turn_ends)
    # Video 0: [0, 2) whole; [2, 8) -> its newest three, 5..7; [8, 10) whole. Video 1: [0, 6) -> 3..5.
    assert torch.equal(out[0], tokens[0, [0, 1, 5, 6, 7, 8, 9]])
    assert torch.equal(out[1], tokens[1, [3, 4, 5]])
    assert [processor.placeholders_for(n) for n in (2, 6, 2)] == [2, 3, 2]


def test_long_turns_are_sampled_after_the_memory_bound(tiny_tokenizer):
    """Sampling picks among the kept frames: an old frame identical to the newest, but beyond
    the bound, is not chosen; the count is that of the bounded turn."""
    model, processor = make_tiny(tiny_tokenizer, max_turn_frames=4, sampling="similarity", sampling_ratio=0.5)
    D = model.config.hidden_size
    g = torch.Generator().manual_seed(0)
    turn = torch.randn(7, D, generator=g)
    turn[0] = turn[6]  # outside the newest four
    turn[4] = turn[6] + 0.01 * torch.randn(D, generator=g)  # inside, nearly the newest
    out = model.select_turn_tokens(turn[None], torch.tensor([[7]]))[0]
    assert processor.placeholders_for(7) == 2 == out.shape[0]
    assert torch.equal(out, turn[[4, 6]])
    # No turns: nothing for the LLM.
    assert model.select_turn_tokens(turn[None], torch.tensor([[-1]]))[0].shape == (0, D)


def test_forward_gate_outputs_follow_the_batch(tiny_tokenizer):
    """forward's gate logits are those of `gate_logits` with the batch's labels (teacher
    forcing), its prompt mask and frame mask; no frame mask means every frame is real; the
    loss uses the given kind and focusing parameter."""
    model, processor = make_tiny(tiny_tokenizer, gate_window=100)
    collate = StreamCollator.from_processor(processor)
    a = make_example(processor, 9, [(4, "A red circle appeared."), (9, "The blue square disappeared.")], seed=1)
    b = make_example(processor, 5, [(3, "The square turned green.")], query="Tell me when something changes colour, and also when "
                     "a shape moves to another corner of the frame.", seed=2)
    batch = collate([a, b])
    assert batch["gate_prompt_mask"].sum(1).tolist()[0] < batch["gate_prompt_mask"].shape[1]  # the first prompt is padded
    focal = GateLossConfig(kind="focal", focal_gamma=3.0)
    with torch.no_grad():
        out = model(**batch, gate_loss_config=focal)
        tokens = out.perception_tokens
        expected = model.gate_logits(tokens, batch["frame_mask"], batch["gate_labels"], batch["gate_prompt_ids"], batch["gate_prompt_mask"])
        # By hand: the prompts without their padding, and the turn reset after each respond label.
        prompts = [ids[mask.bool()] for ids, mask in zip(batch["gate_prompt_ids"], batch["gate_prompt_mask"])]
        unpadded = model.gate_logits(tokens[1:, :5], torch.ones(1, 5, dtype=torch.bool), batch["gate_labels"][1:, :5], prompts[1][None])
    assert torch.equal(out.gate_logits, expected)
    assert torch.allclose(out.gate_logits[1, :5], unpadded[0], atol=1e-5)
    labels = batch["gate_labels"]
    assert out.gate_loss.item() == pytest.approx(gate_loss(expected, labels, focal).item(), rel=1e-6)
    assert out.gate_loss.item() != pytest.approx(gate_loss(expected, labels, GateLossConfig(kind="focal")).item(), rel=1e-3)
    # Without labels the gate sees one turn; teacher forcing changes the logits after a respond frame.
    with torch.no_grad():
        free = model.gate_logits(tokens, batch["frame_mask"], None, batch["gate_prompt_ids"], batch["gate_prompt_mask"])
    first_respond = int((labels[0] == 1).nonzero()[0, 0])
    assert torch.allclose(free[0, : first_respond + 1], out.gate_logits[0, : first_respond + 1], atol=1e-5)
    assert not torch.allclose(free[0, first_respond + 1 :], out.gate_logits[0, first_respond + 1 :], atol=1e-3)
    single = {k: v for k, v in collate([a]).items() if k != "frame_mask"}
    with torch.no_grad():
        assert torch.equal(model(**single).gate_logits, model(**single, frame_mask=torch.ones(1, 9, dtype=torch.bool)).gate_logits)


def test_vision_gradients_only_when_the_tower_trains(tiny):
    model, processor = tiny
    pixels = torch.randn(1, 2, 3, 32, 32)
    for p in model.vision.parameters():
        p.requires_grad_(False)
    assert not model.get_frame_features(pixels).requires_grad
    for p in model.vision.parameters():
        p.requires_grad_(True)
    assert model.get_frame_features(pixels).requires_grad
    with torch.no_grad():
        assert not model.get_frame_features(pixels).requires_grad


def test_a_bf16_model_takes_fp32_features_and_tokens(tiny):
    model, processor = tiny
    model = model.to(torch.bfloat16)
    features = torch.randn(1, 3, model.config.vision_dim)
    tokens = model.get_perception_tokens(frame_features=features)
    assert tokens.dtype == torch.bfloat16
    ids = torch.tensor([processor.encode_turn_prefix("hi", 2, first=True)])
    video = torch.randn(2, model.config.hidden_size)
    embeds = model.merge_video_tokens(ids, video)
    assert embeds.dtype == torch.bfloat16 and torch.equal(embeds[ids == processor.video_token_id], video.to(torch.bfloat16))


def test_fresh_weights_follow_the_initialisation_scheme(tiny):
    """Our own Linear layers ~ N(0, initializer_range) with zero bias, LayerNorms at (1, 0), and
    the mixer's Mamba scheme (A = -(1..N), D = 1) kept over the generic one."""
    model, _ = tiny
    std = model.config.text_config.initializer_range
    for linear in (model.perception.pre_proj, model.perception.post_proj, model.gate.head):
        w = linear.weight.detach()
        assert abs(float(w.mean())) < 0.2 * std and 0.9 * std < float(w.std()) < 1.1 * std, linear
        assert torch.equal(linear.bias.detach(), torch.zeros_like(linear.bias))
    assert torch.equal(model.perception.norm_f.weight.detach(), torch.ones_like(model.perception.norm_f.weight))
    mixer = model.perception.block.mixer
    N = mixer.d_state
    assert torch.allclose(-torch.exp(mixer.A_log.detach()), -torch.arange(1, N + 1, dtype=torch.float32).expand(mixer.d_inner, N))
    assert torch.equal(mixer.D.detach(), torch.ones(mixer.d_inner))


def test_the_config_sizes_the_perception_encoder(tiny_tokenizer):
    model, _ = make_tiny(tiny_tokenizer, perception_expand=3, perception_d_state=5, perception_d_conv=3)
    mixer = model.perception.block.mixer
    D = model.config.hidden_size
    assert (mixer.d_inner, mixer.d_state, mixer.d_conv) == (3 * D, 5, 3)


def test_gate_labels_need_the_collator_s_layout(tiny):
    model, processor = tiny
    batch, _ = batch_of_two(processor)
    del batch["gate_segment_sample"], batch["gate_segment_frames"]
    with pytest.raises(ValueError, match="StreamCollator"):
        model(**batch)


def test_perception_temporal_none_maps_each_frame_alone(tiny_tokenizer):
    """`perception_temporal="none"` (the ablation without the Mamba block) reaches the
    perception encoder: there is no block, and each token is
    post_proj(LeakyReLU(norm_f(LeakyReLU(pre_proj(x))))) of its own frame's features, by hand."""
    model, _ = make_tiny(tiny_tokenizer, perception_temporal="none")
    enc = model.perception
    assert enc.block is None and enc.d_inner == 0
    g = torch.Generator().manual_seed(3)
    features = torch.randn(2, 4, model.config.vision_dim, generator=g)
    with torch.no_grad():
        tokens = model.get_perception_tokens(frame_features=features)
        F, slope = torch.nn.functional, enc.leaky_relu_slope
        h = F.leaky_relu(features @ enc.pre_proj.weight.T + enc.pre_proj.bias, slope)
        h = F.layer_norm(h, (model.config.hidden_size,), enc.norm_f.weight, enc.norm_f.bias, enc.norm_f.eps)
        expected = F.leaky_relu(h, slope) @ enc.post_proj.weight.T + enc.post_proj.bias
        last_alone = model.get_perception_tokens(frame_features=features[:, 3:])
    assert torch.allclose(tokens, expected, atol=1e-5)
    assert torch.allclose(tokens[:, 3:], last_alone, atol=1e-6)  # no state carried from earlier frames


def test_per_frame_gate_ignores_any_prompt(tiny_tokenizer):
    """In per-frame mode the gate sees one perception token and nothing else, even when a batch
    carries prompt ids: both `forward` (with the collator's layout) and `gate_logits` give, at
    every real frame, the logits of the gate run on that frame's token alone, and zeros on
    padding frames. (In query mode the same prompt does change the logits.)"""
    from streammind.gate import gate_layout

    model, processor = make_tiny(tiny_tokenizer, gate_mode="per_frame")
    assert model.config.gate_context_window == 1 and processor.encode_gate_prompt("anything") == []
    tok = processor.tokenizer
    prompts = [[processor.bos_token_id] + tok.encode(q, add_special_tokens=False)
               for q in ("Tell me when a shape appears.", "Tell me when something changes colour.")]
    L = max(map(len, prompts))
    prompt_ids = torch.tensor([p + [processor.pad_token_id] * (L - len(p)) for p in prompts])
    prompt_mask = torch.tensor([[1] * len(p) + [0] * (L - len(p)) for p in prompts])
    frame_mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    gate_labels = torch.tensor([[0, 1, 0, 0, 1], [0, 0, 1, -100, -100]])
    layout = gate_layout(frame_mask, gate_labels == 1, model.config.gate_context_window)
    assert layout.frames.shape == (8, 1)  # one segment per real frame
    g = torch.Generator().manual_seed(4)
    features = torch.randn(2, 5, model.config.vision_dim, generator=g)
    with torch.no_grad():
        out = model(frame_features=features, frame_mask=frame_mask, gate_labels=gate_labels, gate_prompt_ids=prompt_ids,
                    gate_prompt_mask=prompt_mask, gate_segment_sample=layout.sample, gate_segment_frames=layout.frames)
        tokens = out.perception_tokens
        alone = torch.zeros(2, 5, 2)
        for b, t in frame_mask.nonzero().tolist():
            alone[b, t] = model.gate(tokens[b, t][None, None])[0, 0]
        evaluated = model.gate_logits(tokens, frame_mask, None, prompt_ids, prompt_mask)
        with_prompt = model.gate.frame_logits(tokens, layout, prompt_ids, prompt_mask)
    assert torch.allclose(out.gate_logits, alone, atol=1e-5)
    assert torch.allclose(evaluated, alone, atol=1e-5)
    assert not torch.allclose(with_prompt[frame_mask], alone[frame_mask], atol=1e-3)
