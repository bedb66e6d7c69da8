"""Reproduce the paper's comparison at toy scale: `streammind reproduce toy [--quick] [--out runs/reproduce] [--record]`.

The paper's claim: an always-on state-space perception path plus a small gate matches or
beats the per-frame-LLM paradigm (VideoLLM-online) in timing and language, at a fraction of
the per-frame cost, and the gap grows with the frame rate. This command trains both models
on the embedded synthetic world with the same data, tower and budget class, evaluates them
with the same evaluators (free-running and teacher-forced), measures their per-frame cost
and memory, and writes one report: `<out>/report.md`, `<out>/report.json`, `<out>/plots/`
(with `--record`, also `docs/reproduce/` and `assets/reproduce/`).

What runs (scale "full"; "quick" and "smoke" shrink every size, `Scale`):
1. worlds: the default world (its first `num_train` training videos, `num_test` test videos),
   the `--move-queries` world and the long-memory world (`streammind.synthetic.world`), one tokenizer;
2. one tower (CLIP-style pretraining on the default world), frozen and shared by every row,
   with one feature cache (keyed by tower and pooling);
3. rows on the default world: StreamMind (query-aware gate) and the per-frame-LLM baseline
   for `seeds` seeds each; StreamMind variants at seed 0: the per-frame gate and the 0.5/0.5
   gate loss (stage 2 only, from seed 0's stage 1: they differ only in the gate or its
   loss), without the Mamba block, sampling uniform and all (stage 1 and 2 retrained:
   sampling changes what the LLM learns from), and uniform / all applied at inference to
   the similarity-trained model (to show whether inference-only would have been equivalent);
4. the frame-rate sweep (seed-0 models at each fps: quality, per-frame cost, cost per second
   of video), per-frame cost against the stream position, state / KV memory against the
   stream length (measured on silent streams where the session can hold them, else
   computed from the sizes; also computed for the 7B presets);
5. both models trained and evaluated on the two harder worlds (the long-memory world at
   1 fps, so the baseline's context holds a whole video);
6. the report, with the choices above, the wall and CPU time of every step and the load
   average, so the numbers can be read for what they are.

Every model goes through `streammind.training.train.main` (the shipped tiny YAMLs,
`streammind.configs`, plus flags; the frozen tower's features are cached by its feature pass,
`streammind.training.features`), every evaluation through
`streammind.evaluation.protocols.run_stream_protocols` /
`streammind.evaluation.free_running.run_free_running`.
"""

from __future__ import annotations

import argparse
import copy
import importlib.resources
import json
import logging
import os
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ArgumentParser, UserError, run_command
from .quickstart import tiny_configs

QUERY_FOR_COSTS = "Tell me when a shape appears."


@dataclass(frozen=True)
class Scale:
    """The sizes of one reproduction run (why each is what it is: the report's "Budget" section).

    Attributes:
        name: "full", "quick" or "smoke".
        num_train, num_val, num_test: default-world training (the first n), validation (the
            tower's held-out accuracy) and test videos.
        stage1_epochs, stage2_epochs, baseline_epochs: epochs on the default world.
        seeds: seeds of the two main rows.
        tower_steps: steps of the tower's CLIP-style pretraining.
        move_train: training videos of the move-queries world (its test split is num_test).
        long_train, long_test: videos of the long-memory world.
        long_duration: (min, max) seconds of a long-memory video; long_memory_gap: seconds
            from the first appearance to the latest turn that needs it.
        long_stage1_epochs, long_stage2_epochs, long_baseline_epochs: epochs on the long-memory
            world (the move world uses the default world's).
        sweep_fps: frame rates of the sweep.
        cost_positions: stream positions (frames at 2 fps) where per-frame cost is measured.
        memory_lengths: stream lengths (seconds at 2 fps) of the memory table.
        timing_frames: frames timed per measurement.
        batch_size, long_batch_size: training batch on the default and move worlds, and on the
            long-memory world (whose videos are ten times longer).
        max_steps: cap on optimiser steps of every training run (-1: none; the smoke scale).
    """

    name: str
    num_train: int
    num_val: int
    num_test: int
    stage1_epochs: float
    stage2_epochs: float
    baseline_epochs: float
    seeds: int
    tower_steps: int
    move_train: int
    long_train: int
    long_test: int
    long_duration: tuple[float, float]
    long_memory_gap: float
    long_stage1_epochs: float
    long_stage2_epochs: float
    long_baseline_epochs: float
    sweep_fps: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0)
    cost_positions: tuple[int, ...] = (0, 20, 120, 300)
    memory_lengths: tuple[float, ...] = (10.0, 60.0, 600.0, 3600.0)
    timing_frames: int = 30
    batch_size: int = 8
    long_batch_size: int = 4
    max_steps: int = -1


