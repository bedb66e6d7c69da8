"""Two-stage training on HF Trainer: `python -m streammind.train <stage.yaml> [--key value ...]`.

- Stage 1 (language): perception (EPFE) + LLM (full or LoRA) learn the replies with the
  next-token loss; the vision tower and the gate are frozen. The tiny preset's tower comes
  from `streammind.tower_pretrain` (`clip_path` next to `preset`), since no pretrained
  CLIP exists offline.
- Stage 2 (gate): only the gate learns, from the stage-1 checkpoint (`init_from`), with the
  weighted cross-entropy over per-frame labels.

What trains is declared in the YAML (`trainable: [perception, language_model]`) and applied
by `set_trainable`, which raises when a pattern matches nothing and logs a table of
trainable / frozen parameters. The YAML is read, CLI flags override it, unknown keys raise,
and the resolved config is written to `output_dir/run_config.yaml`. `resume_from_checkpoint:
auto` resumes from the newest complete checkpoint in `output_dir` (`last_complete_checkpoint`:
its trainer_state.json, written last, parses, and its weights are all there and whole) and
logs the incomplete ones it skipped. Launch several processes with torchrun or the
deepspeed launcher (scripts/finetune_stage{1,2}.sh).

Settings are checked before any model is built, and a bad one is a `ConfigError` naming
the file (or flag) and the field:
- the YAML must be a mapping (`key: value` lines) and parse; values follow YAML 1.2: only
  true / false are booleans (`no`, `yes`, `on`, `off` are strings, so `lora: no` is an
  error, not a truthy string), `1e-4` is a number;
- a `--key` flag needs a value (`--key value` or `--key=value`; `--lora true`, never a
  bare `--lora`), which is read as YAML too (`--trainable [gate]`);
- every value must have its field's declared type: booleans for booleans, integers for
  integers, numbers for floats, lists for lists (`trainable: perception` is an error: write
  `trainable: [perception]`, a list, as for every list field);
- the annotation files and data root must exist and `init_from` must be a StreamMind
  checkpoint; the annotations are parsed (errors name `file:line`).

Reference: SPEC §5, STYLE §4.2 and §4.7.
"""

from __future__ import annotations

import enum
import fnmatch
import json
import logging
import math
import re
import sys
import types
import typing
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from transformers import AutoTokenizer, CLIPVisionModel, HfArgumentParser, Trainer, TrainingArguments, set_seed

from .atomic import atomic_write
from .baseline import PER_FRAME_PRESETS, PerFrameLLMConfig, build_per_frame_llm
from .builder import CheckpointError, build_from_parts, build_model, load_model, read_config, weight_files
from .configuration import StreamMindConfig
from .datasets.annotations import load_annotations
from .datasets.collator import StreamCollator
from .datasets.stream import FeatureCache, StreamDataset, vision_cache_key
from .errors import UserError, run_command

logger = logging.getLogger("streammind.train")

MODULES = ("vision", "perception", "gate", "language_model")
TRAINER_STATE = "trainer_state.json"


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

    def __post_init__(self):
        super().__post_init__()
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage}")
        if not self.trainable:
            raise ValueError("declare what trains: trainable: [perception, language_model] (stage 1) or [gate] (stage 2)")


def set_trainable(model: torch.nn.Module, patterns: list[str]) -> str:
    """Freeze everything, then unfreeze parameters matching `patterns`; return a summary table.

    A pattern is a dotted prefix (`perception`, `language_model.model.layers.0`) or an
    fnmatch glob over parameter names (`*.lora_*`). Raises if a pattern matches nothing.
    """
    names = [n for n, _ in model.named_parameters()]
    unmatched = []
    chosen = set()
    for pat in patterns:
        hits = {n for n in names if n == pat or n.startswith(pat + ".") or fnmatch.fnmatchcase(n, pat)}
        if not hits:
            unmatched.append(pat)
        chosen |= hits
    if unmatched:
        tops = sorted({n.split(".")[0] for n in names})
        raise ValueError(f"trainable pattern(s) {unmatched} match no parameter; top-level modules are {tops}")
    for n, p in model.named_parameters():
        p.requires_grad_(n in chosen)
    rows = {}
    for n, p in model.named_parameters():
        top = n.split(".")[0]
        t, f = rows.get(top, (0, 0))
        rows[top] = (t + p.numel(), f) if p.requires_grad else (t, f + p.numel())
    lines = [f"{'module':<16}{'trainable':>14}{'frozen':>14}"]
    lines += [f"{top:<16}{t:>14,}{f:>14,}" for top, (t, f) in rows.items()]
    total_t = sum(t for t, _ in rows.values())
    lines.append(f"{'total':<16}{total_t:>14,}{sum(f for _, f in rows.values()):>14,}")
    return "\n".join(lines)


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
        raise ConfigError("usage: python -m streammind.train <stage.yaml> [--key value ...]")
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


