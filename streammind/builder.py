"""Build, save and load StreamMind models (with their tokenizer and processor settings).

- `build_model(config, tokenizer)`: a freshly initialised model from a config (presets,
  tests, the synthetic world).
- `build_from_parts(clip_path, llm_path, ...)`: the real starting point of stage 1 — a CLIP
  vision directory (`openai/clip-vit-large-patch14-336` layout) plus an LLM directory
  (Mistral-7B-Instruct or any causal LM); the EPFE and the gate start fresh, the gate
  optionally from the LLM's first layers. Paths or hub ids; local paths work offline.
- `default_dtype`, `grow_vocabulary`: the one way to initialise in a dtype and to fit the
  vocabulary to a tokenizer with added tokens (used here, by training and by conversion).
- `save_model` / `load_model`: one directory holds config, weights (safetensors) and the
  tokenizer; loading depends only on what is inside it (never on its name or a flag).
  Saving is atomic (`streammind.fileio`): a crash leaves the old directory or the complete
  new one, never half a model.
- Loading is strict: `config.json` must be a StreamMind config that names its vision and
  text sub-configs (an empty `{}` or another architecture's config is refused, never
  completed with the 7B defaults), the weights and tokenizer files must be there and
  readable, and every tensor of the model must be in the weights and every tensor of the
  weights in the model. `load_model(..., strict=False)` (`--allow-partial-load` on the
  command line) loads a deliberately partial checkpoint, logging what was initialised
  fresh. Every refusal is a `CheckpointError` naming the file and the problem.

Reference: docs/design.md §2; docs/checkpoints.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPVisionModel, PreTrainedModel, PreTrainedTokenizerBase

from .configuration import StreamMindConfig
from .errors import UserError
from .fileio import atomic_directory
from .modeling_perframe import PerFrameLLM, PerFrameLLMConfig, PerFrameProcessor
from .modeling_streammind import StreamMindForCausalLM
from .processing import StreamMindProcessor, add_video_token

logger = logging.getLogger(__name__)

# Any of these makes a tokenizer directory (fast tokenizer, sentencepiece, BPE vocab).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
# Longest list of tensor names shown in an error.
_MAX_NAMES = 10
# The model kinds a directory may hold: config.json's model_type -> (config, model, processor).
_KINDS = {
    StreamMindConfig.model_type: (StreamMindConfig, StreamMindForCausalLM, StreamMindProcessor),
    PerFrameLLMConfig.model_type: (PerFrameLLMConfig, PerFrameLLM, PerFrameProcessor),
}


class CheckpointError(UserError, ValueError):
    """A model directory that cannot be loaded (the message names the file and the problem)."""


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Create floating-point tensors in `dtype` inside the block (e.g. to initialise a 7B model in bf16)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def grow_vocabulary(config: StreamMindConfig, size: int, language_model: PreTrainedModel | None = None, gate: bool = True) -> None:
    """Make the vocabulary hold `size` ids (a tokenizer with added tokens); never shrinks it.

    Args:
        config: its `text_config.vocab_size` (and, with `gate`, `gate_config.vocab_size`: the
            gate embeds prompt ids of the same tokenizer) grow to `size`.
        size: the tokenizer's length.
        language_model: a built LLM whose embeddings grow too (new rows: transformers' mean resizing).
        gate: also grow the gate's vocabulary (False for a gate with its own, e.g. the original release's).
    """
    if language_model is not None and language_model.get_input_embeddings().weight.shape[0] < size:
        language_model.resize_token_embeddings(size)
    config.text_config.vocab_size = max(config.text_config.vocab_size, size)
    if gate:
        config.gate_config.vocab_size = max(config.gate_config.vocab_size, size)


def build_model(
    config: StreamMindConfig, tokenizer: PreTrainedTokenizerBase, vision: CLIPVisionModel | None = None
) -> tuple[StreamMindForCausalLM, StreamMindProcessor]:
    """A freshly initialised model whose vocabulary and placeholder id match `tokenizer`.

    `vision`: a pretrained tower to use instead of a fresh one (its config must be
    `config.vision_config`).
    """
    config.video_token_id = add_video_token(tokenizer, config.video_token)
    grow_vocabulary(config, len(tokenizer))
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
    grow_vocabulary(config, len(tokenizer), language_model=llm)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    model = StreamMindForCausalLM(config, vision=clip, language_model=llm).to(dtype)
    if gate_init_from_llm:
        init_gate_from_llm(model)
    logger.info("built StreamMind from CLIP %s and LLM %s (EPFE and gate freshly initialised)", clip_path, llm_path)
    return model, StreamMindProcessor(tokenizer, config)


def save_model(model: StreamMindForCausalLM, processor: StreamMindProcessor, directory: str | os.PathLike, max_shard_size: str = "5GB") -> None:
    """Write config, weights (safetensors, sharded above `max_shard_size`) and tokenizer to one
    directory, atomically: a crash part way leaves the directory as it was."""
    with atomic_directory(directory) as tmp:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        processor.save_pretrained(tmp)


def _names(keys) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_NAMES])
    return shown + (f" and {len(keys) - _MAX_NAMES} more" if len(keys) > _MAX_NAMES else "")


def read_config(directory: str | os.PathLike) -> StreamMindConfig | PerFrameLLMConfig:
    """The StreamMindConfig saved in `directory` (or the per-frame-LLM baseline's config),
    after checking that it is one.

    Raises:
        CheckpointError: no such directory, no or unreadable config.json, a config of
            another architecture, or one that does not name its sub-configs.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no StreamMind checkpoint directory there")
    path = directory / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a saved StreamMind model (no config.json there)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from exc
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path}: not a text file ({exc.reason} at byte {exc.start})") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    model_type = raw.get("model_type")
    if model_type not in _KINDS:
        what = f"a {model_type!r} model config" if model_type else "a config without model_type"
        archs = raw.get("architectures")
        raise CheckpointError(f"{path}: {what}{f' ({archs})' if archs else ''}, not a StreamMind one "
                              "(import other checkpoints with `streammind convert`)")
    unnamed = [name for name in ("vision_config", "text_config") if not isinstance(raw.get(name), dict) or "model_type" not in raw[name]]
    if unnamed:
        raise CheckpointError(f"{path}: a StreamMind config must name its sub-configs, but {unnamed} "
                              f"{'is' if len(unnamed) == 1 else 'are'} missing or without model_type (refusing to fill in the 7B defaults)")
    try:
        return _KINDS[model_type][0].from_pretrained(directory)
    except (ValueError, TypeError, KeyError, StrictDataclassError) as exc:
        raise CheckpointError(f"{path}: {' '.join(str(exc).split())}") from exc