SCALES = {
    "full": Scale("full", num_train=600, num_val=40, num_test=60, stage1_epochs=13, stage2_epochs=4, baseline_epochs=8, seeds=3, tower_steps=400,
                  move_train=600, long_train=100, long_test=30, long_duration=(140.0, 150.0), long_memory_gap=120.0,
                  long_stage1_epochs=8, long_stage2_epochs=4, long_baseline_epochs=5),
    # Every row, one seed, a quarter of the data, batch 4; the long-memory world's videos are short
    # (40-45 s, the memory gap 20 s), so the baseline learns it in the budget too.
    # The tower gets the full scale's 400 steps: at 100 its held-out scene accuracy was 0.77 and neither model beat chance.
    "quick": Scale("quick", num_train=160, num_val=8, num_test=24, stage1_epochs=12, stage2_epochs=8, baseline_epochs=10, seeds=1, tower_steps=400,
                   move_train=160, long_train=40, long_test=8, long_duration=(40.0, 45.0), long_memory_gap=20.0,
                   long_stage1_epochs=6, long_stage2_epochs=6, long_baseline_epochs=8, cost_positions=(0, 20, 120), timing_frames=10,
                   batch_size=4, long_batch_size=4),
    # CI: the same code path, one optimiser step per run (structure only; nothing is learned).
    "smoke": Scale("smoke", num_train=6, num_val=1, num_test=2, stage1_epochs=1, stage2_epochs=1, baseline_epochs=1, seeds=2, tower_steps=3,
                   move_train=4, long_train=2, long_test=2, long_duration=(34.0, 36.0), long_memory_gap=12.0,
                   long_stage1_epochs=1, long_stage2_epochs=1, long_baseline_epochs=1,
                   sweep_fps=(1.0, 2.0), cost_positions=(0, 20), memory_lengths=(10.0, 60.0), timing_frames=2, max_steps=1),
}


@dataclass
class TrainRecord:
    """One training run: what, where, how long, and its loss curve."""

    name: str
    model_dir: str
    steps: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    train_loss: float | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)


class Clock:
    """Wall and CPU time of named steps, and the load average beside them."""

    def __init__(self):
        self.start_wall, self.start_cpu = time.perf_counter(), time.process_time()
        self.steps: dict[str, dict] = {}
        self.load_start = _load_average()

    def measure(self, name: str):
        clock = self

        class _Span:
            def __enter__(self):
                self.wall, self.cpu = time.perf_counter(), time.process_time()
                print(f"[{clock.elapsed():7.0f} s] {name}", flush=True)
                return self

            def __exit__(self, *exc):
                entry = clock.steps.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0})
                entry["wall_s"] += time.perf_counter() - self.wall
                entry["cpu_s"] += time.process_time() - self.cpu
                entry["load_average"] = _load_average()

        return _Span()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start_wall

    def summary(self) -> dict:
        return {"wall_s": self.elapsed(), "cpu_s": time.process_time() - self.start_cpu, "load_average_start": self.load_start,
                "load_average_end": _load_average(), "steps": self.steps}


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ---- worlds, tower, training ---------------------------------------------------------------


def make_worlds(scale: Scale, root: Path, clock: Clock) -> dict[str, Path]:
    """The three worlds (reused when already generated with the same settings) and the tokenizer."""
    from ..synthetic.world import WorldConfig, build_tokenizer, generate_world

    configs = {
        "default": WorldConfig(seed=0, num_train=scale.num_train, num_val=scale.num_val, num_test=scale.num_test),
        "move": WorldConfig(seed=0, num_train=scale.move_train, num_val=0, num_test=scale.num_test, move_queries=True),
        # Whole-second events, sampled at 1 fps; encoded at 2 fps (half the bytes of the default 4).
        "long_memory": WorldConfig(seed=0, num_train=scale.long_train, num_val=0, num_test=scale.long_test, long_memory=True, fps=2,
                                   min_duration=scale.long_duration[0], max_duration=scale.long_duration[1], min_gap=2.0, max_gap=4.0,
                                   memory_gap=scale.long_memory_gap),
    }
    worlds = {}
    with clock.measure("worlds"):
        for name, config in configs.items():
            generate_world(root / name, config)
            worlds[name] = root / name
        if not (root / "tokenizer" / "tokenizer.json").is_file():
            build_tokenizer(root / "tokenizer")
    return worlds


