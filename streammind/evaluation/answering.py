"""Answering one question about one clip: the offline benchmarks' prompt and decoding.

Notation: T sampled frames, S = image size, D LLM width, k = perception tokens kept for
the turn (`processor.placeholders_for(T)`), V vocabulary, K beams.

One question about one clip is answered the way a stage-1 model was trained to answer a
turn, in one `[INST]` turn:

    frames --processor.preprocess_frames--> pixel values [T, 3, S, S]
        --model.get_perception_tokens--> tokens [1, T, D] (CLIP, EPFE scan over the clip)
        --model.select_turn_tokens (the config's sampling)--> [k, D]
    <s>[INST] <<SYS>>..<</SYS>>\\n\\n{question}<video>*k\\n [/INST]  --merge_video_tokens-->
        inputs_embeds [1, S_text, D] --the inference engine's LLM--> greedy or beam search

Decoding runs in the inference engine (`streammind.engine`), one shared per model: greedy
(`Engine.generate`) stops at EOS or after `max_new_tokens` tokens; beam search
(`Engine.beam_search`, rules in `streammind.engine.beam_search`) ranks the 2K best
continuations of K live beams at every step, an EOS among the first K closing a hypothesis
scored sum(log p) / length ** length_penalty. `answer_beams` returns the
`num_return_sequences` best texts, best first (the Ego4D LTA protocol: 5 beams, 5 returned
sequences). Everything runs at batch size 1 (one clip).
"""

from __future__ import annotations

import numpy as np
import torch

from ..engine import Engine


def _pixel_values(model, processor, frames_or_pixel_values) -> torch.Tensor:
    """uint8 frames [T, H, W, 3] or pixel values [T, 3, S, S] / [1, T, 3, S, S] -> [1, T, 3, S, S]."""
    x = frames_or_pixel_values
    if isinstance(x, np.ndarray) or (isinstance(x, torch.Tensor) and x.dtype == torch.uint8) or isinstance(x, (list, tuple)):
        x = processor.preprocess_frames(x)  # [T, 3, S, S]
    if x.ndim == 4:
        x = x[None]  # [T, 3, S, S] -> [1, T, 3, S, S]
    if x.ndim != 5 or x.shape[0] != 1 or x.shape[2] != 3:
        raise ValueError(f"expected frames [T, H, W, 3] or pixel values [T, 3, S, S], got {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError("no frames to answer from")
    param = next(model.vision.parameters())
    return x.to(param.device, param.dtype)


@torch.inference_mode()
def encode_prompt(model, processor, frames_or_pixel_values, question: str) -> torch.Tensor:
    """The question turn with the clip's perception tokens scattered in: inputs_embeds [1, S_text, D]."""
    pixel_values = _pixel_values(model, processor, frames_or_pixel_values)  # [1, T, 3, S, S]
    T = pixel_values.shape[1]
    tokens = model.get_perception_tokens(pixel_values=pixel_values)  # [1, T, D]
    turn_ends = torch.tensor([[T]], device=tokens.device)
    video_tokens = model.select_turn_tokens(tokens, turn_ends)[0]  # [k, D]
    ids = processor.encode_turn_prefix(question, processor.placeholders_for(T), first=True)
    ids = torch.tensor([ids], device=tokens.device)
    return model.merge_video_tokens(ids, video_tokens)  # count-checked scatter


def answer(
    model,
    processor,
    frames_or_pixel_values,
    question: str,
    *,
    max_new_tokens: int = 256,
    num_beams: int = 1,
    length_penalty: float = 1.0,
) -> str:
    """Answer one question about one clip.

    Args:
        model: a StreamMindForCausalLM (eval mode).
        processor: its StreamMindProcessor.
        frames_or_pixel_values: uint8 frames [T, H, W, 3] (numpy or torch), or pixel
            values [T, 3, S, S] already preprocessed.
        question: the user text of the turn.
        max_new_tokens: generation cap.
        num_beams: 1 = greedy; > 1 = beam search, the best beam returned.
    Returns:
        The decoded answer (special tokens dropped, stripped).
    """
    if num_beams > 1:
        return answer_beams(model, processor, frames_or_pixel_values, question, max_new_tokens=max_new_tokens,
                            num_beams=num_beams, num_return_sequences=1, length_penalty=length_penalty)[0]
    embeds = encode_prompt(model, processor, frames_or_pixel_values, question)
    return processor.decode(Engine.for_model(model, processor).generate(embeds, max_new_tokens))


def answer_beams(
    model,
    processor,
    frames_or_pixel_values,
    question: str,
    *,
    max_new_tokens: int = 256,
    num_beams: int = 5,
    num_return_sequences: int = 5,
    length_penalty: float = 1.0,
) -> list[str]:
    """Like `answer`, with beam search: the `num_return_sequences` best texts, best first."""
    embeds = encode_prompt(model, processor, frames_or_pixel_values, question)
    hypotheses = Engine.for_model(model, processor).beam_search(embeds, max_new_tokens=max_new_tokens, num_beams=num_beams,
                                                                num_return_sequences=num_return_sequences, length_penalty=length_penalty)
    return [processor.decode(h.ids) for h in hypotheses]


__all__ = ["answer", "answer_beams", "encode_prompt"]
