"""The inference engine: every frame and every reply of StreamMind runs through here.

Notation: S stream slots, b streams in one call, k frames of a chunk, D width (the LLM's),
Dv vision width, K turn-memory capacity (`max_turn_frames`), W gate window, P the most
gate-prompt tokens, T the LLM context (`max_context_tokens`), V vocabulary.

One `Engine` serves S concurrent streams of one model. What a stream owns lives in slots
of tensors allocated once, so a stream joins or leaves without reallocating or recapturing:

    EPFE state      conv [S+1, Din, d_conv], ssm [S+1, Din, N]
    turn memory     [S+1, K, D] ring of perception tokens since the last reply, and a count
    gate cache      `StaticKV` [gate layers, S+1, Hkv, P + W, hd]: the prompt at positions
                    0..p-1, the turn's frames after it; the turn restarts by overwriting
    LLM context     one `StaticKV` of T positions for the conversation that is replying

(slot S is scratch: the padding rows of a batch write there). The per-frame path

    frames (uint8) --to the device, resize / pad / normalise there--> pixels [b, 3, S, S]
        --CLIP layers up to the feature layer, pooled--> [b, Dv] --EPFE step--> tokens [b, D]
        --into the turn memory; gate step at each stream's own position--> p(respond) [b]

has fixed shapes for a given b, so on a GPU it is captured once per batch size in
`batch_sizes` as a CUDA graph and replayed (b streams run in the smallest captured size
that holds them; the padding rows compute on the scratch slot, and no row reads another's
state, so a frame's result does not depend on which streams share its batch). On the CPU
the same functions run eagerly.

A reply (the caller decides that p(respond) > threshold) samples the turn memory, appends
the turn to the stream's conversation in the LLM context in one prefill call, and decodes
greedily with a one-token step that is graph-captured too; the conversation stays cached
across turns and is rebuilt from the newest turns when it would overflow T (the rules of
`StreamingSession`). When frames are available ahead of time (a file, an evaluation),
`push_clip` runs a stream a chunk of frames at a time: CLIP batched over the chunk, the EPFE
scanned over it, the gate over its tokens up to the first reply, and the rest of the chunk
after the reply's reset again, which gives the frame-by-frame results.

The engine computes what the model's plain forward computes; tests/inference/test_engine.py checks
the gate probabilities, perception tokens and replies against it (and multi-stream batches,
chunks and device-side preprocessing against single frames).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import DynamicCache

from .decoding import StaticKV, decoder_forward, supports_static_decoding
from .gate import turn_position
from .perception import PerceptionState
from .sampling import memory_frames, select_tokens

# Prefill lengths are padded up to a multiple of this on CUDA, so that a long stream meets a
# handful of shapes instead of one per turn length.
_PREFILL_BUCKET = 64
# The LLM attends to its context in spans of this many positions (one decode graph per span),
# so a conversation of n tokens costs what n tokens cost, not what `max_context_tokens` does.
_CONTEXT_SPAN = 1024


@dataclass
class Turn:
    """A finished turn, kept to rebuild the LLM context after an eviction."""

    user: str | None
    video_tokens: torch.Tensor  # [k, D]
    reply_ids: list[int]  # the reply and EOS


@dataclass
class Conversation:
    """What a stream said and heard: its query, pending user text, finished turns, LLM context length."""

    query: str | None = None
    pending_user: str | None = None
    turns: list[Turn] = field(default_factory=list)
    llm_length: int = 0
    llm_rebuilds: int = 0
    saved_kv: tuple[torch.Tensor, torch.Tensor] | None = None  # the context while another stream holds the LLM


@dataclass
class ClipResult:
    """What `push_clip` saw: p(respond) of every frame and the replies as (frame index, prob, text)."""

    probs: np.ndarray
    replies: list[tuple[int, float, str]]


class _Graph:
    """`fn()` over static buffers, captured once as a CUDA graph and replayed.

    The function reads its inputs from buffers the caller fills before `__call__` and returns
    tensors that the next replay overwrites (copy what must outlive it). Warm-up runs happen
    on a side stream before the capture, as CUDA graphs require.
    """

    def __init__(self, fn: Callable[[], torch.Tensor], pool, warmup: int = 2):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.output = fn()

    def __call__(self) -> torch.Tensor:
        self.graph.replay()
        return self.output


class Engine:
    """Run a StreamMind model over up to `max_streams` live streams, and its LLM for replies.

    Args:
        model: a `StreamMindForCausalLM` (put in eval mode here).
        processor: its `StreamMindProcessor`.
        max_streams: S, streams served at once (slots allocated up front).
        cuda_graphs: capture the per-frame path and the decode step as CUDA graphs (default:
            on CUDA devices). False runs everything eagerly (the reference; always on the CPU).
        batch_sizes: batch sizes captured for the per-frame path (a call with b streams runs
            in the smallest that holds b; larger calls are split).
        max_prompt_tokens: P, room for the gate's prompt (system prompt and query).
        chunk_size: frames per chunk in `push_clip`.
        compile_vision: run the vision tower through `torch.compile` (fuses its layer norms,
            activations and bias adds; the first call of a batch size compiles, a minute or
            more for CLIP-L): faster frames for long-running servers, slower start-up.
    """

    def __init__(
        self,
        model,
        processor,
        max_streams: int = 1,
        cuda_graphs: bool | None = None,
        batch_sizes: Sequence[int] = (1, 4, 16, 64),
        max_prompt_tokens: int = 512,
        chunk_size: int = 32,
        compile_vision: bool = False,
    ):
        if max_streams < 1:
            raise ValueError(f"max_streams must be >= 1, got {max_streams}")
        self.model = model.eval()
        self.processor = processor
        self.config = config = model.config
        self.device = next(model.parameters()).device
        self.dtype = model.perception.pre_proj.weight.dtype
        self.cuda_graphs = (self.device.type == "cuda") if cuda_graphs is None else bool(cuda_graphs)
        if self.cuda_graphs and self.device.type != "cuda":
            raise ValueError("cuda_graphs needs the model on a CUDA device")
        self.batch_sizes = sorted({min(int(b), max_streams) for b in batch_sizes} | {1})
        self.max_streams = max_streams
        self.chunk_size = chunk_size
        self.max_prompt_tokens = max_prompt_tokens
        self.per_frame_gate = config.gate_mode == "per_frame"
        self.vision = torch.compile(model.vision, dynamic=True) if compile_vision else model.vision
        self._staging: torch.Tensor | None = None  # pinned host memory the frames travel from
        self.window = config.gate_context_window  # 1 for the per-frame gate

        S = max_streams + 1  # + the scratch slot
        self.scratch = max_streams
        with torch.inference_mode():
            self.perception_state = model.perception.init_state(S, device=self.device, dtype=self.dtype)
            self.memory = torch.zeros(S, config.max_turn_frames, config.hidden_size, device=self.device, dtype=self.dtype)
            self.memory_count = torch.zeros(S, dtype=torch.long, device=self.device)
            self.prompt_length = torch.zeros(S, dtype=torch.long, device=self.device)
            self.turn_frames = torch.zeros(S, dtype=torch.long, device=self.device)
            self._slot_index = torch.arange(S, device=self.device)
            # Rounded up to a multiple of 64: attention kernels want aligned mask rows.
            gate_length = -(-(max_prompt_tokens + self.window) // 64) * 64
            self.gate_kv = StaticKV(config.gate_config, S, gate_length, self.device, self.dtype)
        self.streams: dict[int, Conversation] = {}
        self._free = list(range(max_streams))[::-1]

        lm = model.language_model
        # Other architectures reply through their own forward with a dynamic cache (correct, slower).
        self._llm_static = supports_static_decoding(lm.get_decoder())
        self._llm_kv: StaticKV | None = None  # allocated at the first reply
        self._llm_cache: DynamicCache | None = None  # architectures without a static path
        self._holder: Conversation | None = None  # the conversation whose context the LLM cache holds
        self._graphs: dict[tuple, _Graph] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None
        self._buffers: dict[tuple, dict[str, torch.Tensor]] = {}

    # ---- streams --------------------------------------------------------------------------

    def open_stream(self, query: str | None = None) -> int:
        """Allocate a slot for a new stream with `query`; returns the slot."""
        if not self._free:
            raise RuntimeError(f"all {self.max_streams} stream slots are in use; close a stream or build the engine with more")
        slot = self._free.pop()
        self.streams[slot] = Conversation()
        self.reset_stream(slot, query)
        return slot

    def close_stream(self, slot: int) -> None:
        """Free a stream's slot (its state is cleared when the slot is next opened)."""
        self._check_slot(slot)
        if self._holder is self.streams.pop(slot):
            self._holder = None
        self._free.append(slot)

    @torch.inference_mode()
    def reset_stream(self, slot: int, query: str | None = None) -> None:
        """Clear every piece of the stream's state and start over with `query`."""
        self._check_slot(slot)
        self.perception_state.conv_state[slot].zero_()
        self.perception_state.ssm_state[slot].zero_()
        self.memory_count[slot] = 0
        if self._holder is self.streams[slot]:
            self._holder = None
        self.streams[slot] = Conversation(query=query, pending_user=query)
        self._prefill_gate(slot, query)

    @torch.inference_mode()
    def set_query(self, slot: int, text: str) -> None:
        """A user query joins the stream: it opens the next LLM turn and becomes the gate's prompt.

        The turn's frames so far (at most the gate window) are read again after the new prompt,
        so the gate sees the query and the turn as it would have had the query come first.
        """
        conv = self._conversation(slot)
        conv.query = text
        conv.pending_user = text if conv.pending_user is None else f"{conv.pending_user}\n{text}"
        self._prefill_gate(slot, text)
        tokens = self.turn_tokens(slot)[-self.window :]
        if tokens.shape[0]:
            self._gate_chunk(slot, tokens)

    def turn_tokens(self, slot: int) -> torch.Tensor:
        """The stream's perception tokens since its last reply, oldest first: [n, D]."""
        K = self.memory.shape[1]
        count = int(self.memory_count[slot])
        n = memory_frames(count, K)
        order = torch.arange(count - n, count, device=self.device) % K
        return self.memory[slot, order]

    def gate_frames(self, slot: int) -> int:
        """Frames in the gate's current turn context (at most the window)."""
        return int(self.turn_frames[slot])

    def conversation(self, slot: int) -> Conversation:
        return self._conversation(slot)

    def _conversation(self, slot: int) -> Conversation:
        self._check_slot(slot)
        return self.streams[slot]

    def _check_slot(self, slot: int) -> None:
        if slot not in self.streams:
            raise KeyError(f"no open stream in slot {slot}")

    def _prefill_gate(self, slot: int, query: str | None) -> None:
        ids = self.processor.encode_gate_prompt(query)
        if len(ids) > self.max_prompt_tokens:
            raise ValueError(
                f"the gate prompt (system prompt + query) is {len(ids)} tokens; the engine has room for "
                f"{self.max_prompt_tokens} (max_prompt_tokens): shorten the query"
            )
        self.prompt_length[slot] = len(ids)
        self.turn_frames[slot] = 0
        if ids:
            embeds = self.model.gate.embed(torch.tensor([ids], device=self.device))  # [1, p, D]
            positions = torch.arange(len(ids), device=self.device)[None]
            decoder_forward(self.model.gate.decoder, embeds, positions, self.gate_kv, slice(slot, slot + 1))

    def _rows(self, slots: Sequence[int]) -> torch.Tensor:
        return torch.tensor(list(slots), dtype=torch.long, device=self.device)

    # ---- the per-frame path ---------------------------------------------------------------

    def _always_on(self, rows: torch.Tensor | slice, pixels: torch.Tensor | None = None, features: torch.Tensor | None = None) -> torch.Tensor:
        """One frame for each row's stream: pixels [b, 3, S, S] or features [b, Dv] -> p(respond) [b].

        `rows`: the rows' slots, [b] long (gathered and scattered: any slots, fixed shapes, the
        form the CUDA graphs capture), or a slice of consecutive slots (views updated in place:
        fewer operations, for eager calls). Advances each row's EPFE state, turn memory and gate
        cache in place, with no host synchronisation.
        """
        model = self.model
        if features is None:
            features = self.vision(pixels)  # [b, Dv]
        ps = self.perception_state
        gather = isinstance(rows, torch.Tensor)
        if gather:
            state = PerceptionState(ps.conv_state.index_select(0, rows), ps.ssm_state.index_select(0, rows))
        else:
            state = PerceptionState(ps.conv_state[rows], ps.ssm_state[rows])  # views: stepped in place
        token, _ = model.perception.step(features.to(self.dtype), state)  # [b, D]
        if gather:
            ps.conv_state.index_copy_(0, rows, state.conv_state)
            ps.ssm_state.index_copy_(0, rows, state.ssm_state)
        slots = rows if gather else self._slot_index[rows]  # [b] long
        count = self.memory_count.index_select(0, slots)
        self.memory.index_put_((slots, count % self.memory.shape[1]), token)
        self.memory_count.index_copy_(0, slots, count + 1)
        # A turn context restarts after a full window (every frame in the per-frame variant).
        frames = turn_position(self.turn_frames.index_select(0, slots), self.window)
        positions = (self.prompt_length.index_select(0, slots) + frames)[:, None]  # [b, 1]
        h = decoder_forward(model.gate.decoder, token[:, None], positions, self.gate_kv, rows)  # [b, 1, D]
        self.turn_frames.index_copy_(0, slots, frames + 1)
        return torch.softmax(model.gate.head(h[:, -1]).float(), dim=-1)[:, 1]  # [b]

    @torch.inference_mode()
    def step(self, slots: Sequence[int], frames) -> np.ndarray:
        """One frame for each of `slots`: uint8 RGB frames [b, H, W, 3] (or a list) -> p(respond) [b]."""
        pixels = self.processor.preprocess_frames(self._to_device(frames), device=self.device)  # [b, 3, S, S]
        if pixels.shape[0] != len(slots):
            raise ValueError(f"{len(slots)} streams but {pixels.shape[0]} frames")
        return self._run_always_on(slots, "pixels", pixels)

    @torch.inference_mode()
    def step_features(self, slots: Sequence[int], features: torch.Tensor) -> np.ndarray:
        """Like `step`, from pooled vision features [b, Dv] (e.g. a feature cache)."""
        features = torch.as_tensor(features).to(self.device).view(len(slots), -1)
        return self._run_always_on(slots, "features", features)

    def _to_device(self, frames):
        """uint8 frames [k, H, W, 3] as a numpy array -> the device, through pinned host memory (an
        asynchronous copy; a pageable one is synchronous and several times slower). Other inputs
        (lists of frames of different sizes, tensors) are left to the processor."""
        if self.device.type != "cuda" or not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
            return frames
        if self._staging is None or self._staging.numel() < frames.size:
            self._staging = torch.empty(frames.size, dtype=torch.uint8, pin_memory=True)
        staged = self._staging[: frames.size].view(frames.shape)
        staged.numpy()[...] = frames
        # The previous call synchronised on its result, so the buffer is free to reuse.
        return staged.to(self.device, non_blocking=True)

    def _run_always_on(self, slots: Sequence[int], kind: str, inputs: torch.Tensor) -> np.ndarray:
        for slot in slots:
            self._check_slot(slot)
        if len(set(slots)) != len(slots):
            raise ValueError(f"a stream can take one frame per call; got slots {list(slots)}")
        if not self.cuda_graphs:
            consecutive = list(slots) == list(range(slots[0], slots[0] + len(slots)))
            rows = slice(slots[0], slots[0] + len(slots)) if consecutive else self._rows(slots)
            return self._always_on(rows, **{kind: inputs}).cpu().numpy()
        out = []
        top = self.batch_sizes[-1]
        for start in range(0, len(slots), top):
            part = list(slots[start : start + top])
            out.append(self._replay_always_on(part, kind, inputs[start : start + len(part)]))
        return np.concatenate(out)

    def _replay_always_on(self, slots: list[int], kind: str, inputs: torch.Tensor, size: int | None = None) -> np.ndarray:
        b = len(slots)
        size = size or next(s for s in self.batch_sizes if s >= b)
        key = ("always_on", kind, size)
        if key not in self._graphs:
            buffers = {"rows": torch.full((size,), self.scratch, dtype=torch.long, device=self.device),
                       kind: torch.zeros(size, *inputs.shape[1:], device=self.device, dtype=inputs.dtype)}
            self._buffers[key] = buffers
            self._graphs[key] = _Graph(lambda: self._always_on(buffers["rows"], **{kind: buffers[kind]}), self._pool)
        buffers = self._buffers[key]
        rows = torch.full((size,), self.scratch, dtype=torch.long)
        rows[:b] = torch.tensor(slots)
        buffers["rows"].copy_(rows)
        buffers[kind][:b].copy_(inputs)
        return self._graphs[key]()[:b].cpu().numpy()

    @torch.inference_mode()
    def capture(self, batch_sizes: Sequence[int] | None = None, inputs: str = "pixels", decode: bool = True) -> None:
        """Capture the CUDA graphs now rather than at first use (a no-op without graphs).

        Args:
            batch_sizes: per-frame batch sizes to capture (default: all of `batch_sizes`).
            inputs: "pixels" (frames) or "features" (pooled vision features).
            decode: also the LLM's one-token decode step (allocates the LLM context).
        """
        if not self.cuda_graphs:
            return
        S = self.config.vision_config.image_size
        shape = (3, S, S) if inputs == "pixels" else (self.config.vision_dim,)
        for size in batch_sizes or self.batch_sizes:
            self._replay_always_on([], inputs, torch.zeros(0, *shape, device=self.device), size=size)
        if decode and self._llm_static:
            self._hold_llm(Conversation())
            self._decode_graph(self._span(1))

    # ---- the gate over a chunk (file mode, queries joining) -------------------------------

    def _gate_chunk(self, slot: int, tokens: torch.Tensor) -> torch.Tensor:
        """Gate p(respond) [k] of the stream's next k tokens [k, D], in one call.

        The tokens continue the current turn context; the caller keeps k within the room left
        in the window (query mode). Advances the turn's frame count.
        """
        k = tokens.shape[0]
        if self.per_frame_gate:  # every frame alone: k independent length-1 sequences
            logits = self.model.gate(tokens[:, None])[:, 0]  # [k, 2]
            self.turn_frames[slot] = 1
            return torch.softmax(logits.float(), dim=-1)[:, 1]
        start = int(self.prompt_length[slot] + self.turn_frames[slot])
        positions = torch.arange(start, start + k, device=self.device)[None]  # [1, k]
        h = decoder_forward(self.model.gate.decoder, tokens[None], positions, self.gate_kv, slice(slot, slot + 1))  # [1, k, D]
        self.turn_frames[slot] += k
        return torch.softmax(self.model.gate.head(h[0]).float(), dim=-1)[:, 1]

    def _append_memory(self, slot: int, tokens: torch.Tensor) -> None:
        K = self.memory.shape[1]
        count = int(self.memory_count[slot])
        tokens = tokens[-K:]
        skipped = max(0, tokens.shape[0] - K)
        index = (count + skipped + torch.arange(tokens.shape[0], device=self.device)) % K
        self.memory[slot, index] = tokens
        self.memory_count[slot] = count + skipped + tokens.shape[0]

    @torch.inference_mode()
    def push_clip(
        self,
        slot: int,
        frames=None,
        features: torch.Tensor | None = None,
        threshold: float = 0.5,
        max_new_tokens: int | None = None,
    ) -> ClipResult:
        """A stream's next k frames at once (frames available ahead, e.g. a file).

        Args:
            slot: the stream.
            frames: uint8 RGB [k, H, W, 3] (or a list), or
            features: pooled vision features [k, Dv].
            threshold: reply when p(respond) > threshold.
            max_new_tokens: reply length cap (default: the config's).
        Returns:
            `ClipResult`: every frame's p(respond), and the replies; the same as pushing the
            frames one by one with `step` and replying where p > threshold.
        """
        self._conversation(slot)
        if features is None:
            pixels = self.processor.preprocess_frames(self._to_device(frames), device=self.device)  # [k, 3, S, S]
            features = torch.cat([self.vision(chunk) for chunk in pixels.split(max(self.chunk_size, 1))])  # [k, Dv]
        features = torch.as_tensor(features).to(self.device, self.dtype)
        k = features.shape[0]
        state = PerceptionState(self.perception_state.conv_state[slot : slot + 1], self.perception_state.ssm_state[slot : slot + 1])
        tokens = self.model.perception(features[None], state)[0]  # [k, D]; the slot's state advances in place
        probs = np.zeros(k, dtype=np.float32)
        replies = []
        i = 0
        while i < k:
            self.turn_frames[slot] = turn_position(self.turn_frames[slot], self.window)
            room = k - i if self.per_frame_gate else min(k - i, self.window - int(self.turn_frames[slot]))
            p = self._gate_chunk(slot, tokens[i : i + room]).cpu().numpy()
            fired = np.flatnonzero(p > threshold)
            n = room if fired.size == 0 else int(fired[0]) + 1
            probs[i : i + n] = p[:n]
            self._append_memory(slot, tokens[i : i + n])
            if fired.size:
                # Frames after the reply were read in the old turn's context: the gate reads them
                # again after the reply's reset (the next round); only their EPFE tokens stay.
                replies.append((i + n - 1, float(p[n - 1]), self.respond(slot, max_new_tokens)))
            i += n
        return ClipResult(probs=probs, replies=replies)

    # ---- replies --------------------------------------------------------------------------

    def _turn_embeddings(self, user: str | None, video_tokens: torch.Tensor, first: bool) -> torch.Tensor:
        ids = self.processor.encode_turn_prefix(user, video_tokens.shape[0], first=first)
        return self.model.merge_video_tokens(torch.tensor([ids], device=self.device), video_tokens)  # [1, L, D]

    def _embed_ids(self, ids: list[int]) -> torch.Tensor:
        return self.model.language_model.get_input_embeddings()(torch.tensor([ids], device=self.device))  # [1, L, D]

    @torch.inference_mode()
    def respond(self, slot: int, max_new_tokens: int | None = None) -> str:
        """Reply now and to the end: `start_reply` and decode it whole; returns the text."""
        task = self.start_reply(slot, max_new_tokens)
        task.advance()
        return task.text

    @torch.inference_mode()
    def start_reply(self, slot: int, max_new_tokens: int | None = None, on_token: Callable[[int], None] | None = None) -> ReplyTask:
        """Start a reply: the turn's sampled tokens join the stream's conversation (one prefill).

        Returns once the first token is known (the fire -> first-token latency); the stream's
        turn memory is cleared and its gate turn restarts right away, so its next frames can
        run while `ReplyTask.advance` decodes the rest, a few tokens at a time if the caller
        interleaves replies with other streams' frames.
        """
        return ReplyTask(self, slot, self.config.max_reply_tokens if max_new_tokens is None else max_new_tokens, on_token)

    def _rebuild_context(self, conv: Conversation, budget: int) -> None:
        """Evict the oldest turns until the kept ones fit `budget` tokens, and prefill them again."""
        kept, total = [], 0
        for turn in reversed(conv.turns):
            size = len(self.processor.encode_turn_prefix(turn.user, turn.video_tokens.shape[0], first=False)) + len(turn.reply_ids)
            if total + size > budget:
                break
            kept.append(turn)
            total += size
        conv.turns = kept[::-1]
        conv.llm_length = 0
        conv.llm_rebuilds += 1
        for j, turn in enumerate(conv.turns):
            # The first kept turn re-opens the conversation: BOS, system prompt and the query.
            user = turn.user if j > 0 else (turn.user or conv.query)
            self._llm_extend(conv, self._turn_embeddings(user, turn.video_tokens, first=j == 0))
            self._llm_extend(conv, self._embed_ids(turn.reply_ids))

    # ---- the LLM context ------------------------------------------------------------------

    def _hold_llm(self, conv: Conversation) -> None:
        """Give the LLM context to `conv` (the holder's context is saved first, and `conv`'s restored).

        One conversation decodes at a time; with one stream this never copies anything.
        """
        holder = self._holder
        if holder is conv:
            return
        if self._llm_static:
            if self._llm_kv is None:
                length = self.config.max_context_tokens
                self._llm_kv = StaticKV(self.model.language_model.config, 1, length, self.device, self.dtype)
            kv = self._llm_kv
            if holder is not None and holder.llm_length:
                n = holder.llm_length
                holder.saved_kv = (kv.keys[:, :, :, :n].clone(), kv.values[:, :, :, :n].clone())
            if conv.saved_kv is not None:
                n = conv.saved_kv[0].shape[3]
                kv.keys[:, :, :, :n].copy_(conv.saved_kv[0])
                kv.values[:, :, :, :n].copy_(conv.saved_kv[1])
        else:
            if holder is not None:
                holder.saved_kv = self._llm_cache
            self._llm_cache = conv.saved_kv
        conv.saved_kv = None
        self._holder = conv

    def _llm_extend(self, conv: Conversation, embeds: torch.Tensor) -> torch.Tensor:
        """Append embeds [1, L, D] to the held conversation; returns the last position's logits [V]."""
        lm = self.model.language_model
        L = embeds.shape[1]
        start = conv.llm_length
        if self._llm_static:
            padded = L
            if self.device.type == "cuda" and L > 1:
                padded = max(L, min(-(-L // _PREFILL_BUCKET) * _PREFILL_BUCKET, self._llm_kv.length - start))
            if padded > L:
                embeds = torch.cat([embeds, embeds.new_zeros(1, padded - L, embeds.shape[2])], dim=1)
            positions = torch.arange(start, start + padded, device=self.device)[None]
            h = decoder_forward(lm.get_decoder(), embeds, positions, self._llm_kv, span=self._span(start + padded))  # [1, padded, D]
            logits = lm.get_output_embeddings()(h[0, L - 1])
        else:
            if start == 0:
                self._llm_cache = DynamicCache(config=lm.config)
            positions = torch.arange(start, start + L, device=self.device)[None]
            out = lm(inputs_embeds=embeds, position_ids=positions, cache=self._llm_cache, use_cache=True, logits_to_keep=1)
            logits = out.logits[0, -1]
        conv.llm_length = start + L
        return logits

    def _llm_decode(self, conv: Conversation, token_id: int) -> int:
        """Feed one token to the held conversation; returns the greedy next id."""
        if not (self._llm_static and self.cuda_graphs):
            return int(self._llm_extend(conv, self._embed_ids([token_id])).argmax())
        graph, buffers = self._decode_graph(self._span(conv.llm_length + 1))
        buffers["token"].fill_(token_id)
        buffers["position"].fill_(conv.llm_length)
        next_id = int(graph())
        conv.llm_length += 1
        return next_id

    def _span(self, length: int) -> int:
        """The attention span that holds `length` positions of the LLM context."""
        return min(self._llm_kv.length, -(-length // _CONTEXT_SPAN) * _CONTEXT_SPAN)

    def _decode_graph(self, span: int) -> tuple[_Graph, dict[str, torch.Tensor]]:
        """The LLM's one-token greedy step on the first `span` positions of the context, as a graph
        (captured on first use of the span)."""
        key = ("decode", span)
        if key not in self._graphs:
            # The warm-up writes at the span's last position, past the conversation's length.
            buffers = {"token": torch.zeros(1, 1, dtype=torch.long, device=self.device),
                       "position": torch.full((1, 1), span - 1, dtype=torch.long, device=self.device)}
            self._buffers[key] = buffers
            lm = self.model.language_model

            def decode_step() -> torch.Tensor:
                embeds = lm.get_input_embeddings()(buffers["token"])  # [1, 1, D]
                h = decoder_forward(lm.get_decoder(), embeds, buffers["position"], self._llm_kv, span=span)
                return lm.get_output_embeddings()(h[:, -1]).argmax(-1)  # [1]

            self._graphs[key] = _Graph(decode_step, self._pool)
        return self._graphs[key], self._buffers[key]

    # ---- one-shot generation (offline questions) -----------------------------------------

    @torch.inference_mode()
    def generate(self, embeds: torch.Tensor, max_new_tokens: int) -> list[int]:
        """Greedy ids (EOS excluded) after a whole prompt embeds [1, L, D], outside any stream."""
        if embeds.shape[1] + max_new_tokens + 1 > self.config.max_context_tokens:
            raise ValueError(f"a prompt of {embeds.shape[1]} tokens + {max_new_tokens} new ones exceeds max_context_tokens "
                             f"({self.config.max_context_tokens})")
        conv = Conversation()
        self._hold_llm(conv)
        logits = self._llm_extend(conv, embeds)
        eos = self.processor.eos_token_id
        generated: list[int] = []
        next_id = int(logits.argmax())
        while next_id != eos and len(generated) < max_new_tokens:
            generated.append(next_id)
            next_id = self._llm_decode(conv, next_id)
        return generated

    @torch.inference_mode()
    def beam_search(
        self,
        embeds: torch.Tensor,
        *,
        max_new_tokens: int,
        num_beams: int,
        num_return_sequences: int | None = None,
        length_penalty: float = 1.0,
    ) -> list[Hypothesis]:
        """`beam_search` after a whole prompt embeds [1, L, D], outside any stream (K rows of the LLM)."""
        K, L = num_beams, embeds.shape[1]
        lm = self.model.language_model
        embed = lm.get_input_embeddings()
        if self._llm_static:
            kv = StaticKV(lm.config, K, L + max_new_tokens + 1, self.device, self.dtype)
            h = decoder_forward(lm.get_decoder(), embeds, torch.arange(L, device=self.device)[None], kv)  # slot 0
            for k in range(1, K):
                kv.copy_slot(0, k, upto=L)
            first = lm.get_output_embeddings()(h[0, -1])
            length = [L]

            def advance(order: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
                kv.reorder(order, upto=length[0])
                positions = torch.full((K, 1), length[0], dtype=torch.long, device=self.device)
                h = decoder_forward(lm.get_decoder(), embed(tokens[:, None]), positions, kv)  # [K, 1, D]
                length[0] += 1
                return torch.log_softmax(lm.get_output_embeddings()(h[:, -1]).float(), dim=-1)
        else:
            cache = DynamicCache(config=lm.config)
            out = lm(inputs_embeds=embeds, cache=cache, use_cache=True, logits_to_keep=1)
            first = out.logits[0, -1]
            cache.batch_repeat_interleave(K)
            length = [L]

            def advance(order: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
                cache.reorder_cache(order)
                positions = torch.full((K, 1), length[0], dtype=torch.long, device=self.device)
                out = lm(inputs_embeds=embed(tokens[:, None]), position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1)
                length[0] += 1
                return torch.log_softmax(out.logits[:, -1].float(), dim=-1)

        return beam_search(torch.log_softmax(first.float(), dim=-1), advance, eos_token_id=self.processor.eos_token_id,
                           max_new_tokens=max_new_tokens, num_beams=K, num_return_sequences=num_return_sequences,
                           length_penalty=length_penalty)

    @classmethod
    def for_model(cls, model, processor) -> Engine:
        """A single-stream engine of `model`, built once and reused (the offline evaluators' answers)."""
        engine = _SHARED.get(model)
        if engine is None or engine.processor is not processor:
            engine = _SHARED[model] = cls(model, processor)
        return engine

    # ---- accounting -----------------------------------------------------------------------

    def state_bytes(self) -> dict:
        """Bytes of state per stream slot, by part (what one more stream costs)."""
        ps = self.perception_state
        slot_bytes = lambda t: t[0].numel() * t.element_size()  # noqa: E731
        out = {
            "epfe_state": slot_bytes(ps.conv_state) + slot_bytes(ps.ssm_state),
            "turn_memory": slot_bytes(self.memory),
            "gate_cache": self.gate_kv.nbytes_per_slot,
        }
        lm = self.model.language_model.config
        head_dim = getattr(lm, "head_dim", None) or lm.hidden_size // lm.num_attention_heads
        kv_heads = getattr(lm, "num_key_value_heads", lm.num_attention_heads)
        out["llm_context_max"] = 2 * lm.num_hidden_layers * kv_heads * head_dim * self.config.max_context_tokens * torch.finfo(self.dtype).bits // 8
        return out


class ReplyTask:
    """A reply being decoded for one stream (made by `Engine.start_reply`).

    The constructor samples the turn memory, opens the turn in the conversation (a rebuild
    first when the context would overflow), prefills it and picks the first token; `advance`
    decodes on, greedily, to EOS or the length cap, then closes the turn with EOS in the
    context (as training sequences end a reply). `text` is the reply once `done`.
    """

    def __init__(self, engine: Engine, slot: int, cap: int, on_token: Callable[[int], None] | None = None):
        self.engine, self.slot, self.cap, self.on_token = engine, slot, cap, on_token
        self.conv = conv = engine.conversation(slot)
        config = engine.config
        engine._hold_llm(conv)
        video_tokens = select_tokens(engine.turn_tokens(slot), config.sampling, config.sampling_ratio)  # [k, D]
        user = conv.pending_user if conv.llm_length else (conv.pending_user or conv.query)
        prefix = engine._turn_embeddings(user, video_tokens, first=conv.llm_length == 0)
        if conv.llm_length + prefix.shape[1] + cap + 1 > config.max_context_tokens:
            engine._rebuild_context(conv, config.max_context_tokens // 2)
            if conv.llm_length == 0:
                user = user or conv.query
            prefix = engine._turn_embeddings(user, video_tokens, first=conv.llm_length == 0)
        self.turn = Turn(user=user, video_tokens=video_tokens, reply_ids=[])
        conv.pending_user = None
        engine.memory_count[slot] = 0
        engine.turn_frames[slot] = 0
        self.next_id = int(engine._llm_extend(conv, prefix).argmax())
        self.generated: list[int] = []
        self.done = False
        self.text: str | None = None

    @torch.inference_mode()
    def advance(self, max_tokens: int | None = None) -> bool:
        """Decode up to `max_tokens` more tokens (all that remain by default); returns `done`."""
        engine, conv, eos = self.engine, self.conv, self.engine.processor.eos_token_id
        engine._hold_llm(conv)
        steps = 0
        while not self.done and (max_tokens is None or steps < max_tokens):
            if self.next_id == eos or len(self.generated) >= self.cap:
                engine._llm_decode(conv, eos)  # close the turn with EOS in the context
                self.turn.reply_ids = self.generated + [eos]
                conv.turns.append(self.turn)
                self.text = engine.processor.decode(self.generated)
                self.done = True
                break
            self.generated.append(self.next_id)
            if self.on_token is not None:
                self.on_token(self.next_id)
            self.next_id = engine._llm_decode(conv, self.next_id)
            steps += 1
        return self.done


_SHARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class Hypothesis:
    """A beam-search result: generated ids (EOS excluded), summed log-prob (EOS included when
    `finished`), the length-normalised score, and whether it ended with EOS (else at the cap)."""

    ids: list[int]
    logprob: float
    score: float
    finished: bool


def beam_search(
    first_logp: torch.Tensor,
    advance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    eos_token_id: int,
    max_new_tokens: int,
    num_beams: int,
    num_return_sequences: int | None = None,
    length_penalty: float = 1.0,
) -> list[Hypothesis]:
    """Plain beam search over K rows of a model that shares one prompt.

    At every step the 2K best continuations of the K live beams are ranked; an EOS among the
    first K ranks closes a hypothesis scored sum(log p) / length ** length_penalty (length
    counts the generated tokens, EOS included), and the best K others stay live. It stops
    when K hypotheses are closed and no live beam can still beat the worst of them (an exact
    bound for length_penalty > 0, not a heuristic), or at `max_new_tokens`, where live beams
    are closed as they are.

    Args:
        first_logp: [V] log-probs of the first new token (after the prompt).
        advance: `advance(order [K], tokens [K]) -> log-probs [K, V]`: row i continues row
            order[i]'s sequence with tokens[i] (the model's cache reordered, then one step).
        eos_token_id, max_new_tokens, num_beams (K), length_penalty: as above.
        num_return_sequences: how many hypotheses to return (default K).
    Returns:
        The best hypotheses, best first.
    """
    K = num_beams
    n_return = K if num_return_sequences is None else num_return_sequences
    if K < 1 or not 1 <= n_return <= K:
        raise ValueError(f"need num_beams >= 1 and 1 <= num_return_sequences <= num_beams, got {K} and {n_return}")
    device = first_logp.device
    logp = first_logp.expand(K, -1)  # [K, V]
    # Only the first beam is live at the start, so the K beams do not all repeat one token.
    scores = torch.full((K,), -math.inf, device=device)
    scores[0] = 0.0
    beams: list[list[int]] = [[] for _ in range(K)]
    finished: list[Hypothesis] = []

    def normalise(logprob: float, n: int) -> float:
        return logprob / (max(n, 1) ** length_penalty)

    still_open: list[tuple[list[int], float]] = []  # live beams closed unfinished at the length cap
    for step in range(max_new_tokens):
        candidates = (scores[:, None] + logp).view(-1)  # [K * V]
        top_scores, top_index = candidates.topk(min(2 * K, candidates.numel()))
        live: list[tuple[float, int, int]] = []  # (score, beam, token), best first
        for rank, (score, index) in enumerate(zip(top_scores.tolist(), top_index.tolist())):
            if score == -math.inf:
                break
            beam, token = divmod(index, logp.shape[1])
            if token == eos_token_id:
                if rank < K:
                    finished.append(Hypothesis(beams[beam], score, normalise(score, len(beams[beam]) + 1), True))
                continue
            live.append((score, beam, token))
            if len(live) == K:
                break
        finished.sort(key=lambda h: h.score, reverse=True)
        del finished[K:]
        if not live:
            break
        if len(finished) == K:
            # Log-probs only fall, so a live beam ends at best with its current sum spread
            # over the longest allowed length (length_penalty > 0) or its current one (<= 0).
            bound_length = max_new_tokens if length_penalty > 0 else step + 1
            if normalise(live[0][0], bound_length) <= finished[-1].score:
                break
        while len(live) < K:  # dead copies keep the batch at K rows
            live.append((-math.inf, live[0][1], live[0][2]))
        beams = [beams[b] + [t] for _, b, t in live]
        scores = torch.tensor([s for s, _, _ in live], device=device)
        if step == max_new_tokens - 1:
            still_open = [(ids, s) for ids, (s, _, _) in zip(beams, live) if s > -math.inf]
            break
        order = torch.tensor([b for _, b, _ in live], device=device)
        logp = advance(order, torch.tensor([t for _, _, t in live], device=device))  # [K, V]
    finished += [Hypothesis(ids, s, normalise(s, len(ids)), False) for ids, s in still_open]
    finished.sort(key=lambda h: h.score, reverse=True)
    return finished[:n_return]


__all__ = ["ClipResult", "Conversation", "Engine", "Hypothesis", "ReplyTask", "Turn", "beam_search"]
