"""Mutation testing of the core, one module at a time, with mutmut 3 (`pip install -e '.[dev]'`).

Run: scripts/mutation.sh [module ...] [--survivors] [--report PATH]
     (no module: all of them; `scripts/mutation.sh --list` names them)

For each module this copies the working tree (tracked and untracked, not ignored files) to
runs/mutation/<module>/, appends a [tool.mutmut] table that mutates only that module's file
and runs only that module's test files, and runs `mutmut run` there with one worker under
`nice`. mutmut records which tests execute which function, so each mutant runs only the
tests that reach the mutated function; a module takes a few minutes to half an hour on two cores.
`--survivors` keeps the workspaces, refreshes their tests/ and re-runs only last time's survivors
that are not classified yet (after adding tests); a module whose source or test list changed runs in full.

The markdown report (default runs/mutation/report.md) gives per module the number of mutants,
killed (a test failed or timed out), survived, equivalent (listed in EQUIVALENT below, with
the reason), CPU-only (only a tensor's device changes) and the score = killed / (mutants -
equivalent - CPU-only), the diff of every mutant not killed, and the rules that matched nothing.

What is not mutated (and why):
- lines that raise or log: the wording of a message is not behaviour we pin (the condition
  that raises, and the exception type, are mutated as usual);
- decorated functions (mutmut's rule: it cannot trampoline through a decorator), except the
  `@torch.inference_mode()` / `@torch.no_grad()` ones: in the workspace's copy these run their
  body inside `with torch.inference_mode():` instead (`_undecorated`: the same behaviour, the
  same line numbers), so that they are mutated too.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "runs" / "mutation"


@dataclass(frozen=True)
class Target:
    """A module under mutation: its file, optionally only some functions, and its tests."""

    path: str
    tests: tuple[str, ...]
    functions: tuple[str, ...] = ()  # mangled-name globs (mutmut: x_func, xǁClassǁmethod); empty = all
    deselect: tuple[str, ...] = field(default=())


_MODEL_TINY = "tests/model/test_model_tiny.py"
_STREAMING = "tests/inference/test_streaming.py"
_ENGINE = "tests/inference/test_engine.py"
_DATASETS = "tests/training/test_datasets.py"

MODULES: dict[str, Target] = {
    # the model core
    "sampling": Target("streammind/sampling.py", ("tests/model/test_sampling.py", "tests/model/test_processing.py", _MODEL_TINY, _ENGINE)),
    "gate": Target("streammind/gate.py", ("tests/model/test_gate.py", _MODEL_TINY, _DATASETS, _ENGINE, _STREAMING)),
    "perception": Target("streammind/perception.py", ("tests/model/test_perception.py", _MODEL_TINY, "tests/model/test_save_load.py")),
    "ops.selective_scan": Target("streammind/ops/selective_scan.py", ("tests/ops/test_selective_scan.py", "tests/model/test_perception.py")),
    "ops.causal_conv1d": Target("streammind/ops/causal_conv1d.py", ("tests/ops/test_selective_scan.py", "tests/model/test_perception.py")),
    "ops.dispatch": Target("streammind/ops/dispatch.py", ("tests/ops/test_selective_scan.py",)),
    "processing": Target("streammind/processing.py", ("tests/model/test_processing.py", _STREAMING, _DATASETS)),
    "modeling": Target(
        "streammind/modeling_streammind.py",
        (_MODEL_TINY, "tests/model/test_gate.py", _STREAMING, "tests/model/test_save_load.py", "tests/apps/test_convert.py"),
    ),
    # inference: the static-cache decoder, the engine (its eager CPU path) and the session on it
    "decoding": Target("streammind/decoding.py", ("tests/inference/test_decoding.py", _ENGINE, _STREAMING)),
    "engine": Target(
        "streammind/engine.py",
        (_ENGINE, _STREAMING, "tests/inference/test_decoding.py", "tests/evaluation/test_offline.py"),
        # Not the CUDA-graph machinery (_Graph, capture, _replay_always_on, _decode_graph) and the pinned
        # staging of frames (_to_device): they run on a GPU only. Not __init__ either (buffers and settings,
        # most of them GPU-only: graphs, batch sizes, compile); every engine test runs it.
        functions=("xǁEngineǁopen_stream", "xǁEngineǁclose_stream", "xǁEngineǁturn_tokens", "xǁEngineǁgate_frames",
                   "xǁEngineǁ_conversation", "xǁEngineǁ_check_slot", "xǁEngineǁ_prefill_gate", "xǁEngineǁ_rows", "xǁEngineǁ_always_on",
                   "xǁEngineǁ_run_always_on", "xǁEngineǁ_gate_chunk", "xǁEngineǁ_append_memory",
                   "xǁEngineǁ_turn_embeddings", "xǁEngineǁ_embed_ids", "xǁEngineǁ_rebuild_context", "xǁEngineǁ_hold_llm",
                   "xǁEngineǁ_llm_extend", "xǁEngineǁ_llm_decode", "xǁEngineǁ_span", "xǁEngineǁstate_bytes",
                   "xǁEngineǁreset_stream", "xǁEngineǁset_query", "xǁEngineǁstep", "xǁEngineǁstep_features", "xǁEngineǁpush_clip",
                   "xǁEngineǁrespond", "xǁEngineǁstart_reply", "xǁEngineǁgenerate", "xǁEngineǁbeam_search",
                   "xǁReplyTaskǁ__init__", "xǁReplyTaskǁadvance", "x_beam_search"),
    ),
    "streaming": Target("streammind/streaming.py", (_STREAMING, _ENGINE)),
    # training: data, the collator (with the gate's segment layout), the feature cache, the entry
    "training.datasets": Target("streammind/training/datasets.py", (_DATASETS,)),
    "training.collator": Target("streammind/training/collator.py", (_DATASETS, _MODEL_TINY)),
    "training.annotations": Target("streammind/training/annotations.py", ("tests/training/test_annotations.py", _DATASETS)),
    "training.features": Target(
        "streammind/training/features.py",
        ("tests/training/test_features.py", _DATASETS),
        functions=("xǁFeatureCacheǁ*", "x_vision_cache_key", "x_clips_of", "x_shard"),
    ),
    "training.train": Target(
        "streammind/training/train.py",
        ("tests/training/test_train.py",),
        functions=("x_set_trainable", "x__destroy_process_group"),
        deselect=("tests/training/test_train.py::test_two_process_cpu_ddp_through_the_launcher",),
    ),
    "training.arguments": Target(
        "streammind/training/arguments.py",
        ("tests/training/test_train.py",),
        functions=("x_parse_args", "x__cli_to_dict", "x__load_yaml", "xǁModelArgumentsǁ__post_init__",
                   "xǁStreamMindTrainingArgumentsǁ__post_init__"),
        deselect=("tests/training/test_train.py::test_two_process_cpu_ddp_through_the_launcher",),
    ),
    # media: frame selection by timestamp
    "media.video": Target(
        "streammind/media/video.py",
        ("tests/media/test_video.py", _DATASETS),
        functions=("x_sample_grid", "x_ceil_to_grid", "x__select_indices", "x__clock_steps", "x__snap_to_clock", "x__follow_grid",
                   "x__video_end", "x__pyav_read", "x__decord_pick", "x_read_video", "x__clip_from"),
    ),
    # applications and evaluation
    "apps.convert": Target(
        "streammind/apps/convert.py",
        ("tests/apps/test_convert.py",),
        functions=("x__ignore_reason", "x_videollama2_key_map", "x_linear_layout", "x_original_key_map", "x__plan", "x__required",
                   "x__original_sizes"),
    ),
    "evaluation.metrics": Target("streammind/evaluation/metrics.py", ("tests/evaluation/test_metrics.py",)),
}

@dataclass(frozen=True)
class Equivalent:
    """Surviving mutants of `function` (a mangled-name glob) whose mutated line contains `added`
    (and whose original line contains `removed`, when given) change nothing observable: `reason`.
    Matching on the changed text, not on mutmut's numbering, keeps a rule valid while the
    function's other lines change."""

    function: str
    added: str | None  # None: any change of the line holding `removed`
    reason: str
    removed: str = ""
    cpu_only: bool = False  # not equivalent on a GPU: counted with the CPU-only mutants

    def matches(self, mutant: str, diff: str) -> bool:
        function = mutant.split(".")[-1].rpartition("__mutmut_")[0]
        plus = [line[1:] for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
        minus = [line[1:] for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
        # added="" matches a mutant that only deletes the line holding `removed`.
        if self.added is None:
            changed = bool(self.removed)
        else:
            changed = (not plus) if not self.added else any(self.added in line for line in plus)
        return fnmatch.fnmatchcase(function, self.function) and changed and (not self.removed or any(self.removed in line for line in minus))


_E = Equivalent
_ROPE = "the gate and the LLM use RoPE, which depends only on position differences; padding is masked out"
_CACHE_FLAG = "transformers 5 updates a cache passed explicitly whatever use_cache says, and config.use_cache is True"
_UNUSED_CACHE = "use_cache only makes the decoder also return a cache, which is dropped"
_INT_LOG = "torch.log promotes the integer 1..N to the default float dtype: the same values are copied into A_log"
_GRAPHS = "the CUDA-graph branch: only an engine on a GPU with graphs takes it (the GPU tests compare graphs with eager)"
_SLICE_OR_GATHER = ("a wrong `consecutive` only sends consecutive slots down the gather path, which gives the same values "
                    "(the tests step slots in and out of order); a slice is never taken for non-consecutive slots")
_KERNELS = "kernels only pick compiled or as-written versions of the same layer math; without compile they are the as-written ones"
_WIDER_SPAN = ("a wider attention span only adds cache positions not written yet, which the mask gives weight 0; "
               "spans exist for speed (a narrower one fails: see test_greedy_decoding_across_an_attention_span_boundary)")

# Survivors that no test can kill, per module, with the reason (each is shown with its diff in the report).
EQUIVALENT: dict[str, list[Equivalent]] = {
    "sampling": [
        _E("x_num_selected", "if n < 0:", "for n = 0 the next lines also give 0 (min(n, ...) or n); only an unknown strategy would now raise"),
        _E("x_select_indices", "tokens[-1:].float(), )", "cosine_similarity's default dim=1 is the last dim of the [n, D] tokens"),
        _E("x_select_indices", "tokens[-1:].float(), dim=+1)", "dim 1 is the last dim of the [n, D] tokens"),
        _E("x_select_indices", "dtype=None) * 1e-6", "arange(n) * 1e-6 is float32 (the default dtype) either way, as sims is"),
        _E("x_select_indices", "device=device, ) * 1e-6", "arange(n) * 1e-6 is float32 (the default dtype) either way, as sims is"),
    ],
    "perception": [
        _E("xǁMambaMixerǁ__init__", "padding=", "the conv's padding is never used: ops.causal_conv1d reads only its weight and bias"),
        _E("xǁMambaMixerǁ__init__", "groups=self.d_inner, bias=conv_bias)", "the conv's padding is never used: ops.causal_conv1d reads only its weight and bias"),
        _E("xǁMambaMixerǁ__init__", "2 * d_state, bias=None)", "bias=None is falsy like False: no bias either way"),
        _E("xǁMambaMixerǁ__init__", "self.d_inner, )", "nn.Linear's default bias=True, as given"),
        _E("xǁMambaMixerǁforward", "if (state is not None) or True", "the final conv state is computed but not used without a state"),
        _E("xǁMambaMixerǁstep", "chunk(2, dim=+1)", "in_proj(x) is [B, 2 Din]: dim 1 is the last"),
        _E("xǁPerceptionEncoderǁstep", "feature.shape[+1]", "the 2-D check before it makes dim 1 the last"),
        _E("xǁMambaMixerǁinit_weights", "torch.arange(1, self.d_state + 1, dtype=None", _INT_LOG),
        _E("xǁMambaMixerǁinit_weights", "torch.arange(1, self.d_state + 1, device=device)", _INT_LOG),
        _E("xǁMambaMixerǁinit_weights", "torch.log(A).expand(-1))", "copy_ broadcasts the [N] row over the Din channels, as the explicit expand does"),
    ],
    "ops.selective_scan": [
        _E("x_*", "BDTN,BDN,BNT->BDT", "einsum accepts upper-case subscripts"),
        _E("x_*", "BDN,BN->BD", "einsum accepts upper-case subscripts"),
        _E("x_*", "BDLN,BNL->BDL", "einsum accepts upper-case subscripts"),
        _E("x__scan_within_chunk", "while k <= length", "the extra pass with k = length adds nothing (x[:, :, k:] is empty)"),
        _E("x__scan_within_chunk", "if 2 / k < length", "only squares decay products that the remaining passes do not read"),
        _E("x__scan_within_chunk", "if 2 * k <= length", "only squares decay products that the remaining passes do not read"),
        _E("x_selective_scan*", "chunk_size: int = 65", "the chunk size changes results only by float rounding (tests compare to 1e-5 / 1e-12)"),
        _E("x_selective_scan", "initial_state, return_last_state, )", "the dropped chunk_size is the reference's default, 64"),
        _E("x_selective_scan*", "if (HAS_MAMBA_KERNELS) or True", "HAS_MAMBA_KERNELS is `kernel is not None`: the kernel is None exactly when it is False"),
        _E("x_selective_scan", "unavailable, None)", "on_cuda only picks the log level when a GPU falls back", cpu_only=True),
        _E("x_selective_state_update", "unavailable, None)", "on_cuda only picks the log level when a GPU falls back", cpu_only=True),
        # A single dropped cast next to an fp32 operand: PyTorch promotes to fp32, exactly.
        _E("x__selective_state_update_ref", ".to(None)", "one dropped cast: every op here has another operand in the compute dtype, so type promotion gives the same values"),
        _E("x__selective_state_update_ref", "state.to(copy=True)", "the state is fp32 by contract (PerceptionState), the compute dtype"),
        _E("x__selective_state_update_ref", "state.to(None, copy=True)", "the state is fp32 by contract (PerceptionState), the compute dtype"),
        _E("x_selective_scan_ref", "initial_state.to(None, copy=True)", "the state is fp32 by contract (PerceptionState)"),
        _E("x_selective_scan_sequential", "initial_state.to(None, copy=True)", "the state is fp32 by contract (PerceptionState)"),
        _E("x_selective_state_update", "if (HAS_MAMBA_KERNELS) or True", "HAS_MAMBA_KERNELS is `kernel is not None`: the kernel is None exactly when it is False"),
        _E("x__finish_output", ".to(None)", "one dropped cast: the other operand is in the compute dtype (type promotion)"),
        _E("x__prepare_delta", ".to(None)", "one dropped cast: the bias / softplus math promotes to the compute dtype"),
        _E("x_selective_scan_ref", ".to(None)", "one dropped cast: each later op meets a compute-dtype operand (type promotion); the state is fp32 by contract"),
        _E("x_selective_scan_ref", "initial_state.to(copy=True)", "the state is fp32 by contract (PerceptionState)"),
        _E("x_selective_scan_ref", "delta_softplus, None)", "one dropped cast: the bias / softplus math promotes to the compute dtype"),
        _E("x_selective_scan_sequential", ".to(None)", "one dropped cast: each later op meets a compute-dtype operand (type promotion); the state is fp32 by contract"),
        _E("x_selective_scan_sequential", "delta_softplus, None)", "one dropped cast: the bias / softplus math promotes to the compute dtype"),
        _E("x_selective_scan_sequential", "initial_state.to(copy=True)", "the state is fp32 by contract (PerceptionState)"),
        _E("x_selective_scan_sequential", "initial_state.to(cdt, )", "h is rebound, never written in place, so sharing the caller's buffer is harmless"),
        _E("x_selective_scan_sequential", "copy=False)", "h is rebound, never written in place, so sharing the caller's buffer is harmless"),
        _E("x_selective_scan_*", "u_f.new_zeros(d_inner, 0)", "an empty [Din, 0] output broadcasts with the [B, Din, 0] skip term to the same empty result"),
        _E("x_selective_scan_*", "u_f.new_zeros(batch, d_inner, 1)", "a [B, Din, 1] zero output broadcasts with the [B, Din, 0] skip term to the same empty result"),
        _E("x__add_initial_state_contribution", "initial_state.to(None, copy=True)", "the state is fp32 by contract (PerceptionState)"),
        _E("x__add_initial_state_contribution", "initial_state.to(copy=True)", "the state is fp32 by contract (PerceptionState)"),
    ],
    "modeling": [
        _E("xǁStreamMindForCausalLMǁforward", "attention_mask=None, labels", "text is right-padded: causal attention never reads the later padding, whose labels are -100"),
        _E("xǁStreamMindForCausalLMǁforward", "inputs_embeds=embeds, labels", "text is right-padded: causal attention never reads the later padding, whose labels are -100"),
        _E("xǁStreamMindForCausalLMǁforward", "use_cache=None", _UNUSED_CACHE),
        _E("xǁStreamMindForCausalLMǁforward", "use_cache=True", _UNUSED_CACHE),
        _E("xǁStreamMindForCausalLMǁforward", "labels=labels, )", _UNUSED_CACHE),
        _E("xǁStreamMindForCausalLMǁgate_logits", "torch.zeros(B, T, dtype=None", "a float 0 respond mask is falsy like False"),
        _E("xǁStreamMindForCausalLMǁgate_logits", "torch.zeros(B, T, )", "a float 0 respond mask is falsy like False (gate_layout takes .bool())"),
        _E("xǁStreamMindForCausalLMǁget_frame_features", "chunk_size: int = 257", "chunking the tower's batch does not change its features"),
        _E("xǁStreamMindForCausalLMǁget_frame_features", "encode_frames(flat, )", "encode_frames' default chunk size is the same 256"),
        _E("xǁStreamMindForCausalLMǁget_frame_features", "frozen = None", "with every tower parameter frozen and pixel inputs, the features need no graph either way"),
        _E("xǁStreamMindForCausalLMǁselect_turn_tokens", "if e > 0]", "a turn ends after at least one frame: an end of 0 never occurs"),
        _E("xǁStreamMindForCausalLMǁselect_turn_tokens", "if e >= 1]", "a turn ends after at least one frame: an end of 0 never occurs"),
        _E("xǁStreamMindPreTrainedModelǁ_init_weights", "init.normal_(module.weight, std=std)", "normal_'s default mean is 0.0"),
    ],
    "training.datasets": [
        _E("x_turn_end_frames", "if t <= frame_times[0] - _TIME_EPS", "only a turn exactly 1 us before the first frame differs, a float coincidence"),
        _E("x_turn_end_frames", "if t >= frame_times[-1] + step + _TIME_EPS", "only a turn exactly 1 us past the last frame's slot differs, a float coincidence"),
        _E("x_turn_end_frames", "t + _TIME_EPS, ))", "left and right insertion differ only when t + 1 us equals a frame time exactly"),
        _E("xǁStreamDatasetǁ_validate", "if (rec.end is not None) and False else info.duration_s",
           "the annotation schema refuses turns after `end`: below the video's length every turn is within end + 1/fps, "
           "at or past it both bounds are the same", removed="end = min(rec.end, info.duration_s)"),
        _E("xǁStreamDatasetǁ_validate", "end + 1.0 / self.fps + _TIME_EPS:", "only a last turn exactly at the bound (1 us after the last frame period) differs",
           removed="> end + 1.0"),
    ],
    "training.collator": [
        _E("x__pad_1d", "(len(s) for s in seqs), ", "the default of max() is used only for zero sequences, and an empty batch is refused before"),
        _E("x__pad_1d", "value, dtype=None)", "the fill values and ids are Python ints: int64 either way"),
        _E("x__pad_1d", "value, )", "the fill values and ids are Python ints: int64 either way"),
        _E("x__pad_1d", "torch.as_tensor(s, ", "the fill values and ids are Python ints: int64 either way"),
    ],
    "training.annotations": [
        _E("x__write_jsonl", "ensure_ascii=None", "None is falsy like False"),
    ],
    "media.video": [
        _E("x__clip_from", "dtype=None)", "the grid times and pts are Python floats: float64 either way"),
        _E("x__clip_from", "for t, _, _ in picked], )", "the grid times and pts are Python floats: float64 either way"),
        _E("x__clip_from", "for _, p, _ in picked], )", "the grid times and pts are Python floats: float64 either way"),
        _E("x__clock_steps", "limit_denominator(11**6)", "container rates have small denominators (24000/1001); the three limits give the same fraction"),
        _E("x__clock_steps", "limit_denominator(10**7)", "container rates have small denominators (24000/1001); the three limits give the same fraction"),
        _E("x__follow_grid", "return", "after `t is None`, breaking out of the loop and returning both end the generator (the else clause runs only without a break)",
           removed="break"),
        _E("x__select_indices", "PTS_TOLERANCE_S, ) - 1", "left and right insertion differ only when t + 1 us equals a pts exactly"),
        _E("x__snap_to_clock", ".astype(None)", "float64 integers times a small numerator are exact: the same snapped values"),
        _E("x__snap_to_clock", "np.abs(snapped - x) < tol", "only a value exactly at the float32 tolerance differs, a float coincidence"),
        _E("x_sample_grid", "if not stop >= start", "for stop == start the single candidate time equals stop and is filtered out"),
        _E("x_sample_grid", "np.zeros(0, ", "an empty array's default dtype is float64"),
        _E("x_sample_grid", "(stop + start) * fps", "more candidate times, all at or past stop, are filtered out"),
        _E("x_sample_grid", "* fps)) + 2", "more candidate times, all at or past stop, are filtered out"),
        _E("x_sample_grid", "np.arange(n, ", "integer steps divided by fps are float64 either way"),
        _E("x__decord_pick", "elif i >= last.index:", "i equals last.index only after a search up to i; the range (i - 1 down to last.index) is then empty"),
        _E("x__decord_pick", "_DECORD_LOOKBACK, -2), -1)", "last.index >= -1, so the bound is never below -1"),
        _E("x__decord_pick", "_DECORD_LOOKBACK, ), -1)", "last.index >= -1, so the bound is never below -1"),
        _E("x__pyav_read", "bool(times[0] >= 0)", "seeking to 0 decodes from the first keyframe, as not seeking does"),
        _E("x__pyav_read", "(bool(times[0] > 0), True)", "the second pass only runs after the first overshoots, which a correct seek does not"),
        _E("x__pyav_read", "(stream.start_time or 1)", "one tick later still seeks back to the same keyframe"),
        _E("x__pyav_read", "any_frame=None)", "PyAV's default is any_frame=False"),
        _E("x__pyav_read", "backward=True, )", "PyAV's default is any_frame=False"),
        _E("x__pyav_read", "stream=stream, any_frame=False)", "PyAV's default is backward=True"),
        _E("x__pyav_read", "_pyav_frames(container, stream, None,", "_pyav_frames takes stream.start_time when given None"),
        _E("x__pyav_read", "iter(times.tolist()), None, stats)", "the grid ends before the video's end, which is the last frame's end: the held frame covers it"),
    ],
    "apps.convert": [
        _E("x__original_sizes", "defaults = dict(num_attention_heads=gate_heads)", "ORIGINAL_GATE_DEFAULTS are MistralConfig's own defaults (the released gate used them)"),
        _E("x__original_sizes", "head_dim=None", "MistralConfig computes the same head_dim = hidden_size // heads"),
        _E("x__original_sizes", "", "MistralConfig computes the same head_dim = hidden_size // heads", removed="head_dim=head_dim,"),
        _E("x__original_sizes", "tie_word_embeddings=True", "the gate's decoder is a MistralModel with a separate head: there is nothing to tie"),
        _E("x__original_sizes", "", "the gate's decoder is a MistralModel with a separate head: there is nothing to tie", removed="tie_word_embeddings=False"),
        _E("x__original_sizes", "", "the gate never generates: BOS / EOS / pad ids in its config are unused", removed="_token_id=None"),
        _E("x__original_sizes", ")", "the gate never generates: BOS / EOS / pad ids in its config are unused", removed="pad_token_id=None"),
    ],
    "evaluation.metrics": [
        _E("x__any_within", "times.size == 0 and others.size == 0", "with one side empty the broadcast comparison is empty and any() gives all False too"),
        _E("x__any_within", "np.zeros(times.shape, ", "the result is only summed: float zeros sum like bool ones"),
        _E("x__to_microseconds", ".reshape(None)", "times are given as a flat sequence"),
        _E("x__to_microseconds", ".reshape(-2)", "numpy treats any negative size as 'infer'"),
        _E("x__to_microseconds", "np.asarray(times, ", "times are Python floats: float64 either way (ints are exact in float64 too)"),
        _E("x__to_microseconds", ".astype(None)", "whole microseconds in float64 compare and subtract exactly like int64 ones at these magnitudes"),
        _E("x_caption_metrics", "- set(predictions), ", "caption ids are strings: key=str sorts them the same"),
        _E("x_caption_metrics", "- set(references), ", "caption ids are strings: key=str sorts them the same"),
        _E("x_caption_metrics", "compute_score(gts, res, ", "verbose only prints"),
        _E("x_fluency", "if frame_diff >= 0", "frame_diff == 0 returned above"),
        _E("x_fluency", "if frame_diff > 1", "for frame_diff == 1 both branches give (num_frames - 1) / denominator"),
        _E("x_match_events", "pred_us.size == 0 and ref_us.size == 0", "with one side empty no pair is feasible and [] is returned below"),
        _E("x_match_events", 'kind="STABLE"', "numpy accepts the kind in upper case"),
        _E("x_match_events", "* tol_us + 2", "any pair value above the largest total offset (min(n, m) * tol) works"),
        _E("x_match_events", "m + 1), dtype=None)", "float64 holds these integer scores exactly"),
        _E("x_match_events", "m + 1), )", "float64 holds these integer scores exactly"),
        _E("x_match_events", "(n + 2, m + 1)", "the extra row is never read (the walk starts at row n)"),
        _E("x_match_events", "while i >= 0 and j > 0", "at i = 0 the walk only steps j down (row 0 is all zeros); no pair is added"),
        _E("x_match_events", "while i > 0 and j >= 0", "at j = 0 the walk only steps i down (column 0 is all zeros); no pair is added"),
    ],
    "training.arguments": [
        _E("x_parse_args", "parser.parse_dict(cfg, ", "parse_dict's default is allow_extra_keys=False, and None is falsy like it (unknown keys still raise, tested)"),
    ],
    "decoding": [
        _E("xǁStaticKVǁ__init__", 'getattr(config, "head_dim", )', "the static path takes Mistral and Llama configs only, which always set head_dim"),
        _E("xǁStaticKVǁ__init__", "config.hidden_size / config.num_attention_heads", "the static path takes Mistral and Llama configs only, which always set head_dim"),
        _E("xǁStaticKVǁupdate", "slice(None, b)", "slice(None, b) is slice(0, b)"),
        _E("xǁStaticKVǁupdate", "slice(b)", "slice(b) is slice(0, b)"),
        _E("xǁStaticKVǁupdate", ".view(heads, 1).expand", "a [heads, 1] index broadcasts to (b, heads, L) like a [1, heads, 1] one"),
        _E("xǁStaticKVǁupdate", "_arange(b, None)", "the index is made on the default device instead of the key's", cpu_only=True),
        _E("xǁStaticKVǁupdate", "_arange(heads, None)", "the index is made on the default device instead of the key's", cpu_only=True),
        _E("xǁStaticKVǁ_arange", "torch.arange(n, )", "the arange is made on the default device instead of the given one", cpu_only=True),
        _E("xǁStaticKVǁ__init__", 'self.rows: torch.Tensor | None = ""', "bind() sets the rows before every update; an unbound '' is falsy like None"),
        _E("xǁStaticKVǁ__init__", 'self.positions: torch.Tensor | None = ""', "bind() sets the positions before every update"),
        _E("xǁStaticKVǁ__init__", 'self.span: int | None = ""', "bind() sets the span before every update"),
        _E("x_attention_mask", ".view(1, 1, length)", "a [1, 1, T] index broadcasts against the [b, 1, L, 1] positions like a [1, 1, 1, T] one"),
        _E("x_attention", "keys.transpose(-1, +2)", "keys are [b, Hkv, T, hd]: dim 2 is dim -2"),
        _E("x_attention", 'float("-INF")', "float() reads '-INF' as -inf"),
        _E("xǁStaticKVǁcopy_slot", "if (upto is None) and False else upto", "`[:None]` is the whole slot, as `[:length]`"),
        _E("x_decoder_forward", "if (span is None) or True else span", "the span only bounds the work: entries past a row's position are masked out either way"),
        _E("xǁLayerKernelsǁcompiled", "torch.compile(fn, mode=None)", "None is torch.compile's default mode; a mode changes how fast the compiled layer runs, not what it computes"),
        _E("xǁLayerKernelsǁcompiled", "torch.compile(fn, )", "None is torch.compile's default mode; a mode changes how fast the compiled layer runs, not what it computes"),
    ],
    "engine": [
        # The prefill's bucket padding runs on CUDA only (`device.type == "cuda"`); where it runs anyway, the
        # padded positions are masked and overwritten by the next tokens, so it changes no value.
        _E("xǁEngineǁ_llm_extend", "if self.device.type", "the prefill bucket padding is CUDA-only and changes no value",
           removed='if self.device.type == "cuda" and L > 1:', cpu_only=True),
        _E("xǁEngineǁ_llm_extend", "padded", "the prefill bucket padding is CUDA-only and changes no value",
           removed="padded = max(L, min(", cpu_only=True),
        _E("xǁEngineǁ_llm_extend", "if padded >= L:", "on the CPU padded == L: padding with zero positions changes nothing", cpu_only=True),
        _E("xǁEngineǁ_llm_extend", "embeds", "the prefill bucket padding is CUDA-only and changes no value",
           removed="new_zeros(1, padded - L", cpu_only=True),
        _E("xǁEngineǁ_append_memory", "count - skipped", "tokens were cut to the newest K just before, so skipped is always 0"),
        _E("xǁEngineǁ_gate_chunk", "dim=+1)[:, 1]", "the logits are [k, 2]: dim 1 is the last"),
        _E("xǁEngineǁ_hold_llm", "StaticKV(self.model.language_model.config, 2, length", "one slot is used; a second only costs memory"),
        _E("xǁEngineǁ_hold_llm", "n = None", "saving the whole context instead of its first n positions: the rest is masked when restored"),
        _E("xǁEngineǁ_hold_llm", "n = conv.saved_kv[1].shape[3]", "saved keys and values have the same shape"),
        _E("xǁEngineǁ_hold_llm", 'conv.saved_kv = ""', "a holder's saved context is written before it is read again"),
        _E("xǁEngineǁpush_clip", "max(self.chunk_size, 2)", "chunking the tower's batch does not change its per-frame features"),
        _E("xǁEngineǁpush_clip", "if (self.per_frame_gate) and False else", "per-frame gate: the window is 1, so the room is one frame: the same probabilities, more calls"),
        _E("xǁEngineǁpush_clip", "room = k + i if", "a room past the clip's end is cut by the slices (tokens[i : i + room], probs[i : i + n])"),
        _E("xǁEngineǁpush_clip", "min(k + i, self.window", "a room past the clip's end is cut by the slices (tokens[i : i + room], probs[i : i + n])"),
        _E("xǁReplyTaskǁ__init__", "user = conv.pending_user if (conv.llm_length) or True", "on the first turn pending_user already holds the query (reset_stream sets it)"),
        _E("xǁReplyTaskǁ__init__", "config.max_context_tokens / 2", "a float half budget compares like the integer one with integer token counts"),
        _E("xǁReplyTaskǁ__init__", "reply_ids=None)", "the turn's reply_ids are set when it closes, before anything reads them"),
        _E("xǁEngineǁstate_bytes", "t[1].numel()", "every slot has the same size"),
        _E("xǁEngineǁstate_bytes", 'getattr(lm, "head_dim", )', "Mistral and Llama configs always set head_dim"),
        _E("xǁEngineǁstate_bytes", 'getattr(lm, "num_key_value_heads", None)', "Mistral and Llama configs always set num_key_value_heads"),
        _E("xǁEngineǁstate_bytes", 'getattr(lm, "num_key_value_heads", )', "Mistral and Llama configs always set num_key_value_heads"),
        _E("xǁEngineǁbeam_search", "DynamicCache(config=None)", "without a config the cache holds full-attention layers, which the tiny LLM (no sliding window) has"),
        _E("xǁEngineǁbeam_search", "use_cache=None", _CACHE_FLAG),
        _E("xǁEngineǁbeam_search", "use_cache=False", _CACHE_FLAG),
        _E("xǁEngineǁbeam_search", "cache=cache, logits_to_keep=1)", _CACHE_FLAG),
        _E("xǁEngineǁbeam_search", "logits_to_keep=2)", "only the last position's logits are read"),
        _E("xǁEngineǁbeam_search", "use_cache=True, )", "only the last position's logits are read"),
        _E("xǁEngineǁbeam_search", "dim=+1)", "the logits are [K, V]: dim 1 is the last"),
        _E("xǁEngineǁbeam_search", "length[0], dtype=None", "torch.full with an int fill makes int64 by default"),
        _E("xǁEngineǁbeam_search", "torch.full((K, 1), length[0], device=self.device)", "torch.full with an int fill makes int64 by default"),
        _E("xǁEngineǁbeam_search", "L + max_new_tokens + 2, self.device", "one more cache position than needed only costs memory"),
        _E("xǁEngineǁbeam_search", "self.device, None)", "torch.zeros(dtype=None) is float32, the tiny model's dtype", cpu_only=True),
        _E("xǁEngineǁ_hold_llm", "length, None, self.dtype)", "only the device changes", cpu_only=True),
        _E("xǁEngineǁbeam_search", "max_new_tokens + 1, None, self.dtype)", "only the device changes", cpu_only=True),
        _E("xǁEngineǁpush_clip", ".to(None, self.dtype)", "only the device changes", cpu_only=True),
        _E("xǁEngineǁpush_clip", "torch.as_tensor(features).to(self.dtype)", "only the device changes", cpu_only=True),
        _E("x_beam_search", "if length_penalty >= 0 else step + 1", "it changes only length_penalty == 0, where the bound length is not used (n ** 0 = 1)"),
        _E("x_beam_search", "normalise(live[0][1], bound_length)", "a beam index (>= 0) never falls below a finished score: the search only stops later"),
        _E("xǁEngineǁstate_bytes", "lm.hidden_size / lm.num_attention_heads", "Mistral configs always set head_dim, so the fallback is not used"),
        _E("xǁEngineǁbeam_search", "for k in range(K):", "the first reorder (every row from beam 0) copies slot 0 to every row anyway"),
        _E("xǁEngineǁbeam_search", "for k in range(1, ):", "the first reorder (every row from beam 0) copies slot 0 to every row anyway"),
        _E("xǁEngineǁbeam_search", "for k in range(2, K):", "the first reorder (every row from beam 0) copies slot 0 to every row anyway"),
        _E("xǁEngineǁbeam_search", "kv.copy_slot(1, k, upto=L)", "the first reorder (every row from beam 0) copies slot 0 to every row anyway"),
        _E("xǁEngineǁbeam_search", "kv.copy_slot(0, k, upto=None)", "copying past the prompt copies zeros that are masked until written"),
        _E("xǁEngineǁbeam_search", "kv.copy_slot(0, k, )", "copying past the prompt copies zeros that are masked until written"),
        _E("xǁEngineǁbeam_search", "kv.reorder(order, upto=None)", "reordering past the written positions moves entries that are masked until written"),
        _E("xǁEngineǁbeam_search", "L + max_new_tokens - 1, self.device", "the last step never advances, so position L + max_new_tokens - 1 is never written"),
        _E("xǁEngineǁbeam_search", "positions = None", "the LLM counts positions from its cache length, the same"),
        _E("xǁEngineǁbeam_search", "position_ids=None, cache=cache", "the LLM counts positions from its cache length, the same"),
        _E("xǁEngineǁbeam_search", "out = lm(inputs_embeds=embed(tokens[:, None]), cache=cache", "the LLM counts positions from its cache length, the same"),
        _E("xǁEngineǁstate_bytes", "torch.finfo(self.dtype).bits / 8", "bits are a multiple of 8: the float equals the int"),
        _E("x_beam_search", "candidates.topk(min(3 * K", "at most K of the first 2K candidates are EOS (one per beam), so K live ones are found either way"),
        _E("x_beam_search", "step - 1", "for length_penalty <= 0 a shorter bound length only loosens the bound (0: it is not used)"),
        _E("x_beam_search", "bound_length) < finished[-1].score", "stopping only on a strict loss: the same result, a tie goes on"),
        # The CUDA-graph branches: taken only when the engine runs on a GPU with graphs (pytest -m gpu compares them with eager).
        *(_E("xǁEngineǁ_run_always_on", None, _GRAPHS, removed=line, cpu_only=True) for line in (
            "out = []", "top = self.batch_sizes[-1]", "for start in range(0, len(slots), top):",
            "part = list(slots[start : start + top])", "out.append(self._replay_always_on(", "return np.concatenate(out)")),
        *(_E("xǁEngineǁ_llm_decode", None, _GRAPHS, removed=line, cpu_only=True) for line in (
            "graph, buffers = self._decode_graph(span)", 'buffers["token"].fill_(token_id)',
            'buffers["position"].fill_(conv.llm_length)', "next_id = int(graph())")),
        _E("xǁEngineǁ_run_always_on", None, _SLICE_OR_GATHER, removed="consecutive = list(slots) =="),
        _E("xǁEngineǁ_run_always_on", "if (consecutive) and False else", _SLICE_OR_GATHER),
        _E("xǁEngineǁ_always_on", "slots = rows if (gather) and False else", "_slot_index is arange(max_streams): indexing it with the row tensor gives the rows"),
        _E("xǁEngineǁ_always_on", "self.gate_kv, rows, )", _KERNELS),
        _E("xǁEngineǁ_always_on", "dim=+1)[:, 1]", "the logits are [b, 2]: dim 1 is the last"),
        _E("xǁEngineǁ_llm_decode", "span = None", _WIDER_SPAN),
        _E("xǁEngineǁ_llm_decode", "self._span(conv.llm_length + 2)", _WIDER_SPAN),
        _E("xǁEngineǁ_llm_decode", "self._decode_token(token, position, None)", _WIDER_SPAN),
        _E("xǁEngineǁ_llm_extend", "self._llm_kv, span=None)", _WIDER_SPAN),
        _E("xǁEngineǁ_llm_extend", "self._llm_kv, )", _WIDER_SPAN),
        _E("xǁEngineǁ_llm_extend", "DynamicCache(config=None)", "without a config the cache holds full-attention layers, which the tiny LLM (no sliding window) has"),
        _E("xǁEngineǁ_llm_extend", "positions = None", "the LLM counts positions from its cache length, the same"),
        _E("xǁEngineǁ_llm_extend", "position_ids=None, cache=self._llm_cache", "the LLM counts positions from its cache length, the same"),
        _E("xǁEngineǁ_llm_extend", "out = lm(inputs_embeds=embeds, cache=self._llm_cache", "the LLM counts positions from its cache length, the same"),
        _E("xǁEngineǁ_llm_extend", "cache=self._llm_cache, use_cache=None", _CACHE_FLAG),
        _E("xǁEngineǁ_llm_extend", "cache=self._llm_cache, use_cache=False", _CACHE_FLAG),
        _E("xǁEngineǁ_llm_extend", "cache=self._llm_cache, logits_to_keep=1)", _CACHE_FLAG),
        _E("xǁEngineǁ_llm_extend", "use_cache=True, logits_to_keep=2)", "only the last position's logits are read"),
        _E("xǁEngineǁ_llm_extend", "use_cache=True, )", "only the last position's logits are read"),
        _E("xǁEngineǁ_rows", "torch.tensor(list(slots), dtype=None", "a tensor of Python ints is int64 by default"),
        _E("xǁEngineǁ_rows", "torch.tensor(list(slots), device", "a tensor of Python ints is int64 by default"),
        _E("xǁEngineǁopen_stream", "self.streams[slot] = None", "reset_stream replaces the placeholder at once; a None placeholder compares "
           "with the LLM's holder like a fresh Conversation except when there is no holder, and then it sets None again"),
    ],
    "streaming": [],
    "processing": [
        _E("x_add_video_token", "AddedToken(video_token, special=", "AddedToken(special=True) and add_tokens(special_tokens=True) each make the token special; "
           "normalized only matters with a normalizer that rewrites '<video>' itself, which LLM tokenizers' do not"),
        _E("x_add_video_token", "normalized=False)], ", "AddedToken(special=True) and add_tokens(special_tokens=True) each make the token special"),
        _E("xǁStreamMindProcessorǁ_encode", "if (text) or True", "encoding '' gives [] as well"),
        _E("xǁStreamMindProcessorǁfrom_pretrained", "AutoTokenizer.from_pretrained(directory, ", "the saved tokenizer_config.json names its class, so AutoTokenizer does not need the model config here"),
    ],
    "ops.causal_conv1d": [
        _E("x_*", "BDW,DW->BD", "einsum accepts upper-case subscripts"),
        _E("x__compute_dtype", "or True else torch.float32", "fp64 instead of fp32 compute changes results only below fp32 rounding"),
        _E("x__left_context", ".to(None)", "torch.cat promotes the state to the input's compute dtype, exactly"),
        _E("x_causal_conv1d", "_check_activation(None)", "causal_conv1d_ref checks the activation again"),
        _E("x_causal_conv1d", "_check_state(x, weight, None,", "causal_conv1d_ref checks the state again"),
        _E("x_causal_conv1d*", "_kernel_unavailable(_kernel_causal_conv1d", "with CPU tensors any of them already fails the CUDA check", cpu_only=True),
        _E("x_causal_conv1d*", "unavailable, None)", "on_cuda only picks the log level when a GPU falls back", cpu_only=True),
        _E("x_causal_conv1d_final_state", "max(width + x.shape[2], 0)", "extra left zeros are cut by the [-width:] slice"),
        _E("x_causal_conv1d_final_state", "max(width - x.shape[2], 1)", "extra left zeros are cut by the [-width:] slice"),
        _E("x_causal_conv1d_update", "bias.to(None)", "one dropped cast: out is in the compute dtype (type promotion)"),
    ],
    "gate": [
        _E("x_gate_loss", "dtype=None)", "torch.tensor of Python floats is float32 by default"),
        _E("x_gate_loss", "device=logits.device, )", "torch.tensor of Python floats is float32 by default"),
        _E("x_gate_loss", "weight=weight, )", "ignore_index=-100 is cross_entropy's default"),
        _E("x_gate_loss", "F.log_softmax(logits, dim=None)", "logits are [N, 2]: the implicit dim of a 2-D input is 1, the last"),
        _E("x_gate_loss", "F.log_softmax(logits, )", "logits are [N, 2]: the implicit dim of a 2-D input is 1, the last"),
        _E("x_gate_loss", "F.log_softmax(logits, dim=+1)", "logits are [N, 2]: dim 1 is the last"),
        _E("xǁCognitionGateǁforward", "use_cache=None", _UNUSED_CACHE),
        _E("xǁCognitionGateǁforward", "use_cache=True", _UNUSED_CACHE),
        _E("xǁCognitionGateǁforward", "position_ids=position_ids, )", _UNUSED_CACHE),
        _E("x_gate_layout", "torch.arange(T).expand(T)", "a [T] arange broadcasts against the [B, T] masks like the expanded one"),
        _E("x_gate_layout", "-1, dtype=None)", "torch.full with an int fill makes int64 by default"),
        _E("x_gate_layout", "(num_segments, width), -1, )", "torch.full with an int fill makes int64 by default"),
        _E("xǁCognitionGateǁframe_logits", "torch.ones_like(prompt_ids, dtype=None)", "long ones: concatenated with the bool frame mask and turned to long anyway"),
        _E("xǁCognitionGateǁframe_logits", "torch.ones_like(prompt_ids, )", "long ones: concatenated with the bool frame mask and turned to long anyway"),
        _E("xǁCognitionGateǁframe_logits", "self.embed(prompt_ids).to(None)", "the gate's embeddings and the perception tokens share the model's dtype"),
        _E("xǁCognitionGateǁframe_logits", "logits[real].to(None)", "the gate's logits and the perception tokens share the model's dtype"),
        _E("xǁCognitionGateǁframe_logits", "mask.long().cumsum(-1) + 1", _ROPE),
        _E("xǁCognitionGateǁframe_logits", "mask.long().cumsum(+1)", "the mask is [N, L]: dim 1 is the last"),
        _E("xǁGateLayoutǁto", ".to(None)", "only the device changes", cpu_only=True),
        _E("xǁCognitionGateǁframe_logits", "masked_fill(~real[..., None], 1)", "padding sits at the end of a segment: causal attention never reads it and its outputs are dropped"),
        _E("xǁCognitionGateǁframe_logits", "prompt_ids.shape[1] >= 0", "an empty prompt concatenates nothing: the same embeddings and mask"),
    ],
}

# A mutant that only changes which device a tensor is created on (`device=x.device` -> None or
# removed, `.to(x.device)` -> `.to(None)`, `device = x.device` -> None) cannot be told apart when
# every tensor is on the CPU, as in the test suite here; the report counts them as "CPU-only".
_DEVICE_KWARG = re.compile(r",?\s*\bdevice=(None|[A-Za-z_][\w.]*(\([^()]*\))?)")
_DEVICE_TO = re.compile(r"\.to\((None|[A-Za-z_][\w.]*\bdevice)\)")
_DEVICE_ASSIGN = re.compile(r"^(\s*(self\.)?device = ).*$")


def _without_device(line: str) -> str:
    line = _DEVICE_ASSIGN.sub(r"\1<device>", line)
    line = _DEVICE_TO.sub(".to(<device>)", _DEVICE_KWARG.sub("", line))
    return re.sub(r"\(\s*,\s*", "(", re.sub(r",?\s*\)", ")", line)).replace(" ", "")


def _device_only(diff: str) -> bool:
    """True when the mutant's one changed line differs from the original only in a device."""
    removed = [line[1:] for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    added = [line[1:] for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    return len(removed) == len(added) == 1 and removed != added and _without_device(removed[0]) == _without_device(added[0])


_NOT_MUTATED = [r"^\s*raise \w+\(", r"^\s*logger\.\w+\(", r"^\s*warnings\.warn\("]
_KILLED = {1, 3, 36, -24, 24, 152, 255, -11, -9}  # mutmut's "killed", "timeout" and "segfault"
_SURVIVED = {0}


def _mutmut() -> list[str]:
    return [sys.executable, "-m", "mutmut"]


def _toml_list(items) -> str:
    return "[" + ", ".join(json.dumps(s) for s in items) + "]"


def _mutmut_table(target: Target, ws: Path) -> str:
    # A test file listed for a module may not exist yet (new tests are added over time).
    selection = [t for t in target.tests if (ws / t).exists()] + [f"--deselect={d}" for d in target.deselect]
    return "\n".join([
        "",
        "[tool.mutmut]",
        f"source_paths = {_toml_list(['streammind', 'eval'])}",
        f"only_mutate = {_toml_list([target.path])}",
        f"also_copy = {_toml_list(['configs', 'scripts', 'notebooks', 'docs', 'assets'])}",
        f"pytest_add_cli_args_test_selection = {_toml_list(selection)}",
        # The GPU tests stay out: the run hides any GPU (CUDA in a forked child would fail anyway).
        f"pytest_add_cli_args = {_toml_list(['-p', 'no:randomly', '-p', 'no:cacheprovider', '-q', '-m', 'not gpu'])}",
        f"do_not_mutate_patterns = {_toml_list(_NOT_MUTATED)}",
        "",
    ])


_NOT_TREE = {".git", ".venv", ".whl", "runs", "data", ".pytest_cache", ".ruff_cache"}  # top-level folders


def _tree_files() -> list[str]:
    """The working tree's files: git's tracked and untracked-not-ignored ones, or, in a copy
    without git (e.g. a tree shipped to a bigger machine), every file outside the usual ignored folders."""
    git = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True)
    if git.returncode == 0:
        return [p for p in git.stdout.splitlines() if (REPO / p).is_file()]
    files = (p.relative_to(REPO) for p in REPO.rglob("*") if p.is_file())
    return sorted(str(f) for f in files if f.parts[0] not in _NOT_TREE and "__pycache__" not in f.parts)


_GRAD_MODES = ("@torch.inference_mode()", "@torch.no_grad()")


def _undecorated(source: str) -> str:
    """`source` with every `@torch.inference_mode()` / `@torch.no_grad()` function rewritten as
    the same function whose body (after its docstring) runs inside `with torch.inference_mode():`
    (or `no_grad`): the same behaviour, and mutmut, which skips decorated functions, mutates it."""
    lines = source.splitlines(keepends=True)
    tree = ast.parse(source)
    edits = []  # (decorator line, first body line, last line, mode), 1-based
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or len(node.decorator_list) != 1:
            continue
        deco = ast.get_source_segment(source, node.decorator_list[0])
        if "@" + (deco or "") not in _GRAD_MODES:
            continue
        body = node.body
        has_doc = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)
        if has_doc and len(body) == 1:
            continue
        first = body[1].lineno if has_doc else body[0].lineno
        first = min([first] + [d.lineno for d in ast.walk(body[1] if has_doc else body[0]) if hasattr(d, "lineno")])
        edits.append((node.decorator_list[0].lineno, first, node.end_lineno, deco[: deco.index("(")]))
    for deco_line, first, last, mode in sorted(edits, reverse=True):
        indent = lines[first - 1][: len(lines[first - 1]) - len(lines[first - 1].lstrip())]
        for i in range(first - 1, last):
            if lines[i].strip():
                lines[i] = "    " + lines[i]
        lines.insert(first - 1, f"{indent}with {mode}():\n")
        del lines[deco_line - 1]
    return "".join(lines)


def _target_source(target: Target) -> str:
    """The module's source as it is mutated (see `_undecorated`)."""
    return _undecorated((REPO / target.path).read_text())


def _prepare(name: str, target: Target) -> Path:
    """A fresh copy of the working tree with the module's mutmut table."""
    ws = WORK / name
    shutil.rmtree(ws, ignore_errors=True)
    for rel in _tree_files():
        dst = ws / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dst)
    (ws / target.path).write_text(_target_source(target))
    with open(ws / "pyproject.toml", "a") as f:
        f.write(_mutmut_table(target, ws))
    return ws


def _refresh_tests(ws: Path) -> None:
    for rel in _tree_files():
        if rel.startswith("tests/"):
            for root in (ws, ws / "mutants"):
                dst = root / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / rel, dst)


