"""Typed training settings: the argument dataclasses, the stage YAML and its command-line overrides.

A stage is one YAML file (`configs/stage1.yaml`, `configs/tiny/stage2.yaml`, ...) read into
three dataclasses through `HfArgumentParser`: `ModelArguments` (where the model comes from:
`init_from`, a preset, or CLIP + LLM parts; LoRA), `DataArguments` (annotations, data root,
sampling, bad samples, the feature cache) and `StreamMindTrainingArguments` (the HF
`TrainingArguments` plus the stage, what trains, and the gate loss). `parse_args` reads the
YAML, applies `--key value` overrides from the command line, and checks every value against its
field's declared type before any model is built; a bad one is a `ConfigError` naming the file
(or flag) and the field:

- the YAML must be a mapping (`key: value` lines) and parse; values follow YAML 1.2: only
  true / false are booleans (`no`, `yes`, `on`, `off` are strings, so `lora: no` is an
  error, not a truthy string), `1e-4` is a number;
- a `--key` flag needs a value (`--key value` or `--key=value`; `--lora true`, never a
  bare `--lora`), which is read as YAML too (`--trainable [gate]`);
- every value must have its field's declared type: booleans for booleans, integers for
  integers, numbers for floats, lists for lists (`trainable: perception` is an error: write
  `trainable: [perception]`, a list, as for every list field);
- unknown keys raise (HfArgumentParser names them).

The gate loss (`gate_loss`, `gate_class_weights`, `gate_focal_gamma`) is a training setting:
it is saved with the run (`run_config.yaml`), never with the model, and reaches the model's
forward as a `GateLossConfig` (`gate_loss_config()`), so a stage-2 run started from any
checkpoint chooses its own loss.
"""

from __future__ import annotations

import enum
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments

from ..errors import UserError
from ..gate import GateLossConfig

MODULES = ("vision", "perception", "gate", "language_model")


class ConfigError(UserError, ValueError):
    """A training setting that is missing, malformed or of the wrong type (the message names it)."""


@dataclass
class ModelArguments:
    init_from: str | None = field(default=None, metadata={"help": "A saved StreamMind directory to start from (required for stage 2)."})
    preset: str | None = field(
        default=None,
        metadata={"help": "Build a fresh model from a preset ('tiny', 'streammind-7b'; 'perframe-tiny', 'perframe-7b' for the per-frame-LLM baseline)."},
    )
    tokenizer_path: str | None = field(default=None, metadata={"help": "Tokenizer directory for a preset-built model."})
    clip_path: str | None = field(
        default=None,
        metadata={"help": "CLIP directory or hub id: with llm_path, build from real parts; with preset, the preset's tower starts from it."},
    )
    llm_path: str | None = field(default=None, metadata={"help": "LLM directory or hub id (with clip_path)."})
    gate_init_from_llm: bool = field(default=False, metadata={"help": "Initialise the gate from the LLM's first layers."})
    torch_dtype: str = field(default="float32", metadata={"help": "Weight dtype when loading or building: float32, bfloat16 or float16."})
    model_overrides: dict = field(default_factory=dict, metadata={"help": "StreamMindConfig fields to override when building a model."})
    lora: bool = field(default=False, metadata={"help": "Train the LLM through LoRA adapters (peft); merged into the weights when saved."})
    lora_r: int = field(default=64, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=128, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        metadata={"help": "LLM module names that get LoRA adapters."},
    )

    def __post_init__(self):
        if self.torch_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"torch_dtype must be float32, bfloat16 or float16, got {self.torch_dtype!r}")
        sources = [self.init_from is not None, self.preset is not None, self.llm_path is not None]
        if sum(sources) != 1:
            raise ValueError("give exactly one model source: init_from, preset (+ tokenizer_path, optionally clip_path), or clip_path + llm_path")
        if self.preset is not None and self.tokenizer_path is None:
            raise ValueError("preset needs tokenizer_path (the LLM tokenizer to size the vocabulary)")
        if self.llm_path is not None and self.clip_path is None:
            raise ValueError("llm_path needs clip_path (the vision tower to build with)")
        if self.init_from is not None and self.clip_path is not None:
            raise ValueError("clip_path cannot be combined with init_from (the checkpoint already holds its tower)")


