"""Real batching for StreamMind: pad videos, dialogues and gate labels of different lengths.

Notation: B videos, T = max frames, S = max text tokens, K = max turns, L = max gate prompt,
N gate segments of the batch, F the longest segment.

Each example is a dict (see `streammind.training.datasets.StreamDataset`):
    pixel_values [T_i, 3, H, W] float  or  frame_features [T_i, Dv]
    input_ids, labels: list[int] (the rendered dialogue), turn_ends: list[int]
    gate_labels: list[int] (len T_i), gate_prompt_ids: list[int]
Every key present in one example must be present in all. Frames are right-padded (the
EPFE is causal, so padding never changes real frames' tokens); `frame_mask` marks real
frames. Text is right-padded with `pad_token_id` and label -100.

With gate labels, the collator also lays out the gate's parallel segments
(`gate.gate_layout`: a turn opens after each respond label, and restarts after every
`gate_window` frames): `gate_segment_sample` [N] and `gate_segment_frames` [N, F], so the
model's forward only gathers and scatters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..gate import RESPOND, gate_layout
from ..processing import IGNORE_INDEX, StreamMindProcessor


def _pad_1d(seqs: list[list[int]], value: int) -> torch.Tensor:
    width = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


@dataclass
class StreamCollator:
    """Collate examples into the batch `StreamMindForCausalLM.forward` takes.

    Args:
        pad_token_id: padding of text and gate prompts.
        gate_window: the most frames in one gate context (`StreamMindConfig.gate_context_window`);
            needed for examples with gate labels.
    """

    pad_token_id: int
    gate_window: int | None = None

    @classmethod
    def from_processor(cls, processor: StreamMindProcessor) -> StreamCollator:
        """The collator of a model: its padding id and its gate window (None for a model without a
        gate, the per-frame-LLM baseline, whose examples carry no gate labels)."""
        return cls(pad_token_id=processor.pad_token_id, gate_window=getattr(processor.config, "gate_context_window", None))

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        keys = set(examples[0])
        for ex in examples[1:]:
            if set(ex) != keys:
                raise ValueError(f"examples in one batch have different keys: {sorted(keys)} vs {sorted(ex)}")
        frame_key = "pixel_values" if "pixel_values" in keys else "frame_features"
        frames = [torch.as_tensor(ex[frame_key]) for ex in examples]
        lengths = [f.shape[0] for f in frames]
        T = max(lengths)
        batch: dict[str, torch.Tensor] = {}
        padded = frames[0].new_zeros((len(frames), T, *frames[0].shape[1:]))
        for i, f in enumerate(frames):
            padded[i, : f.shape[0]] = f
        batch[frame_key] = padded
        batch["frame_mask"] = torch.arange(T)[None] < torch.tensor(lengths)[:, None]
        if "input_ids" in keys:
            batch["input_ids"] = _pad_1d([ex["input_ids"] for ex in examples], self.pad_token_id)
            batch["labels"] = _pad_1d([ex["labels"] for ex in examples], IGNORE_INDEX)
            batch["attention_mask"] = _pad_1d([[1] * len(ex["input_ids"]) for ex in examples], 0)
            batch["turn_ends"] = _pad_1d([ex["turn_ends"] for ex in examples], -1)
        if "gate_labels" in keys:
            if self.gate_window is None:
                raise ValueError("gate labels need the gate window: build the collator with StreamCollator.from_processor(processor)")
            batch["gate_labels"] = labels = _pad_1d([ex["gate_labels"] for ex in examples], IGNORE_INDEX)
            layout = gate_layout(batch["frame_mask"], labels == RESPOND, self.gate_window)
            batch["gate_segment_sample"], batch["gate_segment_frames"] = layout.sample, layout.frames
        if "gate_prompt_ids" in keys:
            batch["gate_prompt_ids"] = _pad_1d([ex["gate_prompt_ids"] for ex in examples], self.pad_token_id)
            batch["gate_prompt_mask"] = _pad_1d([[1] * len(ex["gate_prompt_ids"]) for ex in examples], 0)
        return batch


__all__ = ["StreamCollator"]
