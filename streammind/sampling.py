"""Which perception tokens since the last response reach the LLM when the gate fires.

Notation: n tokens in the current turn, K the turn memory (`max_turn_frames`), D width,
k = ceil(p * n) kept (always >= 1).

The turn memory holds the newest K tokens of a turn (`memory_frames`: the one definition of
that bound, used by the processor's placeholder count, the model's parallel forward and the
inference engine's ring buffer); a strategy then picks k of them:

- "similarity" (the paper's Similarity Sampling): keep the k tokens with the highest cosine
  similarity to the newest token, returned in time order. The newest token has similarity
  1 with itself and is always kept (ties broken towards later frames).
- "uniform": k evenly spaced tokens ending at the newest one.
- "all": every token.

The released code named its linear subsampling `exponential_sampling` and used
`max(1, int(p * n))`; we use ceil so that a turn of n tokens never keeps fewer than p * n.
The count depends only on n, so the processor can lay out the right number of
placeholders before the model has computed any token (`num_selected`).
Reference: the paper's Similarity Sampling (Ding et al., ICCV 2025, the framework figure); docs/design.md §2 and §7.4.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def memory_frames(n: int, max_turn_frames: int) -> int:
    """How many of a turn's n frames the turn memory holds: the newest `max_turn_frames` (oldest dropped first)."""
    return min(n, max_turn_frames)


def num_selected(n: int, strategy: str, ratio: float) -> int:
    """How many of n turn tokens a strategy keeps."""
    if n <= 0:
        return 0
    if strategy == "all":
        return n
    if strategy in ("similarity", "uniform"):
        return min(n, max(1, math.ceil(ratio * n - 1e-9)))
    raise ValueError(f"unknown sampling strategy {strategy!r}; use 'similarity', 'uniform' or 'all'")


def select_indices(tokens: torch.Tensor, strategy: str, ratio: float) -> torch.Tensor:
    """Indices (ascending) of the tokens to keep.

    Args:
        tokens: [n, D] perception tokens of one turn, oldest first.
    Returns:
        LongTensor [k] with k = num_selected(n, strategy, ratio).
    """
    n = tokens.shape[0]
    k = num_selected(n, strategy, ratio)
    device = tokens.device
    if k == n:
        return torch.arange(n, device=device)
    if strategy == "uniform":
        # Evenly spaced, anchored at the newest frame (linspace from the end, so k = 1 keeps it).
        return torch.linspace(n - 1, 0, k, device=device).round().long().flip(0)
    sims = F.cosine_similarity(tokens.float(), tokens[-1:].float(), dim=-1)  # [n]
    # A tiny ramp breaks ties towards later frames, so the newest (sim = 1) always wins.
    sims = sims + torch.arange(n, device=device, dtype=sims.dtype) * 1e-6
    return sims.topk(k).indices.sort().values


def select_tokens(tokens: torch.Tensor, strategy: str, ratio: float) -> torch.Tensor:
    """[n, D] -> [k, D], the kept tokens in time order."""
    return tokens[select_indices(tokens, strategy, ratio)]


__all__ = ["memory_frames", "num_selected", "select_indices", "select_tokens"]
