"""Fixed-shape decoder calls over a static KV cache: the building block of the inference engine.

Notation: S cache slots (independent sequences), b rows of one call, L new tokens per row,
T cache length (positions), H / Hkv query / key-value heads, hd head width, D model width.

`StaticKV` holds one key and one value buffer per layer, `[S, Hkv, T, hd]`, allocated once.
A position's entry lives at its own index (entry j of a slot is the token at RoPE position
j), so a cache never moves or grows: a sequence is shortened or restarted by overwriting
from an earlier position, and what lies past a row's current position is masked out.
`decoder_forward` runs the layers of a Hugging Face decoder (`model.layers`,
`model.rotary_emb`, `model.norm`: Mistral, Llama, Qwen2 and their kin) on new tokens of b
rows, each row at its own positions, writing their keys and values into the rows' slots
and attending causally to everything before them there. Every shape in a call is fixed by
(b, L, T), and nothing in it synchronises with the host, so a call can be captured once as
a CUDA graph and replayed with new inputs written into the same buffers.

The decoder layers are Hugging Face's own modules, called one by one: their attention asks
the cache for keys and values through `update(key, value, layer_idx)`, which `StaticKV`
answers by writing the new entries at the rows' positions and returning the rows' whole
buffers, and the causal (and, for sliding-window models, windowed) mask is built here from
the positions. Nothing of the layers is re-implemented, so the engine computes what the
model computes (tests/test_engine.py compares both with the plain forward).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

# Attention kernels for `decoder_forward`. Several new tokens per row: the fused kernels, without
# cuDNN's (it builds a plan for every new sequence length: tens of ms at each new length). One
# new token per row (a frame through the gate, a decoded token): the math kernel, two small
# batched matmuls over the cache; the fused kernels parallelise over queries and have one per
# row here (measured on an H200 with the 7B LLM: 0.36 ms per layer for the masked efficient
# kernel over 8192 positions, which made decoding 18 ms per token).
_MANY_QUERIES = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
_ONE_QUERY = [SDPBackend.MATH]


def supports_static_decoding(decoder: nn.Module) -> bool:
    """Whether `decoder` (a base model such as `MistralModel`) has the layout `decoder_forward` drives."""
    return all(hasattr(decoder, name) for name in ("layers", "rotary_emb", "norm")) and hasattr(decoder.config, "num_key_value_heads")


class StaticKV:
    """Key/value buffers of `slots` sequences of at most `length` positions, for every layer.

    Args:
        config: the decoder's config (layers, key-value heads, head width).
        slots: S, independent sequences (e.g. one per stream).
        length: T, positions per slot.
        device, dtype: where and in what precision the entries live (the model's).

    Before a call, `bind(rows, positions)` says which slot each of the call's rows uses
    (`rows` [b] long, or None for slots 0..b-1 in order, which needs no gather) and the
    positions of its new tokens (`positions` [b, L] long).
    """

    def __init__(self, config, slots: int, length: int, device: torch.device | str, dtype: torch.dtype):
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        shape = (config.num_hidden_layers, slots, config.num_key_value_heads, length, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)  # [layers, S, Hkv, T, hd]
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.sliding_window = getattr(config, "sliding_window", None)
        self.rows: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None

    @property
    def slots(self) -> int:
        return self.keys.shape[1]

    @property
    def length(self) -> int:
        return self.keys.shape[3]

    @property
    def nbytes_per_slot(self) -> int:
        return 2 * self.keys[:, 0].numel() * self.keys.element_size()

    def bind(self, rows: torch.Tensor | None, positions: torch.Tensor) -> None:
        self.rows, self.positions = rows, positions

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new entries key / value [b, Hkv, L, hd]; return the rows' buffers [b, Hkv, T, hd]."""
        b, heads, L, _ = key.shape
        keys, values = self.keys[layer_idx], self.values[layer_idx]  # [S, Hkv, T, hd]
        slot = self.rows if self.rows is not None else torch.arange(b, device=key.device)
        index = (
            slot.view(b, 1, 1).expand(b, heads, L),
            torch.arange(heads, device=key.device).view(1, heads, 1).expand(b, heads, L),
            self.positions.view(b, 1, L).expand(b, heads, L),
        )
        keys.index_put_(index, key)
        values.index_put_(index, value)
        if self.rows is None:
            return keys[:b], values[:b]  # views: no copy
        return keys.index_select(0, self.rows), values.index_select(0, self.rows)

    def copy_slot(self, source: int, target: int, upto: int | None = None) -> None:
        """Copy slot `source`'s entries (its first `upto` positions) to slot `target`."""
        n = self.length if upto is None else upto
        self.keys[:, target, :, :n].copy_(self.keys[:, source, :, :n])
        self.values[:, target, :, :n].copy_(self.values[:, source, :, :n])

    def reorder(self, order: torch.Tensor, upto: int) -> None:
        """Slots 0..k-1 take the first `upto` entries of slots `order` [k] (beam search)."""
        k = order.shape[0]
        self.keys[:, :k, :, :upto] = self.keys[:, order, :, :upto]
        self.values[:, :k, :, :upto] = self.values[:, order, :, :upto]


def attention_mask(positions: torch.Tensor, length: int, sliding_window: int | None = None) -> torch.Tensor:
    """Which cache entries each new token sees: [b, L] positions -> [b, 1, L, T] bool.

    Causal over the slot (entries at or before the token's own position); with a sliding
    window, also only the newest `sliding_window` of them (Mistral's rule).
    """
    index = torch.arange(length, device=positions.device).view(1, 1, 1, length)
    pos = positions[:, None, :, None]  # [b, 1, L, 1]
    mask = index <= pos
    if sliding_window is not None:
        mask &= index > pos - sliding_window
    return mask


def decoder_forward(decoder: nn.Module, embeds: torch.Tensor, positions: torch.Tensor, cache: StaticKV, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Run a decoder's layers on new tokens of b rows against their slots in `cache`.

    Args:
        decoder: a base decoder (`layers`, `rotary_emb`, `norm`), e.g. `MistralModel`.
        embeds: [b, L, D] input embeddings of the new tokens.
        positions: [b, L] long, each token's position (= its index in the slot).
        cache: the rows' `StaticKV`; the new entries are written into it.
        rows: [b] long slot of each row, or None for slots 0..b-1.
    Returns:
        [b, L, D] final hidden states (after the decoder's norm).
    """
    cache.bind(rows, positions)
    mask = attention_mask(positions, cache.length, cache.sliding_window)
    cos_sin = decoder.rotary_emb(embeds, positions)
    h = embeds
    with sdpa_kernel(_ONE_QUERY if embeds.shape[1] == 1 and embeds.is_cuda else _MANY_QUERIES):
        for layer in decoder.layers:
            h = layer(h, attention_mask=mask, position_ids=positions, cache=cache, position_embeddings=cos_sin)
    return decoder.norm(h)


__all__ = ["StaticKV", "attention_mask", "decoder_forward", "supports_static_decoding"]