def _safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is unreadable or truncated (reads only its header), or None."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return "truncated (no header)"
            (length,) = struct.unpack("<Q", head)
            if length > size - 8:
                return "not a safetensors file, or truncated (header length beyond the end of the file)"
            header = json.loads(handle.read(length))
        ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        return f"not a safetensors file ({type(exc).__name__}: {exc})"
    if 8 + length + max(ends, default=0) > size:
        return f"truncated: {size} bytes, the header describes {8 + length + max(ends)}"
    return None


def weight_files(directory: str | os.PathLike) -> list[Path]:
    """The weight files of a saved model, after checking they are all there and (safetensors) whole.

    Raises:
        CheckpointError: no weights, an index naming absent shards, or a truncated file.
    """
    directory = Path(directory)
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"), ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = directory / index_name
        if index.is_file():
            try:
                names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise CheckpointError(f"{index}: not a weights index ({type(exc).__name__}: {exc})") from exc
            missing = [n for n in names if not (directory / n).is_file()]
            if missing:
                raise CheckpointError(f"{index}: lists shard(s) that are not in {directory}: {_names(missing)}")
            files = [directory / n for n in names]
            break
        if (directory / single).is_file():
            files = [directory / single]
            break
    else:
        raise CheckpointError(f"{directory}: no weights (model.safetensors or its index) in the directory")
    for path in files:
        problem = _safetensors_problem(path) if path.suffix == ".safetensors" else None
        if problem:
            raise CheckpointError(f"{path}: {problem}")
    return files


def load_model(
    directory: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    strict: bool = True,
) -> tuple[StreamMindForCausalLM | PerFrameLLM, StreamMindProcessor | PerFrameProcessor]:
    """Load a saved StreamMind directory -> (model, processor); a saved per-frame-LLM baseline
    (`streammind.modeling_perframe`) loads the same way, by its config's model_type.

    Args:
        directory: written by `save_model` (or by training / conversion).
        device, dtype: where and in which dtype to put the weights (default fp32, CPU).
        strict: every model tensor must be in the weights and every weight in the model;
            False loads a deliberately partial checkpoint (the rest stays freshly
            initialised) with a warning naming the tensors.

    Raises:
        CheckpointError: see the module docstring.
    """
    directory = Path(directory)
    config = read_config(directory)
    _, model_class, processor_class = _KINDS[config.model_type]
    weight_files(directory)
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise CheckpointError(f"{directory}: no tokenizer ({' or '.join(TOKENIZER_FILES)}) in the directory")
    try:
        model, info = model_class.from_pretrained(directory, config=config, dtype=dtype or torch.float32, output_loading_info=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{directory}: cannot load the weights ({type(exc).__name__}: {exc})") from exc
    except Exception as exc:  # safetensors' SafetensorError derives from Exception only
        if type(exc).__name__ != "SafetensorError":
            raise
        raise CheckpointError(f"{directory}: unreadable weights ({exc})") from exc
    problems = {kind: info.get(key) for kind, key in (("missing", "missing_keys"), ("unexpected", "unexpected_keys"), ("mismatched", "mismatched_keys"))}
    problems = {kind: keys for kind, keys in problems.items() if keys}
    if problems:
        listing = "; ".join(f"{kind}: {_names(str(k) for k in keys)}" for kind, keys in problems.items())
        if strict:
            raise CheckpointError(f"{directory}: the weights do not match the model ({listing}); "
                                  "load a deliberately partial checkpoint with strict=False (--allow-partial-load)")
        logger.warning("%s: partial load, the rest is freshly initialised (%s)", directory, listing)
    try:
        processor = processor_class.from_pretrained(directory, config=config)
    except Exception as exc:  # the tokenizers library raises plain Exceptions on malformed files
        raise CheckpointError(f"{directory}: cannot load the tokenizer ({type(exc).__name__}: {exc})") from exc
    if device is not None:
        model = model.to(device)
    return model.eval(), processor


__all__ = [
    "CheckpointError", "build_from_parts", "build_model", "default_dtype", "grow_vocabulary", "init_gate_from_llm", "load_model",
    "read_config", "save_model", "weight_files",
]