def _results(ws: Path, target: Target) -> dict[str, int | None]:
    meta = ws / "mutants" / (target.path + ".meta")
    if not meta.exists():
        return {}
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    if target.functions:
        codes = {k: v for k, v in codes.items() if any(fnmatch.fnmatchcase(k.split(".")[-1], f + "__mutmut_*") for f in target.functions)}
    return codes


def _run(name: str, target: Target, survivors_only: bool, jobs: int = 1) -> None:
    ws = WORK / name
    names: list[str] = []
    same_source = ws.exists() and (ws / target.path).exists() and (ws / target.path).read_text() == _target_source(target)
    # A changed test selection makes mutmut forget every verdict: then the module runs in full.
    same_table = ws.exists() and _mutmut_table(target, REPO) in (ws / "pyproject.toml").read_text()
    if survivors_only and same_source and same_table:
        # Survivors are named one by one, except those already classified (equivalent or
        # CPU-only); a mutant that no test reached is re-run with its whole function (a glob):
        # mutmut looks a single named mutant's tests up without a default.
        names = []
        results = _results(ws, target)
        diffs = _diffs(ws, [k for k, v in results.items() if v in _SURVIVED], target.path)
        for k, v in results.items():
            if v in _SURVIVED and _classified(name, k, diffs[k]):
                continue
            if v in _SURVIVED:
                names.append(k)
            elif v not in _KILLED:
                names.append(k.rpartition("__mutmut_")[0] + "__mutmut_*")
        names = sorted(set(names))
        if not names:
            print(f"[{name}] no survivors to re-run")
            return
        _refresh_tests(ws)
    else:
        ws = _prepare(name, target)
        module = target.path[:-3].replace("/", ".")
        names = [f"{module}.{f}__mutmut_*" for f in target.functions]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
    cmd = ["nice", "-n", "15", *_mutmut(), "run", "--max-children", str(jobs), *names]
    print(f"[{name}] mutmut run in {ws} ({len(names)} mutants named)" if names else f"[{name}] mutmut run in {ws}")
    with open(ws / "mutmut.log", "w") as log:
        proc = subprocess.run(cmd, cwd=ws, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        print(f"[{name}] mutmut exited {proc.returncode}; see {ws / 'mutmut.log'}")


def _verdict_files(name: str) -> list[Path]:
    """What the report needs of a module's run: its mutmut table, the source as mutated, the
    mutated copy (for the diffs), the verdicts and the log."""
    path = MODULES[name].path
    return [Path(name) / rel for rel in ("pyproject.toml", path, f"mutants/{path}", f"mutants/{path}.meta", "mutmut.log")]


def bundle(modules: list[str], out: Path) -> None:
    """Pack the modules' verdicts into `out` (a .tar.gz) to write the report on another machine."""
    import tarfile

    with tarfile.open(out, "w:gz") as tar:
        for name in modules:
            for rel in _verdict_files(name):
                if (WORK / rel).exists():
                    tar.add(WORK / rel, arcname=str(rel))
    print(f"bundle: {out}")


def unbundle(archive: Path) -> list[str]:
    """Unpack a bundle into runs/mutation/ (replacing those modules' workspaces); the modules in it."""
    import tarfile

    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        names = sorted({Path(m.name).parts[0] for m in members if Path(m.name).parts[0] in MODULES})
        for name in names:
            shutil.rmtree(WORK / name, ignore_errors=True)
        tar.extractall(WORK, members=[m for m in members if Path(m.name).parts[0] in MODULES and m.isfile()], filter="data")
    return names


def _classified(module: str, mutant: str, diff: str) -> bool:
    """An equivalent (by a rule) or CPU-only mutant."""
    return any(r.matches(mutant, diff) for r in EQUIVALENT.get(module, [])) or _device_only(diff)


def _diffs(ws: Path, mutants: list[str], path: str) -> dict[str, str]:
    """The diff of each mutant against the function it mutates, read from the workspace's mutated
    file (which holds every mutant as a function `<name>__mutmut_<n>` beside `<name>__mutmut_orig`).
    The file is parsed once: mutmut's own `get_diff_for_mutant` parses it again for every mutant,
    which takes minutes per mutant for the engine's."""
    if not mutants:
        return {}
    source = (ws / "mutants" / path).read_text()
    lines = source.splitlines(keepends=True)
    spans = {
        node.name: (node.lineno, node.end_lineno)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and "__mutmut_" in node.name
    }

    def text(name: str, shown: str) -> list[str]:
        first, last = spans[name]
        return [lines[first - 1].replace(f"def {name}(", f"def {shown}(", 1), *lines[first:last]]

    out = {}
    for mutant in mutants:
        name = mutant.rpartition(".")[2]
        base = name.rpartition("__mutmut_")[0]
        if name not in spans or base + "__mutmut_orig" not in spans:
            out[mutant] = f"(no function {name} in mutants/{path})"
            continue
        shown = base.rpartition("ǁ")[2] if "ǁ" in base else base[2:]  # xǁClassǁmethod / x_function
        diff = difflib.unified_diff(text(base + "__mutmut_orig", shown), text(name, shown), f"{path}", f"{path}")
        out[mutant] = "".join(diff).strip()
    return out


def _commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return head + ("+dirty" if dirty else "")


def report(modules: list[str], out: Path) -> float | None:
    rows, sections, stale = [], [], []
    total_killed = total_counted = 0
    for name in modules:
        target, ws = MODULES[name], WORK / name
        codes = _results(ws, target)
        if not codes:
            rows.append(f"| {name} | not run | | | | | | |")
            continue
        killed = [k for k, v in codes.items() if v in _KILLED]
        not_run = [k for k, v in codes.items() if v is None]  # a run stopped before reaching them
        diffs = _diffs(ws, [k for k, v in codes.items() if v not in _KILLED and v is not None], target.path)
        reasons, cpu_reasons = {}, {}
        used = set()
        for k in diffs:
            rule = next((r for r in EQUIVALENT.get(name, []) if r.matches(k, diffs[k])), None)
            if rule is not None and codes[k] in _SURVIVED:
                (cpu_reasons if rule.cpu_only else reasons)[k] = rule.reason
                used.add(rule)
        unused = [r for r in EQUIVALENT.get(name, []) if r not in used]
        if unused:  # stale after a code change, or the mutant is killed now: candidates for removal
            stale.append(f"### {name}\n")
            stale += [f"- `{r.function}`: `{r.added}`" + (f" (removed `{r.removed}`)" if r.removed else "") for r in unused]
            stale.append("")
        equivalent = list(reasons)
        cpu_only = [k for k in diffs if codes[k] in _SURVIVED and k not in reasons and (k in cpu_reasons or _device_only(diffs[k]))]
        left = [k for k in diffs if k not in equivalent and k not in cpu_only]
        counted = len(codes) - len(equivalent) - len(cpu_only) - len(not_run)
        total_killed += len(killed)
        total_counted += counted
        score = 100.0 * len(killed) / counted if counted else 100.0
        rows.append(f"| {name} | {len(codes)} | {len(killed)} | {len(left)} | {len(equivalent)} | {len(cpu_only)} | {len(not_run)} | {score:.1f} % |")
        if diffs:
            sections.append(f"### {name}\n")
            for k in sorted(left, key=_mutant_order):
                status = "survived" if codes[k] in _SURVIVED else f"exit code {codes[k]}"
                sections.append(f"- `{k}` ({status})\n\n```diff\n{diffs[k]}\n```\n")
            for k in sorted(equivalent, key=_mutant_order):
                sections.append(f"- `{k}` (equivalent: {reasons[k]})\n\n```diff\n{diffs[k]}\n```\n")
            for k in sorted(cpu_only, key=_mutant_order):
                why = cpu_reasons.get(k, "only the device changes")
                sections.append(f"- `{k}` (CPU-only: {why})\n\n```diff\n{diffs[k]}\n```\n")
    overall = 100.0 * total_killed / total_counted if total_counted else None
    lines = [
        f"# Mutation report ({date.today().isoformat()}, commit {_commit()})",
        "",
        "mutmut 3, one module at a time with its own tests (scripts/mutation.sh). Score = killed / (mutants - equivalent - CPU-only - not run);",
        "killed includes timeouts; CPU-only = the mutant only changes a tensor's device (no test on a CPU can tell);",
        "not run = a run stopped before reaching them (not counted).",
        "",
        "| module | mutants | killed | left | equivalent | CPU-only | not run | score |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"Overall: {total_killed} / {total_counted} = {overall:.1f} %" if overall is not None else "Overall: nothing run",
        "",
        "## Mutants not killed",
        "",
        *sections,
        "## Equivalence rules that matched no survivor",
        "",
        *(stale or ["none"]),
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"report: {out} (overall {overall:.1f} %)" if overall is not None else f"report: {out}")
    return overall


def _mutant_order(name: str) -> tuple[str, int]:
    base, _, number = name.rpartition("__mutmut_")
    return base, int(number) if number.isdigit() else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help=f"modules to mutate (default: all): {', '.join(MODULES)}")
    parser.add_argument("--survivors", action="store_true", help="re-run only last time's unclassified survivors (after adding tests)")
    parser.add_argument("--report", type=Path, default=WORK / "report.md", help="where to write the markdown report")
    parser.add_argument("--report-only", action="store_true", help="write the report from the last runs, run nothing")
    parser.add_argument("--list", action="store_true", help="list the modules and their tests")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once per module (default 1: the 2-core machine)")
    parser.add_argument("--bundle", type=Path, help="after the runs, pack the modules' verdicts into this .tar.gz (to report elsewhere)")
    parser.add_argument("--unbundle", type=Path, help="unpack a bundle into runs/mutation/ and write the report from it; run nothing")
    args = parser.parse_args(argv)
    if args.unbundle:
        names = unbundle(args.unbundle)
        report(args.modules or names, args.report)
        return 0
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.list:
        for name, t in MODULES.items():
            print(f"{name:22s} {t.path:38s} {' '.join(t.tests)}")
        return 0
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; choose from {list(MODULES)}")
    modules = args.modules or list(MODULES)
    if not args.report_only:
        for name in modules:
            _run(name, MODULES[name], args.survivors, args.jobs)
    report([m for m in MODULES if (WORK / m).exists()] if args.report_only and not args.modules else modules, args.report)
    if args.bundle:
        bundle(modules, args.bundle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
