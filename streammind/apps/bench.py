"""Benchmarks that print numbers (never timed tests): `streammind bench [all|step|parity] [...]`.

`all` (the default) measures the inference engine in one run, with random weights (timing
does not depend on weight values), and writes a JSON file and a markdown table:

  a. one live stream: per-frame latency (uint8 frame in -> p(respond) on the host) in the
     windows 0-100, 100-600 and 600-N of a fresh stream, and frames/s in file mode (chunks);
  b. many streams: frames/s and p95 per-frame latency with S = 1, 4, 16, 64 streams batched,
     and the most 30 fps streams served in real time (every frame answered within 100 ms
     of its arrival, none dropped) in a paced simulation;
  c. replies: fire -> first token for turns of 10, 100 and 600 frames, decode tokens/s, and
     the stall the other streams see (the longest gap between their frames while a reply
     decodes, interleaved a few tokens per frame tick);
  d. the per-frame-LLM paradigm (VideoLLM-online: each frame's 10 visual tokens go through
     the LLM with a KV cache) at the same level of optimisation (static cache, CUDA graph):
     ms per frame at contexts 1k / 4k / 16k, KV bytes per stream-hour at 2 and 30 fps, the
     most such streams one GPU holds, beside ours;
  e. state bytes per stream, peak GPU memory, host RSS after the long stream;
  f. the GPU's limits, measured (a large bf16 matmul, a device-to-device copy), and the
     floors they give each number above (FLOPs over peak, bytes over bandwidth);
  and the parity of the fast path with the eager one (bf16 differences).

    streammind bench --preset streammind-7b --device cuda --dtype bfloat16 --out docs/benchmarks/h200
    streammind bench --preset tiny --quick                                 # seconds, on a CPU

`step`: one live stream over a long run (default a 1-hour stream at 2 fps), latency windows
along it and the process / CUDA memory at the start and the end (is it flat?).

    streammind bench step --preset tiny --frames 7200 --out docs/benchmarks/stream_1h_tiny_cpu

`profile`: torch.profiler tables of always-on frames and decode steps, eager and with graphs.

`parity`: the EPFE's reference scan against the optional mamba-ssm kernels (when installed)
on random inputs, forward and backward; prints the max differences.
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

from ..errors import ArgumentParser, run_command
from ..fileio import write_text

QUERY = "Tell me when something happens."


# ---- helpers ---------------------------------------------------------------------------------


def _rss_mb() -> float:
    """Current resident set size in MB (Linux /proc), falling back to the peak."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _stats(ms: np.ndarray) -> dict:
    ms = np.asarray(ms, dtype=np.float64)
    if ms.size == 0:
        return {"n": 0}
    return {"n": int(ms.size), "p50_ms": round(float(np.median(ms)), 3), "p95_ms": round(float(np.percentile(ms, 95)), 3),
            "max_ms": round(float(ms.max()), 3)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _build(preset: str, device: str, dtype: torch.dtype):
    from ..builder import build_model, default_dtype
    from ..configuration import StreamMindConfig
    from ..synthetic.world import build_tokenizer

    config = StreamMindConfig.from_preset(preset)
    tokenizer = build_tokenizer(None)
    with default_dtype(dtype), torch.device(device):
        model, processor = build_model(config, tokenizer)
    return model.to(device=device, dtype=dtype).eval(), processor


def _frames(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, height, width, 3), dtype=np.uint8)


# ---- a. one live stream, file mode ---------------------------------------------------------------


