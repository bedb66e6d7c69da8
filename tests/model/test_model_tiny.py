"""The tiny model end to end: batched forward + backward, insertion checks, LLM parity, gate.

Run: .venv/bin/python -m pytest tests/model/test_model_tiny.py -q
"""

from __future__ import annotations

import pytest
import torch

from streammind.gate import GateLossConfig, gate_loss
from streammind.training.collator import StreamCollator
from tests.helpers import batch_of_two, make_tiny


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


def test_gate_labels_need_the_collator_s_layout(tiny):
    model, processor = tiny
    batch, _ = batch_of_two(processor)
    del batch["gate_segment_sample"], batch["gate_segment_frames"]
    with pytest.raises(ValueError, match="StreamCollator"):
        model(**batch)
