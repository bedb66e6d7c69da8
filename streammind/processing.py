"""Prompt rendering, `<video>` expansion and label masking: one path for training and inference.

Notation: S text tokens, n frames in a turn, k placeholders for it (k = num_selected(n)).

The conversation uses the Mistral-instruct / Llama-2 `[INST]` template with a system prompt.
A streaming dialogue is a list of turns; turn i holds the perception tokens of the frames
since the previous reply, optional user text (the query on the first turn, or a query that
joined mid-stream), and the assistant's reply:

    <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{query}<video>...<video>\n [/INST] {reply_1}</s>
    [INST] <video>...<video>\n [/INST] {reply_2}</s>
    [INST] {new query}<video>...\n [/INST] {reply_3}</s>

(the line breaks between turns above are for reading only). Each `<video>` is one
in-vocabulary placeholder token; the model scatters one perception token into each.

Text chunks are tokenised one by one and special ids (BOS, EOS, the placeholder) are
inserted by id, so the ids of a turn never depend on what came before it: the streaming
runtime appends exactly the ids that training saw. Only reply tokens and their EOS are
supervised; everything else is labelled -100. Unlike the original renderer, no instruction
text is injected behind the user's back.

Reference: docs/design.md §2 and §7.4 (the original renderer's injected instruction).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from tokenizers import AddedToken
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .configuration import StreamMindConfig
from .fileio import atomic_directory
from .sampling import memory_frames, num_selected
from .vision import FrameProcessor

IGNORE_INDEX = -100


@dataclass
class ChatTurn:
    """One turn of a streaming dialogue.

    Args:
        num_frames: perception placeholders in this turn (after sampling).
        user: user text that opens the turn (the query on turn 0), or None.
        reply: the assistant's reply; None for the turn being generated.
    """

    num_frames: int
    user: str | None = None
    reply: str | None = None


def render_text(turns: list[ChatTurn], system: str, video_token: str = "<video>", bos: str = "<s>", eos: str = "</s>") -> str:
    """The conversation as a string (what the ids of `encode_conversation` decode to)."""
    out = [bos]
    for i, turn in enumerate(turns):
        out.append(_turn_prefix_text(turn.user, system if i == 0 else None))
        out.append(video_token * turn.num_frames)
        out.append(_TURN_CLOSE)
        if turn.reply is not None:
            out.append(_reply_text(turn.reply) + eos)
    return "".join(out)


_TURN_CLOSE = "\n [/INST]"


def _turn_prefix_text(user: str | None, system: str | None) -> str:
    text = "[INST] "
    if system:
        text += f"<<SYS>>\n{system}\n<</SYS>>\n\n"
    return text + (user or "")


def _reply_text(reply: str) -> str:
    return " " + reply.strip()


class StreamMindProcessor:
    """Tokenizer + frame preprocessing + the prompt renderer, configured by a StreamMindConfig.

    Args:
        tokenizer: the LLM tokenizer; must contain `config.video_token` as a token.
        config: the model config (placeholder token, sampling, system prompt, image settings).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: StreamMindConfig):
        self.tokenizer = tokenizer
        self.config = config
        self.frame_processor = FrameProcessor.from_config(config)
        video_id = tokenizer.convert_tokens_to_ids(config.video_token)
        if video_id is None or video_id == tokenizer.unk_token_id:
            raise ValueError(
                f"the tokenizer has no {config.video_token!r} token; add it with `add_video_token(tokenizer)` "
                "(the builder does this) before creating the processor"
            )
        if config.video_token_id is not None and config.video_token_id != video_id:
            raise ValueError(
                f"config.video_token_id is {config.video_token_id} but the tokenizer maps "
                f"{config.video_token!r} to {video_id}: tokenizer and checkpoint do not match"
            )
        if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer needs BOS and EOS tokens for the [INST] template")
        self.video_token_id = video_id
        self.bos_token_id = tokenizer.bos_token_id
        self.eos_token_id = tokenizer.eos_token_id
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    # ---- frames ---------------------------------------------------------------------------

    def preprocess_frames(self, frames, device: torch.device | str | None = None) -> torch.Tensor:
        """uint8 RGB frames [N, H, W, 3] -> pixel values [N, 3, S, S] (computed on `device`, see `FrameProcessor`)."""
        return self.frame_processor(frames, device)

    def placeholders_for(self, num_frames: int) -> int:
        """How many perception tokens of an n-frame turn reach the LLM (memory bound, then sampling)."""
        n = memory_frames(num_frames, self.config.max_turn_frames)
        return num_selected(n, self.config.sampling, self.config.sampling_ratio)

    # ---- text -----------------------------------------------------------------------------

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []

    def encode_turn_prefix(self, user: str | None, num_placeholders: int, first: bool) -> list[int]:
        """Ids that open a turn, up to and including `[/INST]` (BOS and system prompt on the first)."""
        ids = [self.bos_token_id] if first else []
        ids += self._encode(_turn_prefix_text(user, self.config.system_prompt if first else None))
        ids += [self.video_token_id] * num_placeholders
        ids += self._encode(_TURN_CLOSE)
        return ids

    def encode_reply(self, reply: str) -> list[int]:
        """Reply ids followed by EOS (what the LLM is trained to produce)."""
        return self._encode(_reply_text(reply)) + [self.eos_token_id]

    def encode_conversation(self, turns: list[ChatTurn]) -> tuple[list[int], list[int]]:
        """Ids and labels of a whole dialogue; labels are -100 except on replies and their EOS."""
        ids: list[int] = []
        labels: list[int] = []
        for i, turn in enumerate(turns):
            prefix = self.encode_turn_prefix(turn.user, turn.num_frames, first=i == 0)
            ids += prefix
            labels += [IGNORE_INDEX] * len(prefix)
            if turn.reply is not None:
                reply = self.encode_reply(turn.reply)
                ids += reply
                labels += reply
        return ids, labels

    def encode_gate_prompt(self, query: str | None) -> list[int]:
        """The gate's prefix: BOS, system prompt and query, as the LLM's first turn opens (query mode)."""
        if self.config.gate_mode == "per_frame":
            return []
        return [self.bos_token_id] + self._encode(_turn_prefix_text(query, self.config.system_prompt))

    def render_text(self, turns: list[ChatTurn]) -> str:
        return render_text(turns, self.config.system_prompt, self.config.video_token, self.tokenizer.bos_token, self.tokenizer.eos_token)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    # ---- persistence ----------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Save the tokenizer (processor settings live in the model config saved beside it); each
        file is replaced atomically."""
        with atomic_directory(directory) as tmp:
            self.tokenizer.save_pretrained(tmp)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, config: StreamMindConfig | None = None) -> StreamMindProcessor:
        config = config if config is not None else StreamMindConfig.from_pretrained(directory)
        # Passing the LLM's config keeps AutoTokenizer from parsing our composite config.json.
        return cls(AutoTokenizer.from_pretrained(directory, config=config.text_config), config)


def add_video_token(tokenizer: PreTrainedTokenizerBase, video_token: str = "<video>") -> int:
    """Add the placeholder as a special token (idempotent); returns its id."""
    if video_token not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(video_token, special=True, normalized=False)], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(video_token)


__all__ = ["ChatTurn", "IGNORE_INDEX", "StreamMindProcessor", "add_video_token", "render_text"]
