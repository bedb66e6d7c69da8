"""Streaming inference of the per-frame-LLM baseline on a static KV cache: `PerFrameSession`.

Notation: F visual tokens per frame, D width, k frames of a chunk, T the cache length
(`max_context_tokens`), V vocabulary, S tokens of a teacher-forced dialogue.

A session owns one `StaticKV` of T positions (`streammind.decoding`, the inference engine's
machinery: entry j of the cache is the token at position j, `decoder_forward` writes new
tokens' keys and values and attends causally) and the ids waiting to enter before the next
frame (`pending`: the prompt at the start, the separator after a silent frame, "[INST] "
after a reply). Per frame:

1. the frame's F visual embeddings (CLIP CLS + G x G grid -> projector) follow the pending
   ids into the LLM in one `decoder_forward` call;
2. p(respond) = 1 - p(separator) at the frame's last visual token;
3. if p > threshold: the turn close is fed, the reply decoded greedily to EOS or the cap and
   closed with EOS in the cache (as the training dialogues are); the next frame opens a turn.

A frame costs attention over every token before it: the paradigm's cost, growing with the
stream. When a frame (with room for a reply) would overflow `max_context_tokens`, the cache
restarts from the prompt (counted in `stats.llm_rebuilds`); VideoLLM-online has no such
bound. `push_clip` runs frames known ahead a chunk at a time: vision batched, then the
chunk's frames in one LLM call that assumes silence (separators between them). Decisions up
to the first frame that speaks are exact (causal attention); the cache is cut back after
that frame (its later entries are overwritten, never read), the reply decoded, and the rest
of the chunk goes on from there: the results of pushing the frames one by one.

`teacher_forced` is VideoLLM-online's `stream_evaluate` on the same cache: the ground-truth
dialogue is prefilled turn by turn; after each turn's last frame the following frames are
fed without the reply (separators between them) to time a late decision, then the cache is
cut back and the ground truth continues.

The public interface is `StreamingSession`'s (reset, push, push_features, push_clip,
add_query, stats, threshold, last_prob), so the evaluators run either model through one
factory here (`open_session`; `default_threshold` is the decision threshold a model's config
sets: the gate's for StreamMind, the speak rule's for the baseline).
tests/model/test_perframe.py checks every path against `PerFrameLLM.forward`.

Why a frame step of its own: StreamMind's `Engine` runs the always-on path (EPFE, gate) per
frame and calls the LLM only for a reply; this paradigm calls the LLM on every frame, which
the engine has no step for. The session is therefore built on the engine's own pieces (the
`StaticKV` slot cache and `decoder_forward` of `streammind.decoding`), not on a private
attention loop or cache: one LLM call per frame (or per chunk of frames), and the reply's
greedy decoding through the same `decoder_forward` one token at a time.
"""

from __future__ import annotations

import numpy as np
import torch

from .decoding import StaticKV, decoder_forward
from .modeling_perframe import PerFrameLLM, PerFrameProcessor
from .streaming import Reply, SessionInputError, SessionStats, StreamingSession, check_max_new_tokens, check_threshold


