"""Fixed-shape decoder calls over a static KV cache: the building block of the inference engine.

Notation: S cache slots (independent sequences), b rows of one call, L new tokens per row,
T cache length (positions), H / Hkv query / key-value heads (H = Hkv * G), hd head width,
D model width.

`StaticKV` holds one key and one value buffer per layer, `[S, Hkv, T, hd]`, allocated once.
A position's entry lives at its own index (entry j of a slot is the token at RoPE position
j), so a cache never moves or grows: a sequence is shortened or restarted by overwriting
from an earlier position, and what lies past a row's current position is masked out.
`decoder_forward` runs the layers of a Hugging Face Mistral or Llama decoder
(`model.layers`, `model.rotary_emb`, `model.norm`) on new tokens of b rows, each row at its
own positions, writing their keys and values into the rows' slots and attending causally to
everything before them there (and, for sliding-window models, only the window). Every shape
in a call is fixed by (b, L, T), and nothing in it synchronises with the host, so a call can
be captured once as a CUDA graph and replayed with new inputs written into the same buffers.

Each layer is run through its own sub-modules in the layer's order (norm, q/k/v projections,
rotary embedding, attention, o projection, residual, norm, MLP, residual), so the weights and
the arithmetic are the model's; only the attention is computed here, because one query per
row (a frame through the gate, a decoded token) wants other kernels than a prefill: there the
key-value groups are packed as G query rows of one (B, Hkv) matrix product over the cache,
whereas the fused SDPA kernels parallelise over queries and, masked and with one query, use
a handful of thread blocks for the whole cache (0.36 ms per layer over 8,192 positions on an
H200, measured: decoding the 7B LLM ran at 18 ms per token). Several queries per row use
SDPA (its fused kernels; the key-value heads repeated as transformers does with a mask).
tests/inference/test_engine.py compares all of it with the model's plain forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

# Kernels for several queries per row: the fused ones, without cuDNN's (it builds a plan for
# every new sequence length, a stall of tens of ms at each new prefill length).
_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]

# Decoders whose layers are exactly norm -> attention -> residual -> norm -> MLP -> residual
# with q/k/v/o projections and rotary embeddings applied as below.
STATIC_MODEL_TYPES = ("mistral", "llama")


def supports_static_decoding(decoder: nn.Module) -> bool:
    """Whether `decoder` (a base model such as `MistralModel`) is one `decoder_forward` computes exactly."""
    return decoder.config.model_type in STATIC_MODEL_TYPES and all(hasattr(decoder, n) for n in ("layers", "rotary_emb", "norm"))


class StaticKV:
    """Key/value buffers of `slots` sequences of at most `length` positions, for every layer.

    Args:
        config: the decoder's config (layers, key-value heads, head width).
        slots: S, independent sequences (e.g. one per stream).
        length: T, positions per slot.
        device, dtype: where and in what precision the entries live (the model's).

    Before a call, `bind(rows, positions)` says which slot each of the call's rows uses
    (`rows` [b] long; or a `slice` of consecutive slots, or None for slots 0..b-1, which need no
    gather) and the positions of its new tokens (`positions` [b, L] long).
    """

    def __init__(self, config, slots: int, length: int, device: torch.device | str, dtype: torch.dtype):
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        shape = (config.num_hidden_layers, slots, config.num_key_value_heads, length, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)  # [layers, S, Hkv, T, hd]
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.sliding_window = getattr(config, "sliding_window", None)
        self.rows: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None
        self.span: int | None = None
        self._aranges: dict[tuple[int, torch.device], torch.Tensor] = {}

    @property
    def slots(self) -> int:
        return self.keys.shape[1]

    @property
    def length(self) -> int:
        return self.keys.shape[3]

    @property
    def nbytes_per_slot(self) -> int:
        return 2 * self.keys[:, 0].numel() * self.keys.element_size()

    def bind(self, rows: torch.Tensor | slice | None, positions: torch.Tensor, span: int | None = None) -> None:
        self.rows, self.positions, self.span = rows, positions, span

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new entries key / value [b, Hkv, L, hd]; return the rows' buffers [b, Hkv, span, hd]."""
        b, heads, L, _ = key.shape
        keys, values = self.keys[layer_idx, :, :, : self.span], self.values[layer_idx, :, :, : self.span]  # [S, Hkv, span, hd]
        gather = isinstance(self.rows, torch.Tensor)
        if not gather:  # a contiguous range of slots: views, nothing gathered or copied
            keys, values = keys[self.rows or slice(0, b)], values[self.rows or slice(0, b)]  # [b, Hkv, span, hd]
        index = (
            (self.rows if gather else self._arange(b, key.device)).view(b, 1, 1).expand(b, heads, L),
            self._arange(heads, key.device).view(1, heads, 1).expand(b, heads, L),
            self.positions.view(b, 1, L).expand(b, heads, L),
        )
        keys.index_put_(index, key)
        values.index_put_(index, value)
        if not gather:
            return keys, values
        return keys.index_select(0, self.rows), values.index_select(0, self.rows)

    def _arange(self, n: int, device: torch.device) -> torch.Tensor:
        """0..n-1 on `device`, made once (a per-call arange is an extra op on every layer)."""
        key = (n, device)
        if key not in self._aranges:
            self._aranges[key] = torch.arange(n, device=device)
        return self._aranges[key]

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


def attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """Masked attention of new tokens over their rows' caches.

    Args:
        q: [b, H, L, hd] queries; keys, values: [b, Hkv, T, hd]; mask: [b, 1, L, T] bool.
    Returns:
        [b, H, L, hd].
    """
    b, H, L, hd = q.shape
    Hkv = keys.shape[1]
    if L == 1:
        # Query head h reads key-value head h // G: the G heads of a group are the rows of one
        # matrix product with the group's keys. Scores are softmaxed in fp32.
        qg = (q * scale).view(b, Hkv, H // Hkv, hd)  # [b, Hkv, G, hd]
        scores = torch.matmul(qg, keys.transpose(-1, -2)).float()  # [b, Hkv, G, T]
        scores = scores.masked_fill(~mask, float("-inf"))  # mask [b, 1, 1, T] broadcasts over groups
        out = torch.matmul(torch.softmax(scores, dim=-1).to(values.dtype), values)  # [b, Hkv, G, hd]
        return out.view(b, H, 1, hd)
    if Hkv != H:
        keys = keys.repeat_interleave(H // Hkv, dim=1)  # [b, H, T, hd]
        values = values.repeat_interleave(H // Hkv, dim=1)
    with sdpa_kernel(_SDPA_BACKENDS):
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale)


def decoder_forward(
    decoder: nn.Module,
    embeds: torch.Tensor,
    positions: torch.Tensor,
    cache: StaticKV,
    rows: torch.Tensor | slice | None = None,
    span: int | None = None,
) -> torch.Tensor:
    """Run a decoder's layers on new tokens of b rows against their slots in `cache`.

    Args:
        decoder: a base decoder (`layers`, `rotary_emb`, `norm`), e.g. `MistralModel`.
        embeds: [b, L, D] input embeddings of the new tokens.
        positions: [b, L] long, each token's position (= its index in the slot).
        cache: the rows' `StaticKV`; the new entries are written into it.
        rows: [b] long slot of each row, a slice of consecutive slots, or None for slots 0..b-1.
        span: attend to (and keep positions within) the first `span` entries of each slot only
            (default: all T); short sequences in a long cache then cost what their length costs.
    Returns:
        [b, L, D] final hidden states (after the decoder's norm).
    """
    b, L, _ = embeds.shape
    span = cache.length if span is None else span
    cache.bind(rows, positions, span)
    mask = attention_mask(positions, span, cache.sliding_window)  # [b, 1, L, span]
    cos, sin = decoder.rotary_emb(embeds, positions)  # [b, L, hd] each
    h = embeds
    for index, layer in enumerate(decoder.layers):
        attn = layer.self_attn
        x = layer.input_layernorm(h)
        q = attn.q_proj(x).view(b, L, -1, attn.head_dim).transpose(1, 2)  # [b, H, L, hd]
        k = attn.k_proj(x).view(b, L, -1, attn.head_dim).transpose(1, 2)  # [b, Hkv, L, hd]
        v = attn.v_proj(x).view(b, L, -1, attn.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        keys, values = cache.update(k, v, index)  # [b, Hkv, T, hd]
        o = attention(q, keys, values, mask, attn.scaling)  # [b, H, L, hd]
        h = h + attn.o_proj(o.transpose(1, 2).reshape(b, L, -1))
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    return decoder.norm(h)


__all__ = ["STATIC_MODEL_TYPES", "StaticKV", "attention", "attention_mask", "decoder_forward", "supports_static_decoding"]
