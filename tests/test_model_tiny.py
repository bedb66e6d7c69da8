"""The tiny model end to end: batched forward + backward, insertion checks, LLM parity, gate.

Run: .venv/bin/python -m pytest tests/test_model_tiny.py -q
"""

from __future__ import annotations

import pytest
import torch

from streammind.datasets.collator import StreamCollator
from streammind.processing import ChatTurn
from tests.conftest import make_tiny


def make_example(processor, num_frames: int, replies: list[tuple[int, str]], query="Tell me when a shape appears.", seed=0):
    """A video of `num_frames` random frames whose turns end at the given frame indices."""
    g = torch.Generator().manual_seed(seed)
    size = processor.config.vision_config.image_size
    turns, ends, start = [], [], 0
    for i, (end, text) in enumerate(replies):
        turns.append(ChatTurn(processor.placeholders_for(end - start), user=query if i == 0 else None, reply=text))
        ends.append(end)
        start = end
    ids, labels = processor.encode_conversation(turns)
    gate = [0] * num_frames
    for end, _ in replies:
        gate[end - 1] = 1
    return dict(
        pixel_values=torch.randn(num_frames, 3, size, size, generator=g),
        input_ids=ids,
        labels=labels,
        turn_ends=ends,
        gate_labels=gate,
        gate_prompt_ids=processor.encode_gate_prompt(query),
    )


def batch_of_two(processor):
    collate = StreamCollator(processor.pad_token_id)
    a = make_example(processor, 9, [(4, "A red circle appeared."), (9, "The blue square disappeared.")], seed=1)
    b = make_example(processor, 5, [(3, "The square turned green.")], query="Tell me when something changes colour.", seed=2)
    return collate([a, b]), (a, b)


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
    collate = StreamCollator(processor.pad_token_id)
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
    model, processor = make_tiny(tiny_tokenizer, gate_loss="focal", gate_mode="per_frame")
    batch, _ = batch_of_two(processor)
    out = model(**batch)
    assert torch.isfinite(out.gate_loss)
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