def _train_args(yaml: Path, world: Path, out: Path, seed: int, epochs: float, batch: int, scale: Scale, cache: Path, extra: list[str]) -> list[str]:
    args = [str(yaml), "--train_annotations", str(world / "train.jsonl"), "--data_root", str(world), "--output_dir", str(out),
            "--seed", str(seed), "--num_train_epochs", str(epochs), "--per_device_train_batch_size", str(batch),
            "--feature_cache_dir", str(cache), "--report_to", "none", "--disable_tqdm", "true", "--logging_steps", "10",
            "--save_steps", "100000", "--max_steps", str(scale.max_steps)]
    return args + extra


def train(name: str, args: list[str], clock: Clock) -> TrainRecord:
    """One `streammind train` run in this process; the final checkpoint's log gives the loss curve
    (the checkpoint itself, optimizer state included, is then deleted)."""
    from ..training.train import train as train_main

    start_wall, start_cpu = time.perf_counter(), time.process_time()
    with clock.measure(f"train {name}"):
        out = Path(train_main(args))
    record = TrainRecord(name=name, model_dir=str(out), wall_s=time.perf_counter() - start_wall, cpu_s=time.process_time() - start_cpu)
    for checkpoint in sorted(out.glob("checkpoint-*")):
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        record.steps = int(state["global_step"])
        record.curve = [(int(h["step"]), float(h["loss"])) for h in state["log_history"] if "loss" in h]
        record.train_loss = next((float(h["train_loss"]) for h in state["log_history"] if "train_loss" in h), None)
        shutil.rmtree(checkpoint)
    return record


def derive_checkpoint(source: str | Path, target: Path, **changes) -> Path:
    """A copy of a saved StreamMind model with config fields changed (e.g. the gate's mode before
    stage 2); the weights are loaded strictly into the new structure."""
    from ..builder import load_model, save_model
    from ..modeling_streammind import StreamMindForCausalLM
    from ..processing import StreamMindProcessor

    model, processor = load_model(source)
    config = copy.deepcopy(model.config)
    for key, value in changes.items():
        setattr(config, key, value)
    config._check()
    derived = StreamMindForCausalLM(config)
    derived.load_state_dict(model.state_dict(), strict=True)
    save_model(derived, StreamMindProcessor(processor.tokenizer, config), target)
    return target


# ---- evaluation ----------------------------------------------------------------------------


def _metrics_row(summary: dict) -> dict:
    """The table's columns from a `run_stream_protocols` summary."""
    free, teacher = summary.get("free", {}), summary.get("teacher", {})
    return {
        "trigger_acc": free.get("trigger_acc"), "timval": free.get("timval"),
        "f1_1s": free.get("trigger_f1_1s"), "f1_2s": free.get("trigger_f1_2s"), "f1_5s": free.get("trigger_f1_5s"),
        "exact": free.get("reply_exact_match"), "num_replies": free.get("num_replies"), "num_events": free.get("num_events"),
        "lm_ppl": teacher.get("lm_ppl"), "time_diff": teacher.get("time_diff"), "fluency": teacher.get("fluency"),
        "lm_correctness": teacher.get("lm_correctness"),
    }


def evaluate(model_dir: str | Path, world: Path, out: Path, clock: Clock, name: str, sampling: str | None = None) -> dict:
    """Both protocols on the world's test split (`sampling`: applied at inference only)."""
    from ..builder import load_model
    from ..evaluation.protocols import run_stream_protocols
    from ..evaluation.teacher_forced import TeacherForcedTask
    from ..training.annotations import load_annotations

    with clock.measure(f"evaluate {name}"):
        model, processor = load_model(model_dir)
        if sampling is not None:
            model.config.sampling = processor.config.sampling = sampling
        task = TeacherForcedTask(load_annotations(world / "test.jsonl"), world, num_plots=2)
        start = time.perf_counter()
        summary = run_stream_protocols(task, model, processor, out, protocol="both", use_meteor=False)
        row = _metrics_row(summary) | {"eval_wall_s": time.perf_counter() - start}
        row["by_kind"] = turn_breakdown(Path(out) / "free" / "predictions.jsonl", world)
    return row