def validate_inputs(model_args: ModelArguments, data_args: DataArguments, args: StreamMindTrainingArguments) -> None:
    """Check the files a run reads before any model is built (ConfigError / AnnotationError / CheckpointError)."""
    if args.stage == 2 and model_args.init_from is None:
        raise ConfigError("stage 2 starts from the stage-1 checkpoint: set init_from")
    resume = args.resume_from_checkpoint
    if resume not in (None, "auto") and (problem := checkpoint_problem(resume)) is not None:
        raise ConfigError(f"{resume}: cannot resume from this checkpoint: {problem}")
    for name in ("train_annotations", "eval_annotations"):
        path = getattr(data_args, name)
        if path is not None:
            if not Path(path).is_file():
                raise ConfigError(f"{path}: {name} not found")
            load_annotations(path)
    if not Path(data_args.data_root).is_dir():
        raise ConfigError(f"{data_args.data_root}: data_root is not a directory")
    if model_args.init_from is not None:
        read_config(model_args.init_from)


# ---- resuming -----------------------------------------------------------------------------


def checkpoint_problem(directory: str | Path) -> str | None:
    """Why a Trainer checkpoint cannot be resumed from (None when it is complete).

    Complete: its trainer_state.json (which the Trainer writes last) parses and has a
    global_step, and its weights are all there and whole (safetensors checked against
    their headers), or a DeepSpeed `latest` tag names a directory that exists.
    """
    directory = Path(directory)
    state = directory / TRAINER_STATE
    if not state.is_file():
        return f"no {TRAINER_STATE} (written last: the save did not finish)"
    try:
        if "global_step" not in json.loads(state.read_text(encoding="utf-8")):
            return f"{TRAINER_STATE} has no global_step"
    except (ValueError, TypeError) as exc:
        return f"{TRAINER_STATE} is unreadable ({type(exc).__name__})"
    latest = directory / "latest"
    if latest.is_file() and (directory / latest.read_text().strip()).is_dir():
        return None
    try:
        weight_files(directory)
    except CheckpointError as exc:
        return str(exc)
    return None


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete `checkpoint-N` in `output_dir` (None if there is none); logs the skipped ones."""
    output_dir = Path(output_dir)
    found = []
    if output_dir.is_dir():
        for path in output_dir.iterdir():
            m = re.fullmatch(r"checkpoint-(\d+)", path.name)
            if m and path.is_dir():
                found.append((int(m.group(1)), path))
    for _, path in sorted(found, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            logger.info("resume_from_checkpoint auto: %s", path)
            return str(path)
        logger.warning("resume_from_checkpoint auto: skipping incomplete %s: %s", path.name, problem)
    logger.info("resume_from_checkpoint auto: no complete checkpoint in %s, starting fresh", output_dir)
    return None


def build(model_args: ModelArguments, device: torch.device):
    """The model and processor of the configured source; fresh weights are initialised on `device`."""
    dtype = getattr(torch, model_args.torch_dtype)
    if model_args.init_from is not None:
        model, processor = load_model(model_args.init_from, dtype=dtype)
    elif model_args.preset is not None:
        overrides = dict(model_args.model_overrides)
        clip = None
        if model_args.clip_path is not None:  # a pretrained tower, e.g. from streammind.tower_pretrain
            clip = CLIPVisionModel.from_pretrained(model_args.clip_path, dtype=dtype).to(device)
            overrides["vision_config"] = clip.config.to_dict()
        # The model-type switch: a per-frame-LLM preset builds the baseline (streammind.baseline).
        per_frame = model_args.preset in PER_FRAME_PRESETS
        config = (PerFrameLLMConfig if per_frame else StreamMindConfig).from_preset(model_args.preset, **overrides)
        previous = torch.get_default_dtype()
        # Initialise directly in the target dtype and on the training device: a fresh 7B model
        # is 30 GB in fp32, and random init on a CPU takes many minutes.
        torch.set_default_dtype(dtype)
        try:
            with device:
                model, processor = (build_per_frame_llm if per_frame else build_model)(
                    config, AutoTokenizer.from_pretrained(model_args.tokenizer_path), vision=clip)
        finally:
            torch.set_default_dtype(previous)
    else:
        model, processor = build_from_parts(model_args.clip_path, model_args.llm_path, gate_init_from_llm=model_args.gate_init_from_llm,
                                            dtype=dtype, **model_args.model_overrides)
    if model_args.gate_init_from_llm and model_args.llm_path is None:
        from .builder import init_gate_from_llm

        init_gate_from_llm(model)
    return model, processor


def apply_lora(model, model_args: ModelArguments) -> None:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise ImportError("lora: true needs peft: pip install 'streammind[train]'") from e
    cfg = LoraConfig(r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
                     target_modules=model_args.lora_target_modules, task_type="CAUSAL_LM")
    model.language_model = get_peft_model(model.language_model, cfg)


def main(argv: list[str] | None = None) -> str:
    """Train one stage; returns the output directory (holding the final model)."""
    model_args, data_args, args, resolved = parse_args(argv)
    validate_inputs(model_args, data_args, args)
    logging.basicConfig(level=logging.INFO if args.process_index == 0 else logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    set_seed(args.seed)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.process_index == 0:
        with atomic_write(out / "run_config.yaml") as f:
            yaml.safe_dump(resolved, f, sort_keys=True)

    model, processor = build(model_args, args.device)
    if model_args.lora:
        apply_lora(model, model_args)
    table = set_trainable(model, args.trainable)
    logger.info("stage %d, world size %d, parameters:\n%s", args.stage, args.world_size, table)

    feature_cache = encoder = None
    if data_args.feature_cache_dir:
        if any(p.requires_grad for p in model.vision.parameters()):
            raise ValueError("feature_cache_dir caches frozen-tower features, but the vision tower is trainable in this stage")
        feature_cache = FeatureCache(data_args.feature_cache_dir, vision_cache_key(model))
        encoder = model.vision.encode_frames
    common = dict(data_root=data_args.data_root, processor=processor, stage=args.stage, fps=data_args.fps, on_error=data_args.on_bad_sample,
                  cache_decoded=data_args.cache_decoded, feature_cache=feature_cache, encoder=encoder,
                  allow_outside_root=data_args.allow_outside_root)
    train_set = StreamDataset(data_args.train_annotations, **common)
    eval_set = StreamDataset(data_args.eval_annotations, **common) if data_args.eval_annotations else None
    logger.info("training on %d examples (%d skipped: %s)", len(train_set), sum(train_set.skipped.values()), dict(train_set.skipped))

    args.remove_unused_columns = False
    trainer = Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                      data_collator=StreamCollator(processor.pad_token_id), processing_class=processor.tokenizer)
    resume = args.resume_from_checkpoint
    if resume == "auto":
        resume = last_complete_checkpoint(out)
    result = trainer.train(resume_from_checkpoint=resume)
    if torch.cuda.is_available():
        logger.info("peak CUDA memory %.1f GiB (rank %d)", torch.cuda.max_memory_allocated() / 2**30, args.process_index)
    logger.info("train metrics: %s", result.metrics)

    if model_args.lora:
        model.language_model = model.language_model.merge_and_unload()
    trainer.save_model(str(out))  # on every rank: ZeRO-3 gathers the shards; only rank 0 writes
    if trainer.is_world_process_zero():
        processor.save_pretrained(out)
    skipped = train_set.skipped + (eval_set.skipped if eval_set else Counter())
    if skipped:
        logger.warning("skipped samples by reason: %s", dict(skipped))
    return str(out)


if __name__ == "__main__":
    raise SystemExit(run_command("streammind train", main))
