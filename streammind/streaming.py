"""StreamingSession: one live stream through StreamMind, a frame at a time, at constant cost.

Notation: D width, n frames in the current turn.

Per pushed frame:
1. the frame goes to the model's device, is preprocessed there, and runs the always-on path
   (CLIP pooled -> EPFE step -> the turn memory -> gate step) -> p(respond);
2. if p > threshold: the turn's memory is sampled, the turn is appended to the LLM's cached
   conversation, the reply is decoded greedily (to EOS or the length cap) and returned as
   `Reply(time, text, prob)`; the turn memory is cleared and the gate's turn restarts.

All the work runs in an `Engine` (streammind/engine.py), which holds the state in fixed-size
slots and, on a GPU, replays CUDA graphs; a session is one of its streams. Several sessions
can share one engine (`engine=`), each in its own slot; `push_clip` runs frames known ahead
(a file) a chunk at a time with the same results.

Bounded state, documented budgets:
- perception: the EPFE state ([D_in, d_conv] + [D_in, d_state]) — constant;
- turn memory: at most `max_turn_frames` tokens (the oldest are dropped);
- gate: the prompt plus at most `gate_window` frames (the turn context restarts after that);
- LLM: the conversation stays within `max_context_tokens`; when a new turn would exceed it,
  the oldest turns are evicted and the context is rebuilt from the system prompt, the current
  query and the newest turns that fit (once per many turns, never per frame).

Inputs are checked before anything runs (`check_threshold`, `check_max_new_tokens`,
`check_query`; each raises `SessionInputError` naming the value): the threshold must be a
finite number in [0, 1], the reply cap an integer >= 1, and a query must fit the budgets. The
query rule: a query is refused (never truncated) when the first turn it opens (BOS, system
prompt, the query, the placeholders of a full turn memory, `placeholders_for(max_turn_frames)`,
and `[/INST]`) plus the reply cap and its EOS exceeds `max_context_tokens`, or when the gate's
prompt (which holds the query) exceeds the room the engine keeps for it (`max_prompt_tokens`,
512 tokens by default). A query that joins mid-stream is checked together with the queries
still waiting for the next turn.

A session owns its stream's state; `reset()` clears it between videos (the released code
never did). The streaming path computes the same perception tokens and gate probabilities as
the parallel `forward` over the same clip (tests/inference/test_streaming.py, tests/inference/test_engine.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .engine import Conversation, Engine, Turn
from .errors import UserError
from .modeling_streammind import StreamMindForCausalLM
from .processing import StreamMindProcessor


class SessionInputError(UserError, ValueError):
    """A session input out of range: a threshold, a reply cap, or a query over the budget."""


def check_threshold(threshold: float) -> float:
    """A gate threshold must be a finite number in [0, 1] (NaN would reply on no frame, or on every one)."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold) or not 0 <= threshold <= 1:
        raise SessionInputError(f"threshold must be a finite number in [0, 1], got {threshold!r}")
    return float(threshold)


def check_max_new_tokens(max_new_tokens: int) -> int:
    """The reply length cap must be an integer >= 1."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise SessionInputError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    return max_new_tokens


def check_query(processor: StreamMindProcessor, query: str | None, max_new_tokens: int, max_prompt_tokens: int = 512) -> None:
    """Refuse a query the LLM context or the gate's prompt room cannot hold (the rule is in the module docstring)."""
    if query is None:
        return
    if not isinstance(query, str):
        raise SessionInputError(f"a query must be a string, got {type(query).__name__}")
    config = processor.config
    turn = len(processor.encode_turn_prefix(query, processor.placeholders_for(config.max_turn_frames), first=True))
    need = turn + max_new_tokens + 1
    if need > config.max_context_tokens:
        query_tokens = len(processor.tokenizer.encode(query, add_special_tokens=False))
        raise SessionInputError(
            f"the query is too long: {query_tokens} tokens, and its first turn with a full turn memory and a "
            f"{max_new_tokens}-token reply needs {need} of the LLM's {config.max_context_tokens} (max_context_tokens); "
            "shorten the query"
        )
    gate_prompt = len(processor.encode_gate_prompt(query))
    if gate_prompt > max_prompt_tokens:
        raise SessionInputError(f"the query is too long for the gate: its prompt is {gate_prompt} tokens, the room for it "
                                f"{max_prompt_tokens} (max_prompt_tokens); shorten the query")