# Each reply template's fields, in the order they appear in the sentence (`streammind.synthetic.world.REPLY_TEMPLATES`).
_TEMPLATE_FIELDS = {"appear": ("colour", "shape"), "disappear": ("colour", "shape"), "recolour": ("old_colour", "shape", "colour"),
                    "move": ("colour", "shape", "slot")}


def _template_fields(event_type: str, text: str) -> dict | None:
    """The fields a reply fills in the template of `event_type` (None: the reply is not of that template)."""
    from ..synthetic.world import REPLY_TEMPLATES

    names = _TEMPLATE_FIELDS[event_type]
    pattern = re.escape(REPLY_TEMPLATES[event_type])
    for name in names:
        pattern = pattern.replace(re.escape("{" + name + "}"), r"(\w+)")
    match = re.fullmatch(pattern, " ".join(text.split()))
    return None if match is None else dict(zip(names, match.groups()))


def turn_breakdown(prediction_file: Path, world: Path) -> dict:
    """Free-running results by kind of turn (the event type behind it): how many turns, how many
    got a reply within 1 s (the nearest unused one), how many of those were exact, and, for the
    inexact ones, which template field the reply got wrong ("template": a sentence of another
    kind). This is what says what limits a model on a world."""
    from ..training.annotations import load_annotations

    predictions = {json.loads(line)["id"]: json.loads(line) for line in prediction_file.read_text().splitlines() if line.strip()}
    kinds: dict[str, dict] = {}
    for record in load_annotations(world / "test.jsonl"):
        events = record.extra["events"]
        replies, used = predictions[record.id]["replies"], set()
        for turn in record.turns:
            event = next(e for e in events if abs(e["time"] - turn.time) < 1e-6 and e["text"] == turn.text)
            entry = kinds.setdefault(event["type"], {"turns": 0, "timed": 0, "exact": 0, "wrong": {}})
            entry["turns"] += 1
            near = [(abs(r["time"] - turn.time), i) for i, r in enumerate(replies) if i not in used and abs(r["time"] - turn.time) <= 1.0 + 1e-6]
            if not near:
                continue
            index = min(near)[1]
            used.add(index)
            entry["timed"] += 1
            text = " ".join(replies[index]["text"].split())
            if text == turn.text:
                entry["exact"] += 1
                continue
            got = _template_fields(event["type"], text)
            wrong = ["template"] if got is None else [name for name, value in got.items() if value != str(event[name])]
            for name in wrong:
                entry["wrong"][name] = entry["wrong"].get(name, 0) + 1
    return dict(sorted(kinds.items()))


def chance_row(world: Path, seed: int = 0) -> dict:
    """A random predictor: as many replies as events per video, at uniformly drawn frame times
    (2 fps), each a random reply the world can produce; scored by the same scorer."""
    from ..evaluation.free_running import headline
    from ..evaluation.score import score_predictions
    from ..synthetic.world import all_replies
    from ..training.annotations import load_annotations

    rng = random.Random(seed)
    replies = all_replies()
    predictions, references = [], []
    for record in load_annotations(world / "test.jsonl"):
        frames = int(record.extra["duration"] * 2)  # the 2 fps grid of the video
        times = sorted(rng.randrange(frames) / 2 for _ in record.turns)
        predictions.append({"id": record.id, "video": record.video, "replies": [{"time": t, "text": rng.choice(replies)} for t in times]})
        references.append({**record.to_dict(), "id": record.id})
    metrics = score_predictions(predictions=predictions, references=references, use_meteor=False)
    h = headline(metrics)
    return {"trigger_acc": h["trigger_acc"], "timval": h["timval"], "f1_1s": h["trigger_f1_1s"], "f1_2s": h["trigger_f1_2s"],
            "f1_5s": h["trigger_f1_5s"], "exact": h["reply_exact_match"]}


