"""Benchmarks that print numbers (never timed tests): `python -m streammind.bench <what> [...]`.

`step`: the always-on per-frame path of a `StreamingSession` (preprocess + CLIP + EPFE
step + gate step) over a long stream with random weights (timing does not depend on weight
values), with the gate threshold at 1 so the LLM never runs. It reports the latency in
windows along the stream (is the cost per frame flat?), and the process / CUDA memory at
the start and the end (is memory bounded?), and a `flatness` summary: the ratio of the last
window's median latency to the first steady window's, the RSS range and least-squares slope
from the first steady window to the end, and the session's bounded state at the end (turn
memory tokens, gate frames cached). Writes JSON and markdown tables.

    python -m streammind.bench step --preset streammind-7b --device cuda --dtype bfloat16 --frames 10000
    python -m streammind.bench step --preset tiny --frames 7200          # a 1-hour stream at 2 fps

`parity`: the EPFE's reference scan against the optional mamba-ssm kernels (when
installed) on random inputs, forward and backward; prints the max differences.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

from .atomic import write_text
from .errors import ArgumentParser, run_command


def _rss_mb() -> float:
    """Current resident set size in MB (Linux /proc), falling back to the peak."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _load_average() -> float | None:
    """The 1-minute system load average (None where the platform has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _build(preset: str, device: str, dtype: torch.dtype):
    from .builder import build_model
    from .configuration import StreamMindConfig
    from .world import build_tokenizer

    config = StreamMindConfig.from_preset(preset)
    tokenizer = build_tokenizer(None)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model, processor = build_model(config, tokenizer)
    finally:
        torch.set_default_dtype(previous)
    return model.to(device=device, dtype=dtype).eval(), processor


def bench_step(args) -> dict:
    from .streaming import StreamingSession

    dtype = getattr(torch, args.dtype)
    model, processor = _build(args.preset, args.device, dtype)
    cuda = args.device.startswith("cuda")
    session = StreamingSession(model, processor, query="Tell me when something happens.", threshold=1.0, record_probs=False)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(16, args.height, args.width, 3), dtype=np.uint8)
    for i in range(args.warmup):  # first calls pay for lazy initialisation and allocator growth
        session.push(frames[i % len(frames)], i / 2.0)
    session.reset()
    latencies = np.zeros(args.frames)
    memory = []
    load_start = _load_average()
    for i in range(args.frames):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        session.push(frames[i % len(frames)], i / 2.0)
        if cuda:
            torch.cuda.synchronize()
        latencies[i] = (time.perf_counter() - t0) * 1e3
        if i in (10, args.frames // 2, args.frames - 1) or i % max(1, args.frames // 20) == 0:
            memory.append({"frame": i, "rss_mb": round(_rss_mb(), 1),
                           **({"cuda_allocated_mb": round(torch.cuda.memory_allocated() / 2**20, 1)} if cuda else {})})
    parity = _stream_parity(model, processor, frames, args.parity_frames) if args.parity_frames else None
    windows = {}
    width = min(100, args.frames // 4)
    for start in sorted({10, args.frames // 10, args.frames // 2, args.frames - width}):
        w = latencies[start : start + width]
        windows[f"{start}-{start + width}"] = {"mean_ms": round(float(w.mean()), 3), "p50_ms": round(float(np.median(w)), 3),
                                               "p95_ms": round(float(np.percentile(w, 95)), 3)}
    # Flatness is judged from the first steady window (after allocator growth) to the end; the
    # RSS trend is a least-squares slope, since single samples move with the allocator.
    steady, last = args.frames // 10, args.frames - width
    after = [m for m in memory if m["frame"] >= steady]
    rss_slope = np.polyfit([m["frame"] for m in after], [m["rss_mb"] for m in after], 1)[0] * 1000 if len(after) > 1 else 0.0
    flatness = {
        "p50_last_over_steady": round(float(np.median(latencies[last:]) / np.median(latencies[steady : steady + width])), 3),
        "rss_mb_after_steady": {"min": min(m["rss_mb"] for m in after), "max": max(m["rss_mb"] for m in after), "end": memory[-1]["rss_mb"]},
        "rss_slope_mb_per_1k_frames": round(float(rss_slope), 3),
        "turn_memory_tokens_end": len(session.memory), "gate_frames_cached_end": session.gate_cache.frames,
    }
    result = {
        "what": "always-on per-frame latency (preprocess + CLIP + EPFE step + gate step), batch 1",
        "preset": args.preset, "device": args.device, "dtype": args.dtype, "frames": args.frames, "warmup_frames": args.warmup,
        "frame_size": [args.height, args.width],
        "gpu": torch.cuda.get_device_name() if cuda else None, "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
        "latency_windows": windows,
        "overall": {"p50_ms": round(float(np.median(latencies[10:])), 3), "p95_ms": round(float(np.percentile(latencies[10:], 95)), 3),
                    "max_ms": round(float(latencies[10:].max()), 3)},
        "flatness": flatness,
        "load_average_1m": {"start": load_start, "end": _load_average()},  # other work on a shared machine skews CPU timings
        "memory": memory,
        "stream_vs_parallel": parity,
        **({"cuda_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)} if cuda else {}),
    }
    return result


@torch.inference_mode()
def _stream_parity(model, processor, frames: np.ndarray, n: int) -> dict:
    """Max |difference| between streamed and parallel perception tokens / gate probabilities."""
    from .streaming import StreamingSession

    query = "Tell me when something happens."
    clip = np.stack([frames[i % len(frames)] for i in range(n)])
    session = StreamingSession(model, processor, query=query, threshold=1.0)
    streamed_tokens = []
    for i, frame in enumerate(clip):
        session.push(frame, i / 2.0)
        streamed_tokens.append(session.memory[-1][1][0].float())
    device = next(model.parameters()).device
    pixels = processor.preprocess_frames(clip)[None].to(device)
    tokens = model.get_perception_tokens(pixel_values=pixels)
    prompt = torch.tensor([processor.encode_gate_prompt(query)], device=device)
    mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=device)
    probs = model.gate_logits(tokens, mask, None, prompt).float().softmax(-1)[0, :, 1].cpu()
    return {
        "frames": n,
        "max_abs_diff_tokens": float((torch.stack(streamed_tokens) - tokens[0].float()).abs().max()),
        "token_abs_max": float(tokens.float().abs().max()),
        "max_abs_diff_gate_prob": float((torch.tensor(session.stats.probs) - probs).abs().max()),
    }


def bench_parity(args) -> dict:
    ss = importlib.import_module("streammind.ops.selective_scan")  # the module, not the re-exported function

    if not ss.HAS_MAMBA_KERNELS or not torch.cuda.is_available():
        return {"kernels": "mamba-ssm not installed (or no CUDA): only the reference path exists here"}
    torch.manual_seed(0)
    B, D, N, T = 2, 256, 16, 512
    dev = "cuda"
    inputs = dict(
        u=torch.randn(B, D, T, device=dev), delta=torch.rand(B, D, T, device=dev) * 0.1,
        A=-torch.rand(D, N, device=dev), B=torch.randn(B, N, T, device=dev), C=torch.randn(B, N, T, device=dev),
        D=torch.randn(D, device=dev), z=torch.randn(B, D, T, device=dev),
    )
    outs = {}
    for impl in ("ref", "kernel"):
        xs = {k: v.clone().requires_grad_() for k, v in inputs.items()}
        y = ss.selective_scan(**xs, delta_softplus=True, impl=impl)
        y.sum().backward()
        outs[impl] = (y.detach(), {k: v.grad for k, v in xs.items()})
    diff = {"out": float((outs["ref"][0] - outs["kernel"][0]).abs().max())}
    diff.update({f"grad_{k}": float((outs["ref"][1][k] - outs["kernel"][1][k]).abs().max()) for k in inputs})
    return {"kernels": "mamba-ssm", "max_abs_diff": diff}


def _markdown(result: dict) -> str:
    lines = [f"# {result.get('what', 'benchmark')}", "", "| key | value |", "|---|---|"]
    for k, v in result.items():
        if k in ("latency_windows", "memory"):
            continue
        lines.append(f"| {k} | {json.dumps(v) if isinstance(v, (dict, list)) else v} |")
    if "latency_windows" in result:
        lines += ["", "| frames | mean ms | p50 ms | p95 ms |", "|---|---|---|---|"]
        lines += [f"| {w} | {s['mean_ms']} | {s['p50_ms']} | {s['p95_ms']} |" for w, s in result["latency_windows"].items()]
    if "memory" in result:
        cuda = "cuda_allocated_mb" in result["memory"][0]
        lines += ["", "| frame | RSS MB |" + (" CUDA allocated MB |" if cuda else ""), "|---|---|" + ("---|" if cuda else "")]
        lines += [f"| {m['frame']} | {m['rss_mb']} |" + (f" {m['cuda_allocated_mb']} |" if cuda else "") for m in result["memory"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = ArgumentParser(prog="streammind bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    step = sub.add_parser("step", help="always-on per-frame cost over a long stream")
    step.add_argument("--preset", default="tiny", help="model preset (random weights)")
    step.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    step.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    step.add_argument("--frames", type=int, default=7200, help="stream length in frames (7200 = 1 hour at 2 fps)")
    step.add_argument("--warmup", type=int, default=50, help="frames run (and discarded) before measuring")
    step.add_argument("--parity-frames", type=int, default=64, help="also compare streamed vs parallel outputs on this many frames (0: skip)")
    step.add_argument("--height", type=int, default=360)
    step.add_argument("--width", type=int, default=640)
    step.add_argument("--out", default=None, help="write <out>.json and <out>.md")
    parity = sub.add_parser("parity", help="reference scan vs mamba-ssm kernels")
    parity.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    result = bench_step(args) if args.what == "step" else bench_parity(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        out = Path(args.out)
        write_text(out.with_suffix(".json"), text + "\n")
        write_text(out.with_suffix(".md"), _markdown(result))
    return result


if __name__ == "__main__":
    raise SystemExit(run_command("streammind bench", main))