class PerFrameSession:
    """Stream frames through a `PerFrameLLM`.

    Args:
        model: the baseline (eval mode is set here).
        processor: its `PerFrameProcessor`.
        query: the user's request (may also come later with `add_query`).
        threshold: speak when p(respond) > threshold (default: the config's `respond_threshold`).
        max_new_tokens: reply length cap (default: the config's `max_reply_tokens`).
        record_probs: keep every frame's (time, p) in `stats`.
        chunk_size: frames per LLM call in `push_clip`.

    Raises:
        SessionInputError: a threshold or cap out of range, or a query whose prompt leaves no
            room for a frame and a reply in the context.
    """

    def __init__(
        self,
        model: PerFrameLLM,
        processor: PerFrameProcessor,
        query: str | None = None,
        threshold: float | None = None,
        max_new_tokens: int | None = None,
        record_probs: bool = True,
        chunk_size: int = 32,
    ):
        self.model = model.eval()
        self.processor = processor
        self.config = config = model.config
        self.threshold = check_threshold(config.respond_threshold if threshold is None else threshold)
        self.max_new_tokens = check_max_new_tokens(config.max_reply_tokens if max_new_tokens is None else max_new_tokens)
        self.record_probs = record_probs
        self.chunk_size = chunk_size
        self.device = next(model.parameters()).device
        self.dtype = model.projector.fc1.weight.dtype
        lm = model.language_model
        self.decoder, self.head, self.embed = lm.get_decoder(), lm.get_output_embeddings(), lm.get_input_embeddings()
        self.kv = StaticKV(lm.config, 1, config.max_context_tokens, self.device, self.dtype)
        F = processor.tokens_per_frame
        # The most one frame can add besides the pending ids: its tokens, the close, a reply and
        # its EOS, and the next turn's opening.
        self._frame_room = F + len(processor.close_ids) + self.max_new_tokens + 1 + len(processor.encode_turn_open())
        self.initial_query = query
        self.reset(query)

    # ---- state ----------------------------------------------------------------------------

    def _check_query(self, query: str | None) -> None:
        if query is not None and not isinstance(query, str):
            raise SessionInputError(f"a query must be a string, got {type(query).__name__}")
        need = len(self.processor.encode_prompt(query)) + self._frame_room
        if need > self.config.max_context_tokens:
            raise SessionInputError(f"the query is too long: its prompt, one frame and a {self.max_new_tokens}-token reply need {need} "
                                    f"of the LLM's {self.config.max_context_tokens} positions (max_context_tokens); shorten the query")

    def reset(self, query: str | None = None) -> None:
        """Clear the stream's state (call between videos); `query` replaces the initial one."""
        self._check_query(query)
        self.query = query if query is not None else self.initial_query
        self.length = 0  # tokens in the cache
        self.pending = self.processor.encode_prompt(self.query)
        self.stats = SessionStats()
        self.last_prob = 0.0

    def add_query(self, text: str) -> None:
        """A user query joins mid-stream: its tokens enter the context before the next frame."""
        self._check_query(text)
        self.query = text
        self.pending = self.pending + self.processor._encode(text)

    @property
    def kv_bytes(self) -> int:
        """Bytes of the keys and values the stream holds now (the cache is allocated whole)."""
        return self.kv.nbytes_per_slot * self.length // self.kv.length

    # ---- frames ---------------------------------------------------------------------------

    def push(self, frame, timestamp: float) -> Reply | None:
        """One uint8 RGB frame [H, W, 3] at `timestamp` seconds -> a Reply or None."""
        replies = self.push_clip(np.asarray(frame)[None], [timestamp])
        return replies[0] if replies else None

    def push_features(self, feature: torch.Tensor, timestamp: float) -> Reply | None:
        """Like `push`, from one frame's vision features [F, Dv] (e.g. a feature cache)."""
        replies = self._run(torch.as_tensor(feature).to(self.device).view(1, self.processor.tokens_per_frame, -1), [timestamp])
        return replies[0] if replies else None

    @torch.inference_mode()
    def push_clip(self, frames, timestamps) -> list[Reply]:
        """Frames known ahead: uint8 [k, H, W, 3] at `timestamps` [k]; the replies, as if pushed one by one."""
        pixels = self.processor.preprocess_frames(frames, device=self.device)  # [k, 3, S, S]
        return self._run(self.model.vision.encode_frames(pixels.to(self.dtype)), [float(t) for t in timestamps])

    @torch.inference_mode()
    def _run(self, features: torch.Tensor, timestamps: list[float]) -> list[Reply]:
        """Frames' vision features [k, F, Dv] through the LLM, `chunk_size` frames per call."""
        visual = self.model.frame_embeddings(features)  # [k, F, D]
        F = visual.shape[1]
        separator = self.embed(torch.tensor([self.processor.separator_id], device=self.device))  # [1, D]
        replies, i, k = [], 0, visual.shape[0]
        while i < k:
            n = min(k - i, self.chunk_size)
            # Room for the pending ids, n frames with separators, and a reply after the last.
            while n > 1 and self.length + len(self.pending) + n * (F + 1) + self._frame_room > self.config.max_context_tokens:
                n //= 2
            if self.length + len(self.pending) + F + self._frame_room > self.config.max_context_tokens:
                self._restart()
            parts = [self._embed_ids(self.pending)] if self.pending else []
            for j in range(n):
                parts += [visual[i + j]] + ([separator] if j < n - 1 else [])
            base = self.length
            last = len(self.pending) + (F + 1) * torch.arange(n, device=self.device) + F - 1  # each frame's last visual token
            h = self._forward(torch.cat(parts)[None])  # [L, D]
            probs = self._respond_probs(h[last])  # [n]
            fired = np.flatnonzero(probs > self.threshold)
            used = n if fired.size == 0 else int(fired[0]) + 1
            self.length = base + int(last[used - 1]) + 1  # the cache is cut back after the last frame used
            for j in range(used):
                self._after_frame(float(probs[j]), timestamps[i + j])
            if fired.size:
                replies.append(Reply(time=timestamps[i + used - 1], text=self._reply(), prob=float(probs[used - 1]),
                                     frame_index=self.stats.frames - 1))
                self.stats.replies += 1
                self.pending = self.processor.encode_turn_open()
            else:
                self.pending = [self.processor.separator_id]
            i += used
        return replies

    def _after_frame(self, prob: float, timestamp: float) -> None:
        self.last_prob = prob
        self.stats.frames += 1
        if self.record_probs:
            self.stats.probs.append(prob)
            self.stats.times.append(timestamp)

    def _respond_probs(self, h: torch.Tensor) -> np.ndarray:
        """Hidden states [n, D] at frames' last visual tokens -> p(respond) = 1 - p(separator) [n]."""
        logits = self.head(h).float()  # [n, V]
        return (1.0 - torch.softmax(logits, dim=-1)[:, self.processor.separator_id]).cpu().numpy()

    def _embed_ids(self, ids: list[int]) -> torch.Tensor:
        return self.embed(torch.tensor(ids, device=self.device))  # [L, D]

    def _forward(self, embeds: torch.Tensor) -> torch.Tensor:
        """Append embeds [1, L, D] at the cache's end; the final hidden states [L, D]. The
        attention spans the positions in use, so a frame costs what its context costs."""
        L = embeds.shape[1]
        positions = torch.arange(self.length, self.length + L, device=self.device)[None]
        h = decoder_forward(self.decoder, embeds, positions, self.kv, span=self.length + L)
        self.length += L
        return h[0]

    def _restart(self) -> None:
        """The context is full: start over from the prompt (the frames before are forgotten)."""
        self.length = 0
        self.pending = self.processor.encode_prompt(self.query)
        self.stats.llm_rebuilds += 1

    def _reply(self) -> str:
        """Feed the turn close, decode greedily to EOS or the cap, close with EOS; the text."""
        eos = self.processor.eos_token_id
        next_id = int(self.head(self._forward(self._embed_ids(self.processor.close_ids)[None])[-1]).argmax())
        generated: list[int] = []
        while next_id != eos and len(generated) < self.max_new_tokens:
            generated.append(next_id)
            next_id = int(self.head(self._forward(self._embed_ids([next_id])[None])[-1]).argmax())
        self._forward(self._embed_ids([eos])[None])
        return self.processor.decode(generated)