def long_memory_breakdown(prediction_file: Path, world: Path, memory_gap: float) -> dict:
    """Free-running results of the long-memory world by kind of turn: the first disappearance
    (no memory needed), later ones (memory across a reply), the "long" ones (>= memory_gap after
    the first appearance), and the other shapes' disappearances (distractors: a reply within
    1 s is a false trigger)."""
    from ..training.annotations import load_annotations

    predictions = {json.loads(line)["id"]: json.loads(line) for line in prediction_file.read_text().splitlines() if line.strip()}
    kinds = {"first": [0, 0, 0], "memory": [0, 0, 0], "long": [0, 0, 0]}  # events, triggered within 1 s, exact text
    distractors = [0, 0]
    for record in load_annotations(world / "test.jsonl"):
        raw = record.extra
        events = raw["events"]
        first_time = next(e["time"] for e in events if e["type"] == "appear")
        first_shape = next(e["shape"] for e in events if e["type"] == "appear")
        replies = predictions[record.id]["replies"]
        targets = [e for e in events if e["type"] == "disappear" and e["shape"] == first_shape]
        for k, event in enumerate(targets):
            near = [r for r in replies if abs(r["time"] - event["time"]) <= 1.0 + 1e-6]
            hit = bool(near)
            exact = any(" ".join(r["text"].split()) == event["text"] for r in near)
            groups = ["first"] if k == 0 else ["memory"] + (["long"] if event["time"] - first_time >= memory_gap else [])
            for group in groups:
                kinds[group][0] += 1
                kinds[group][1] += hit
                kinds[group][2] += exact
        for event in events:
            if event["type"] == "disappear" and event["shape"] != first_shape:
                distractors[0] += 1
                distractors[1] += any(abs(r["time"] - event["time"]) <= 1.0 + 1e-6 for r in replies)
    out = {kind: {"events": n, "trigger_acc": hit / n if n else None, "exact": ex / n if n else None} for kind, (n, hit, ex) in kinds.items()}
    out["distractors"] = {"events": distractors[0], "false_trigger_rate": distractors[1] / distractors[0] if distractors[0] else None}
    return out


def fps_sweep(models: dict[str, str], world: Path, out: Path, scale: Scale, clock: Clock) -> list[dict]:
    """Seed-0 models of both main rows at each frame rate: free-running quality on the test split,
    the wall time per second of video, and the per-frame cost 30 s into a stream."""
    from ..builder import load_model
    from ..evaluation.free_running import run_free_running
    from ..training.annotations import load_annotations
    from .costs import frame_flops, frame_seconds, scan_flops

    records = load_annotations(world / "test.jsonl")
    seconds_of_video = sum(r.extra["duration"] for r in records)
    rows = []
    for name, model_dir in models.items():
        model, processor = load_model(model_dir)
        for fps in scale.sweep_fps:
            with clock.measure(f"sweep {name} {fps:g} fps"):
                start = time.perf_counter()
                metrics = run_free_running(model, processor, records, world, out / f"{name}_{fps:g}fps", fps=fps, num_plots=0, use_meteor=False)
                wall = time.perf_counter() - start
                position = int(30 * fps)
                flops = frame_flops(model, processor, QUERY_FOR_COSTS, position)["total"] + scan_flops(model)
                seconds = frame_seconds(model, processor, QUERY_FOR_COSTS, position, frames=scale.timing_frames)["min"]
            h = metrics["headline"]
            rows.append({"model": name, "fps": fps, "trigger_acc": h["trigger_acc"], "timval": h["timval"], "f1_1s": h["trigger_f1_1s"],
                         "exact": h["reply_exact_match"], "eval_s_per_video_s": wall / seconds_of_video,
                         "flops_per_frame_at_30s": flops, "ms_per_frame_at_30s": 1e3 * seconds,
                         "flops_per_video_second_at_30s": flops * fps})
    return rows


def cost_rows(models: dict[str, str], scale: Scale, clock: Clock) -> dict:
    """Per-frame FLOPs and time of each model at each stream position (frames at 2 fps)."""
    from ..builder import load_model
    from .costs import frame_flops, frame_seconds, scan_flops

    out = {}
    for name, model_dir in models.items():
        with clock.measure(f"costs {name}"):
            model, processor = load_model(model_dir)
            out[name] = []
            for p in scale.cost_positions:
                seconds = frame_seconds(model, processor, QUERY_FOR_COSTS, p, frames=scale.timing_frames)
                out[name].append({"position": p, "seconds_into_stream": p / 2.0,
                                  "flops": frame_flops(model, processor, QUERY_FOR_COSTS, p)["total"] + scan_flops(model),
                                  "ms": 1e3 * seconds["min"], "ms_median": 1e3 * seconds["median"]})
    return out


