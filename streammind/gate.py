"""The Cognition Gate: per-frame "respond or stay silent", from perception tokens and the query.

Notation: B batch, T frames, L prompt tokens, D width (= the LLM's), C = 2 classes
(0 = silent, 1 = respond).

The gate is a small decoder-only transformer of the Mistral architecture (4 layers at 7B
width in the paper, so LLM layers can initialise it) with a 2-way head on every position.

Query mode (default): a gate *segment* is the prompt (BOS, system prompt, user query)
followed by one perception token per frame, attended causally; the decision for frame t is
the head's output at t's position. A segment starts at the beginning of the stream, after
each response (the turn's cache is reset to the prompt), and every `window` frames within a
long turn (bounded cost; the EPFE's recurrent state still carries the longer history). That
window rule has one definition, `turn_position`, used by the parallel layout and the engine.

Training runs all segments of a batch in parallel as padded sequences: the collator lays them
out once per batch (`gate_layout`: which frame sits at which position of which segment, as
index tensors) and `CognitionGate.frame_logits` only gathers, runs the decoder and scatters.
Streaming steps through a segment with a static KV cache in the inference engine
(streammind/engine.py), which gives the same logits (tests/inference/).

The loss (`gate_loss`, `GateLossConfig`: class-weighted cross-entropy or focal) is a training
setting, handed to the model's forward by the trainer, never saved with the model.

Per-frame mode (the released code's variant A, for ablation): every frame is its own
segment with no prompt, so the gate is a deep per-token classifier.

Reference: docs/design.md §2-3 and §7.3 (the original release's gate variants).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import MistralModel, PreTrainedConfig

SILENT, RESPOND = 0, 1


def turn_position(frames_in_turn, window: int):
    """Where a turn's next frame sits in the gate's context: the frames since the turn opened, mod `window`.

    The one definition of the window rule, used by the parallel layout (`gate_layout`) and the
    inference engine: a turn's context holds at most `window` frames after the prompt, and a
    full window restarts it (position 0, right after the prompt). Works on ints and tensors.
    In per-frame mode the window is 1 (`StreamMindConfig.gate_context_window`).
    """
    return frames_in_turn % window


@dataclass
class GateLayout:
    """Where each frame of a padded batch [B, T] sits in the gate's parallel segments.

    A segment is one gate sequence: a sample's prompt, then the frames of one turn context
    (module docstring). N segments, F = the longest segment's frame count.

    Args:
        sample: [N] long, the batch row of each segment.
        frames: [N, F] long, the flat index b * T + t of the frame at each position of the
            segment, -1 on padding.
    """

    sample: torch.Tensor
    frames: torch.Tensor

    def to(self, device: torch.device | str) -> GateLayout:
        return GateLayout(self.sample.to(device), self.frames.to(device))


def gate_layout(frame_mask: torch.Tensor, respond: torch.Tensor, window: int) -> GateLayout:
    """The gate segments of a padded batch: a turn opens at frame 0 and after every response,
    and its context restarts after every `window` frames (`turn_position`).

    Computed once per batch by the collator (on the CPU, no loop over frames), so that the
    model's forward only gathers and scatters.

    Args:
        frame_mask: [B, T] bool, real frames (a prefix of each row).
        respond: [B, T] bool, frames after which the gate's turn is reset (responses).
        window: the most frames in one segment (1: every frame alone, the per-frame gate).
    Returns:
        `GateLayout` of the batch's segments, in order (row by row, then by time).
    """
    frame_mask, respond = frame_mask.bool().cpu(), respond.bool().cpu()
    B, T = frame_mask.shape
    t = torch.arange(T).expand(B, T)  # [B, T]
    opens = torch.ones(B, T, dtype=torch.bool)
    opens[:, 1:] = respond[:, :-1]  # a turn opens at the first frame and after each response
    turn_start = torch.where(opens, t, 0).cummax(dim=1).values  # [B, T] first frame of each frame's turn
    position = turn_position(t - turn_start, window)  # [B, T] position within its segment
    starts = frame_mask & (position == 0)
    valid = frame_mask.flatten()  # [B*T]
    segment = starts.flatten().cumsum(0) - 1  # [B*T] segment id of each frame
    num_segments = int(starts.sum())
    width = int(position[frame_mask].max()) + 1 if num_segments else 0
    frames = torch.full((num_segments, width), -1, dtype=torch.long)
    frames[segment[valid], position.flatten()[valid]] = torch.arange(B * T)[valid]
    sample = torch.nonzero(starts.flatten()).flatten() // T  # [N]
    return GateLayout(sample=sample, frames=frames)


@dataclass(frozen=True)
class GateLossConfig:
    """How the gate is trained: a training setting (saved with the run, not with the model).

    Args:
        kind: "ce" (class-weighted cross-entropy) or "focal".
        class_weights: (silent, respond) weights; the loss is the weighted mean, as PyTorch's CE.
        focal_gamma: focusing parameter of the focal loss.
    """

    kind: str = "ce"
    class_weights: tuple[float, float] = (0.15, 0.85)
    focal_gamma: float = 2.0

    def __post_init__(self):
        if self.kind not in ("ce", "focal"):
            raise ValueError(f"unknown gate loss {self.kind!r}; use 'ce' or 'focal'")
        if len(self.class_weights) != 2:
            raise ValueError(f"gate class weights need (silent, respond), got {self.class_weights}")


class CognitionGate(nn.Module):
    """Mistral decoder + a 2-way head.

    Args:
        config: a Mistral config (its width must equal the perception tokens').
    """

    def __init__(self, config: PreTrainedConfig):
        super().__init__()
        self.decoder = MistralModel(config)
        self.head = nn.Linear(config.hidden_size, 2)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decoder.embed_tokens(ids)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """[B, L, D] embeddings -> [B, L, 2] logits (causal)."""
        h = self.decoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False).last_hidden_state
        return self.head(h)

    # ---- parallel (training) --------------------------------------------------------------

    def frame_logits(
        self,
        tokens: torch.Tensor,
        layout: GateLayout,
        prompt_ids: torch.Tensor | None = None,
        prompt_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-frame logits for a padded batch, all segments at once: gather, run, scatter.

        Each segment is [the sample's prompt][its frames], padded; positions count real
        tokens only, so the padding (wherever it sits) changes nothing.

        Args:
            tokens: [B, T, D] perception tokens.
            layout: the batch's segments (`gate_layout`), on the tokens' device.
            prompt_ids: [B, L] gate prompt ids (padded), or None (no prompt: per-frame mode).
            prompt_mask: [B, L] 1 on real prompt ids (default: all real).
        Returns:
            [B, T, 2] logits (zeros on padding frames).
        """
        B, T, D = tokens.shape
        N, F = layout.frames.shape
        out = tokens.new_zeros(B * T, 2)
        if N == 0:
            return out.view(B, T, 2)
        real = layout.frames >= 0  # [N, F]
        embeds = tokens.reshape(B * T, D)[layout.frames.clamp(min=0)].masked_fill(~real[..., None], 0)  # [N, F, D]
        mask = real
        if prompt_ids is not None and prompt_ids.shape[1] > 0:
            prompt_ids = prompt_ids.to(tokens.device)
            prompt_real = torch.ones_like(prompt_ids, dtype=torch.bool) if prompt_mask is None else prompt_mask.to(tokens.device).bool()
            prompt = self.embed(prompt_ids).to(embeds.dtype)[layout.sample]  # [B, L, D] -> [N, L, D]
            embeds = torch.cat([prompt, embeds], dim=1)  # [N, L + F, D]
            mask = torch.cat([prompt_real[layout.sample], real], dim=1)
        position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
        logits = self(embeds, attention_mask=mask.long(), position_ids=position_ids)[:, -F:]  # [N, F, 2]
        return out.index_put((layout.frames[real],), logits[real].to(out.dtype)).view(B, T, 2)


def gate_loss(logits: torch.Tensor, labels: torch.Tensor, config: GateLossConfig = GateLossConfig()) -> torch.Tensor:
    """Class-weighted cross-entropy (or focal loss) over per-frame labels.

    Args:
        logits: [B, T, 2]; labels: [B, T] in {0, 1, -100 (ignored)}.
        config: the loss kind and weights; focal: FL = -w_y (1 - p_y)^gamma log p_y, with the
            same weighted mean as the cross-entropy.
    """
    logits = logits.float().reshape(-1, 2)
    labels = labels.reshape(-1)
    weight = torch.tensor(config.class_weights, device=logits.device, dtype=torch.float32)
    if config.kind == "ce":
        return F.cross_entropy(logits, labels, weight=weight, ignore_index=-100)
    gamma = config.focal_gamma
    keep = labels != -100
    logits, labels = logits[keep], labels[keep]
    logp = F.log_softmax(logits, dim=-1).gather(1, labels[:, None]).squeeze(1)
    w = weight[labels]
    return -(w * (1 - logp.exp()).pow(gamma) * logp).sum() / w.sum().clamp(min=1e-12)


__all__ = ["CognitionGate", "GateLayout", "GateLossConfig", "RESPOND", "SILENT", "gate_layout", "gate_loss", "turn_position"]
