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
auto` resumes from the newest checkpoint in `output_dir`. Launch several processes with
torchrun or the deepspeed launcher (scripts/finetune_stage{1,2}.sh).

Reference: SPEC §5, STYLE §4.2 and §4.7.
"""

from __future__ import annotations

import fnmatch
import gc
import logging
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from transformers import AutoTokenizer, CLIPVisionModel, HfArgumentParser, Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from .builder import build_from_parts, build_model, load_model
from .configuration import StreamMindConfig
from .datasets.collator import StreamCollator
from .datasets.stream import FeatureCache, StreamDataset, vision_cache_key

logger = logging.getLogger("streammind.train")

MODULES = ("vision", "perception", "gate", "language_model")


@dataclass
class ModelArguments:
    init_from: str | None = field(default=None, metadata={"help": "A saved StreamMind directory to start from (required for stage 2)."})
    preset: str | None = field(default=None, metadata={"help": "Build a fresh model from a preset ('tiny', 'streammind-7b')."})
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
    feature_cache_dir: str | None = field(default=None, metadata={"help": "Cache pooled CLIP features here (only with a frozen tower)."})


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


def parse_args(argv: list[str] | None) -> tuple[ModelArguments, DataArguments, StreamMindTrainingArguments, dict]:
    """YAML file first, then `--key value` overrides; unknown keys raise."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # The deepspeed launcher adds --local_rank=N (before our arguments); LOCAL_RANK is also in
    # the environment, which TrainingArguments reads.
    argv = [a for a in argv if not a.startswith(("--local_rank", "--local-rank"))]
    if not argv or not argv[0].endswith((".yaml", ".yml")):
        raise SystemExit("usage: python -m streammind.train <stage.yaml> [--key value ...]")
    with open(argv[0]) as f:
        cfg = _load_yaml(f.read()) or {}
    overrides = _cli_to_dict(argv[1:])
    cfg.update(overrides)
    if not torch.cuda.is_available():
        cfg.setdefault("use_cpu", True)
    parser = HfArgumentParser((ModelArguments, DataArguments, StreamMindTrainingArguments))
    model_args, data_args, train_args = parser.parse_dict(cfg, allow_extra_keys=False)
    return model_args, data_args, train_args, cfg


def _cli_to_dict(tokens: list[str]) -> dict:
    out, i = {}, 0
    while i < len(tokens):
        key = tokens[i]
        if not key.startswith("--"):
            raise SystemExit(f"expected --key, got {key!r}")
        key = key[2:].replace("-", "_")
        if "=" in key:
            key, value = key.split("=", 1)
            out[key] = _load_yaml(value)
            i += 1
            continue
        if i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            out[key] = _load_yaml(tokens[i + 1])
            i += 2
        else:
            out[key] = True
            i += 1
    return out


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
        config = StreamMindConfig.from_preset(model_args.preset, **overrides)
        previous = torch.get_default_dtype()
        # Initialise directly in the target dtype and on the training device: a fresh 7B model
        # is 30 GB in fp32, and random init on a CPU takes many minutes.
        torch.set_default_dtype(dtype)
        try:
            with device:
                model, processor = build_model(config, AutoTokenizer.from_pretrained(model_args.tokenizer_path), vision=clip)
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
    out = _train_stage(argv)
    _destroy_process_group()  # after _train_stage returned, so that its Trainer can be collected
    return out


def _train_stage(argv: list[str] | None) -> str:
    """`main` up to the end of training and saving."""
    model_args, data_args, args, resolved = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.process_index == 0 else logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    if args.stage == 2 and model_args.init_from is None:
        raise ValueError("stage 2 starts from the stage-1 checkpoint: set init_from")
    set_seed(args.seed)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.process_index == 0:
        with open(out / "run_config.yaml", "w") as f:
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
                  cache_decoded=data_args.cache_decoded, feature_cache=feature_cache, encoder=encoder)
    train_set = StreamDataset(data_args.train_annotations, **common)
    eval_set = StreamDataset(data_args.eval_annotations, **common) if data_args.eval_annotations else None
    logger.info("training on %d examples (%d skipped: %s)", len(train_set), sum(train_set.skipped.values()), dict(train_set.skipped))

    args.remove_unused_columns = False
    trainer = Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                      data_collator=StreamCollator(processor.pad_token_id), processing_class=processor.tokenizer)
    resume = args.resume_from_checkpoint
    if resume == "auto":
        resume = get_last_checkpoint(str(out))
        logger.info("resume_from_checkpoint auto: %s", resume or f"no checkpoint in {out}, starting fresh")
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


def _destroy_process_group() -> None:
    """Tear torch.distributed down, if the Trainer started it, before the interpreter exits.

    The Trainer never destroys the process group it joins. Left to interpreter shutdown, a
    gloo worker thread may still be freeing the tensors of the last collective, which needs
    the GIL, and the worker aborts ("terminate called without an active exception"). Destroying
    the group while the DDP wrapper is alive is no better: the group then dies with the
    wrapper's reducer, whose destructor joins the gloo threads while holding the GIL, a
    deadlock. So the finished Trainer and its DDP wrapper are collected first; the group's
    last reference is then dropped by torch's Python binding, which releases the GIL while
    the threads are joined.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    gc.collect()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
