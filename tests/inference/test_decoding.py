"""The static-cache decoder by value: the attention mask written out, both attention paths against
a plain softmax reference, the cache's writes, copies and reorders entry by entry, and
`decoder_forward` against the model's own forward (rows in any slots, chunks of one and several
tokens, a span, a sliding window).

Run: .venv/bin/python -m pytest tests/inference/test_decoding.py -q
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaModel, MistralConfig, MistralModel, Qwen2Config, Qwen2Model

from streammind.decoding import StaticKV, attention, attention_mask, decoder_forward, supports_static_decoding

# 4 query heads over 2 key-value heads (G = 2), head width 8, 3 layers.
SIZES = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, vocab_size=16)


def tiny_decoder(sliding_window=None, dtype=torch.float64):
    torch.manual_seed(0)
    config = MistralConfig(**SIZES, sliding_window=sliding_window, attn_implementation="eager")
    return MistralModel(config).to(dtype).eval()


def test_attention_mask_written_out():
    positions = torch.tensor([[0, 2], [3, 4]])
    mask = attention_mask(positions, 6)
    assert mask.shape == (2, 1, 2, 6) and mask.dtype == torch.bool
    assert mask[:, 0].int().tolist() == [
        [[1, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]],
        [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]],
    ]
    # A window of 2: the token itself and the one before it.
    assert attention_mask(positions, 6, sliding_window=2)[:, 0].int().tolist() == [
        [[1, 0, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0]],
        [[0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 0]],
    ]


def reference_attention(q, keys, values, mask, scale):
    """Per head h over key-value head h // G, in float64: softmax(q k^T * scale, masked) v."""
    b, H, L, hd = q.shape
    G = H // keys.shape[1]
    out = torch.zeros(b, H, L, hd, dtype=torch.float64)
    for h in range(H):
        k, v = keys[:, h // G].double(), values[:, h // G].double()  # [b, T, hd]
        scores = (q[:, h].double() @ k.transpose(-1, -2)) * scale  # [b, L, T]
        scores = scores.masked_fill(~mask[:, 0], float("-inf"))
        out[:, h] = scores.softmax(-1) @ v
    return out


@pytest.mark.parametrize("L", [1, 3])
@pytest.mark.parametrize("heads", [(4, 2), (2, 2)])
def test_attention_equals_a_plain_softmax(L, heads):
    H, Hkv = heads
    g = torch.Generator().manual_seed(L + H)
    b, T, hd = 2, 7, 8
    q = torch.randn(b, H, L, hd, generator=g)
    keys, values = torch.randn(b, Hkv, T, hd, generator=g), torch.randn(b, Hkv, T, hd, generator=g)
    positions = torch.tensor([[4 - L + 1 + i for i in range(L)], [6 - L + 1 + i for i in range(L)]])
    mask = attention_mask(positions, T, sliding_window=4)
    out = attention(q, keys, values, mask, scale=0.3)
    assert out.shape == (b, H, L, hd) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), reference_attention(q, keys, values, mask, 0.3), atol=1e-5, rtol=1e-5)


def test_one_query_softmaxes_in_fp32_from_bf16():
    g = torch.Generator().manual_seed(5)
    q = torch.randn(1, 4, 1, 8, generator=g).bfloat16()
    keys, values = torch.randn(1, 2, 5, 8, generator=g).bfloat16(), torch.randn(1, 2, 5, 8, generator=g).bfloat16()
    mask = attention_mask(torch.tensor([[4]]), 5)
    out = attention(q, keys, values, mask, scale=2.0)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), reference_attention(q, keys, values, mask, 2.0), atol=2e-2, rtol=2e-2)


def test_static_kv_sizes_and_empty_buffers():
    config = MistralConfig(**SIZES)
    cache = StaticKV(config, slots=3, length=6, device="cpu", dtype=torch.bfloat16)
    assert (cache.slots, cache.length) == (3, 6)
    assert cache.keys.shape == cache.values.shape == (3, 3, 2, 6, 8)  # [layers, S, Hkv, T, hd]
    assert cache.keys.dtype == torch.bfloat16 and not cache.keys.any() and not cache.values.any()
    assert cache.nbytes_per_slot == 2 * 3 * 2 * 6 * 8 * 2
    assert cache.sliding_window == 4096  # MistralConfig's default
    # An explicit head width wins over hidden_size // heads.
    assert StaticKV(MistralConfig(**SIZES, head_dim=6), 1, 4, "cpu", torch.float32).keys.shape == (3, 1, 2, 4, 6)
    assert StaticKV(MistralConfig(**SIZES, sliding_window=3), 1, 4, "cpu", torch.float32).sliding_window == 3
    assert StaticKV(MistralConfig(**SIZES, sliding_window=None), 1, 4, "cpu", torch.float32).sliding_window is None
    assert StaticKV(LlamaConfig(**SIZES), 1, 4, "cpu", torch.float32).sliding_window is None  # Llama has no such field


