"""One factory for the two streaming models: the evaluators run either through it.

`open_session(model, processor, ...)` returns a `StreamingSession` for StreamMind and a
`PerFrameSession` for the per-frame-LLM baseline; both have the same public interface
(reset, push, push_features, push_clip, add_query, stats, threshold, last_prob), so the
free-running evaluator has one code path. `default_threshold` is the decision threshold a
model's config sets (the gate's for StreamMind, the speak rule's for the baseline).
"""

from __future__ import annotations

from .baseline import PerFrameLLM
from .baseline_streaming import PerFrameSession
from .streaming import StreamingSession


def is_per_frame_llm(model) -> bool:
    """Whether `model` is the per-frame-LLM baseline (else StreamMind)."""
    return isinstance(model, PerFrameLLM)


def default_threshold(model) -> float:
    """The threshold of the model's per-frame respond decision, from its config."""
    return model.config.respond_threshold if is_per_frame_llm(model) else model.config.gate_threshold


def open_session(model, processor, query: str | None = None, threshold: float | None = None,
                 max_new_tokens: int | None = None, record_probs: bool = True) -> StreamingSession | PerFrameSession:
    """A streaming session of `model` (either kind); the arguments are `StreamingSession`'s."""
    kind = PerFrameSession if is_per_frame_llm(model) else StreamingSession
    return kind(model, processor, query=query, threshold=threshold, max_new_tokens=max_new_tokens, record_probs=record_probs)


__all__ = ["default_threshold", "is_per_frame_llm", "open_session"]