@torch.inference_mode()
def teacher_forced(
    model: PerFrameLLM, processor: PerFrameProcessor, batch: dict, turn_ends: list[int], windows: list[int]
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[np.ndarray, np.ndarray]]]:
    """VideoLLM-online's teacher-forced pass over one ground-truth dialogue (module docstring).

    Args:
        model, processor: the baseline.
        batch: one collated example (`StreamDataset` stage "both" through `StreamCollator`):
            pixel_values [1, T, 3, S, S] (or frame_features [1, T, F, Dv]), input_ids and labels [1, S].
        turn_ends: end (exclusive) frame of each turn.
        windows: for each turn, the end (exclusive) of the frames that follow it in the late
            window (the turn's own end when none follow).
    Returns:
        logits [S, V] of the ground-truth dialogue, its reply labels [S] (`reply_labels`: the
        replies and their EOS), and per turn p(respond) at its frames [n_k] (ground-truth
        context) and at the frames that follow it [m_k] (without its reply).
    """
    session = PerFrameSession(model, processor, record_probs=False)
    features = batch["frame_features"] if "frame_features" in batch else model.get_frame_features(batch["pixel_values"])
    visual = model.frame_embeddings(features[0])  # [T, F, D]
    ids = batch["input_ids"][0]
    T, F = visual.shape[:2]
    if ids.shape[0] + max((w - e) * (F + 1) for e, w in zip(turn_ends, windows)) > session.kv.length:
        raise ValueError(f"a dialogue of {ids.shape[0]} tokens and its late windows exceed max_context_tokens ({session.kv.length})")
    embeds = model.merge_video_tokens(ids[None], visual.flatten(0, 1))  # [1, S, D]
    last = torch.nonzero(ids == model.config.video_token_id).flatten().view(T, F)[:, -1]  # [T] each frame's last visual token
    separator = session._embed_ids([processor.separator_id])  # [1, D]
    states, followings = [], []  # hidden states of the ground truth, in order; late-window p(respond) per turn
    for end, window in zip(turn_ends, windows):
        cut = int(last[end - 1]) + 1  # just after the turn's last frame: its reply starts here
        states.append(session._forward(embeds[:, session.length : cut]))
        if window > end:
            parts = [x for frame in range(end, window) for x in (separator, visual[frame])]
            h = session._forward(torch.cat(parts)[None])  # [m (F + 1), D]
            followings.append(session._respond_probs(h[(F + 1) * torch.arange(window - end, device=h.device) + F]))
            session.length = cut  # the ground truth goes on from the cut; the window's entries get overwritten
        else:
            followings.append(np.zeros(0, dtype=np.float32))
    states.append(session._forward(embeds[:, session.length :]))
    states = torch.cat(states)  # [S, D]
    respond = session._respond_probs(states[last])  # [T]
    starts = [0] + list(turn_ends[:-1])
    turn_probs = [(respond[first:end], following) for first, end, following in zip(starts, turn_ends, followings)]
    return session.head(states).float(), processor.reply_labels(ids, batch["labels"][0]), turn_probs


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


__all__ = ["PerFrameSession", "default_threshold", "is_per_frame_llm", "open_session", "teacher_forced"]