def memory_rows(streammind_dir: str, baseline_dir: str, scale: Scale, clock: Clock) -> list[dict]:
    """State / KV memory of one stream against its length (2 fps, silent: no replies).

    StreamMind: measured for every length (its state is bounded, a silent hour is cheap to run);
    the bound adds a full LLM context. The baseline: measured while its KV cache holds the
    stream, computed beyond (VideoLLM-online keeps every token: prompt + 11 tokens per frame).
    Both also computed for the 7B presets (bf16) from the same sizes.
    """
    import torch

    from ..builder import load_model
    from ..configuration import StreamMindConfig
    from ..modeling_perframe import PerFrameLLMConfig
    from .costs import _silent_session, kv_bytes_per_token, stream_memory

    rows = []
    with clock.measure("memory vs stream length"):
        sm, sm_proc = load_model(streammind_dir)
        bl, bl_proc = load_model(baseline_dir)
        prompt = len(bl_proc.encode_prompt(QUERY_FOR_COSTS))
        per_frame = bl_proc.tokens_per_frame + 1
        bl_token = kv_bytes_per_token(bl.language_model.config)
        big_sm, big_bl = StreamMindConfig.from_preset("streammind-7b"), PerFrameLLMConfig.from_preset("perframe-7b")
        big_bl_token = kv_bytes_per_token(big_bl.text_config, torch.bfloat16)
        big_gate_token = kv_bytes_per_token(big_sm.gate_config, torch.bfloat16)
        big_llm_token = kv_bytes_per_token(big_sm.text_config, torch.bfloat16)
        d_inner = big_sm.perception_expand * big_sm.hidden_size
        for seconds in scale.memory_lengths:
            frames = int(seconds * 2)
            session = _silent_session(sm, sm_proc, QUERY_FOR_COSTS, frames)
            sm_mem = stream_memory(session)
            tokens = prompt + frames * per_frame - 1
            measured_bl = tokens + bl_proc.tokens_per_frame + 64 < bl.config.max_context_tokens
            bl_used = stream_memory(_silent_session(bl, bl_proc, QUERY_FOR_COSTS, frames))["used_total"] if measured_bl else tokens * bl_token
            big_sm_used = (d_inner * big_sm.perception_d_conv * 2 + d_inner * big_sm.perception_d_state * 4
                           + min(frames, big_sm.max_turn_frames) * big_sm.hidden_size * 2
                           + (64 + min(frames, big_sm.gate_window)) * big_gate_token)
            rows.append({
                "seconds": seconds, "frames": frames,
                "streammind_used_bytes": sm_mem["used_total"], "streammind_used_by_part": sm_mem["used"],
                "streammind_bound_bytes": sm_mem["allocated_total"],
                "baseline_kv_bytes": bl_used, "baseline_measured": measured_bl, "baseline_tokens": tokens,
                "streammind_7b_used_bytes": big_sm_used,
                "streammind_7b_bound_bytes": big_sm_used + big_sm.max_context_tokens * big_llm_token,
                "baseline_7b_kv_bytes": tokens * big_bl_token,
            })
    return rows


# ---- the whole run -------------------------------------------------------------------------


def reproduce(scale: Scale, out: Path, record_to: Path | None = None) -> dict:
    """Run everything (module docstring); returns the report's JSON. With `record_to` (a
    checkout), the report is also copied to its docs/reproduce/ and the plots to assets/reproduce/."""
    with importlib.resources.as_file(tiny_configs()) as configs:
        return _reproduce(scale, out, Path(configs), record_to)


