"""Import checkpoints users already have: VideoLLaMA2-7B and the original StreamMind release.

    streammind convert --from videollama2 SRC DST [--clip DIR] [--gate-init-from-llm] [--dtype bfloat16]
    streammind convert --from streammind-original SRC DST [--clip DIR] [--gate-heads 32] [--dtype bfloat16]

(`python -m streammind convert ...` is the same command.) The result is an ordinary
StreamMind directory written by `save_model`, which `load_model` reloads; a
`conversion_report.json` beside it records what was mapped, ignored and initialised fresh.

DST is checked before anything is read or written: DST equal to SRC, inside it or around
it is refused, and a DST that exists and is not empty needs `--overwrite`. The result is
written to a temporary directory beside DST and renamed into place at the end, so a
failed or killed conversion leaves DST as it was. A source that is not a checkpoint
(a config.json that is not JSON, weight files that are not safetensors or torch files) is
a one-line error naming the file.
Library use: `load_videollama2` / `load_streammind_original` -> (model, processor, report),
then `save_converted`.

Source layouts (docs/design.md §7.1, docs/checkpoints.md):
    VideoLLaMA2-7B      `Videollama2MistralForCausalLM`: the Mistral LLM under `model.*` /
                        `lm_head.*`, the CLIP tower under `model.vision_tower.vision_tower.vision_model.*`,
                        the STC projector under `model.mm_projector.*` (not used by StreamMind:
                        ignored and reported). EPFE and gate start fresh (stage 1 follows).
    StreamMind original the same, with `model.mm_projector` holding the EPFE
                        (`pre_net`, `mamba_model.ssms.0.{norm,mixer}`, `mamba_model.norm_fn`,
                        `post_net`) and the gate (`cls_net.cls_model`, a Mistral causal LM with a
                        2-row vocabulary: row 0 silent, row 1 respond). Every tensor is mapped;
                        any key left over, or any target parameter not covered, raises with the
                        key names.

Mapping decisions (docs/checkpoints.md has the full tables):
    - The original gate's logits are `lm_head(norm(h))` with a bias-free [2, D] `lm_head`;
      ours are `head(h)` with `h` the decoder's normed output and `head` a biased
      Linear(D, 2). So `gate.head.weight = lm_head.weight` (row 0 silent, row 1 respond, our
      SILENT / RESPOND) and `gate.head.bias = 0`: the same logits, not just the same argmax.
    - The gate's 2-row embedding table (`E(silent)`, `E(respond)`, only ever fed as the
      unsupervised second token of the released training layout) is kept as
      `gate.decoder.embed_tokens` with a gate vocabulary of 2. The released gate is the
      per-frame variant A, so the converted config says `gate_mode="per_frame"`, in which the
      gate embeds no token ids.
    - The gate's hyper-parameters are the released code's `MistralConfig()` defaults
      (`ORIGINAL_GATE_DEFAULTS`) except the sizes the tensors fix (width, MLP width, layers,
      KV heads); the query-head count cannot be read from the shapes and is an option.
    - `pre_net` / `post_net` hold one Linear named `fc3` in the released code; the bare
      (`pre_net.weight`), `fc` and `linear` layouts are accepted too, anything else raises.

Memory: tensors are copied shard by shard straight into the target model (safetensors via
`safe_open`, `.bin` via `torch.load(mmap=True)`), so peak memory is about the model plus one
shard; the large parts are allocated without a random initialisation first.

Reference: docs/design.md §7; docs/checkpoints.md; VideoLLaMA2 (github.com/DAMO-NLP-SG/VideoLLaMA2).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import pickle
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import safe_open
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPVisionConfig, CLIPVisionModel, MistralConfig, PreTrainedTokenizerBase
from transformers.initialization import no_init_weights

from ..builder import default_dtype, grow_vocabulary, init_gate_from_llm, save_model
from ..configuration import PRESETS, StreamMindConfig
from ..errors import ArgumentParser, UserError, run_command
from ..fileio import atomic_directory, check_destination, write_json
from ..modeling_streammind import StreamMindForCausalLM
from ..processing import StreamMindProcessor, add_video_token

logger = logging.getLogger(__name__)

SOURCE_FORMATS = ("videollama2", "streammind-original")

TOWER_PREFIX = "model.vision_tower.vision_tower.vision_model."
PROJECTOR_PREFIX = "model.mm_projector."
LLM_KEY = re.compile(r"^(model\.(embed_tokens|layers|norm)\.|lm_head\.)")

# Buffers some transformers versions saved although they are recomputed at construction.
_RECOMPUTED_BUFFERS = (".rotary_emb.inv_freq", "embeddings.position_ids")

# The system prompt of VideoLLaMA2's `mistral_instruct` template, which both VideoLLaMA2-7B
# and the original StreamMind LLM were trained with (VideoLLaMA2's `mistral_instruct` conversation template).
VIDEOLLAMA2_SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

# The released gate is `MistralConfig()` with vocab_size=2 and 4 layers, built under
# transformers 4.40-4.44; these are that version's defaults for what the tensors do not fix.
ORIGINAL_GATE_DEFAULTS = dict(
    num_attention_heads=32,
    hidden_act="silu",
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    max_position_embeddings=131072,
)

# Towers whose config we know without reading it (VideoLLaMA2 and StreamMind name the tower by
# its hub id or by a local copy's folder name, e.g. `clip-vit-large-patch14-336`).
KNOWN_TOWERS = {"clip-vit-large-patch14-336": PRESETS["streammind-7b"]["vision_config"]}

# Mistral fields carried from a VideoLLaMA2 config.json into the LLM's config.
_MISTRAL_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "initializer_range",
    "rms_norm_eps",
    "rope_theta",
    "rope_parameters",
    "rope_scaling",
    "sliding_window",
    "attention_dropout",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "tie_word_embeddings",
)

# Inner names of the single Linear inside the original `pre_net` / `post_net`.
LINEAR_LAYOUTS = ("fc3.", "fc.", "linear.", "")

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ConversionError(UserError, ValueError):
    """A source checkpoint that cannot be converted as asked (the message says why and what to pass)."""


@dataclass
class ConversionReport:
    """What a conversion did; written to DST/conversion_report.json."""

    source_format: str
    source: str
    shards: list[str]
    mapped: dict[str, str] = field(default_factory=dict)
    ignored: dict[str, str] = field(default_factory=dict)
    initialised: list[str] = field(default_factory=list)
    tokens: dict[str, int] = field(default_factory=dict)

    def save(self, directory: str | os.PathLike) -> None:
        write_json(Path(directory) / "conversion_report.json", asdict(self))


# ----------------------------------------------------------------------------- reading shards


class _SafetensorsShard:
    """One open .safetensors file; tensors are read one at a time."""

    def __init__(self, handle):
        self._file = handle

    def keys(self) -> list[str]:
        return list(self._file.keys())

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._file.get_slice(key).get_shape())

    def get(self, key: str) -> torch.Tensor:
        return self._file.get_tensor(key)


class _TorchShard:
    """One torch.save'd state dict, memory-mapped when the file allows it."""

    def __init__(self, path: Path):
        try:
            self._tensors = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError as exc:
            # Pre-1.6 (non-zip) torch.save files cannot be memory-mapped.
            logger.warning("%s cannot be memory-mapped (%s); reading it whole", path.name, exc)
            self._tensors = torch.load(path, map_location="cpu", weights_only=True)

    def keys(self) -> list[str]:
        return list(self._tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._tensors[key].shape)

    def get(self, key: str) -> torch.Tensor:
        return self._tensors[key]

    def close(self) -> None:
        self._tensors = {}