def live_stream(model, processor, frames: np.ndarray, n: int, windows=((0, 100), (100, 600), (600, None)), **options) -> dict:
    """Per-frame latency of a fresh stream over n frames (engine graphs captured beforehand)."""
    from ..engine import Engine
    from ..streaming import StreamingSession

    engine = Engine(model, processor, **options)
    engine.capture(decode=False)
    session = StreamingSession(model, processor, query=QUERY, threshold=1.0, record_probs=False, engine=engine)
    ms = np.zeros(n)
    rss = [(0, round(_rss_mb(), 1))]
    for i in range(n):
        t0 = time.perf_counter()
        session.push(frames[i % len(frames)], i / 2.0)  # returns with p(respond) on the host: synchronised
        ms[i] = (time.perf_counter() - t0) * 1e3
        if (i + 1) % max(1, n // 10) == 0:
            rss.append((i + 1, round(_rss_mb(), 1)))
    out = {}
    for start, end in windows:
        end = n if end is None else min(end, n)
        if start < end:
            out[f"{start}-{end}"] = _stats(ms[start:end])
    return {"frames": n, "windows": out, "rss_mb": rss, "gate_frames_end": session.gate_frames,
            "turn_memory_end": int(session.turn_tokens().shape[0])}


def file_mode(model, processor, frames: np.ndarray, n: int, chunk: int, **options) -> dict:
    """Frames/s of one stream taken `chunk` frames at a time (frames already decoded in memory)."""
    from ..engine import Engine
    from ..streaming import StreamingSession

    session = StreamingSession(model, processor, query=QUERY, threshold=1.0, record_probs=False, engine=Engine(model, processor, chunk_size=chunk, **options))
    clip = np.stack([frames[i % len(frames)] for i in range(chunk)])
    session.push_clip(clip, np.arange(chunk) / 2.0)  # warm-up
    device = session.engine.device
    _sync(device)
    t0 = time.perf_counter()
    done = 0
    while done < n:
        session.push_clip(clip, (done + np.arange(chunk)) / 2.0)
        done += chunk
    _sync(device)
    seconds = time.perf_counter() - t0
    return {"frames": done, "chunk": chunk, "seconds": round(seconds, 3), "frames_per_s": round(done / seconds, 1)}


# ---- b. many streams ----------------------------------------------------------------------------


def aggregate(model, processor, frames: np.ndarray, sizes: list[int], rounds: int, **options) -> dict:
    """S streams with a frame each per round, batched: frames/s and per-frame latency (= the round's)."""
    from ..engine import Engine

    engine = Engine(model, processor, max_streams=max(sizes), batch_sizes=sorted(set(sizes)), **options)
    engine.capture(decode=False)
    out = {}
    for S in sizes:
        slots = [engine.open_stream(QUERY) for _ in range(S)]
        batch = [frames[i % len(frames)] for i in range(S)]
        engine.step(slots, batch)
        ms = np.zeros(rounds)
        for r in range(rounds):
            t0 = time.perf_counter()
            engine.step(slots, batch)
            ms[r] = (time.perf_counter() - t0) * 1e3
        out[str(S)] = {"frames_per_s": round(S / (np.median(ms) / 1e3), 1), **_stats(ms)}
        for slot in slots:
            engine.close_stream(slot)
    return out


def realtime_capacity(model, processor, frames: np.ndarray, candidates: list[int], fps: float = 30.0, seconds: float = 3.0,
                      deadline_ms: float = 100.0, **options) -> dict:
    """The most streams at `fps` served in real time: a paced simulation per candidate S.

    Every 1/fps seconds each stream delivers a frame; the engine takes all frames that have
    arrived in one batch. A frame is late if its p(respond) is ready more than `deadline_ms`
    after it arrived; S is real time when no frame is late over `seconds`.
    """
    from ..engine import Engine

    top = max(candidates)
    engine = Engine(model, processor, max_streams=top, batch_sizes=(1, 4, 16, 32, 64), **options)
    engine.capture(decode=False)
    period = 1.0 / fps
    results, best = {}, 0
    for S in sorted(candidates):
        slots = [engine.open_stream(QUERY) for _ in range(S)]
        batch = [frames[i % len(frames)] for i in range(S)]
        engine.step(slots, batch)
        start = time.perf_counter()
        ticks = int(seconds * fps)
        worst = 0.0
        tick = 0
        while tick < ticks:
            due = start + tick * period
            now = time.perf_counter()
            if now < due:
                time.sleep(due - now)
            # All ticks whose frames have arrived are served together (a stream's frames in order).
            arrived = min(ticks, int((time.perf_counter() - start) / period) + 1)
            for k in range(tick, arrived):
                engine.step(slots, batch)
            worst = max(worst, (time.perf_counter() - (start + tick * period)) * 1e3)
            tick = arrived
        results[str(S)] = {"worst_latency_ms": round(worst, 1), "real_time": worst <= deadline_ms}
        if worst <= deadline_ms:
            best = S
        for slot in slots:
            engine.close_stream(slot)
    return {"fps": fps, "deadline_ms": deadline_ms, "seconds": seconds, "by_streams": results, "max_real_time_streams": best}


# ---- c. replies -----------------------------------------------------------------------------------


def replies(model, processor, frames: np.ndarray, turn_lengths: list[int], reps: int, others: int) -> dict:
    """Fire -> first token per turn length, decode tokens/s, and the stall other streams see."""
    from ..engine import Engine

    engine = Engine(model, processor, max_streams=others + 1)
    engine.capture(decode=True)
    device = engine.device
    slot = engine.open_stream(QUERY)
    out = {"turns": {}}
    decode_tokens, decode_seconds = 0, 0.0
    for n in turn_lengths:
        first = []
        for _ in range(reps):
            clip = np.stack([frames[i % len(frames)] for i in range(n)])
            engine.push_clip(slot, clip, threshold=1.0)
            _sync(device)
            t0 = time.perf_counter()
            task = engine.start_reply(slot)
            first.append((time.perf_counter() - t0) * 1e3)
            t1 = time.perf_counter()
            task.advance()
            decode_seconds += time.perf_counter() - t1
            decode_tokens += len(task.generated) + 1  # + the EOS that closes the turn
        out["turns"][str(n)] = {"context_tokens_at_end": engine.conversation(slot).llm_length, **_stats(np.array(first))}
    out["decode_tokens_per_s"] = round(decode_tokens / decode_seconds, 1)
    out["reply_tokens_cap"] = model.config.max_reply_tokens

    # Other streams keep sending frames while one stream's reply decodes, a few tokens per tick.
    streams = [engine.open_stream(QUERY) for _ in range(others)]
    batch = [frames[i % len(frames)] for i in range(others)]
    engine.push_clip(slot, np.stack([frames[i % len(frames)] for i in range(100)]), threshold=1.0)
    engine.step(streams, batch)
    gaps, ticks = [], 0
    tokens_per_tick = 4
    last = time.perf_counter()
    task = engine.start_reply(slot)
    gaps.append((time.perf_counter() - last) * 1e3)  # the prefill's stall
    while not task.done:
        t0 = time.perf_counter()
        engine.step(streams, batch)
        task.advance(tokens_per_tick)
        gaps.append((time.perf_counter() - t0) * 1e3)
        ticks += 1
    out["stall"] = {"other_streams": others, "tokens_per_tick": tokens_per_tick, "ticks": ticks,
                    "prefill_ms": round(gaps[0], 3), "tick_ms": _stats(np.array(gaps[1:]))}
    return out


# ---- d. the per-frame-LLM paradigm ------------------------------------------------------------


def per_frame_llm(model, contexts: list[int], tokens_per_frame: int, reps: int, graphs: bool) -> dict:
    """VideoLLM-online's per-frame cost: `tokens_per_frame` visual tokens through the LLM at a context.

    The same machinery as ours: a static KV cache sized to the context, one CUDA graph per
    context, the LM head on the frame's last token (its speak-or-stay-silent decision).
    """
    from ..decoding import StaticKV, decoder_forward
    from ..engine import _Graph

    lm = model.language_model
    device = next(lm.parameters()).device
    dtype = next(lm.parameters()).dtype
    D = lm.config.hidden_size
    out = {}
    pool = torch.cuda.graph_pool_handle() if graphs else None
    for context in contexts:
        length = -(-(context + tokens_per_frame) // 64) * 64
        kv = StaticKV(lm.config, 1, length, device, dtype)
        embeds = torch.randn(1, tokens_per_frame, D, device=device, dtype=dtype)
        positions = torch.arange(context, context + tokens_per_frame, device=device)[None]

        def frame_step(kv=kv, embeds=embeds, positions=positions) -> torch.Tensor:
            h = decoder_forward(lm.get_decoder(), embeds, positions, kv)
            return lm.get_output_embeddings()(h[:, -1]).argmax(-1)

        with torch.inference_mode():
            run = _Graph(frame_step, pool) if graphs else frame_step
            run()
            ms = np.zeros(reps)
            for r in range(reps):
                _sync(device)
                t0 = time.perf_counter()
                run()
                _sync(device)
                ms[r] = (time.perf_counter() - t0) * 1e3
        out[str(context)] = _stats(ms)
    cfg = lm.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * torch.finfo(dtype).bits // 8
    per_hour = {str(fps): kv_per_token * tokens_per_frame * fps * 3600 for fps in (2, 30)}
    return {"tokens_per_frame": tokens_per_frame, "ms_per_frame_llm": out, "kv_bytes_per_token": kv_per_token,
            "kv_bytes_per_stream_hour": per_hour}


# ---- f. limits ------------------------------------------------------------------------------------


def gpu_limits(device: torch.device) -> dict:
    """Measured ceilings: a bf16 8192^3 matmul (TFLOP/s) and a device-to-device copy (TB/s, read + write)."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        a @ b
    end.record()
    torch.cuda.synchronize(device)
    tflops = 10 * 2 * 8192**3 / (start.elapsed_time(end) / 1e3) / 1e12
    src = torch.empty(2**30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start.record()
    for _ in range(10):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize(device)
    tb_s = 10 * 2 * src.numel() / (start.elapsed_time(end) / 1e3) / 1e12
    del a, b, src, dst
    return {"bf16_matmul_tflops": round(tflops, 1), "copy_tb_per_s": round(tb_s, 2)}


def floors(model, limits: dict | None) -> dict:
    """FLOPs and weight bytes per frame (CLIP, EPFE, gate) and per decoded token (LLM), and their floors."""
    from torch.utils.flop_counter import FlopCounterMode

    def nbytes(module) -> int:
        return sum(p.numel() * p.element_size() for p in module.parameters())

    device = next(model.parameters()).device
    S = model.config.vision_config.image_size
    pixels = torch.zeros(1, 3, S, S, device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.vision(pixels)
    vision_layers = model.vision.num_layers_to_run
    vision_bytes = nbytes(model.vision.clip.embeddings) + sum(nbytes(layer) for layer in model.vision.clip.encoder.layers[:vision_layers])
    out = {
        "vision_gflop_per_frame": round(counter.get_total_flops() / 1e9, 2),
        "always_on_weight_mb": round((vision_bytes + nbytes(model.perception) + nbytes(model.gate)) / 2**20, 1),
        "llm_weight_mb": round(nbytes(model.language_model) / 2**20, 1),
    }
    if limits:
        peak, bw = limits["bf16_matmul_tflops"] * 1e12, limits["copy_tb_per_s"] * 1e12
        out["always_on_floor_ms"] = round(max(counter.get_total_flops() / peak, out["always_on_weight_mb"] * 2**20 / bw) * 1e3, 3)
        out["file_mode_ceiling_frames_per_s"] = round(peak / counter.get_total_flops(), 1)
        out["decode_ceiling_tokens_per_s"] = round(bw / (out["llm_weight_mb"] * 2**20), 1)
    return out


# ---- parity -------------------------------------------------------------------------------------------


@torch.inference_mode()
def parity(model, processor, frames: np.ndarray, n: int) -> dict:
    """Differences of the engine (graphs where available) from the parallel forward, and from its eager mode."""
    from ..engine import Engine

    clip = np.stack([frames[i % len(frames)] for i in range(n)])
    device = next(model.parameters()).device
    runs = {}
    for graphs in ({False, True} if device.type == "cuda" else {False}):
        engine = Engine(model, processor, cuda_graphs=graphs)
        slot = engine.open_stream(QUERY)
        probs = np.array([engine.step([slot], frame)[0] for frame in clip])
        runs[graphs] = probs, engine.turn_tokens(slot).float()
    pixels = processor.preprocess_frames(clip, device=device)[None]
    tokens = model.get_perception_tokens(pixel_values=pixels)
    prompt = torch.tensor([processor.encode_gate_prompt(QUERY)], device=device)
    mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=device)
    probs = model.gate_logits(tokens, mask, None, prompt).float().softmax(-1)[0, :, 1].cpu().numpy()
    fast = runs[device.type == "cuda"]
    out = {"frames": n, "max_abs_diff_gate_prob_vs_parallel": float(np.abs(fast[0] - probs).max()),
           "max_abs_diff_tokens_vs_parallel": float((fast[1] - tokens[0, -fast[1].shape[0]:].float()).abs().max()),
           "token_abs_max": float(tokens.float().abs().max())}
    if True in runs:
        out["max_abs_diff_gate_prob_graphs_vs_eager"] = float(np.abs(runs[True][0] - runs[False][0]).max())
    return out


# ---- the commands ----------------------------------------------------------------------------------


def bench_all(args) -> dict:
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    cuda = device.type == "cuda"
    quick = args.quick
    t_start = time.perf_counter()
    limits = gpu_limits(device) if cuda else None
    model, processor = _build(args.preset, args.device, dtype)
    frames = _frames(16, args.height, args.width)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    result = {
        "what": "StreamMind inference engine: always-on path, many streams, replies, the per-frame-LLM paradigm",
        "preset": args.preset, "device": str(device), "dtype": args.dtype, "frame_size": [args.height, args.width],
        "gpu": torch.cuda.get_device_name(device) if cuda else None, "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__, "transformers": importlib.import_module("transformers").__version__,
        "python": platform.python_version(), "cuda_graphs": cuda, "load_average_1m": _load_average(),
        "limits": limits, "floors": floors(model, limits),
    }
    options = {"compile_vision": args.compile_vision}
    result["compile_vision"] = args.compile_vision
    n_live = 200 if quick else args.frames
    result["live"] = live_stream(model, processor, frames, n_live, **options)
    result["file_mode"] = file_mode(model, processor, frames, 64 if quick else 2048, chunk=16 if quick else args.chunk, **options)
    sizes = [1, 4] if quick else [1, 4, 16, 64]
    result["aggregate"] = aggregate(model, processor, frames, sizes, rounds=5 if quick else 30, **options)
    if not quick:
        result["real_time_30fps"] = realtime_capacity(model, processor, frames, args.realtime_candidates, **options)
    turns = [4, 10] if quick else [10, 100, 600]
    result["replies"] = replies(model, processor, frames, turns, reps=2 if quick else 5, others=3 if quick else 16)
    contexts = [64, 256] if quick else [1024, 4096, 16384]
    result["per_frame_llm"] = per_frame_llm(model, contexts, tokens_per_frame=10, reps=5 if quick else 50, graphs=cuda)
    result["parity"] = parity(model, processor, frames, 16 if quick else 64)

    from ..engine import Engine

    state = Engine(model, processor).state_bytes()
    result["state_bytes_per_stream"] = state
    result["host_rss_mb_end"] = round(_rss_mb(), 1)
    if cuda:
        total = torch.cuda.get_device_properties(device).total_memory
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        free = total - weights
        ours = state["epfe_state"] + state["turn_memory"] + state["gate_cache"]
        result["capacity"] = {
            "gpu_memory_gb": round(total / 1e9, 1), "weights_gb": round(weights / 1e9, 2),
            "ours_streams_by_state": int(free // ours),
            "per_frame_llm_stream_hours_at_2fps": round(free / result["per_frame_llm"]["kv_bytes_per_stream_hour"]["2"], 2),
            "per_frame_llm_stream_hours_at_30fps": round(free / result["per_frame_llm"]["kv_bytes_per_stream_hour"]["30"], 2),
        }
        result["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    result["ratios"] = _ratios(result)
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    return result


def _ratios(result: dict) -> dict:
    """Per-frame cost of the per-frame-LLM paradigm over ours (the LLM step alone, without its CLIP)."""
    ours = result["live"]["windows"]
    steady = list(ours.values())[-1]["p50_ms"]
    return {f"per_frame_llm_at_{c}_over_ours": round(s["p50_ms"] / steady, 2)
            for c, s in result["per_frame_llm"]["ms_per_frame_llm"].items()}


def bench_step(args) -> dict:
    """One live stream over `--frames` frames: latency windows and memory along the stream."""
    dtype = getattr(torch, args.dtype)
    model, processor = _build(args.preset, args.device, dtype)
    frames = _frames(16, args.height, args.width)
    n = args.frames
    cuda = args.device.startswith("cuda")
    windows = [(start, start + min(100, n // 4)) for start in sorted({10, n // 10, n // 2, n - min(100, n // 4)})]
    load_start = _load_average()
    live = live_stream(model, processor, frames, n, windows=windows)
    rss = live["rss_mb"]
    steady = [(f, m) for f, m in rss if f >= n // 10]
    slope = np.polyfit([f for f, _ in steady], [m for _, m in steady], 1)[0] * 1000 if len(steady) > 1 else 0.0
    return {
        "what": "always-on per-frame latency of one live stream (uint8 frame in -> p(respond) out), batch 1",
        "preset": args.preset, "device": args.device, "dtype": args.dtype, "frames": n, "frame_size": [args.height, args.width],
        "gpu": torch.cuda.get_device_name() if cuda else None, "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
        "latency_windows": live["windows"],
        "flatness": {"rss_mb_after_steady": {"min": min(m for _, m in steady), "max": max(m for _, m in steady), "end": rss[-1][1]},
                     "rss_slope_mb_per_1k_frames": round(float(slope), 3),
                     "turn_memory_tokens_end": live["turn_memory_end"], "gate_frames_cached_end": live["gate_frames_end"]},
        "memory": [{"frame": f, "rss_mb": m} for f, m in rss],
        "load_average_1m": {"start": load_start, "end": _load_average()},
        "stream_vs_parallel": parity(model, processor, frames, min(64, model.config.max_turn_frames)),
        **({"cuda_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)} if cuda else {}),
    }


def bench_profile(args) -> dict:
    """Where the time of one always-on frame and of one decode step goes: CUDA kernel time by op (eager)."""
    from torch.profiler import ProfilerActivity, profile

    from ..engine import Engine

    dtype = getattr(torch, args.dtype)
    model, processor = _build(args.preset, args.device, dtype)
    device = torch.device(args.device)
    frames = _frames(4, args.height, args.width)
    tables = {}
    for graphs in (False, True) if device.type == "cuda" else (False,):
        engine = Engine(model, processor, cuda_graphs=graphs)
        slot = engine.open_stream(QUERY)
        for i in range(20):
            engine.step([slot], frames[i % 4])
        engine.push_clip(slot, frames[:4], threshold=1.0)
        task = engine.start_reply(slot, max_new_tokens=8)
        task.advance()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for i in range(args.steps):
                engine.step([slot], frames[i % 4])
            _sync(device)
        sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        tables[f"always_on_{'graphs' if graphs else 'eager'}"] = prof.key_averages().table(sort_by=sort, row_limit=args.rows)
        engine.push_clip(slot, frames[:4], threshold=1.0)
        task = engine.start_reply(slot, max_new_tokens=args.steps)
        with profile(activities=activities) as prof:
            task.advance()
            _sync(device)
        tables[f"decode_{'graphs' if graphs else 'eager'}"] = prof.key_averages().table(sort_by=sort, row_limit=args.rows)
    for name, table in tables.items():
        print(f"==== {name} ({args.steps} steps)\n{table}")
    return {"what": "profile", "preset": args.preset, "device": args.device, "dtype": args.dtype, "steps": args.steps, "tables": tables}


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


# ---- reports ------------------------------------------------------------------------------------------


def _fmt(value) -> str:
    return "–" if value is None else (f"{value:,.1f}" if isinstance(value, float) else str(value))


def markdown_all(r: dict) -> str:
    """The side-by-side table of `bench all`."""
    lines = [f"# StreamMind inference engine — {r['preset']}, {r['dtype']}, {r['gpu'] or 'CPU'}", "",
             f"torch {r['torch']}, transformers {r['transformers']}, CUDA graphs {'on' if r['cuda_graphs'] else 'off'}, "
             f"vision {'compiled' if r['compile_vision'] else 'eager'} (inside the graphs), "
             f"frames {r['frame_size'][1]}x{r['frame_size'][0]} uint8, random weights; wall time {r['wall_s']} s.", ""]
    lim, fl = r["limits"], r["floors"]
    if lim:
        lines += [f"Measured limits: bf16 matmul {lim['bf16_matmul_tflops']} TFLOP/s, device copy {lim['copy_tb_per_s']} TB/s. "
                  f"Floors: always-on {fl['always_on_floor_ms']} ms/frame (CLIP {fl['vision_gflop_per_frame']} GFLOP), "
                  f"file mode {fl['file_mode_ceiling_frames_per_s']} frames/s, decode {fl['decode_ceiling_tokens_per_s']} tokens/s "
                  f"({fl['llm_weight_mb']:.0f} MB of LLM weights per token).", ""]
    lines += ["| what | measured |", "|---|---|"]
    for window, s in r["live"]["windows"].items():
        lines.append(f"| a. one live stream, frames {window}: p50 / p95 | {s['p50_ms']} / {s['p95_ms']} ms |")
    lines.append(f"| a. one stream, file mode (chunks of {r['file_mode']['chunk']}) | {r['file_mode']['frames_per_s']:,} frames/s |")
    for S, s in r["aggregate"].items():
        lines.append(f"| b. {S} streams batched: throughput, p95 per-frame latency | {s['frames_per_s']:,} frames/s, {s['p95_ms']} ms |")
    if "real_time_30fps" in r:
        rt = r["real_time_30fps"]
        worst = ", ".join(f"{k}: {v['worst_latency_ms']} ms" for k, v in rt["by_streams"].items())
        lines.append(f"| b. 30 fps streams in real time (every frame within {rt['deadline_ms']:.0f} ms) | {rt['max_real_time_streams']} "
                     f"(worst latency by S: {worst}) |")
    rep = r["replies"]
    for n, s in rep["turns"].items():
        lines.append(f"| c. fire -> first token, {n}-frame turn: p50 / p95 | {s['p50_ms']} / {s['p95_ms']} ms |")
    lines.append(f"| c. decode, batch 1 | {rep['decode_tokens_per_s']} tokens/s |")
    st = rep["stall"]
    lines.append(f"| c. stall of {st['other_streams']} other streams during a reply ({st['tokens_per_tick']} tokens per tick) | "
                 f"prefill {st['prefill_ms']} ms, then ticks p50 {st['tick_ms'].get('p50_ms')} / max {st['tick_ms'].get('max_ms')} ms |")
    pf = r["per_frame_llm"]
    ours = list(r["live"]["windows"].values())[-1]["p50_ms"]
    for c, s in pf["ms_per_frame_llm"].items():
        ratio = r["ratios"][f"per_frame_llm_at_{c}_over_ours"]
        lines.append(f"| d. per-frame LLM ({pf['tokens_per_frame']} tokens/frame), context {c}: LLM alone p50 | {s['p50_ms']} ms "
                     f"(+ its CLIP; {ratio}x our whole always-on {ours} ms) |")
    kv = pf["kv_bytes_per_stream_hour"]
    lines.append(f"| d. per-frame LLM KV cache per stream-hour at 2 / 30 fps | {kv['2'] / 1e9:.1f} / {kv['30'] / 1e9:.1f} GB |")
    sb = r["state_bytes_per_stream"]
    lines.append(f"| e. our state per stream: EPFE / turn memory / gate cache / LLM context (max) | {sb['epfe_state'] / 2**20:.2f} / "
                 f"{sb['turn_memory'] / 2**20:.1f} / {sb['gate_cache'] / 2**20:.1f} / {sb['llm_context_max'] / 2**20:.0f} MiB |")
    if "capacity" in r:
        cap = r["capacity"]
        lines.append(f"| e. streams one GPU holds: ours (state, LLM context shared) / per-frame LLM, hours of one stream at 2 / 30 fps | "
                     f"{cap['ours_streams_by_state']:,} / {cap['per_frame_llm_stream_hours_at_2fps']} h / {cap['per_frame_llm_stream_hours_at_30fps']} h |")
        lines.append(f"| e. peak GPU memory, host RSS at the end | {r['cuda_peak_mb']:,.0f} MB, {r['host_rss_mb_end']:,.0f} MB |")
    p = r["parity"]
    lines.append(f"| parity: gate p(respond) vs the parallel forward / graphs vs eager; tokens vs parallel | "
                 f"{p['max_abs_diff_gate_prob_vs_parallel']:.2e} / {_fmt(p.get('max_abs_diff_gate_prob_graphs_vs_eager'))}; "
                 f"{p['max_abs_diff_tokens_vs_parallel']:.2e} (values up to {p['token_abs_max']:.1f}) |")
    return "\n".join(lines) + "\n"


def markdown_step(result: dict) -> str:
    lines = [f"# {result['what']}", "", "| key | value |", "|---|---|"]
    for k, v in result.items():
        if k in ("latency_windows", "memory"):
            continue
        lines.append(f"| {k} | {json.dumps(v) if isinstance(v, (dict, list)) else v} |")
    lines += ["", "| frames | p50 ms | p95 ms | max ms |", "|---|---|---|---|"]
    lines += [f"| {w} | {s['p50_ms']} | {s['p95_ms']} | {s['max_ms']} |" for w, s in result["latency_windows"].items()]
    lines += ["", "| frame | RSS MB |", "|---|---|"] + [f"| {m['frame']} | {m['rss_mb']} |" for m in result["memory"]]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="streammind bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what")
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    for name, help_line in (("all", "the whole engine benchmark (default)"), ("step", "one live stream over a long run")):
        p = sub.add_parser(name, help=help_line)
        p.add_argument("--preset", default="streammind-7b" if name == "all" and default_device == "cuda" else "tiny", help="model preset (random weights)")
        p.add_argument("--device", default=default_device)
        p.add_argument("--dtype", default="bfloat16" if default_device == "cuda" else "float32", choices=["float32", "bfloat16", "float16"])
        p.add_argument("--frames", type=int, default=10_000 if name == "all" else 7200, help="frames of the live stream")
        p.add_argument("--height", type=int, default=360)
        p.add_argument("--width", type=int, default=640)
        p.add_argument("--out", default=None, help="write <out>.json and <out>.md")
        if name == "all":
            p.add_argument("--chunk", type=int, default=64, help="frames per chunk in file mode")
            p.add_argument("--realtime-candidates", type=int, nargs="+", default=[16, 32, 48, 64, 96, 128],
                           help="stream counts tried in the 30 fps real-time simulation")
            p.add_argument("--quick", action="store_true", help="small sizes everywhere (seconds on a CPU; checks the machinery)")
            p.add_argument("--compile-vision", action="store_true", help="the engines' vision tower through torch.compile (see Engine)")
    prof = sub.add_parser("profile", help="where the time of an always-on frame and a decode step goes (torch.profiler)")
    prof.add_argument("--preset", default="streammind-7b" if default_device == "cuda" else "tiny")
    prof.add_argument("--device", default=default_device)
    prof.add_argument("--dtype", default="bfloat16" if default_device == "cuda" else "float32", choices=["float32", "bfloat16", "float16"])
    prof.add_argument("--steps", type=int, default=20)
    prof.add_argument("--rows", type=int, default=25)
    prof.add_argument("--height", type=int, default=360)
    prof.add_argument("--width", type=int, default=640)
    prof.add_argument("--out", default=None)
    parity_parser = sub.add_parser("parity", help="reference scan vs mamba-ssm kernels")
    parity_parser.add_argument("--out", default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(argv) if argv is not None else None
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["all", *argv]
    args = build_parser().parse_args(argv)
    if args.what == "all":
        result, markdown = bench_all(args), markdown_all
    elif args.what == "step":
        result, markdown = bench_step(args), markdown_step
    elif args.what == "profile":
        result = bench_profile(args)
        if args.out:
            write_text(Path(args.out).with_suffix(".txt"), "\n\n".join(f"==== {k}\n{v}" for k, v in result["tables"].items()))
        return 0
    else:
        result, markdown = bench_parity(args), None
    text = json.dumps(result, indent=2)
    print(markdown(result) if markdown else text)
    if args.out:
        out = Path(args.out)
        write_text(out.with_suffix(".json"), text + "\n")
        if markdown:
            write_text(out.with_suffix(".md"), markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command("streammind bench", main))