def _reproduce(scale: Scale, out: Path, configs: Path, record_to: Path | None) -> dict:
    from ..synthetic.tower_pretrain import pretrain_tower
    from .reproduce_report import record_report, write_report

    clock = Clock()
    out.mkdir(parents=True, exist_ok=True)
    worlds = make_worlds(scale, out / "worlds", clock)
    tokenizer = out / "worlds" / "tokenizer"
    with clock.measure("tower"):
        tower_metrics = pretrain_tower(worlds["default"], out / "tower", steps=scale.tower_steps, seed=0, progress=False)
    tower, cache = out / "tower", out / "feature_cache"
    stage1_yaml, stage2_yaml, baseline_yaml = configs / "stage1.yaml", configs / "stage2.yaml", configs / "perframe.yaml"
    models, trainings, rows = out / "models", [], {}

    def streammind(name: str, world: Path, seed: int, e1: float, e2: float, overrides: dict | None = None, stage1: str | None = None,
                   gate_changes: dict | None = None, stage2_extra: tuple[str, ...] = (), batch: int = scale.batch_size) -> str:
        if stage1 is None:
            extra = ["--tokenizer_path", str(tokenizer), "--clip_path", str(tower)]
            if overrides:
                extra += ["--model_overrides", json.dumps(overrides)]
            args = _train_args(stage1_yaml, world, models / name / "stage1", seed, e1, batch, scale, cache, extra)
            trainings.append(train(f"{name} stage 1", args, clock))
            stage1 = trainings[-1].model_dir
        if gate_changes:
            stage1 = str(derive_checkpoint(stage1, models / name / "stage1_derived", **gate_changes))
        args = _train_args(stage2_yaml, world, models / name / "stage2", seed, e2, batch, scale, cache, ["--init_from", stage1, *stage2_extra])
        trainings.append(train(f"{name} stage 2", args, clock))
        return trainings[-1].model_dir

    def baseline(name: str, world: Path, seed: int, epochs: float, overrides: dict | None = None, batch: int = scale.batch_size) -> str:
        extra = ["--tokenizer_path", str(tokenizer), "--clip_path", str(tower)]
        if overrides:
            extra += ["--model_overrides", json.dumps(overrides)]
        trainings.append(train(name, _train_args(baseline_yaml, world, models / name, seed, epochs, batch, scale, cache, extra), clock))
        return trainings[-1].model_dir

    default, evals = worlds["default"], out / "eval"
    sm_dirs, bl_dirs = [], []
    for seed in range(scale.seeds):
        sm_dirs.append(streammind(f"streammind_seed{seed}", default, seed, scale.stage1_epochs, scale.stage2_epochs))
        bl_dirs.append(baseline(f"per_frame_llm_seed{seed}", default, seed, scale.baseline_epochs))
    for seed, (sm_dir, bl_dir) in enumerate(zip(sm_dirs, bl_dirs)):
        rows.setdefault("streammind", []).append(evaluate(sm_dir, default, evals / f"streammind_seed{seed}", clock, f"streammind seed {seed}"))
        rows.setdefault("per_frame_llm", []).append(evaluate(bl_dir, default, evals / f"per_frame_llm_seed{seed}", clock, f"per-frame LLM seed {seed}"))

    stage1_seed0 = str(models / "streammind_seed0" / "stage1")
    ablations = {
        "per_frame_gate": streammind("per_frame_gate", default, 0, 0, scale.stage2_epochs, stage1=stage1_seed0, gate_changes={"gate_mode": "per_frame"}),
        # The gate loss is a training setting (`streammind train --gate_class_weights`), not a model field.
        "gate_loss_0.5_0.5": streammind("gate_loss_0.5_0.5", default, 0, 0, scale.stage2_epochs, stage1=stage1_seed0,
                                        stage2_extra=("--gate_class_weights", "[0.5, 0.5]")),
        "no_mamba": streammind("no_mamba", default, 0, scale.stage1_epochs, scale.stage2_epochs, overrides={"perception_temporal": "none"}),
        "sampling_uniform": streammind("sampling_uniform", default, 0, scale.stage1_epochs, scale.stage2_epochs, overrides={"sampling": "uniform"}),
        "sampling_all": streammind("sampling_all", default, 0, scale.stage1_epochs, scale.stage2_epochs, overrides={"sampling": "all"}),
    }
    for name, model_dir in ablations.items():
        rows[name] = [evaluate(model_dir, default, evals / name, clock, name)]
    for sampling in ("uniform", "all"):
        name = f"sampling_{sampling}_inference_only"
        rows[name] = [evaluate(sm_dirs[0], default, evals / name, clock, name, sampling=sampling)]

    main_models = {"streammind": sm_dirs[0], "per_frame_llm": bl_dirs[0]}
    costs = cost_rows({**main_models, "per_frame_gate": ablations["per_frame_gate"], "no_mamba": ablations["no_mamba"]}, scale, clock)
    sweep = fps_sweep(main_models, default, out / "sweep", scale, clock)
    memory = memory_rows(sm_dirs[0], bl_dirs[0], scale, clock)

    hard = {}
    move = worlds["move"]
    hard["move"] = {
        "streammind": evaluate(streammind("move_streammind", move, 0, scale.stage1_epochs, scale.stage2_epochs), move,
                               evals / "move_streammind", clock, "move world: streammind"),
        "per_frame_llm": evaluate(baseline("move_per_frame_llm", move, 0, scale.baseline_epochs), move,
                                  evals / "move_per_frame_llm", clock, "move world: per-frame LLM"),
    }
    long_world, at_1fps, batch = worlds["long_memory"], {"frames_per_second": 1.0}, scale.long_batch_size
    long_sm = streammind("long_streammind", long_world, 0, scale.long_stage1_epochs, scale.long_stage2_epochs, overrides=at_1fps, batch=batch)
    # The same stage 1, with stage 2 also training the EPFE: can the gate's loss teach the state to keep the memory?
    long_sm_epfe = streammind("long_streammind_epfe_in_stage2", long_world, 0, 0, scale.long_stage2_epochs, batch=batch,
                              stage1=str(models / "long_streammind" / "stage1"), stage2_extra=("--trainable", "[gate, perception]"))
    long_bl = baseline("long_per_frame_llm", long_world, 0, scale.long_baseline_epochs, overrides=at_1fps, batch=batch)
    hard["long_memory"] = {}
    for name, model_dir in (("streammind", long_sm), ("streammind_epfe_in_stage2", long_sm_epfe), ("per_frame_llm", long_bl)):
        hard["long_memory"][name] = evaluate(model_dir, long_world, evals / f"long_{name}", clock, f"long-memory world: {name}")
        hard["long_memory"][name]["breakdown"] = long_memory_breakdown(evals / f"long_{name}" / "free" / "predictions.jsonl", long_world,
                                                                     scale.long_memory_gap)

    chance = {world: chance_row(worlds[world]) for world in ("default", "move", "long_memory")}
    report = {
        "scale": asdict(scale),
        "command": "streammind reproduce toy" + {"full": "", "quick": " --quick", "smoke": " --scale smoke"}[scale.name],
        "environment": _environment(),
        "tower": {k: tower_metrics.get(k) for k in ("val_scene_acc", "val_shape_acc", "val_colour_acc", "seconds")},
        "worlds": {name: json.loads((path / "world.json").read_text())["splits"] for name, path in worlds.items()},
        "rows": rows, "chance": chance, "hard": hard, "costs": costs, "sweep": sweep, "memory": memory,
        "trainings": [asdict(t) for t in trainings],
    }
    report["timing"] = clock.summary()
    write_report(report, out)
    if record_to is not None:
        record_report(out, record_to)
    return report