@contextlib.contextmanager
def open_shard(path: str | os.PathLike) -> Iterator[_SafetensorsShard | _TorchShard]:
    """Open one shard (safetensors or torch .bin) for reading; its file and mapping are released on exit."""
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            handle = safe_open(str(path), framework="pt", device="cpu")
        except Exception as exc:  # safetensors' SafetensorError derives from Exception only
            raise ConversionError(f"{path}: not a readable safetensors file ({exc})") from exc
        with handle:
            yield _SafetensorsShard(handle)
        return
    try:
        reader = _TorchShard(path)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise ConversionError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from exc
    try:
        yield reader
    finally:
        reader.close()


def checkpoint_shards(src: str | os.PathLike) -> list[Path]:
    """The weight files of a checkpoint directory, in order.

    Looks for, in this order: `model.safetensors.index.json`, `model.safetensors`,
    `pytorch_model.bin.index.json`, `pytorch_model.bin`.
    """
    src = Path(src)
    for index_name, single_name in (("model.safetensors.index.json", "model.safetensors"), ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        if (src / index_name).is_file():
            try:
                with open(src / index_name, encoding="utf-8") as f:
                    names = sorted(set(json.load(f)["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ConversionError(f"{src / index_name}: not a weights index ({type(exc).__name__}: {exc})") from exc
            missing = [n for n in names if not (src / n).is_file()]
            if missing:
                raise ConversionError(f"{src / index_name} lists shard(s) that are not in {src}: {missing}")
            return [src / n for n in names]
        if (src / single_name).is_file():
            return [src / single_name]
    found = sorted(p.name for p in src.iterdir()) if src.is_dir() else []
    raise ConversionError(
        f"no weights in {src}: expected model.safetensors(.index.json) or pytorch_model.bin(.index.json); found {found}"
    )


def scan_shards(shards: Sequence[Path], progress: bool = True) -> dict[str, tuple[int, ...]]:
    """Every tensor name and shape, opening one shard at a time (headers and mappings only; no tensor is copied)."""
    shapes: dict[str, tuple[int, ...]] = {}
    owner: dict[str, str] = {}
    for path in tqdm(shards, desc="scanning shards", unit="shard", disable=not progress):
        with open_shard(path) as reader:
            for key in reader.keys():
                if key in shapes:
                    raise ConversionError(f"tensor {key!r} is in both {owner[key]} and {path.name}")
                shapes[key] = reader.shape(key)
                owner[key] = path.name
    return shapes


@torch.no_grad()
def load_shards(shards: Sequence[Path], mapping: dict[str, str], target: dict[str, torch.Tensor], progress: bool = True) -> None:
    """Copy every mapped source tensor into its target tensor, one shard at a time.

    Args:
        shards: the checkpoint's weight files.
        mapping: source key -> target key (shapes already checked).
        target: target key -> tensor sharing storage with the model (`model.state_dict()`).
    """
    for path in tqdm(shards, desc="loading shards", unit="shard", disable=not progress):
        with open_shard(path) as reader:
            for key in reader.keys():
                if key in mapping:
                    target[mapping[key]].copy_(reader.get(key))


# ----------------------------------------------------------------------------- source configs


def read_source_config(src: str | os.PathLike) -> dict:
    """The source checkpoint's config.json as a dict."""
    path = Path(src) / "config.json"
    if not path.is_file():
        raise ConversionError(f"{src} has no config.json")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except json.JSONDecodeError as exc:
        raise ConversionError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from exc
    except UnicodeDecodeError as exc:
        raise ConversionError(f"{path}: not a text file ({exc.reason} at byte {exc.start})") from exc
    if not isinstance(config, dict):
        raise ConversionError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def text_config_from_source(source: dict, where: str = "config.json") -> MistralConfig:
    """The LLM's config from a VideoLLaMA2-style config.json (Mistral fields only); `where` names it in errors."""
    architectures = source.get("architectures") or []
    if source.get("model_type") not in ("videollama2_mistral", "mistral") and "Videollama2MistralForCausalLM" not in architectures:
        raise ConversionError(
            f"{where}: only Mistral-based VideoLLaMA2 checkpoints are supported; this one has model_type "
            f"{source.get('model_type')!r} and architectures {architectures}"
        )
    try:
        return MistralConfig(**{k: source[k] for k in _MISTRAL_FIELDS if k in source})
    except (TypeError, ValueError, StrictDataclassError) as exc:
        raise ConversionError(f"{where}: not a usable Mistral config ({type(exc).__name__}: {' '.join(str(exc).split())[:300]})") from exc


def vision_config_from_source(source: dict, src: Path, vision_config: str | os.PathLike | None = None) -> CLIPVisionConfig:
    """The CLIP vision config: `vision_config` when given, else the checkpoint's `mm_vision_tower`
    (a local directory, absolute or relative to the checkpoint, or a tower we know by name)."""
    if vision_config is not None:
        return CLIPVisionConfig.from_pretrained(vision_config)
    tower = source.get("mm_vision_tower")
    if tower:
        for candidate in (Path(tower), src / tower):
            if (candidate / "config.json").is_file():
                return CLIPVisionConfig.from_pretrained(candidate)
        known = KNOWN_TOWERS.get(Path(tower).name)
        if known is not None:
            return CLIPVisionConfig(**{k: v for k, v in known.items() if k != "model_type"})
    raise ConversionError(
        f"cannot tell the CLIP vision config: the checkpoint's mm_vision_tower is {tower!r}, which is neither a "
        f"local directory with a config.json nor a known tower ({sorted(KNOWN_TOWERS)}); pass --clip DIR "
        "(tower weights and config from a CLIP directory) or --vision-config PATH (config only)"
    )


def _check_vision_source(source: dict, vision: CLIPVisionConfig) -> None:
    """The projector's input width must be the tower's."""
    mm_hidden = source.get("mm_hidden_size")
    if mm_hidden is not None and mm_hidden != vision.hidden_size:
        raise ConversionError(f"config.json says mm_hidden_size {mm_hidden} but the CLIP tower is {vision.hidden_size} wide")


# ----------------------------------------------------------------------------- key mapping


@dataclass
class KeyPlan:
    """Source key -> target key, plus the source keys deliberately left out (key -> reason)."""

    mapping: dict[str, str]
    ignored: dict[str, str]


def _ignore_reason(key: str, use_tower: bool, ignore_prefixes: Sequence[str]) -> str | None:
    """Why a source key is deliberately not loaded, or None."""
    if key.endswith(_RECOMPUTED_BUFFERS):
        return "buffer recomputed at construction"
    if not use_tower and key.startswith(TOWER_PREFIX):
        return "vision tower taken from --clip"
    if any(key.startswith(p) for p in ignore_prefixes):
        return "--ignore-prefix"
    return None


def videollama2_key_map(key: str) -> str | None:
    """VideoLLaMA2 LLM and CLIP-tower keys -> ours (None: unmapped); both layouts share them."""
    if key.startswith(TOWER_PREFIX):
        return "vision.clip." + key[len(TOWER_PREFIX) :]
    if LLM_KEY.match(key):
        return "language_model." + key
    return None


def linear_layout(shapes: dict[str, tuple[int, ...]], prefix: str) -> str:
    """Which inner name the single Linear under `prefix` uses (one of LINEAR_LAYOUTS)."""
    found = sorted(k[len(prefix) :] for k in shapes if k.startswith(prefix))
    for inner in LINEAR_LAYOUTS:
        if found == sorted([inner + "bias", inner + "weight"]):
            return inner
    supported = ", ".join(f"{prefix}{inner}{{weight,bias}}" for inner in LINEAR_LAYOUTS)
    raise ConversionError(f"unsupported layout under {prefix!r}: found {[prefix + k for k in found]}; supported: {supported}")


def original_key_map(shapes: dict[str, tuple[int, ...]]) -> Callable[[str], str | None]:
    """Original StreamMind key -> ours (None: unmapped), for this checkpoint's pre/post-net names."""
    pre = PROJECTOR_PREFIX + "pre_net." + linear_layout(shapes, PROJECTOR_PREFIX + "pre_net.")
    post = PROJECTOR_PREFIX + "post_net." + linear_layout(shapes, PROJECTOR_PREFIX + "post_net.")
    rules = (
        (pre, "perception.pre_proj."),
        (PROJECTOR_PREFIX + "mamba_model.ssms.0.norm.", "perception.block.norm."),
        (PROJECTOR_PREFIX + "mamba_model.ssms.0.mixer.", "perception.block.mixer."),
        (PROJECTOR_PREFIX + "mamba_model.norm_fn.", "perception.norm_f."),
        (post, "perception.post_proj."),
        (PROJECTOR_PREFIX + "cls_net.cls_model.model.", "gate.decoder."),
        (PROJECTOR_PREFIX + "cls_net.cls_model.lm_head.", "gate.head."),
    )

    def map_key(key: str) -> str | None:
        for source, target in rules:
            if key.startswith(source):
                return target + key[len(source) :]
        return videollama2_key_map(key)

    return map_key


def _listing(keys: Sequence[str], limit: int = 40) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _plan(
    shapes: dict[str, tuple[int, ...]],
    map_key: Callable[[str], str | None],
    target: dict[str, torch.Tensor],
    required: set[str],
    ignore: Callable[[str], str | None],
) -> KeyPlan:
    """Map every source key; raise listing every unmapped, missing or mis-shaped key at once."""
    mapping: dict[str, str] = {}
    ignored: dict[str, str] = {}
    taken: set[str] = set()
    unmapped, mismatched, duplicated = [], [], []
    for key, shape in shapes.items():
        reason = ignore(key)
        if reason is not None:
            ignored[key] = reason
            continue
        name = map_key(key)
        if name is None or name not in target:
            unmapped.append(key if name is None else f"{key} (-> {name}, not in the target model)")
        elif name in taken:
            duplicated.append(f"{key} -> {name}")
        elif tuple(target[name].shape) != shape:
            mismatched.append(f"{key} {list(shape)} -> {name} {list(target[name].shape)}")
        else:
            mapping[key] = name
            taken.add(name)
    missing = required - taken
    problems = []
    if unmapped:
        problems.append(f"{len(unmapped)} unmapped source key(s): {_listing(unmapped)}")
    if missing:
        problems.append(f"{len(missing)} target parameter(s) with no source tensor: {_listing(missing)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_listing(mismatched)}")
    if duplicated:
        problems.append(f"{len(duplicated)} target(s) mapped twice: {_listing(duplicated)}")
    if problems:
        raise ConversionError("cannot convert the checkpoint:\n  " + "\n  ".join(problems))
    return KeyPlan(mapping, ignored)


# ----------------------------------------------------------------------------- building the target


def _mark_loaded(module: torch.nn.Module) -> None:
    # The composite's post_init skips parameters flagged like this (how from_pretrained protects
    # loaded weights); without the flag it would first spend minutes randomly initialising 7B
    # parameters that the checkpoint then overwrites.
    for p in module.parameters():
        p._is_hf_initialized = True


def _build_target(
    config: StreamMindConfig,
    clip: CLIPVisionModel | None,
    dtype: torch.dtype,
) -> StreamMindForCausalLM:
    """The target model: CLIP and LLM allocated without initialisation (the checkpoint fills them),
    EPFE and gate initialised as `build_model` does (in fp32, then cast)."""
    with no_init_weights(), default_dtype(dtype):
        if clip is None:
            clip = CLIPVisionModel(config.vision_config)
        llm = AutoModelForCausalLM.from_config(config.text_config)
    _mark_loaded(clip)
    _mark_loaded(llm)
    model = StreamMindForCausalLM(config, vision=clip, language_model=llm)
    return model.to(dtype).eval()


def _required(target: dict[str, torch.Tensor], prefixes: Sequence[str], exclude: set[str]) -> set[str]:
    return {k for k in target if k.startswith(tuple(prefixes)) and k not in exclude}


def _prepare_tokenizer(src: Path, text_config: MistralConfig, video_token: str) -> tuple[PreTrainedTokenizerBase, int, int]:
    """The source tokenizer with our `<video>` placeholder added -> (tokenizer, its id, vocabulary size to use)."""
    # Passing the LLM's config keeps AutoTokenizer from parsing the VideoLLaMA2 config.json.
    try:
        tokenizer = AutoTokenizer.from_pretrained(src, config=text_config)
    except Exception as exc:  # the tokenizers library raises plain Exceptions on malformed files
        raise ConversionError(f"{src}: cannot load the tokenizer ({type(exc).__name__}: {' '.join(str(exc).split())[:300]})") from exc
    video_token_id = add_video_token(tokenizer, video_token)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer, video_token_id, max(text_config.vocab_size, len(tokenizer))


def _token_ids(tokenizer: PreTrainedTokenizerBase, tokens: Sequence[str]) -> dict[str, int]:
    vocab = tokenizer.get_vocab()
    return {t: vocab[t] for t in tokens if t in vocab}


def _source_glue(source: dict, video_token_id: int) -> dict:
    """StreamMindConfig fields read from the VideoLLaMA2-style config.json, plus the placeholder id."""
    return dict(
        video_token_id=video_token_id,
        vision_feature_layer=source.get("mm_vision_select_layer", -2),
        frame_pooling="mean",
        image_preprocess="pad" if source.get("image_aspect_ratio") == "pad" else "crop",
        system_prompt=VIDEOLLAMA2_SYSTEM_PROMPT,
    )


def _open_source(src: Path, source: dict, text_config, clip, vision_config, dtype: torch.dtype, progress: bool):
    """What both conversions read first: the tower (from --clip or the checkpoint), the tokenizer,
    and the names and shapes of every tensor in the shards (nothing is copied yet)."""
    clip_model = CLIPVisionModel.from_pretrained(clip, dtype=dtype) if clip is not None else None
    vision = clip_model.config if clip_model is not None else vision_config_from_source(source, src, vision_config)
    _check_vision_source(source, vision)
    tokenizer, video_token_id, vocab = _prepare_tokenizer(src, text_config, StreamMindConfig.video_token)

    shards = checkpoint_shards(src)
    shapes = scan_shards(shards, progress)
    if clip_model is None and not any(k.startswith(TOWER_PREFIX) for k in shapes):
        raise ConversionError(f"the checkpoint has no vision tower tensors ({TOWER_PREFIX}*); pass --clip DIR")
    return clip_model, vision, tokenizer, video_token_id, vocab, shards, shapes


def load_videollama2(
    src: str | os.PathLike,
    clip: str | os.PathLike | None = None,
    vision_config: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.bfloat16,
    gate_num_layers: int = 4,
    gate_init_from_llm: bool = False,
    ignore_prefixes: Sequence[str] = (),
    seed: int = 0,
    progress: bool = True,
) -> tuple[StreamMindForCausalLM, StreamMindProcessor, ConversionReport]:
    """A stage-1 starting point from a VideoLLaMA2-7B-layout checkpoint.

    Args:
        src: checkpoint directory (config.json, tokenizer, safetensors or .bin weights).
        clip: CLIP directory or hub id whose tower replaces the checkpoint's (tower keys ignored).
        vision_config: CLIP (vision) config file or directory, when the checkpoint's
            `mm_vision_tower` does not name one we can read.
        dtype: weight dtype of the result.
        gate_num_layers: decoder layers of the fresh gate.
        gate_init_from_llm: initialise the gate from the LLM's embeddings, first layers and norm.
        ignore_prefixes: source key prefixes to drop deliberately (reported).
        seed: RNG seed for the fresh EPFE, gate and new embedding rows.
        progress: show tqdm bars over the shards.

    Returns:
        (model, processor, report); nothing is written.
    """
    src = Path(src)
    source = read_source_config(src)
    text_config = text_config_from_source(source, str(src / "config.json"))
    clip_model, vision, tokenizer, video_token_id, vocab, shards, shapes = _open_source(src, source, text_config, clip, vision_config, dtype, progress)
    if any(k.startswith(PROJECTOR_PREFIX + "pre_net.") for k in shapes):
        logger.warning("%s holds a StreamMind EPFE and gate, which --from videollama2 drops; --from streammind-original keeps them", src)

    torch.manual_seed(seed)
    config = StreamMindConfig(vision_config=vision.to_dict(), text_config=text_config.to_dict(), gate_num_layers=gate_num_layers, **_source_glue(source, video_token_id))
    # The gate embeds the prompt's token ids (query mode), so it shares the final vocabulary.
    config.gate_config.vocab_size = vocab
    model = _build_target(config, clip_model, dtype)
    target = model.state_dict()
    required = _required(target, ["language_model."] + ([] if clip_model is not None else ["vision.clip."]), set())
    if text_config.tie_word_embeddings:
        required.discard("language_model.lm_head.weight")

    def ignore(key: str) -> str | None:
        if key.startswith(PROJECTOR_PREFIX):
            return "VideoLLaMA2 STC projector (not used by StreamMind)"
        return _ignore_reason(key, clip_model is None, ignore_prefixes)

    plan = _plan(shapes, videollama2_key_map, target, required, ignore)
    load_shards(shards, plan.mapping, target, progress)
    grow_vocabulary(model.config, vocab, model.language_model, gate=False)
    if gate_init_from_llm:
        init_gate_from_llm(model)
    fresh = ["perception", "gate.head" if gate_init_from_llm else "gate", "language_model embedding rows for added tokens"]
    report = ConversionReport(
        source_format="videollama2",
        source=str(src),
        shards=[p.name for p in shards],
        mapped=plan.mapping,
        ignored=plan.ignored,
        initialised=fresh,
        tokens=_token_ids(tokenizer, [config.video_token]),
    )
    _log_report(report)
    return model.to(dtype).eval(), StreamMindProcessor(tokenizer, model.config), report


def _original_sizes(shapes: dict[str, tuple[int, ...]], gate_heads: int) -> tuple[dict, MistralConfig]:
    """EPFE sizes and the gate config, read from the original tensors' shapes."""
    mixer = PROJECTOR_PREFIX + "mamba_model.ssms.0.mixer."
    gate = PROJECTOR_PREFIX + "cls_net.cls_model."
    needed = [
        mixer + "A_log",
        mixer + "conv1d.weight",
        mixer + "dt_proj.weight",
        gate + "model.embed_tokens.weight",
        gate + "model.layers.0.mlp.gate_proj.weight",
        gate + "model.layers.0.self_attn.k_proj.weight",
    ]
    absent = [k for k in needed if k not in shapes]
    if absent:
        hint = "" if any(k.startswith(PROJECTOR_PREFIX + "pre_net.") for k in shapes) else " (no EPFE at all: is this a VideoLLaMA2 checkpoint? use --from videollama2)"
        raise ConversionError(f"not an original StreamMind checkpoint: missing {absent}{hint}")
    d_inner, d_state = shapes[mixer + "A_log"]
    d_model = shapes[PROJECTOR_PREFIX + "pre_net." + linear_layout(shapes, PROJECTOR_PREFIX + "pre_net.") + "weight"][0]
    if d_inner % d_model:
        raise ConversionError(f"mixer width {d_inner} is not a multiple of the EPFE width {d_model}")
    perception = dict(
        perception_d_state=d_state,
        perception_d_conv=shapes[mixer + "conv1d.weight"][-1],
        perception_expand=d_inner // d_model,
        perception_dt_rank=shapes[mixer + "dt_proj.weight"][1],
    )

    classes, width = shapes[gate + "model.embed_tokens.weight"]
    if classes != 2:
        raise ConversionError(
            f"the gate's vocabulary is {classes}; only the released layout (vocabulary 2: silent, respond) is supported"
        )
    layers = {int(m.group(1)) for k in shapes if (m := re.match(re.escape(gate) + r"model\.layers\.(\d+)\.", k))}
    if width % gate_heads:
        raise ConversionError(f"gate width {width} is not divisible by --gate-heads {gate_heads}")
    head_dim = width // gate_heads
    kv_width = shapes[gate + "model.layers.0.self_attn.k_proj.weight"][0]
    if kv_width % head_dim:
        raise ConversionError(f"the gate's k_proj has {kv_width} outputs, not a multiple of head_dim {head_dim} (from --gate-heads {gate_heads})")
    defaults = dict(ORIGINAL_GATE_DEFAULTS, num_attention_heads=gate_heads)
    gate_config = MistralConfig(
        **defaults,
        vocab_size=classes,
        hidden_size=width,
        intermediate_size=shapes[gate + "model.layers.0.mlp.gate_proj.weight"][0],
        num_hidden_layers=len(layers),
        num_key_value_heads=kv_width // head_dim,
        head_dim=head_dim,
        sliding_window=None,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    return perception, gate_config


def load_streammind_original(
    src: str | os.PathLike,
    clip: str | os.PathLike | None = None,
    vision_config: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.bfloat16,
    gate_heads: int = ORIGINAL_GATE_DEFAULTS["num_attention_heads"],
    ignore_prefixes: Sequence[str] = (),
    seed: int = 0,
    progress: bool = True,
) -> tuple[StreamMindForCausalLM, StreamMindProcessor, ConversionReport]:
    """Our model from an original StreamMind checkpoint, every tensor mapped.

    Args:
        src: checkpoint directory (config.json, tokenizer with `</silence>` / `</response>`,
            safetensors or .bin weights).
        clip, vision_config, dtype, ignore_prefixes, seed, progress: as `load_videollama2`.
        gate_heads: the gate's query heads (not recoverable from the shapes; the released
            gate has 32).

    Returns:
        (model, processor, report); nothing is written. The config has
        `gate_mode="per_frame"` (the released gate is variant A).
    """
    src = Path(src)
    source = read_source_config(src)
    text_config = text_config_from_source(source, str(src / "config.json"))
    if source.get("mm_vision_select_feature", "patch") != "patch":
        raise ConversionError(
            f"mm_vision_select_feature {source['mm_vision_select_feature']!r}: the EPFE was trained on the mean of the "
            "patch tokens without CLS ('patch'), which is what StreamMind computes; other selections are not supported"
        )
    clip_model, vision, tokenizer, video_token_id, vocab, shards, shapes = _open_source(src, source, text_config, clip, vision_config, dtype, progress)
    perception, gate_config = _original_sizes(shapes, gate_heads)

    torch.manual_seed(seed)
    config = StreamMindConfig(
        vision_config=vision.to_dict(),
        text_config=text_config.to_dict(),
        gate_config=gate_config.to_dict(),
        gate_num_layers=gate_config.num_hidden_layers,
        gate_mode="per_frame",
        **perception,
        **_source_glue(source, video_token_id),
    )
    model = _build_target(config, clip_model, dtype)
    target = model.state_dict()
    prefixes = ["language_model.", "perception.", "gate."] + ([] if clip_model is not None else ["vision.clip."])
    # The original lm_head has no bias; ours is zero so that the logits are identical.
    required = _required(target, prefixes, exclude={"gate.head.bias"})
    if text_config.tie_word_embeddings:
        required.discard("language_model.lm_head.weight")

    def ignore(key: str) -> str | None:
        return _ignore_reason(key, clip_model is None, ignore_prefixes)

    plan = _plan(shapes, original_key_map(shapes), target, required, ignore)
    load_shards(shards, plan.mapping, target, progress)
    with torch.no_grad():
        model.gate.head.bias.zero_()
    grow_vocabulary(model.config, vocab, model.language_model, gate=False)
    report = ConversionReport(
        source_format="streammind-original",
        source=str(src),
        shards=[p.name for p in shards],
        mapped=plan.mapping,
        ignored=plan.ignored,
        initialised=["gate.head.bias (zero)", "language_model embedding rows for added tokens"],
        tokens=_token_ids(tokenizer, ["</silence>", "</response>", config.video_token]),
    )
    _log_report(report)
    return model.to(dtype).eval(), StreamMindProcessor(tokenizer, model.config), report


def _log_report(report: ConversionReport) -> None:
    logger.info("mapped %d tensors from %s (%s)", len(report.mapped), report.source, report.source_format)
    reasons: dict[str, list[str]] = {}
    for key, reason in report.ignored.items():
        reasons.setdefault(reason, []).append(key)
    for reason, keys in reasons.items():
        logger.info("ignored %d tensor(s), %s: %s", len(keys), reason, _listing(keys, limit=5))
    logger.info("initialised fresh: %s; tokens: %s", ", ".join(report.initialised), report.tokens)


def save_converted(
    model: StreamMindForCausalLM, processor: StreamMindProcessor, report: ConversionReport, dst: str | os.PathLike, overwrite: bool = False
) -> None:
    """Write the converted model with `save_model`, and the report beside it, into a temporary
    directory renamed to `dst` at the end.

    Raises:
        UserError: `dst` exists and is not empty, and `overwrite` is False (then `dst` is
            replaced as a whole).
    """
    check_destination(report.source, dst, overwrite)
    with atomic_directory(dst, replace=True) as tmp:
        save_model(model, processor, tmp)
        report.save(tmp)
    logger.info("wrote %s", dst)


# ----------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="streammind convert",
        description="Convert a VideoLLaMA2-7B or original StreamMind checkpoint into a StreamMind directory.",
    )
    parser.add_argument("--from", dest="source_format", required=True, choices=SOURCE_FORMATS, help="layout of SRC")
    parser.add_argument("src", type=Path, help="source checkpoint directory")
    parser.add_argument("dst", type=Path, help="output directory (load it with streammind.load_model); must not exist or be empty unless --overwrite")
    parser.add_argument("--overwrite", action="store_true", help="replace a DST that already holds files (never allowed when DST is, holds or lies in SRC)")
    parser.add_argument("--clip", default=None, help="CLIP directory or hub id whose vision tower replaces the checkpoint's")
    parser.add_argument("--vision-config", default=None, help="CLIP (vision) config file or directory, if config.json's mm_vision_tower names none we can read")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(_DTYPES), help="weight dtype of the output (default: %(default)s)")
    parser.add_argument("--ignore-prefix", action="append", default=[], help="drop source keys with this prefix (repeatable; reported)")
    parser.add_argument("--seed", type=int, default=0, help="RNG seed for freshly initialised parts (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    vl2 = parser.add_argument_group("--from videollama2")
    vl2.add_argument("--gate-layers", type=int, default=None, help="decoder layers of the fresh gate (default: 4)")
    vl2.add_argument("--gate-init-from-llm", action="store_true", help="initialise the gate from the LLM's first layers")
    orig = parser.add_argument_group("--from streammind-original")
    orig.add_argument(
        "--gate-heads",
        type=int,
        default=None,
        help=f"query heads of the original gate (not readable from the shapes; default: {ORIGINAL_GATE_DEFAULTS['num_attention_heads']}, the released value)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a conversion (errors raise; `run_command` reports them as one line, exit status 2)."""
    parser = _parser()
    args = parser.parse_args(argv)
    check_destination(args.src, args.dst, args.overwrite)  # before anything is read or written
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    common = dict(
        clip=args.clip,
        vision_config=args.vision_config,
        dtype=_DTYPES[args.dtype],
        ignore_prefixes=args.ignore_prefix,
        seed=args.seed,
        progress=not args.no_progress,
    )
    videollama2_only = args.gate_layers is not None or args.gate_init_from_llm
    if args.source_format == "videollama2":
        if args.gate_heads is not None:
            parser.error("--gate-heads applies to --from streammind-original (a VideoLLaMA2 gate is new: its heads are the LLM's)")
        gate_layers = args.gate_layers if args.gate_layers is not None else StreamMindConfig.gate_num_layers
        loaded = load_videollama2(args.src, gate_num_layers=gate_layers, gate_init_from_llm=args.gate_init_from_llm, **common)
    else:
        if videollama2_only:
            parser.error("--gate-layers / --gate-init-from-llm apply to --from videollama2 (the original gate is loaded as it is)")
        gate_heads = args.gate_heads if args.gate_heads is not None else ORIGINAL_GATE_DEFAULTS["num_attention_heads"]
        loaded = load_streammind_original(args.src, gate_heads=gate_heads, **common)
    save_converted(*loaded, args.dst, overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command("streammind convert", main))