@dataclass
class DataArguments:
    train_annotations: str = field(metadata={"help": "Canonical stream-annotation JSONL for training."})
    data_root: str = field(metadata={"help": "Directory the annotations' video paths are relative to."})
    eval_annotations: str | None = field(default=None, metadata={"help": "Optional JSONL for evaluation loss."})
    fps: float | None = field(default=None, metadata={"help": "Frame sampling rate (default: the model's frames_per_second)."})
    on_bad_sample: str = field(default="raise", metadata={"help": "'raise' or 'skip' (skips are counted and reported)."})
    cache_decoded: bool = field(default=False, metadata={"help": "Keep decoded clips in memory (small datasets)."})
    allow_outside_root: bool = field(
        default=False,
        metadata={"help": "Accept annotation video paths outside data_root (absolute, or escaping it with '..'); by default they are bad samples."},
    )
    feature_cache_dir: str | None = field(default=None, metadata={"help": "Cache pooled CLIP features here (only with a frozen tower)."})

    def __post_init__(self):
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"fps must be a finite number > 0, got {self.fps}")
        if self.on_bad_sample not in ("raise", "skip"):
            raise ValueError(f"on_bad_sample must be 'raise' or 'skip', got {self.on_bad_sample!r}")


@dataclass
class StreamMindTrainingArguments(TrainingArguments):
    stage: int = field(default=1, metadata={"help": "1 = language (replies), 2 = gate (per-frame decisions)."})
    trainable: list[str] = field(default_factory=list, metadata={"help": "Parameter-name patterns to train (prefixes or globs)."})
    gate_loss: str = field(default="ce", metadata={"help": "Gate loss: 'ce' (class-weighted cross-entropy, the paper's) or 'focal'."})
    gate_class_weights: list[float] = field(default_factory=lambda: [0.15, 0.85],
                                            metadata={"help": "(silent, respond) weights of the gate loss."})
    gate_focal_gamma: float = field(default=2.0, metadata={"help": "Focusing parameter of the focal gate loss."})

    def __post_init__(self):
        super().__post_init__()
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage}")
        if not self.trainable:
            raise ValueError("declare what trains: trainable: [perception, language_model] (stage 1) or [gate] (stage 2)")
        self.gate_loss_config()  # raises on an unknown loss or a weight list of the wrong length

    def gate_loss_config(self) -> GateLossConfig:
        """The gate loss the model's forward is given (`StreamMindTrainer`)."""
        return GateLossConfig(kind=self.gate_loss, class_weights=tuple(self.gate_class_weights), focal_gamma=self.gate_focal_gamma)


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars: `1e-3` is a float, and only true/false are booleans
    (YAML 1.1 would turn `save_strategy: no` into False)."""


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)$|^[-+]?(?:\d+\.\d*|\.\d+)$"),
    list("-+0123456789."),
)


def _load_yaml(text: str):
    return yaml.load(text, Loader=_YamlLoader)


def read_config_file(path: str | Path) -> dict:
    """The settings of a stage YAML: a mapping, parsed with YAML 1.2 scalars.

    Raises:
        ConfigError: a missing file, broken YAML (with its line) or a document that is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        cfg = _load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: not valid YAML ({problem})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a mapping of settings (key: value lines), got a YAML {type(cfg).__name__}")
    bad = [k for k in cfg if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{path}: setting names must be strings, got {bad}")
    return cfg


# ---- typed settings ----------------------------------------------------------------------


def _accepts(tp, value):
    """(True, value as the field wants it) when `value` has the declared type `tp`, else (False, None).

    YAML already produced bools, ints, floats, strings, lists and dicts; nothing is parsed from
    strings here, so `"no"` never becomes a boolean and `"many"` never a number.
    """
    origin = typing.get_origin(tp)
    if tp is typing.Any or tp is object:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, converted = _accepts(arg, value)
            if ok:
                return True, converted
        return False, None
    if tp is type(None):
        return value is None, value
    if origin is typing.Literal:
        return value in typing.get_args(tp), value
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, list):
            return False, None
        args = typing.get_args(tp)
        item_type = args[0] if args else typing.Any  # list[X] and tuple[X, ...]
        items = []
        for item in value:
            ok, converted = _accepts(item_type, item)
            if not ok:
                return False, None
            items.append(converted)
        return True, items
    if origin is dict or tp is dict:
        return isinstance(value, dict), value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool), value
    if tp is str:
        return isinstance(value, str), value  # `run_name: "2024"` (quoted) for a string of digits
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return isinstance(value, (str, tp)), value  # the dataclass converts and checks the name
    return True, value


