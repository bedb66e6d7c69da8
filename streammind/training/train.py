"""Two-stage training on HF Trainer: `streammind train <stage.yaml> [--key value ...]`.

- Stage 1 (language): perception (EPFE) + LLM (full or LoRA) learn the replies with the
  next-token loss; the vision tower and the gate are frozen. The tiny preset's tower comes
  from `streammind pretrain-tower` (`clip_path` next to `preset`), since no pretrained CLIP
  exists offline.
- Stage 2 (gate): only the gate learns, from the stage-1 checkpoint (`init_from`), with the
  weighted cross-entropy over per-frame labels (or the focal loss: `gate_loss`, a training
  setting, `arguments.StreamMindTrainingArguments`).

The settings (`arguments.py`) are checked before any model is built, and the resolved ones
are written to `output_dir/run_config.yaml`. What trains is declared in the YAML
(`trainable: [perception, language_model]`) and applied by `set_trainable`, which raises when
a pattern matches nothing and logs a table of trainable / frozen parameters; the annotation
files, data root and `init_from` are checked too (`validate_inputs`).
`resume_from_checkpoint: auto` resumes from the newest complete checkpoint in `output_dir`
(`last_complete_checkpoint`: its trainer_state.json, written last, parses, and its weights
are all there and whole) and logs the incomplete ones it skipped. Launch several processes
with torchrun or the deepspeed launcher (scripts/finetune_stage{1,2}.sh).

With `feature_cache_dir` set (the tower is frozen), the clips of the annotations missing from
the cache are extracted first, in the main process on the training device (the extraction
pass of `training.features`; each rank takes its shard, then all wait at a barrier), so the
data loaders and their workers only read cached features and never touch the model or CUDA.
At the end, the median seconds per optimizer step and the peak CUDA memory are logged.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import gc
import json
import logging
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import yaml
from transformers import AutoTokenizer, CLIPVisionModel, Trainer, TrainerCallback, TrainingArguments, set_seed

from ..builder import (
    CheckpointError,
    build_from_parts,
    build_model,
    default_dtype,
    init_gate_from_llm,
    load_model,
    read_config,
    weight_files,
)
from ..configuration import StreamMindConfig
from ..errors import run_command
from ..fileio import atomic_write
from ..gate import GateLossConfig
from ..modeling_perframe import PER_FRAME_PRESETS, PerFrameLLMConfig, build_per_frame_llm
from .annotations import load_annotations
from .arguments import ConfigError, DataArguments, ModelArguments, StreamMindTrainingArguments, parse_args
from .collator import StreamCollator
from .datasets import StreamDataset
from .features import FeatureCache, clips_of, extract_features, shard, vision_cache_key

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"
TRAINING_ARGUMENT_NAMES = frozenset(f.name for f in dataclasses.fields(TrainingArguments))


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


def last_complete_checkpoint(output_dir: str | Path, move_aside: bool = False) -> str | None:
    """The newest complete `checkpoint-N` in `output_dir` (None if there is none); logs the skipped ones.

    With `move_aside` (on the process that saves), the incomplete checkpoints newer than it are
    renamed `incomplete-checkpoint-N`: left in place, the Trainer's rotation (`save_total_limit`)
    would count them as the newest and delete the checkpoints the resumed run writes.
    """
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
        if move_aside:
            path.rename(path.with_name(f"incomplete-{path.name}"))
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
        if model_args.clip_path is not None:  # a pretrained tower, e.g. from `streammind pretrain-tower`
            clip = CLIPVisionModel.from_pretrained(model_args.clip_path, dtype=dtype).to(device)
            overrides["vision_config"] = clip.config.to_dict()
        # The model-type switch: a per-frame-LLM preset builds the baseline (streammind.modeling_perframe).
        per_frame = model_args.preset in PER_FRAME_PRESETS
        config = (PerFrameLLMConfig if per_frame else StreamMindConfig).from_preset(model_args.preset, **overrides)
        # Initialise directly in the target dtype and on the training device: a fresh 7B model
        # is 30 GB in fp32, and random init on a CPU takes many minutes.
        with default_dtype(dtype), device:
            model, processor = (build_per_frame_llm if per_frame else build_model)(
                config, AutoTokenizer.from_pretrained(model_args.tokenizer_path), vision=clip)
    else:
        model, processor = build_from_parts(model_args.clip_path, model_args.llm_path, gate_init_from_llm=model_args.gate_init_from_llm,
                                            dtype=dtype, **model_args.model_overrides)
    if model_args.gate_init_from_llm and model_args.llm_path is None:
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


def fill_feature_cache(model, processor, data_args: DataArguments, args: StreamMindTrainingArguments) -> FeatureCache:
    """Extract the pooled features of every clip missing from `feature_cache_dir`, on `args.device`.

    Every rank derives the same clip list (train + eval annotations) and extracts its shard
    (rank i of n takes clips i, i + n, ...), decoding in `dataloader_num_workers` processes;
    then all ranks wait at a barrier and check that every clip is now cached (a cache directory
    that is not shared by all ranks would leave other ranks' clips missing here).
    """
    if any(p.requires_grad for p in model.vision.parameters()):
        raise ValueError("feature_cache_dir caches frozen-tower features, but the vision tower is trainable in this stage")
    if any(p.numel() == 0 for p in model.vision.parameters()):
        raise ValueError("the vision tower's weights are partitioned (ZeRO-3 init): fill feature_cache_dir first with `streammind features`")
    start = time.perf_counter()
    model.vision.to(args.device)  # where the Trainer puts it anyway
    cache = FeatureCache(data_args.feature_cache_dir, vision_cache_key(model.config, model.vision))
    fps = data_args.fps or processor.config.frames_per_second
    paths = [p for p in (data_args.train_annotations, data_args.eval_annotations) if p]
    clips = clips_of([rec for path in paths for rec in load_annotations(path)], data_args.data_root)
    mine = shard(clips, args.process_index, args.world_size)
    logger.info("feature cache %s (key in %.1f s): %d clips at %g fps, this rank's shard %d of %d: %d",
                cache.directory, time.perf_counter() - start, len(clips), fps, args.process_index, args.world_size, len(mine))
    stats = extract_features(model.vision, processor.frame_processor, cache, mine, fps, device=args.device,
                             num_workers=args.dataloader_num_workers, progress=args.process_index == 0 and not args.disable_tqdm)
    logger.info("feature extraction (rank %d): %s", args.process_index, stats.summary())
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    missing = [c for c in clips if Path(c.video).is_file() and not cache.contains(c.video, fps, c.start, c.end)
               and cache.failure(c.video, fps, c.start, c.end) is None]
    if missing:
        raise RuntimeError(f"{len(missing)} clips (e.g. {missing[0].video}) are still missing from {cache.directory} after extraction: "
                           "feature_cache_dir must be on a filesystem shared by all ranks (or fill it on every host with `streammind features`)")
    return cache


class StreamMindTrainer(Trainer):
    """The HF Trainer, handing the run's gate loss (a training setting) to the model's forward.

    Args:
        gate_loss_config: the gate loss of this run (`StreamMindTrainingArguments.gate_loss_config`).
        *args, **kwargs: as `transformers.Trainer`.
    """

    def __init__(self, *args, gate_loss_config: GateLossConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate_loss_config = gate_loss_config

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "gate_labels" in inputs:
            inputs = {**inputs, "gate_loss_config": self.gate_loss_config}
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)


class StepTimes(TrainerCallback):
    """Wall time between optimizer steps; logs the median (the first step, with its warm-up, apart)."""

    def __init__(self):
        self.ends: list[float] = []
        self.start = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())

    def on_train_end(self, args, state, control, **kwargs):
        if not self.ends:
            return
        gaps = [b - a for a, b in zip(self.ends, self.ends[1:])]
        median = f"{statistics.median(gaps):.3f}" if gaps else "n/a"
        logger.info("optimizer steps: %d, first %.3f s, then median %s s per step", len(self.ends), self.ends[0] - self.start, median)


def main(argv: list[str] | None = None) -> int:
    """`streammind train <stage.yaml> [--key value ...]`: train one stage; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(usage())
        return 0
    train(argv)
    return 0


def usage() -> str:
    """`streammind train --help`: the command, this module's docstring and the StreamMind settings."""
    lines = ["usage: streammind train <stage.yaml> [--key value ...]", "", __doc__.strip(), "",
             "Settings (YAML keys or --key value; every transformers TrainingArguments field is accepted too):"]
    for cls in (ModelArguments, DataArguments, StreamMindTrainingArguments):
        own = [f for f in dataclasses.fields(cls) if cls is not StreamMindTrainingArguments or f.name not in TRAINING_ARGUMENT_NAMES]
        lines += [f"  {f.name:<24} {f.metadata.get('help', '')}" for f in own]
    return "\n".join(lines)


def train(argv: list[str] | None = None) -> str:
    """Train one stage from its YAML and overrides; returns the output directory (holding the final model)."""
    out = _train_stage(argv)
    _destroy_process_group()  # after _train_stage returned, so that its Trainer can be collected
    return out


def _train_stage(argv: list[str] | None) -> str:
    """`train` up to the end of training and saving."""
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

    feature_cache = fill_feature_cache(model, processor, data_args, args) if data_args.feature_cache_dir else None
    common = dict(data_root=data_args.data_root, processor=processor, stage=args.stage, fps=data_args.fps, on_error=data_args.on_bad_sample,
                  cache_decoded=data_args.cache_decoded, feature_cache=feature_cache,
                  allow_outside_root=data_args.allow_outside_root)
    train_set = StreamDataset(data_args.train_annotations, **common)
    eval_set = StreamDataset(data_args.eval_annotations, **common) if data_args.eval_annotations else None
    logger.info("training on %d examples (%d skipped: %s)", len(train_set), sum(train_set.skipped.values()), dict(train_set.skipped))

    args.remove_unused_columns = False
    trainer = StreamMindTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                                data_collator=StreamCollator.from_processor(processor), processing_class=processor.tokenizer,
                                callbacks=[StepTimes()], gate_loss_config=args.gate_loss_config())
    resume = args.resume_from_checkpoint
    if resume == "auto":
        resume = last_complete_checkpoint(out, move_aside=args.should_save)
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
    raise SystemExit(run_command("streammind train", main))
