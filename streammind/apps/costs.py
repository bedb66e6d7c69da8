"""What one more frame and one more stream cost: FLOPs, CPU time and memory of a session.

Works on either streaming model through its session (`streammind.streaming_perframe.open_session`):
StreamMind's always-on path (vision, one EPFE step, one gate step) and the per-frame-LLM
baseline's (vision, projector, one LLM call over the frame's tokens against its whole KV
cache). Replies are left out (threshold 1: a session never speaks), since both models pay
for a reply only when they speak; the cost of a silent frame is what the frame rate
multiplies.

- `frame_flops`: FLOPs of one frame at a given stream position, counted by
  `torch.utils.flop_counter.FlopCounterMode` (matrix products, convolutions and attention;
  on the CPU, SDPA's flash kernel is counted with torch's own SDPA formula, which this
  PyTorch's counter does not map for the CPU op). Element-wise work (norms, activations, the
  SSM's scan recurrence) is not counted by it; the scan's is analytic in `scan_flops`.
- `frame_seconds`: wall time per frame pushed one at a time at a given position, the best of
  n frames: on a machine shared with other work the minimum is the estimate least inflated
  by interference (the median is returned beside it).
- `stream_memory`: the bytes a stream holds now, by part, from the sessions' counters.

Notation: F visual tokens per frame (baseline), D width, positions in frames.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ..streaming_perframe import PerFrameSession, open_session


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# The CPU's flash SDPA op, counted as torch counts the CUDA SDPA kernels (dense QK^T and AV).
_CUSTOM_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def blank_frames(n: int, size: int = 64) -> np.ndarray:
    """n mid-grey uint8 frames [n, size, size, 3] (cost does not depend on pixel values)."""
    return np.full((n, size, size, 3), 128, dtype=np.uint8)


def _silent_session(model, processor, query: str, position: int):
    """A session that never replies, advanced `position` frames (a chunk at a time)."""
    session = open_session(model, processor, query=query, threshold=1.0, record_probs=False)
    if position:
        session.push_clip(blank_frames(position), np.arange(position, dtype=float))
    return session


@torch.inference_mode()
def frame_flops(model, processor, query: str, position: int = 0) -> dict:
    """FLOPs of the frame pushed after `position` frames: {"total", "by_op"}."""
    session = _silent_session(model, processor, query, position)
    frame = blank_frames(1)[0]
    session.push(frame, float(position))  # warm-up (first-call allocations)
    with FlopCounterMode(display=False, custom_mapping=_CUSTOM_FLOPS) as counter:
        session.push(frame, float(position + 1))
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()}
    return {"total": int(counter.get_total_flops()), "by_op": by_op}


@torch.inference_mode()
def frame_seconds(model, processor, query: str, position: int = 0, frames: int = 20) -> dict:
    """Wall time (s) of pushing one frame, over `frames` frames after `position` (+2 warm-up):
    {"min", "median"}."""
    session = _silent_session(model, processor, query, position)
    frame = blank_frames(1)[0]
    times = []
    for i in range(frames + 2):
        start = time.perf_counter()
        session.push(frame, float(position + i))
        times.append(time.perf_counter() - start)
    return {"min": min(times[2:]), "median": statistics.median(times[2:])}


def scan_flops(model) -> int:
    """Element-wise FLOPs of one EPFE scan step (not seen by the FLOP counter): per channel and
    state entry, exp(dt A), dt B x, the state update (multiply-add) and the C readout
    (multiply-add), about 7 operations; 0 without the Mamba block or for the baseline."""
    perception = getattr(model, "perception", None)
    if perception is None or perception.block is None:
        return 0
    mixer = perception.block.mixer
    return 7 * mixer.d_inner * mixer.d_state


def _kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * torch.finfo(dtype).bits // 8


def stream_memory(session) -> dict:
    """Bytes a stream holds now, by part, and in total ("used"); "allocated" is what its session
    reserved up front (StreamMind's state is allocated whole, the baseline's cache too)."""
    if isinstance(session, PerFrameSession):
        per_token = _kv_bytes_per_token(session.model.language_model.config, session.dtype)
        used = {"llm_kv": session.length * per_token}
        return {"used": used, "used_total": sum(used.values()), "allocated_total": session.kv.nbytes_per_slot}
    engine, slot = session.engine, session.slot
    config = session.config
    dtype = engine.dtype
    state = engine.perception_state
    epfe = state.conv_state[slot].numel() * state.conv_state.element_size() + state.ssm_state[slot].numel() * state.ssm_state.element_size()
    memory_tokens = min(int(engine.memory_count[slot]), engine.memory.shape[1])
    gate_positions = int(engine.prompt_length[slot]) + int(engine.turn_frames[slot])
    used = {
        "epfe_state": epfe,
        "turn_memory": memory_tokens * config.hidden_size * torch.finfo(dtype).bits // 8,
        "gate_kv": gate_positions * _kv_bytes_per_token(config.gate_config, dtype),
        "llm_kv": session.llm_length * _kv_bytes_per_token(config.text_config, dtype),
    }
    allocated = engine.state_bytes()
    return {"used": used, "used_total": sum(used.values()), "allocated_total": sum(allocated.values())}


def kv_bytes_per_token(config, dtype: torch.dtype = torch.float32) -> int:
    """Key + value bytes one token adds to a decoder's cache (all layers)."""
    return _kv_bytes_per_token(config, dtype)


__all__ = ["blank_frames", "frame_flops", "frame_seconds", "kv_bytes_per_token", "scan_flops", "stream_memory"]