@pytest.mark.parametrize("rows", ["tensor", "slice", "none"])
def test_static_kv_update_writes_each_row_at_its_positions(rows):
    cache = StaticKV(MistralConfig(**SIZES), slots=3, length=6, device="cpu", dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    key, value = torch.randn(2, 2, 2, 8, generator=g), torch.randn(2, 2, 2, 8, generator=g)  # [b, Hkv, L, hd]
    slots = {"tensor": [2, 0], "slice": [1, 2], "none": [0, 1]}[rows]
    bound = {"tensor": torch.tensor([2, 0]), "slice": slice(1, 3), "none": None}[rows]
    positions = torch.tensor([[1, 2], [3, 4]])
    cache.bind(bound, positions, span=5)
    keys, values = cache.update(key, value, 1)
    expected_k, expected_v = torch.zeros(3, 3, 2, 6, 8), torch.zeros(3, 3, 2, 6, 8)
    expected_k[1, slots[0], :, 1:3], expected_v[1, slots[0], :, 1:3] = key[0], value[0]
    expected_k[1, slots[1], :, 3:5], expected_v[1, slots[1], :, 3:5] = key[1], value[1]
    assert torch.equal(cache.keys, expected_k) and torch.equal(cache.values, expected_v)
    # The rows' buffers up to the span, in the rows' order.
    assert keys.shape == values.shape == (2, 2, 5, 8)
    assert torch.equal(keys, expected_k[1, slots, :, :5]) and torch.equal(values, expected_v[1, slots, :, :5])


def test_static_kv_copy_and_reorder():
    cache = StaticKV(MistralConfig(**SIZES), slots=3, length=4, device="cpu", dtype=torch.float32)
    cache.keys.copy_(torch.arange(cache.keys.numel(), dtype=torch.float32).view_as(cache.keys))
    cache.values.copy_(-cache.keys)
    before = cache.keys.clone()
    cache.copy_slot(0, 2, upto=3)
    assert torch.equal(cache.keys[:, 2, :, :3], before[:, 0, :, :3]) and torch.equal(cache.keys[:, 2, :, 3:], before[:, 2, :, 3:])
    assert torch.equal(cache.values, -cache.keys)
    cache.copy_slot(1, 0)  # the whole slot by default
    assert torch.equal(cache.keys[:, 0], before[:, 1])
    now = cache.keys.clone()
    cache.reorder(torch.tensor([2, 0]), upto=2)
    assert torch.equal(cache.keys[:, 0, :, :2], now[:, 2, :, :2]) and torch.equal(cache.keys[:, 1, :, :2], now[:, 0, :, :2])
    assert torch.equal(cache.keys[:, :2, :, 2:], now[:, :2, :, 2:]) and torch.equal(cache.keys[:, 2], now[:, 2])
    assert torch.equal(cache.values, -cache.keys)


@pytest.mark.parametrize("sliding_window", [None, 3])
def test_decoder_forward_equals_the_model_s_forward(sliding_window):
    """Two rows in slots 2 and 0 of a 3-slot cache, fed in chunks of 5, 1 and 3 tokens: each
    chunk's hidden states equal the model's forward over the whole sequence at those positions
    (in float64; transformers makes the rotary tables in float32, hence 1e-6)."""
    decoder = tiny_decoder(sliding_window)
    g = torch.Generator().manual_seed(2)
    embeds = torch.randn(2, 9, SIZES["hidden_size"], generator=g, dtype=torch.float64)
    with torch.no_grad():
        full = decoder(inputs_embeds=embeds).last_hidden_state  # [2, 9, D]
        cache = StaticKV(decoder.config, slots=3, length=12, device="cpu", dtype=torch.float64)
        rows = torch.tensor([2, 0])
        for start, end in [(0, 5), (5, 6), (6, 9)]:
            positions = torch.arange(start, end).expand(2, -1)
            out = decoder_forward(decoder, embeds[:, start:end], positions, cache, rows=rows, span=10)
            torch.testing.assert_close(out, full[:, start:end], atol=1e-6, rtol=1e-6)
    assert not cache.keys[:, 1].any()  # the unused slot
    assert not cache.keys[:, [0, 2], :, 9:].any()  # nothing past the rows' positions


def test_decoder_forward_rows_at_different_positions_and_default_slots():
    """Row 0 continues a 4-token sequence while row 1 starts one: each equals its own forward."""
    decoder = tiny_decoder()
    g = torch.Generator().manual_seed(3)
    a = torch.randn(1, 6, SIZES["hidden_size"], generator=g, dtype=torch.float64)
    b = torch.randn(1, 2, SIZES["hidden_size"], generator=g, dtype=torch.float64)
    with torch.no_grad():
        cache = StaticKV(decoder.config, slots=2, length=8, device="cpu", dtype=torch.float64)
        decoder_forward(decoder, a[:, :4], torch.arange(4)[None], cache, rows=slice(0, 1))
        out = decoder_forward(decoder, torch.cat([a[:, 4:], b]), torch.tensor([[4, 5], [0, 1]]), cache)  # slots 0 and 1
        torch.testing.assert_close(out[0], decoder(inputs_embeds=a).last_hidden_state[0, 4:], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(out[1], decoder(inputs_embeds=b).last_hidden_state[0], atol=1e-6, rtol=1e-6)


def test_which_decoders_are_computed_exactly():
    torch.manual_seed(0)
    small = dict(SIZES, num_hidden_layers=1)
    assert supports_static_decoding(MistralModel(MistralConfig(**small)))
    assert supports_static_decoding(LlamaModel(LlamaConfig(**small)))
    assert not supports_static_decoding(Qwen2Model(Qwen2Config(**small)))  # same parts, another type: not claimed
    bare = nn.Module()
    bare.config, bare.layers, bare.norm = MistralConfig(**small), nn.ModuleList(), nn.Identity()
    assert not supports_static_decoding(bare)  # no rotary_emb
    bare.rotary_emb = nn.Identity()
    assert supports_static_decoding(bare)