@dataclass
class Reply:
    """A response emitted by the stream: at `time` seconds, with gate probability `prob`."""

    time: float
    text: str
    prob: float
    frame_index: int


@dataclass
class SessionStats:
    frames: int = 0
    replies: int = 0
    llm_rebuilds: int = 0
    probs: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)


class StreamingSession:
    """Stream frames through a StreamMind model.

    Args:
        model: a `StreamMindForCausalLM` (eval mode is set here).
        processor: its `StreamMindProcessor`.
        query: the user's request (may also be given later with `add_query`); refused when
            over the budget (module docstring).
        threshold: respond when p(respond) > threshold, finite in [0, 1] (default: the config's).
        max_new_tokens: reply length cap, >= 1 (default: the config's `max_reply_tokens`).
        record_probs: keep every frame's (time, p) in `stats` (for timeline plots).
        engine: an `Engine` of this model to run in (one of its stream slots); by default the
            session builds its own single-stream engine.

    Raises:
        SessionInputError: a threshold, cap or query out of range.
    """

    def __init__(
        self,
        model: StreamMindForCausalLM,
        processor: StreamMindProcessor,
        query: str | None = None,
        threshold: float | None = None,
        max_new_tokens: int | None = None,
        record_probs: bool = True,
        engine: Engine | None = None,
    ):
        threshold = check_threshold(model.config.gate_threshold if threshold is None else threshold)
        max_new_tokens = check_max_new_tokens(model.config.max_reply_tokens if max_new_tokens is None else max_new_tokens)
        if engine is not None and engine.model is not model:
            raise ValueError("the engine runs another model than this session's")
        check_query(processor, query, max_new_tokens, engine.max_prompt_tokens if engine is not None else 512)
        self.model = model.eval()
        self.processor = processor
        self.config = model.config
        self.threshold = threshold
        self.max_new_tokens = max_new_tokens
        self.record_probs = record_probs
        self.engine = engine if engine is not None else Engine(model, processor)
        self.initial_query = query
        self.slot = self.engine.open_stream(query)
        self.stats = SessionStats()
        self.last_prob = 0.0

    # ---- state ----------------------------------------------------------------------------

    def reset(self, query: str | None = None) -> None:
        """Clear every piece of per-stream state (call between videos); `query` replaces the initial one."""
        if query is not None:
            check_query(self.processor, query, self.max_new_tokens, self.engine.max_prompt_tokens)
        self.engine.reset_stream(self.slot, query if query is not None else self.initial_query)
        self.stats = SessionStats()
        self.last_prob = 0.0

    def close(self) -> None:
        """Give the stream's slot back to the engine."""
        self.engine.close_stream(self.slot)

    def add_query(self, text: str) -> None:
        """A user query joins mid-stream: it opens the next LLM turn and conditions the gate
        (the current turn's frames are read again after it, bounded by the gate window).

        Raises:
            SessionInputError: the query (with the queries still waiting for the next turn)
                is over the budget; the session is left unchanged.
        """
        pending = self.pending_user
        check_query(self.processor, text if pending is None else f"{pending}\n{text}", self.max_new_tokens, self.engine.max_prompt_tokens)
        self.engine.set_query(self.slot, text)

    @property
    def chunk_size(self) -> int:
        """Frames per model call in `push_clip_chunks` (the engine's)."""
        return self.engine.chunk_size

    @property
    def conversation(self) -> Conversation:
        return self.engine.conversation(self.slot)

    @property
    def query(self) -> str | None:
        return self.conversation.query

    @property
    def pending_user(self) -> str | None:
        return self.conversation.pending_user

    @property
    def turns(self) -> list[Turn]:
        return self.conversation.turns

    @property
    def llm_length(self) -> int:
        """Tokens in the LLM's cached conversation."""
        return self.conversation.llm_length

    @property
    def gate_frames(self) -> int:
        """Frames in the gate's current turn context."""
        return self.engine.gate_frames(self.slot)

    def turn_tokens(self) -> torch.Tensor:
        """Perception tokens since the last reply, oldest first: [n, D]."""
        return self.engine.turn_tokens(self.slot)

    # ---- per frame ------------------------------------------------------------------------

    def push(self, frame, timestamp: float) -> Reply | None:
        """One uint8 RGB frame [H, W, 3] at `timestamp` seconds -> a Reply or None."""
        prob = float(self.engine.step([self.slot], frame)[0])
        return self._after_frame(prob, timestamp)

    def push_features(self, feature: torch.Tensor, timestamp: float) -> Reply | None:
        """Like `push`, from a pooled CLIP feature [1, Dv] (e.g. from a feature cache)."""
        prob = float(self.engine.step_features([self.slot], feature)[0])
        return self._after_frame(prob, timestamp)

    def push_clip(self, frames, timestamps) -> list[Reply]:
        """Frames known ahead (e.g. from a file): uint8 [k, H, W, 3] at `timestamps` [k].

        Runs a chunk of frames per model call (CLIP batched, the EPFE scanned, the gate over the
        chunk); the results are those of pushing the frames one by one.
        """
        timestamps = [float(t) for t in timestamps]
        first = self.stats.frames
        result = self.engine.push_clip(self.slot, frames, threshold=self.threshold, max_new_tokens=self.max_new_tokens)
        self.stats.frames += len(timestamps)
        if self.record_probs:
            self.stats.probs += result.probs.tolist()
            self.stats.times += timestamps
        if len(result.probs):
            self.last_prob = float(result.probs[-1])
        replies = [Reply(time=timestamps[i], text=text, prob=prob, frame_index=first + i) for i, prob, text in result.replies]
        self.stats.replies += len(replies)
        self.stats.llm_rebuilds = self.conversation.llm_rebuilds
        return replies

    def _after_frame(self, prob: float, timestamp: float) -> Reply | None:
        self.last_prob = prob
        self.stats.frames += 1
        if self.record_probs:
            self.stats.probs.append(prob)
            self.stats.times.append(timestamp)
        if not prob > self.threshold:
            return None
        text = self.engine.respond(self.slot, self.max_new_tokens)
        self.stats.replies += 1
        self.stats.llm_rebuilds = self.conversation.llm_rebuilds
        return Reply(time=timestamp, text=text, prob=prob, frame_index=self.stats.frames - 1)


def push_clip_chunks(session, frames, chunk_size: int | None = None, on_reply=None) -> list[Reply]:
    """Run (time, frame) pairs through `session.push_clip`, `chunk_size` frames per call (default:
    the session's); `session` is a `StreamingSession` or anything with its interface.

    `on_reply(reply)` is called as each chunk's replies come. When the frame iterator raises
    (a video that breaks off), the frames read before are still pushed, then the error propagates.
    """
    size = chunk_size or session.chunk_size
    replies: list[Reply] = []
    chunk: list = []

    def flush() -> None:
        if chunk:
            new = session.push_clip(np.stack([f for _, f in chunk]), [t for t, _ in chunk])
            chunk.clear()
            replies.extend(new)
            for reply in new if on_reply is not None else ():
                on_reply(reply)

    try:
        for t, frame in frames:
            chunk.append((t, frame))
            if len(chunk) == size:
                flush()
    finally:
        flush()
    return replies


__all__ = [
    "Reply",
    "SessionInputError",
    "SessionStats",
    "StreamingSession",
    "check_max_new_tokens",
    "check_query",
    "check_threshold",
    "push_clip_chunks",
]
