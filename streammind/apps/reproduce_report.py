"""The report of `streammind reproduce toy`: markdown tables, plots and the JSON, from one dict.

`write_report(report, out)` writes `out/report.json`, `out/report.md` and `out/plots/*.png`;
`record_report(out, repo)` copies the report to `docs/reproduce/` and the plots to
`assets/reproduce/` (the markdown's image links rewritten to point there). The report dict
is built by `streammind.apps.reproduce.reproduce`; everything here only formats it. Plots are
drawn on `matplotlib.figure.Figure` with the Agg canvas (no pyplot state).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np

from ..fileio import atomic_write, write_json

QUALITY = [("trigger_acc", "TriggerAcc"), ("timval", "TimVal"), ("f1_1s", "F1@1s"), ("f1_2s", "F1@2s"), ("f1_5s", "F1@5s"),
           ("exact", "Exact"), ("lm_ppl", "LM-PPL"), ("time_diff", "TimeDiff (s)"), ("fluency", "Fluency"), ("lm_correctness", "LM-Corr.")]
ROW_NAMES = {
    "streammind": "StreamMind (query-aware gate)",
    "per_frame_llm": "Per-frame LLM (VideoLLM-online design)",
    "per_frame_gate": "StreamMind, per-frame gate (released variant)",
    "gate_loss_0.5_0.5": "StreamMind, gate loss 0.5/0.5",
    "no_mamba": "StreamMind without the Mamba block",
    "sampling_uniform": "StreamMind, sampling uniform (retrained)",
    "sampling_all": "StreamMind, sampling all (retrained)",
    "sampling_uniform_inference_only": "StreamMind, uniform at inference only",
    "sampling_all_inference_only": "StreamMind, all at inference only",
    "streammind_epfe_in_stage2": "StreamMind, stage 2 also trains the EPFE",
    "chance": "Chance (random replies, random times)",
}
PLOTS = ("fps_sweep.png", "cost_vs_position.png", "memory_vs_length.png", "training_curves.png")


def _mean_std(values: list) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def _cell(values: list, digits: int = 3) -> str:
    mean, std = _mean_std(values)
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _flops(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 1e6:.2f} M"


def _bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _quality_rows(entries: dict[str, list[dict]], costs: dict[str, dict] | None = None) -> list[list[str]]:
    rows = []
    for name, runs in entries.items():
        cost = (costs or {}).get(name)
        row = [ROW_NAMES.get(name, name) + (f" (n={len(runs)})" if len(runs) > 1 else "")]
        row += [_cell([r.get(key) for r in runs], 2 if key in ("lm_ppl", "time_diff") else 3) for key, _ in QUALITY]
        if costs is not None:
            row += [_flops(cost["flops"]) if cost else "as StreamMind", f"{cost['ms']:.1f}" if cost else "as StreamMind"]
        rows.append(row)
    return rows


def _cost_at(costs: dict, name: str, position: int) -> dict | None:
    return next((c for c in costs.get(name, []) if c["position"] == position), None)


# ---- plots ---------------------------------------------------------------------------------


def _figure(width: float = 10, height: float = 3.6, cols: int = 2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    return figure, [figure.add_subplot(1, cols, i + 1) for i in range(cols)]


def plot_fps_sweep(sweep: list[dict], path: Path) -> None:
    figure, (quality, cost) = _figure()
    for model, colour in (("streammind", "tab:blue"), ("per_frame_llm", "tab:orange")):
        rows = [r for r in sweep if r["model"] == model]
        fps = [r["fps"] for r in rows]
        quality.plot(fps, [r["f1_1s"] or 0 for r in rows], "o-", color=colour, label=f"{ROW_NAMES[model].split(' (')[0]} F1@1s")
        quality.plot(fps, [r["exact"] or 0 for r in rows], "s--", color=colour, label="exact match")
        cost.plot(fps, [r["flops_per_video_second_at_30s"] / 1e6 for r in rows], "o-", color=colour, label=ROW_NAMES[model].split(" (")[0])
    quality.set(xlabel="frames per second", ylabel="test split", title="quality (trained at 2 fps)", ylim=(-0.02, 1.05), xscale="log")
    cost.set(xlabel="frames per second", ylabel="MFLOP per second of video", title="always-on cost, 30 s into a stream", xscale="log", yscale="log")
    for axes in (quality, cost):
        axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)


def plot_cost_vs_position(costs: dict, path: Path) -> None:
    figure, (flops, ms) = _figure()
    for name, rows in costs.items():
        seconds = [r["seconds_into_stream"] for r in rows]
        flops.plot(seconds, [r["flops"] / 1e6 for r in rows], "o-", label=ROW_NAMES.get(name, name).split(" (")[0])
        ms.plot(seconds, [r["ms"] for r in rows], "o-", label=ROW_NAMES.get(name, name).split(" (")[0])
    flops.set(xlabel="seconds into the stream (2 fps)", ylabel="MFLOP per frame", title="counted FLOPs per silent frame")
    ms.set(xlabel="seconds into the stream (2 fps)", ylabel="ms per frame (best of n)", title="measured CPU time per silent frame")
    flops.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)


def plot_memory(memory: list[dict], path: Path) -> None:
    figure, (tiny, big) = _figure()
    seconds = [r["seconds"] for r in memory]
    tiny.plot(seconds, [r["streammind_used_bytes"] for r in memory], "o-", label="StreamMind, used (measured)")
    tiny.plot(seconds, [r["streammind_bound_bytes"] for r in memory], "--", label="StreamMind, bound (allocated)")
    tiny.plot(seconds, [r["baseline_kv_bytes"] for r in memory], "o-", label="per-frame LLM KV (measured, then computed)")
    big.plot(seconds, [r["streammind_7b_used_bytes"] for r in memory], "o-", label="StreamMind 7B, state (computed)")
    big.plot(seconds, [r["streammind_7b_bound_bytes"] for r in memory], "--", label="StreamMind 7B, bound with LLM context")
    big.plot(seconds, [r["baseline_7b_kv_bytes"] for r in memory], "o-", label="per-frame LLM 7B KV (computed)")
    tiny.set(xlabel="stream length (s, 2 fps)", ylabel="bytes per stream", title="tiny preset", xscale="log", yscale="log")
    big.set(xlabel="stream length (s, 2 fps)", ylabel="bytes per stream", title="7B presets (bf16)", xscale="log", yscale="log")
    for axes in (tiny, big):
        axes.legend(fontsize="x-small")
    figure.tight_layout()
    figure.savefig(path)


def plot_training(trainings: list[dict], path: Path) -> None:
    figure, (left, right) = _figure()
    for t in trainings:
        if not t["curve"] or "seed0" not in t["name"]:
            continue
        steps, losses = zip(*t["curve"])
        (left if "stage 2" not in t["name"] else right).plot(steps, losses, label=t["name"])
    left.set(xlabel="step", ylabel="training loss", title="language (StreamMind stage 1, per-frame LLM)", yscale="log")
    right.set(xlabel="step", ylabel="training loss", title="gate (StreamMind stage 2)", yscale="log")
    for axes in (left, right):
        axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)


# ---- markdown ------------------------------------------------------------------------------


def _claims(report: dict) -> list[str]:
    """Plain statements of what the numbers say about each claim (no interpretation)."""
    rows, out = report["rows"], []
    sm, bl = rows["streammind"], rows["per_frame_llm"]
    for key, label, higher in (("trigger_acc", "TriggerAcc", True), ("timval", "TimVal", True), ("f1_1s", "F1@1s", True),
                               ("exact", "reply exact match", True), ("lm_ppl", "LM-PPL", False), ("time_diff", "TimeDiff", False),
                               ("fluency", "Fluency", True), ("lm_correctness", "LM-Correctness", True)):
        (m1, s1), (m2, s2) = _mean_std([r[key] for r in sm]), _mean_std([r[key] for r in bl])
        if m1 is None or m2 is None:
            continue
        noise = 2 * max(s1 or 0.0, s2 or 0.0)
        better = (m1 > m2) if higher else (m1 < m2)
        verdict = "within noise (|difference| <= 2 std)" if abs(m1 - m2) <= noise else ("StreamMind better" if better else "per-frame LLM better")
        out.append(f"{label}: StreamMind {m1:.3f} vs per-frame LLM {m2:.3f} -> {verdict}.")
    last_loss = {t["name"]: t["curve"][-1][1] for t in report["trainings"] if t["curve"]}
    per_seed = []
    for name, training in (("streammind", "streammind_seed{} stage 1"), ("per_frame_llm", "per_frame_llm_seed{}")):
        cells = [f"{_cell([r['exact']])} (loss {last_loss[training.format(k)]:.3f})" if training.format(k) in last_loss else _cell([r["exact"]])
                 for k, r in enumerate(rows[name])]
        per_seed.append(f"{ROW_NAMES[name].split(' (')[0]} " + " / ".join(cells))
    out.append("Reply exact match by seed, with the last logged loss of the language training (StreamMind's stage 1, the "
               "per-frame LLM's one stage): " + "; ".join(per_seed) + ".")
    costs = report["costs"]
    for position in sorted({c["position"] for c in costs.get("streammind", [])}):
        a, b = _cost_at(costs, "streammind", position), _cost_at(costs, "per_frame_llm", position)
        if a and b:
            out.append(f"Per-frame FLOPs {position / 2:g} s into a stream: StreamMind {_flops(a['flops'])}, per-frame LLM "
                       f"{_flops(b['flops'])} (x{b['flops'] / a['flops']:.1f}); CPU time {a['ms']:.1f} vs {b['ms']:.1f} ms.")
    ratios = []
    for fps in sorted({r["fps"] for r in report["sweep"]}):
        a = next(r for r in report["sweep"] if r["model"] == "streammind" and r["fps"] == fps)
        b = next(r for r in report["sweep"] if r["model"] == "per_frame_llm" and r["fps"] == fps)
        ratios.append(f"{fps:g} fps x{b['flops_per_video_second_at_30s'] / a['flops_per_video_second_at_30s']:.1f}")
    out.append("Per-second cost ratio (per-frame LLM / StreamMind), 30 s into a stream: " + ", ".join(ratios) + ".")
    for world, title in (("move", "Move-queries world"), ("long_memory", "Long-memory world")):
        sm_exact, bl_exact = report["hard"][world]["streammind"]["exact"], report["hard"][world]["per_frame_llm"]["exact"]
        reached = "reached" if (sm_exact or 0) >= 0.95 else "not reached"
        out.append(f"{title}: StreamMind reply exact match {_cell([sm_exact])} (goal 0.95: {reached}), per-frame LLM {_cell([bl_exact])}.")
    return out


def _kind_rows(report: dict) -> list[list[str]]:
    """The rows of the by-kind table: every seed of the main rows, the sampling rows, both harder worlds."""
    entries = []
    for name in ("streammind", "per_frame_llm"):
        for seed, run in enumerate(report["rows"][name]):
            entries.append((f"{ROW_NAMES[name].split(' (')[0]}, seed {seed}", run))
    for name in ("sampling_uniform", "sampling_all", "sampling_uniform_inference_only", "sampling_all_inference_only", "no_mamba"):
        entries += [(ROW_NAMES[name], run) for run in report["rows"].get(name, [])]
    for world, title in (("move", "move world"), ("long_memory", "long-memory world")):
        entries += [(f"{title}: {ROW_NAMES.get(name, name).split(' (')[0]}", run) for name, run in report["hard"][world].items()]
    rows = []
    for label, run in entries:
        for kind, entry in run.get("by_kind", {}).items():
            wrong = ", ".join(f"{field} {n}" for field, n in sorted(entry["wrong"].items(), key=lambda item: -item[1])) or "-"
            rows.append([label, kind, str(entry["turns"]), str(entry["timed"]), str(entry["exact"]), wrong])
    return rows


def render_markdown(report: dict) -> str:
    scale, timing, env = report["scale"], report["timing"], report["environment"]
    costs, hard = report["costs"], report["hard"]
    lines = [
        "# StreamMind vs the per-frame LLM at toy scale",
        "",
        f"Command: `{report['command']}`. Wall time **{timing['wall_s'] / 60:.1f} min**, CPU time {timing['cpu_s'] / 60:.1f} min "
        f"(one thread: OMP_NUM_THREADS={env['omp_num_threads']}, torch threads {env['torch_threads']}); "
        f"load average {timing['load_average_start']} at the start, {timing['load_average_end']} at the end "
        f"({env['cpu_count']} CPU cores, shared). Python {env['python']}, torch {env['torch']}.",
        "",
        "## Design and budget",
        "",
        f"- Data: the synthetic world (seed 0), the first {scale['num_train']} training videos and {scale['num_test']} test videos; "
        f"the move-queries world ({scale['move_train']} / {scale['num_test']}); the long-memory world ({scale['long_train']} / "
        f"{scale['long_test']} videos of {scale['long_duration'][0]:g}-{scale['long_duration'][1]:g} s, a turn up to "
        f"{scale['long_memory_gap']:g} s or more after what it depends on).",
        f"- One vision tower for every row: CLIP-style pretraining on the default world ({scale['tower_steps']} steps; held-out scene "
        f"accuracy {report['tower']['val_scene_acc']}), frozen, one feature cache (mean-pooled features for StreamMind, CLS + 3x3 for the baseline).",
        f"- StreamMind: stage 1 {scale['stage1_epochs']:g} epochs, stage 2 {scale['stage2_epochs']:g} epochs (configs/tiny); the per-frame LLM: "
        f"{scale['baseline_epochs']:g} epochs of its single stage (configs/tiny/perframe.yaml); batch {scale['batch_size']}, lr 2e-3, "
        f"cosine, the same annotations, on the default and the move world. Long-memory world: {scale['long_stage1_epochs']:g} / "
        f"{scale['long_stage2_epochs']:g} / {scale['long_baseline_epochs']:g} epochs, batch {scale['long_batch_size']}.",
        f"- Seeds: {scale['seeds']} for the two main rows (model initialisation and data order; the world and the tower are shared). "
        "Ablations are single runs at seed 0: read their differences against the main rows' standard deviations.",
        "- The per-frame-gate and 0.5/0.5 rows reuse seed 0's stage 1 (they differ only in the gate or its loss: the gate's mode "
        "is changed in a copy of the stage-1 checkpoint, the loss weights are stage 2's `gate_class_weights` setting). No-Mamba and the sampling rows "
        "retrain both stages: sampling changes what the LLM is trained on, so applying it at inference only is not equivalent "
        "(the two inference-only rows measure by how much).",
        "- The long-memory world is sampled at 1 fps for both models (whole-second events), so the baseline's KV cache holds a whole "
        "video; its memory-dependent turns always follow a reply, after which StreamMind's gate context restarts: what they need "
        "lies beyond the gate's context, in the EPFE state only. One extra row lets stage 2 train the EPFE too.",
        "- The frame-rate sweep runs the seed-0 models, trained at 2 fps, on the test videos sampled at each rate by presentation "
        "time; the videos are encoded at 4 fps, so above that frames repeat, which is what a faster camera sees of this world "
        "(its scene changes only on the 0.5 s grid). Quality at other rates is robustness to the rate, not what a model trained "
        "at that rate would reach.",
        "- Metrics: free-running (the real streaming sessions: TriggerAcc, TimVal, F1 at ±1/2/5 s, reply exact match) and teacher-forced "
        "(VideoLLM-online's protocol: LM-PPL, TimeDiff, Fluency, LM-Correctness; the same reply tokens L for both models). "
        "Per-frame cost: a silent frame 10 s into a stream (FLOPs from torch's FLOP counter plus the SSM scan's element-wise "
        "FLOPs; CPU time, one thread, the best of "
        f"{scale['timing_frames']} frames, the estimate least inflated by the other work on the machine; the medians are in the JSON).",
        "",
        "## Main comparison (default world, test split)",
        "",
    ]
    main_costs = {name: _cost_at(costs, name, 20) for name in ("streammind", "per_frame_llm")}
    header = ["row"] + [label for _, label in QUALITY] + ["FLOPs / frame", "ms / frame"]
    rows = _quality_rows({k: report["rows"][k] for k in ("streammind", "per_frame_llm")}, main_costs)
    rows.append([ROW_NAMES["chance"]] + [_cell([report["chance"]["default"].get(key)]) for key, _ in QUALITY] + ["", ""])
    lines += [_table(header, rows), ""]
    lines += ["## Ablations (default world, seed 0)", ""]
    ablation_names = [k for k in report["rows"] if k not in ("streammind", "per_frame_llm")]
    ablation_costs = {name: _cost_at(costs, name, 20) for name in ablation_names}
    seed0 = {"streammind": report["rows"]["streammind"][:1], **{k: report["rows"][k] for k in ablation_names}}
    lines += [_table(header, _quality_rows(seed0, {"streammind": main_costs["streammind"], **ablation_costs})), ""]
    lines += ["## Harder worlds (seed 0)", ""]
    for world, title in (("move", "Move-queries world"), ("long_memory", "Long-memory world (1 fps)")):
        entries = {name: [row] for name, row in hard[world].items()}
        rows = _quality_rows(entries)
        rows.append([ROW_NAMES["chance"]] + [_cell([report["chance"][world].get(key)]) for key, _ in QUALITY])
        lines += [f"**{title}**", "", _table(["row"] + [label for _, label in QUALITY], rows), ""]
    breakdown_rows = []
    for name, row in hard["long_memory"].items():
        b = row["breakdown"]
        breakdown_rows.append([ROW_NAMES.get(name, name)] + [f"{_cell([b[k]['trigger_acc']])} / {_cell([b[k]['exact']])} (n={b[k]['events']})"
                                                            for k in ("first", "memory", "long")]
                              + [f"{_cell([b['distractors']['false_trigger_rate']])} (n={b['distractors']['events']})"])
    lines += ["Long-memory world by kind of turn (TriggerAcc / exact match): the first disappearance needs no memory; the later "
              "ones need the first shape, from before a reply; \"long\" ones come "
              f"{scale['long_memory_gap']:g} s or more after it. Distractors: other shapes disappearing (a reply within 1 s is a false trigger).",
              "", _table(["row", "first", "memory", "long", "distractor false triggers"], breakdown_rows), ""]
    lines += ["## Replies by kind of turn", "",
              "Free-running, per event type behind a turn: turns, turns with a reply within 1 s (timed), exact replies among "
              "them, and which template field the inexact ones got wrong (`old_colour`: the colour before a change; `colour`: the "
              "shape's colour, for a disappearance the colour it had before it vanished; `slot`: where a shape moved to; "
              "`template`: a sentence of another kind). This is the evidence for what limits a row.", "",
              _table(["row", "kind", "turns", "timed", "exact", "wrong fields (timed, inexact)"], _kind_rows(report)), ""]
    lines += ["## Frame-rate sweep (seed-0 models, trained at 2 fps)", "",
              "![fps sweep](plots/fps_sweep.png)", ""]
    sweep_rows = [[ROW_NAMES[r["model"]].split(" (")[0], f"{r['fps']:g}", _cell([r["trigger_acc"]]), _cell([r["timval"]]), _cell([r["f1_1s"]]),
                   _cell([r["exact"]]), _flops(r["flops_per_frame_at_30s"]), f"{r['ms_per_frame_at_30s']:.1f}",
                   f"{r['flops_per_video_second_at_30s'] / 1e6:.1f}", f"{r['eval_s_per_video_s']:.3f}"] for r in report["sweep"]]
    lines += [_table(["model", "fps", "TriggerAcc", "TimVal", "F1@1s", "Exact", "FLOPs / frame @30 s", "ms / frame @30 s",
                      "MFLOP / video s", "eval s / video s"], sweep_rows), ""]
    lines += ["## Per-frame cost against the stream position (2 fps)", "", "![cost vs position](plots/cost_vs_position.png)", ""]
    names = list(costs)
    positions = sorted({c["position"] for rows_ in costs.values() for c in rows_})
    cost_rows = [[f"{p / 2:g} s"] + [f"{_flops(_cost_at(costs, n, p)['flops'])} / {_cost_at(costs, n, p)['ms']:.1f} ms" for n in names] for p in positions]
    lines += [_table(["into the stream"] + [ROW_NAMES.get(n, n).split(" (")[0] for n in names], cost_rows), ""]
    lines += ["## State / KV memory of one stream against its length (2 fps, silent)", "", "![memory](plots/memory_vs_length.png)", "",
              "StreamMind (tiny) is measured on silent streams of every length (its state is bounded: the turn memory, the gate's "
              "window); its bound adds a full LLM context. The per-frame LLM (tiny) is measured while its cache holds the stream and "
              "computed beyond (VideoLLM-online keeps every token). The 7B columns are computed from the 7B presets' sizes (bf16).", ""]
    mem_rows = [[f"{r['seconds']:g} s", _bytes(r["streammind_used_bytes"]), _bytes(r["streammind_bound_bytes"]),
                 _bytes(r["baseline_kv_bytes"]) + (" (measured)" if r["baseline_measured"] else " (computed)"),
                 _bytes(r["streammind_7b_used_bytes"]), _bytes(r["streammind_7b_bound_bytes"]), _bytes(r["baseline_7b_kv_bytes"])]
                for r in report["memory"]]
    lines += [_table(["stream", "StreamMind used", "StreamMind bound", "per-frame LLM KV", "StreamMind 7B state", "StreamMind 7B bound",
                      "per-frame LLM 7B KV"], mem_rows), ""]
    lines += ["## What the numbers say about each claim", ""] + [f"- {c}" for c in _claims(report)] + [""]
    lines += ["## Training runs", "", "![training curves](plots/training_curves.png)", ""]
    train_rows = [[t["name"], str(t["steps"]), f"{t['wall_s']:.0f}", f"{t['cpu_s']:.0f}", "n/a" if t["train_loss"] is None else f"{t['train_loss']:.4f}",
                   "n/a" if not t["curve"] else f"{t['curve'][-1][1]:.4f}"] for t in report["trainings"]]
    lines += [_table(["run", "steps", "wall s", "CPU s", "mean loss", "last logged loss"], train_rows), ""]
    lines += ["## Time by step", ""]
    step_rows = [[name, f"{v['wall_s']:.0f}", f"{v['cpu_s']:.0f}", str(v.get("load_average"))] for name, v in timing["steps"].items()]
    lines += [_table(["step", "wall s", "CPU s", "load average after"], step_rows), ""]
    return "\n".join(lines)


def write_report(report: dict, out: Path) -> None:
    """report.json, report.md and the plots under `out`."""
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    plot_fps_sweep(report["sweep"], plots / "fps_sweep.png")
    plot_cost_vs_position(report["costs"], plots / "cost_vs_position.png")
    plot_memory(report["memory"], plots / "memory_vs_length.png")
    plot_training(report["trainings"], plots / "training_curves.png")
    write_json(out / "report.json", _jsonable(report), allow_nan=False)
    with atomic_write(out / "report.md") as handle:
        handle.write(render_markdown(report))


def _jsonable(value):
    """The report as plain JSON: numpy scalars as numbers, tuples as lists, non-finite floats as null."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def record_report(out: Path, repo: Path) -> None:
    """Copy the report to docs/reproduce/ and the plots to assets/reproduce/ (links rewritten)."""
    docs, assets = repo / "docs" / "reproduce", repo / "assets" / "reproduce"
    docs.mkdir(parents=True, exist_ok=True)
    assets.mkdir(parents=True, exist_ok=True)
    for name in PLOTS:
        shutil.copyfile(out / "plots" / name, assets / name)
    text = (out / "report.md").read_text().replace("](plots/", "](../../assets/reproduce/")
    with atomic_write(docs / "report.md") as handle:
        handle.write(text)
    shutil.copyfile(out / "report.json", docs / "report.json")


__all__ = ["record_report", "render_markdown", "write_report"]
