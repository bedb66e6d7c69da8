"""Build, save and load StreamMind models (with their tokenizer and processor settings).

- `build_model(config, tokenizer)`: a freshly initialised model from a config (presets,
  tests, the synthetic world).
- `build_from_parts(clip_path, llm_path, ...)`: the real starting point of stage 1 — a CLIP
  vision directory (`openai/clip-vit-large-patch14-336` layout) plus an LLM directory
  (Mistral-7B-Instruct or any causal LM); the EPFE and the gate start fresh, the gate
  optionally from the LLM's first layers. Paths or hub ids; local paths work offline.
- `save_model` / `load_model`: one directory holds config, weights (safetensors) and the
  tokenizer; loading depends only on what is inside it (never on its name or a flag).

Reference: SPEC §3, §8.
"""

from __future__ import annotations

import logging
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPVisionModel, PreTrainedTokenizerBase

from .configuration import StreamMindConfig
from .modeling_streammind import StreamMindForCausalLM
from .processing import StreamMindProcessor, add_video_token

logger = logging.getLogger(__name__)


def build_model(
    config: StreamMindConfig, tokenizer: PreTrainedTokenizerBase, vision: CLIPVisionModel | None = None
) -> tuple[StreamMindForCausalLM, StreamMindProcessor]:
    """A freshly initialised model whose vocabulary and placeholder id match `tokenizer`.

    `vision`: a pretrained tower to use instead of a fresh one (its config must be
    `config.vision_config`).
    """
    video_id = add_video_token(tokenizer, config.video_token)
    config.video_token_id = video_id
    vocab = len(tokenizer)
    if config.text_config.vocab_size < vocab:
        config.text_config.vocab_size = vocab
        config.gate_config.vocab_size = vocab
    if vision is not None and vision.config.to_dict() != config.vision_config.to_dict():
        raise ValueError("the pretrained vision tower's config differs from config.vision_config")
    model = StreamMindForCausalLM(config, vision=vision)
    return model, StreamMindProcessor(tokenizer, config)


def init_gate_from_llm(model: StreamMindForCausalLM) -> None:
    """Copy the LLM's token embeddings, first decoder layers and final norm into the gate.

    The gate has the LLM's width on purpose (the paper's option; `--train_skip_cls` in the
    released code). Raises when the shapes differ.
    """
    gate, llm = model.gate.decoder, model.language_model
    base = llm.get_decoder() if hasattr(llm, "get_decoder") else llm.model
    n = len(gate.layers)
    if not hasattr(base, "layers") or len(base.layers) < n:
        raise ValueError(f"the LLM needs at least {n} decoder layers under `.layers` to initialise the gate")
    if gate.config.hidden_size != llm.config.hidden_size:
        raise ValueError(f"gate width {gate.config.hidden_size} != LLM width {llm.config.hidden_size}: cannot copy layers")
    pairs = [(gate.embed_tokens, base.embed_tokens), (gate.norm, base.norm)] + [(gate.layers[i], base.layers[i]) for i in range(n)]
    with torch.no_grad():
        for dst, src in pairs:
            src_state = src.state_dict()
            dst_state = dst.state_dict()
            if src_state.keys() != dst_state.keys() or any(src_state[k].shape != dst_state[k].shape for k in src_state):
                raise ValueError(f"cannot initialise gate module {type(dst).__name__} from the LLM: parameter names or shapes differ")
            dst.load_state_dict(src_state)


def build_from_parts(
    clip_path: str | os.PathLike,
    llm_path: str | os.PathLike,
    gate_init_from_llm: bool = False,
    dtype: torch.dtype = torch.float32,
    **config_overrides,
) -> tuple[StreamMindForCausalLM, StreamMindProcessor]:
    """A stage-1 starting point from a CLIP directory and an LLM directory.

    Args:
        clip_path: CLIP vision (or full CLIP) checkpoint directory or hub id.
        llm_path: causal-LM checkpoint directory or hub id (with its tokenizer).
        gate_init_from_llm: initialise the gate from the LLM's first layers.
        dtype: weight dtype of the loaded parts.
        config_overrides: StreamMindConfig fields (gate_num_layers, sampling, ...).
    """
    clip = CLIPVisionModel.from_pretrained(clip_path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(llm_path)
    llm = AutoModelForCausalLM.from_pretrained(llm_path, dtype=dtype)
    config = StreamMindConfig(vision_config=clip.config.to_dict(), text_config=llm.config.to_dict(), **config_overrides)
    config.video_token_id = add_video_token(tokenizer, config.video_token)
    if len(tokenizer) > llm.get_input_embeddings().weight.shape[0]:
        llm.resize_token_embeddings(len(tokenizer))
        config.text_config.vocab_size = len(tokenizer)
        config.gate_config.vocab_size = len(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    model = StreamMindForCausalLM(config, vision=clip, language_model=llm).to(dtype)
    if gate_init_from_llm:
        init_gate_from_llm(model)
    logger.info("built StreamMind from CLIP %s and LLM %s (EPFE and gate freshly initialised)", clip_path, llm_path)
    return model, StreamMindProcessor(tokenizer, config)


def save_model(model: StreamMindForCausalLM, processor: StreamMindProcessor, directory: str | os.PathLike, max_shard_size: str = "5GB") -> None:
    """Write config, weights (safetensors, sharded above `max_shard_size`) and tokenizer to one directory."""
    model.save_pretrained(directory, max_shard_size=max_shard_size)
    processor.save_pretrained(directory)


def load_model(
    directory: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[StreamMindForCausalLM, StreamMindProcessor]:
    """Load a saved StreamMind directory -> (model, processor)."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no StreamMind checkpoint directory at {directory}")
    if not os.path.isfile(os.path.join(directory, "config.json")):
        raise FileNotFoundError(f"{directory} has no config.json: not a saved StreamMind model")
    config = StreamMindConfig.from_pretrained(directory)
    model = StreamMindForCausalLM.from_pretrained(directory, config=config, dtype=dtype or torch.float32)
    if device is not None:
        model = model.to(device)
    return model.eval(), StreamMindProcessor.from_pretrained(directory, config=config)


__all__ = ["build_from_parts", "build_model", "init_gate_from_llm", "load_model", "save_model"]