def _environment() -> dict:
    import platform

    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "torch_threads": torch.get_num_threads(), "machine": platform.machine()}


def main(argv: list[str] | None = None) -> int:
    """`streammind reproduce toy`; returns the exit status."""
    run(argv)
    return 0


def run(argv: list[str] | None = None) -> dict:
    """Parse the command line, run the reproduction and return the report's JSON."""
    parser = ArgumentParser(prog="streammind reproduce", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", choices=("toy",), help="what to reproduce (toy: the synthetic world at the tiny preset's scale)")
    parser.add_argument("--quick", action="store_true", help="the quick scale (minutes; every row, smaller sizes, one seed)")
    parser.add_argument("--scale", choices=sorted(SCALES), default=None, help="full (default), quick (= --quick) or smoke (CI: structure only)")
    parser.add_argument("--out", default="runs/reproduce", help="run directory (worlds, models, evaluations, the report)")
    parser.add_argument("--record", action="store_true",
                        help="also copy the report to docs/reproduce/ and its plots to assets/reproduce/ of the checkout in the "
                             "current directory")
    args = parser.parse_args(argv)
    if args.quick and args.scale not in (None, "quick"):
        parser.error("--quick and --scale disagree")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    scale = SCALES[args.scale or ("quick" if args.quick else "full")]
    record_to = None
    if args.record:
        record_to = Path.cwd()
        if not (record_to / "pyproject.toml").is_file() or not (record_to / "docs").is_dir():
            raise UserError(f"--record copies into the checkout in the current directory; {record_to} is not one (no pyproject.toml and docs/)")
    report = reproduce(scale, Path(args.out), record_to=record_to)
    print(f"wrote {Path(args.out) / 'report.md'} in {report['timing']['wall_s'] / 60:.1f} min")
    return report


__all__ = ["SCALES", "Scale", "chance_row", "derive_checkpoint", "long_memory_breakdown", "main", "reproduce", "run", "turn_breakdown"]


if __name__ == "__main__":
    raise SystemExit(run_command("streammind reproduce", main))