def _describe(tp) -> str:
    """A type as a user reads it in an error message."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(a) for a in typing.get_args(tp)))
    if tp is type(None):
        return "null"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, tuple) or tp in (list, tuple):
        return "a list (e.g. [a, b], or [a] for one item)"
    if origin is dict or tp is dict:
        return "a mapping"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    return {bool: "true or false (YAML 1.2: yes/no/on/off are strings)", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def check_types(cfg: dict, classes, where: dict[str, str]) -> dict:
    """`cfg` with every value checked (and normalised) against its dataclass field's declared type.

    Args:
        cfg: setting name -> value (YAML scalars, lists, mappings).
        classes: the argument dataclasses.
        where: setting name -> where it was set ("stage1.yaml", "--lr"), for messages.

    Raises:
        ConfigError: naming the setting, where it was set, the expected type and the value.
    """
    hints = {}
    for cls in classes:
        hints.update(typing.get_type_hints(cls))
    out = {}
    for key, value in cfg.items():
        if key not in hints:
            out[key] = value  # an unknown key: HfArgumentParser names it
            continue
        ok, converted = _accepts(hints[key], value)
        if not ok:
            raise ConfigError(f"{where.get(key, 'config')}: {key} must be {_describe(hints[key])}, got {value!r}")
        out[key] = converted
    return out


def parse_args(argv: list[str] | None) -> tuple[ModelArguments, DataArguments, StreamMindTrainingArguments, dict]:
    """YAML file first, then `--key value` overrides; unknown keys and wrong types raise ConfigError."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # The deepspeed launcher adds --local_rank=N (before our arguments); LOCAL_RANK is also in
    # the environment, which TrainingArguments reads.
    argv = [a for a in argv if not a.startswith(("--local_rank", "--local-rank"))]
    if not argv or not argv[0].endswith((".yaml", ".yml")):
        raise ConfigError("usage: streammind train <stage.yaml> [--key value ...]")
    cfg = read_config_file(argv[0])
    where = {key: argv[0] for key in cfg}
    overrides = _cli_to_dict(argv[1:])
    cfg.update(overrides)
    where.update({key: f"--{key}" for key in overrides})
    if not torch.cuda.is_available():
        cfg.setdefault("use_cpu", True)
    classes = (ModelArguments, DataArguments, StreamMindTrainingArguments)
    cfg = check_types(cfg, classes, where)
    parser = HfArgumentParser(classes)
    try:
        model_args, data_args, train_args = parser.parse_dict(cfg, allow_extra_keys=False)
    except (ValueError, TypeError) as exc:  # unknown keys, __post_init__ rules
        raise ConfigError(f"{argv[0]}: {exc}") from exc
    # The gate loss is recorded with the run even where the YAML left it at its default.
    cfg.update(gate_loss=train_args.gate_loss, gate_class_weights=list(train_args.gate_class_weights),
               gate_focal_gamma=train_args.gate_focal_gamma)
    return model_args, data_args, train_args, cfg


def _cli_to_dict(tokens: list[str]) -> dict:
    """`--key value` / `--key=value` pairs -> {key: YAML value}; a flag without a value raises."""
    out, i = {}, 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            raise ConfigError(f"expected --key, got {token!r}")
        name, sep, value = token[2:].partition("=")
        key = name.replace("-", "_")
        if sep:
            i += 1
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            value = tokens[i + 1]
            i += 2
        else:
            raise ConfigError(f"--{name} needs a value (--{name} VALUE or --{name}=VALUE; booleans too: --{name} true)")
        try:
            out[key] = _load_yaml(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--{name}: not a valid value {value!r} ({getattr(exc, 'problem', None) or exc})") from exc
    return out


__all__ = ["ConfigError", "DataArguments", "ModelArguments", "StreamMindTrainingArguments", "check_types", "parse_args", "read_config_file"]
