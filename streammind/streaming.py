"""StreamingSession: a live stream through StreamMind, one frame at a time, at constant cost.

Notation: D width, n frames in the current turn, k = sampled tokens of the turn.

Per pushed frame (SPEC §4):
1. preprocess + CLIP (pooled) -> EPFE `step` with the carried state -> perception token;
   the token joins the turn's perception memory (bounded: `max_turn_frames`, oldest out);
2. gate `step` on the token (KV cache of the prompt + this turn) -> p(respond);
3. if p > threshold: sample the turn's memory, append the turn (prefix ids with the tokens
   scattered in) to the LLM's cached conversation, decode greedily to EOS or the length cap,
   and return `Reply(time, text, prob)`; then clear the turn memory and reset the gate's
   turn cache to its prompt.

Bounded state, documented budgets:
- perception: the EPFE state ([D_in, d_conv] + [D_in, d_state]) — constant;
- turn memory: at most `max_turn_frames` tokens (the oldest are dropped);
- gate: the prompt plus at most `gate_window` frames (the turn context restarts after that);
- LLM: the conversation cache stays within `max_context_tokens`; when a new turn would
  exceed it, the oldest turns are evicted and the cache is rebuilt from the system prompt,
  the current query and the newest turns that fit in half the budget (or less, so that the
  new turn fits too; amortised: this happens once per many turns, never per frame).

A session owns all of its state; `reset()` clears it between videos (the released code
never did). The streaming path computes the same perception tokens and gate probabilities
as the parallel `forward` over the same clip (tests/test_streaming.py).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from .modeling_streammind import StreamMindForCausalLM
from .processing import StreamMindProcessor
from .sampling import select_tokens


@dataclass
class Reply:
    """A response emitted by the stream: at `time` seconds, with gate probability `prob`."""

    time: float
    text: str
    prob: float
    frame_index: int


@dataclass
class _Turn:
    """A finished turn kept for rebuilding the LLM context after eviction."""

    user: str | None
    video_tokens: torch.Tensor  # [k, D]
    reply_ids: list[int]  # reply + EOS


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
        query: the user's request (may also be given later with `add_query`).
        threshold: respond when p(respond) > threshold (default: the config's).
        max_new_tokens: reply length cap (default: the config's `max_reply_tokens`).
        record_probs: keep every frame's (time, p) in `stats` (for timeline plots).
    """

    def __init__(
        self,
        model: StreamMindForCausalLM,
        processor: StreamMindProcessor,
        query: str | None = None,
        threshold: float | None = None,
        max_new_tokens: int | None = None,
        record_probs: bool = True,
    ):
        self.model = model.eval()
        self.processor = processor
        self.config = model.config
        self.threshold = self.config.gate_threshold if threshold is None else threshold
        self.max_new_tokens = self.config.max_reply_tokens if max_new_tokens is None else max_new_tokens
        self.record_probs = record_probs
        self.device = next(model.parameters()).device
        self.dtype = model.perception.pre_proj.weight.dtype
        self.initial_query = query
        self.reset()

    # ---- state ----------------------------------------------------------------------------

    def reset(self, query: str | None = None) -> None:
        """Clear every piece of per-stream state (call between videos)."""
        self.query = query if query is not None else self.initial_query
        self.perception_state = self.model.perception.init_state(1, device=self.device, dtype=self.dtype)
        self.memory: deque[tuple[float, torch.Tensor]] = deque(maxlen=self.config.max_turn_frames)
        self.gate_cache = self._prefill_gate(self.query)
        self.llm_cache: DynamicCache | None = None
        self.llm_length = 0
        self.turns: list[_Turn] = []
        self.pending_user: str | None = self.query
        self.stats = SessionStats()
        self.last_prob = 0.0

    def _prefill_gate(self, query: str | None):
        ids = torch.tensor(self.processor.encode_gate_prompt(query), dtype=torch.long, device=self.device)
        with torch.inference_mode():
            return self.model.gate.prefill(ids)

    @torch.inference_mode()
    def add_query(self, text: str) -> None:
        """A user query joins mid-stream: it opens the next LLM turn and conditions the gate.

        The gate's prompt becomes the new query; the current turn's frames are re-read into
        its cache (at most `gate_window`, so this is bounded work).
        """
        self.query = text
        self.pending_user = text if self.pending_user is None else f"{self.pending_user}\n{text}"
        self.gate_cache = self._prefill_gate(text)
        for _, token in list(self.memory)[-self.config.gate_window :]:
            self.model.gate.step(token, self.gate_cache)

    # ---- per frame ------------------------------------------------------------------------

    @torch.inference_mode()
    def push(self, frame, timestamp: float) -> Reply | None:
        """One uint8 RGB frame [H, W, 3] at `timestamp` seconds -> a Reply or None."""
        pixels = self.processor.preprocess_frames(frame).to(self.device)  # [1, 3, S, S]
        feature = self.model.vision(pixels)  # [1, Dv]
        return self.push_features(feature, timestamp)

    @torch.inference_mode()
    def push_features(self, feature: torch.Tensor, timestamp: float) -> Reply | None:
        """Like `push`, from a pooled CLIP feature [1, Dv] (e.g. from a feature cache)."""
        token, _ = self.model.perception.step(feature.to(self.device, self.dtype).view(1, -1), self.perception_state)
        self.memory.append((timestamp, token))
        logits = self.model.gate.step(token, self.gate_cache)  # [1, 2]
        prob = float(torch.softmax(logits.float(), dim=-1)[0, 1])
        self.last_prob = prob
        self.stats.frames += 1
        if self.record_probs:
            self.stats.probs.append(prob)
            self.stats.times.append(timestamp)
        if prob <= self.threshold:
            return None
        text = self._respond()
        self.memory.clear()
        self.gate_cache.reset_turn()
        self.stats.replies += 1
        return Reply(time=timestamp, text=text, prob=prob, frame_index=self.stats.frames - 1)

    # ---- the LLM turn ---------------------------------------------------------------------

    def _turn_embeddings(self, user: str | None, video_tokens: torch.Tensor, first: bool) -> torch.Tensor:
        ids = self.processor.encode_turn_prefix(user, video_tokens.shape[0], first=first)
        ids_t = torch.tensor([ids], device=self.device)
        return self.model.merge_video_tokens(ids_t, video_tokens.view(-1, video_tokens.shape[-1]))  # [1, S, D]

    def _llm(self, embeds: torch.Tensor) -> torch.Tensor:
        """Feed embeddings [1, S, D] through the LLM with the session cache; last logits [V]."""
        if self.llm_cache is None:
            self.llm_cache = DynamicCache(config=self.model.language_model.config)
        position = torch.arange(self.llm_length, self.llm_length + embeds.shape[1], device=self.device)[None]
        out = self.model.language_model(inputs_embeds=embeds, position_ids=position, cache=self.llm_cache, use_cache=True, logits_to_keep=1)
        self.llm_length += embeds.shape[1]
        return out.logits[0, -1]

    def _rebuild_context(self, budget: int) -> None:
        """Evict the oldest turns until the kept ones fit `budget` tokens, and re-prefill them.

        The oldest kept turn re-opens the conversation (BOS, system prompt, its user text or
        else the query), so each candidate is counted with that opening as if it were the oldest.
        """
        kept, total = [], 0
        for turn in reversed(self.turns):
            k = turn.video_tokens.shape[0]
            size = len(self.processor.encode_turn_prefix(turn.user, k, first=False)) + len(turn.reply_ids)
            opening = len(self.processor.encode_turn_prefix(turn.user or self.query, k, first=True)) - (size - len(turn.reply_ids))
            if total + size + opening > budget:
                break
            kept.append(turn)
            total += size
        self.turns = kept[::-1]
        self.llm_cache, self.llm_length = None, 0
        self.stats.llm_rebuilds += 1
        embed = self.model.language_model.get_input_embeddings()
        for j, turn in enumerate(self.turns):
            # The first kept turn re-opens the conversation: BOS, system prompt and the query.
            user = turn.user if j > 0 else (turn.user or self.query)
            self._llm(self._turn_embeddings(user, turn.video_tokens, first=j == 0))
            self._llm(embed(torch.tensor([turn.reply_ids], device=self.device)))

    def _respond(self) -> str:
        tokens = torch.cat([tok for _, tok in self.memory])  # [n, D]
        video_tokens = select_tokens(tokens, self.config.sampling, self.config.sampling_ratio)  # [k, D]
        first = self.llm_length == 0
        user = self.pending_user if not first else (self.pending_user or self.query)
        prefix = self._turn_embeddings(user, video_tokens, first=first)
        need = prefix.shape[1] + self.max_new_tokens + 1  # this turn: prefix, the longest reply, EOS
        if self.llm_length + need > self.config.max_context_tokens:
            self._rebuild_context(min(self.config.max_context_tokens // 2, self.config.max_context_tokens - need))
            first = self.llm_length == 0
            prefix = self._turn_embeddings(user if not first else (user or self.query), video_tokens, first=first)
        logits = self._llm(prefix)
        embed = self.model.language_model.get_input_embeddings()
        eos = self.processor.eos_token_id
        generated: list[int] = []
        while True:
            next_id = int(logits.argmax())
            if next_id == eos or len(generated) >= self.max_new_tokens:
                break
            generated.append(next_id)
            logits = self._llm(embed(torch.tensor([[next_id]], device=self.device)))
        # Close the turn with EOS in the cache, exactly as training sequences end a reply.
        self._llm(embed(torch.tensor([[eos]], device=self.device)))
        self.turns.append(_Turn(user=user, video_tokens=video_tokens, reply_ids=generated + [eos]))
        self.pending_user = None
        return self.processor.decode(generated)


__all__ = ["Reply", "SessionStats", "StreamingSession"]
