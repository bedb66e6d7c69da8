"""The Cognition Gate: per-frame "respond or stay silent", from perception tokens and the query.

Notation: B batch, T frames, L prompt tokens, D width (= the LLM's), C = 2 classes
(0 = silent, 1 = respond).

The gate is a small decoder-only transformer of the Mistral architecture (4 layers at 7B
width in the paper, so LLM layers can initialise it) with a 2-way head on every position.

Query mode (default): a gate *segment* is the prompt (BOS, system prompt, user query)
followed by one perception token per frame, attended causally; the decision for frame t is
the head's output at t's position. A segment starts at the beginning of the stream, after
each response (the turn's cache is reset to the prompt), and every `window` frames within a
long turn (bounded cost; the EPFE's recurrent state still carries the longer history).
Training runs all segments of a batch in parallel as padded sequences; streaming steps
through a segment with a static KV cache in the inference engine (streammind/engine.py),
which gives the same logits (tested).

Per-frame mode (the released code's variant A, for ablation): every frame is its own
segment with no prompt, so the gate is a deep per-token classifier.

Reference: SPEC §3 (Cognition Gate), reference/original-code.md §1.4.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import MistralModel, PreTrainedConfig

SILENT, RESPOND = 0, 1


def segment_starts(valid: torch.Tensor, respond: torch.Tensor, window: int, per_frame: bool) -> torch.Tensor:
    """Mark the frames that open a new gate segment.

    Args:
        valid: [T] bool, real (non-padding) frames (a prefix).
        respond: [T] bool, frames after which the gate's turn is reset (responses).
        window: the most frames in one segment.
        per_frame: every frame is its own segment.
    Returns:
        [T] bool.
    """
    T = valid.shape[0]
    if per_frame:
        return valid.clone()
    starts = torch.zeros(T, dtype=torch.bool)
    run = 0
    for t in range(int(valid.sum())):
        if t == 0 or respond[t - 1] or run == window:
            starts[t] = True
            run = 0
        run += 1
    return starts


@dataclass
class GateSegment:
    """One parallel gate sequence: sample b's prompt, then frames [start, end)."""

    batch_index: int
    start: int
    end: int


class CognitionGate(nn.Module):
    """Mistral decoder + a 2-way head.

    Args:
        config: a Mistral config (its width must equal the perception tokens').
        window: the most frames per segment (see module docstring).
        per_frame: the released code's per-frame variant.
    """

    def __init__(self, config: PreTrainedConfig, window: int = 600, per_frame: bool = False):
        super().__init__()
        self.decoder = MistralModel(config)
        self.head = nn.Linear(config.hidden_size, 2)
        self.window = window
        self.per_frame = per_frame

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decoder.embed_tokens(ids)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """[B, L, D] embeddings -> [B, L, 2] logits (causal)."""
        h = self.decoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False).last_hidden_state
        return self.head(h)

    # ---- parallel (training) --------------------------------------------------------------

    def frame_logits(self, tokens: torch.Tensor, frame_mask: torch.Tensor, starts: torch.Tensor, prompts: list[torch.Tensor]) -> torch.Tensor:
        """Per-frame logits for a padded batch, all segments at once.

        Args:
            tokens: [B, T, D] perception tokens.
            frame_mask: [B, T] bool, real frames.
            starts: [B, T] bool, segment starts (`segment_starts`).
            prompts: B LongTensors [L_b] of gate prompt ids (empty in per-frame mode).
        Returns:
            [B, T, 2] logits (zeros on padding frames).
        """
        B, T, D = tokens.shape
        segments = []
        for b in range(B):
            n = int(frame_mask[b].sum())
            idx = torch.nonzero(starts[b, :n]).flatten().tolist() + [n]
            segments += [GateSegment(b, s, e) for s, e in zip(idx[:-1], idx[1:])]
        out = tokens.new_zeros(B, T, 2)
        if not segments:
            return out
        prompt_embeds = [self.embed(p.to(tokens.device)) if p.numel() else tokens.new_zeros(0, D) for p in prompts]
        max_prompt = max(prompt_embeds[s.batch_index].shape[0] for s in segments)
        max_frames = max(s.end - s.start for s in segments)
        # Layout per segment: [left pad][prompt][frames][right pad]; positions count real tokens only.
        length = max_prompt + max_frames
        embeds = tokens.new_zeros(len(segments), length, D)
        mask = torch.zeros(len(segments), length, dtype=torch.long, device=tokens.device)
        for i, s in enumerate(segments):
            p = prompt_embeds[s.batch_index]
            off = max_prompt - p.shape[0]
            embeds[i, off:max_prompt] = p
            embeds[i, max_prompt : max_prompt + s.end - s.start] = tokens[s.batch_index, s.start : s.end]
            mask[i, off : max_prompt + s.end - s.start] = 1
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self(embeds, attention_mask=mask, position_ids=position_ids)  # [N, length, 2]
        for i, s in enumerate(segments):
            out[s.batch_index, s.start : s.end] = logits[i, max_prompt : max_prompt + s.end - s.start]
        return out


def gate_loss(logits: torch.Tensor, labels: torch.Tensor, class_weights: list[float], kind: str = "ce", gamma: float = 2.0) -> torch.Tensor:
    """Class-weighted cross-entropy (or focal loss) over per-frame labels.

    Args:
        logits: [B, T, 2]; labels: [B, T] in {0, 1, -100 (ignored)}.
        class_weights: (silent, respond); the loss is the weighted mean, as PyTorch's CE.
        kind: "ce" or "focal" (FL = -w_y (1 - p_y)^gamma log p_y, same weighted mean).
    """
    logits = logits.float().reshape(-1, 2)
    labels = labels.reshape(-1)
    weight = torch.tensor(class_weights, device=logits.device, dtype=torch.float32)
    if kind == "ce":
        return F.cross_entropy(logits, labels, weight=weight, ignore_index=-100)
    if kind != "focal":
        raise ValueError(f"unknown gate loss {kind!r}; use 'ce' or 'focal'")
    keep = labels != -100
    logits, labels = logits[keep], labels[keep]
    logp = F.log_softmax(logits, dim=-1).gather(1, labels[:, None]).squeeze(1)
    w = weight[labels]
    return -(w * (1 - logp.exp()).pow(gamma) * logp).sum() / w.sum().clamp(min=1e-12)


__all__ = ["CognitionGate", "gate_loss", "segment_starts", "SILENT", "RESPOND"]
