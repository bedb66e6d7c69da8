"""GPU smoke suite: what a user runs on a GPU, each path checked for behaviour, not only for running.

Run on a CUDA machine: python -m pytest -m gpu -q
Every test is marked `gpu` and skipped without CUDA, so the CPU suite collects and skips them.

The tiny preset everywhere except where the 7B size matters (random weights, bf16): streaming
vs the parallel forward, and a LoRA stage-1 step that reads the feature cache the 7B tower
filled. Stage 1 (cold and warm feature cache, data-loader workers, bf16), stage 2 from stage 1,
LoRA, resume after a kill, both evaluators, `streammind stream`, convert -> load -> stream and
the save/load round trip run on the tiny world. fp32 GPU results are compared with the CPU path
with TF32 off (the same maths up to summation order, so replies and decisions agree exactly);
bf16 results within bf16 tolerances.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, CLIPVisionModel, set_seed

from streammind import StreamingSession, StreamMindConfig, build_model, load_model, save_model
from streammind.apps import convert
from streammind.apps.cli import main as cli_main
from streammind.evaluation.free_running import stream_record
from streammind.evaluation.metrics import score_teacher_forced_record
from streammind.evaluation.teacher_forced import teacher_forced_record
from streammind.media.video import read_video
from streammind.training.annotations import load_annotations
from streammind.training.arguments import ModelArguments
from streammind.training.collator import StreamCollator
from streammind.training.datasets import StreamDataset
from streammind.training.features import FeatureCache, clips_of, extract_features, vision_cache_key
from streammind.training.train import apply_lora, build, set_trainable
from streammind.training.train import train as train_main
from streammind.vision import VisionEncoder
from tests.helpers import REPO, make_tiny

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DEVICE = "cuda"
CONFIGS = REPO / "configs" / "tiny"
QUERY = "Tell me when a shape appears."


@pytest.fixture(autouse=True)
def no_tf32():
    """fp32 on the GPU as on the CPU: TF32 convolutions (cuDNN's default) would move the tower's
    features by ~1e-3 and could flip a gate decision near the threshold."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@contextlib.contextmanager
def counting_tower():
    """Count the frames every VisionEncoder of this process encodes (a list of batch sizes)."""
    encoded: list[int] = []
    forward = VisionEncoder.forward

    def counting(self, pixel_values):
        encoded.append(len(pixel_values))
        return forward(self, pixel_values)

    VisionEncoder.forward = counting
    try:
        yield encoded
    finally:
        VisionEncoder.forward = forward


def train_args(world, tower, out, cache, stage, *extra):
    """The shipped tiny stage YAML on the test world, on the GPU: bf16, 2 data workers, the feature cache."""
    args = [str(CONFIGS / f"stage{stage}.yaml"), "--train_annotations", str(world / "train.jsonl"), "--data_root", str(world),
            "--output_dir", str(out), "--feature_cache_dir", str(cache), "--report_to", "none", "--per_device_train_batch_size", "2",
            "--logging_steps", "5", "--bf16", "true", "--dataloader_num_workers", "2", "--save_strategy", "no"]
    if stage == 1:
        args += ["--tokenizer_path", str(world / "tokenizer"), "--clip_path", str(tower)]
    return args + list(extra)


def logged_losses(out: Path, step: int) -> list[float]:
    state = json.loads((out / f"checkpoint-{step}" / "trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h]


def clip_frames(clips) -> int:
    """Frames of the clips at the tiny preset's 2 fps."""
    return sum(len(read_video(c.video, fps=2.0, start=c.start, end=c.end).times) for c in clips)


@dataclass
class Run:
    out: Path
    cache: Path
    losses: list[float]
    encoded: int


STEPS = 40


@pytest.fixture(scope="module")
def stage1(small_world, small_tower, tmp_path_factory):
    """Stage 1 of the tiny preset on a cold feature cache, 2 data workers, bf16."""
    root = tmp_path_factory.mktemp("gpu_stage1")
    with counting_tower() as encoded:
        out = train_main(train_args(small_world, small_tower, root / "s1", root / "cache", 1, "--max_steps", str(STEPS),
                                    "--save_strategy", "steps", "--save_steps", str(STEPS)))
    return Run(Path(out), root / "cache", logged_losses(Path(out), STEPS), sum(encoded))


@pytest.fixture(scope="module")
def stage2(stage1, small_world, small_tower, tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_stage2")
    with counting_tower() as encoded:
        out = train_main(train_args(small_world, small_tower, root / "s2", stage1.cache, 2, "--init_from", str(stage1.out),
                                    "--max_steps", str(STEPS), "--save_strategy", "steps", "--save_steps", str(STEPS)))
    return Run(Path(out), stage1.cache, logged_losses(Path(out), STEPS), sum(encoded))


# ----------------------------------------------------------------------------------- forward


def test_tiny_forward_on_the_gpu_equals_the_cpu_path(tiny_tokenizer, small_world):
    model, processor = make_tiny(tiny_tokenizer)
    records = load_annotations(small_world / "train.jsonl")[:2]
    dataset = StreamDataset(records, small_world, processor, stage="both")
    batch = StreamCollator.from_processor(processor)([dataset[0], dataset[1]])
    with torch.no_grad():
        cpu = model(**batch)
        model.to(DEVICE)
        gpu = model(**{k: v.to(DEVICE) for k, v in batch.items()})
        model.to(torch.bfloat16)
        bf16 = model(**{k: v.to(DEVICE) for k, v in batch.items()})
    for name in ("loss", "lm_loss", "gate_loss", "logits", "gate_logits"):
        torch.testing.assert_close(getattr(gpu, name).cpu(), getattr(cpu, name), rtol=1e-4, atol=1e-4)
    for name in ("loss", "lm_loss", "gate_loss"):
        torch.testing.assert_close(getattr(bf16, name).float().cpu(), getattr(cpu, name), rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(bf16.gate_logits.float().cpu(), cpu.gate_logits, rtol=3e-2, atol=5e-2)


# ---------------------------------------------------------------------------------- training


def test_stage1_fills_a_cold_cache_then_trains_with_workers_in_bf16(stage1, small_world, small_tower):
    clips = clips_of(load_annotations(small_world / "train.jsonl"), small_world)
    assert len(list(stage1.cache.rglob("*.pt"))) == len(clips)
    assert stage1.encoded == clip_frames(clips)  # each clip's frames once, in the extraction pass
    assert all(np.isfinite(stage1.losses)) and len(stage1.losses) == STEPS // 5
    assert stage1.losses[-1] < 0.5 * stage1.losses[0], stage1.losses
    tower = load_model(stage1.out)[0].vision.clip.state_dict()
    pretrained = CLIPVisionModel.from_pretrained(small_tower).state_dict()
    assert all(torch.equal(tower[k], v) for k, v in pretrained.items())  # frozen


def test_stage1_on_a_warm_cache_never_calls_the_tower(stage1, small_world, small_tower, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in stage1.cache.rglob("*.pt")}
    with counting_tower() as encoded:
        train_main(train_args(small_world, small_tower, tmp_path / "warm", stage1.cache, 1, "--max_steps", "4"))
    assert encoded == []
    assert {p: p.stat().st_mtime_ns for p in stage1.cache.rglob("*.pt")} == before
    assert (tmp_path / "warm" / "model.safetensors").is_file()


def test_stage2_from_stage1_trains_only_the_gate(stage1, stage2):
    assert stage2.encoded == 0  # the same tower: stage 2 reads stage 1's cache
    assert all(np.isfinite(stage2.losses))
    assert np.mean(stage2.losses[-2:]) < np.mean(stage2.losses[:2]), stage2.losses
    first, _ = load_model(stage1.out)
    second, _ = load_model(stage2.out)
    changed = {n.split(".")[0] for n, p in second.state_dict().items() if not torch.equal(p, first.state_dict()[n])}
    assert changed == {"gate"}


def test_lora_stage1_merges_its_adapters_into_the_saved_llm(stage1, small_world, small_tower, tmp_path):
    out = train_main(train_args(small_world, small_tower, tmp_path / "lora", stage1.cache, 1, "--max_steps", "6",
                                "--lora", "true", "--trainable", '[perception, "*lora_*"]'))
    saved, _ = load_model(out)
    set_seed(0)  # the YAML's seed: the same initial weights as the run's
    initial, _ = build(ModelArguments(preset="tiny", tokenizer_path=str(small_world / "tokenizer"), clip_path=str(small_tower)), torch.device(DEVICE))
    init = {k: v.cpu() for k, v in initial.state_dict().items()}
    weights = saved.state_dict()
    assert set(weights) == set(init)  # no lora_A / lora_B left: merged
    targets = [k for k in weights if k.startswith("language_model.") and k.endswith(("q_proj.weight", "down_proj.weight"))]
    assert targets and all(not torch.equal(weights[k], init[k]) for k in targets)  # the merged deltas
    untouched = [k for k in weights if k.startswith(("vision.", "gate.", "language_model.lm_head", "language_model.model.embed_tokens"))
                 or (k.startswith("language_model.") and "norm" in k)]
    assert all(torch.equal(weights[k], init[k]) for k in untouched)  # frozen in this stage, or not a LoRA target


def test_resume_after_a_kill(stage1, small_world, small_tower, tmp_path):
    out = tmp_path / "run"
    args = train_args(small_world, small_tower, out, stage1.cache, 1, "--max_steps", "1000", "--save_strategy", "steps",
                      "--save_steps", "3", "--save_total_limit", "2", "--logging_steps", "1")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "streammind.training.train", *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.monotonic() + 180
        while not (out / "checkpoint-6" / "trainer_state.json").is_file():
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint-6 after 180 s"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its data workers, mid-run
        proc.wait()
    done = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if (p / "trainer_state.json").is_file())
    assert done and done[-1] >= 6 and not (out / "model.safetensors").exists()
    step = done[-1]
    resumed = train_args(small_world, small_tower, out, stage1.cache, 1, "--max_steps", str(step + 3), "--save_strategy", "steps",
                         "--save_steps", "3", "--save_total_limit", "2", "--logging_steps", "1", "--resume_from_checkpoint", "auto")
    train_main(resumed)
    state = json.loads((out / f"checkpoint-{step + 3}" / "trainer_state.json").read_text())
    assert state["global_step"] == step + 3
    logged = [h for h in state["log_history"] if "loss" in h]
    assert [h["step"] for h in logged] == list(range(1, step + 4))  # the killed run's history, then three more steps
    assert all(np.isfinite(h["loss"]) for h in logged) and (out / "model.safetensors").is_file()


# --------------------------------------------------------------------------- inference paths


def close_values(a, b, path="") -> None:
    """Two JSON-like results agree: numbers within rel 1e-3 / abs 1e-4, everything else equal."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            close_values(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            close_values(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-3, abs=1e-4), path
    else:
        assert a == b, path


def test_both_evaluator_protocols_on_the_gpu_equal_the_cpu(stage2, small_world):
    """The free-running (streaming runtime) and teacher-forced protocols of eval/, per record.
    (Scoring is pure Python on their outputs, the same on any device.)"""
    records = load_annotations(small_world / "test.jsonl")
    runs = {}
    for device in ("cpu", DEVICE):
        model, processor = load_model(stage2.out, device=device)
        session = StreamingSession(model, processor)
        free = [stream_record(session, r, small_world, model.config.frames_per_second) for r in records]
        with torch.no_grad():
            teacher = [teacher_forced_record(model, processor, r, small_world) for r in records]
        runs[device] = free, teacher
    (cpu_free, cpu_teacher), (gpu_free, gpu_teacher) = runs["cpu"], runs[DEVICE]
    assert len(gpu_free) == len(records) == 3 and all("error" not in p for p in gpu_free)
    for c, g in zip(cpu_free, gpu_free):
        assert [(r["time"], r["text"]) for r in g["replies"]] == [(r["time"], r["text"]) for r in c["replies"]]
        assert g["frame_times"] == c["frame_times"] and len(g["frame_probs"]) > 0
        np.testing.assert_allclose(g["frame_probs"], c["frame_probs"], atol=1e-4)
    close_values(gpu_teacher, cpu_teacher)
    assert all(turn["token_logprobs"] for p in gpu_teacher for turn in p["turns"])
    scores = [score_teacher_forced_record(prediction=p, reference=r) for p, r in zip(gpu_teacher, records)]
    close_values(scores, [score_teacher_forced_record(prediction=p, reference=r) for p, r in zip(cpu_teacher, records)])


def test_stream_command_on_a_real_clip_equals_the_cpu(stage2, small_world, tmp_path, capsys):
    record = load_annotations(small_world / "test.jsonl")[0]
    video = small_world / record.video
    for device in ("cpu", DEVICE):
        assert cli_main(["stream", str(video), "--model", str(stage2.out), "--query", record.query, "--device", device,
                         "--output", str(tmp_path / f"{device}.jsonl"), "--stats", str(tmp_path / f"{device}.json")]) == 0
    stats = {d: json.loads((tmp_path / f"{d}.json").read_text()) for d in ("cpu", DEVICE)}
    assert stats[DEVICE]["frames"] == stats["cpu"]["frames"] == len(read_video(video, fps=2.0).times)
    replies = {d: [json.loads(line) for line in (tmp_path / f"{d}.jsonl").read_text().splitlines()] for d in ("cpu", DEVICE)}
    assert [(r["time"], r["text"]) for r in replies[DEVICE]] == [(r["time"], r["text"]) for r in replies["cpu"]]
    np.testing.assert_allclose([r["prob"] for r in replies[DEVICE]], [r["prob"] for r in replies["cpu"]], atol=1e-4)
    assert all(r["prob"] > stats[DEVICE]["threshold"] for r in replies[DEVICE])


def test_convert_then_load_then_stream_on_the_gpu(tiny_tokenizer_dir, tmp_path):
    from tests.source_checkpoints import GATE_HEADS, make_original

    src, _ = make_original(tmp_path, AutoTokenizer.from_pretrained(tiny_tokenizer_dir), "safetensors-sharded")
    dst = tmp_path / "converted"
    assert convert.main(["--from", "streammind-original", str(src), str(dst), "--dtype", "bfloat16", "--gate-heads", str(GATE_HEADS),
                         "--no-progress"]) == 0
    frames = (torch.rand(10, 20, 24, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8).numpy()
    probs = {}
    for device, dtype in (("cpu", torch.float32), (DEVICE, torch.bfloat16)):
        model, processor = load_model(dst, device=device, dtype=dtype)
        assert next(model.parameters()).device.type == device
        session = StreamingSession(model, processor, query=QUERY, threshold=1.0, max_new_tokens=2)
        for t, frame in enumerate(frames):
            session.push(frame, t / 2.0)
        probs[device] = torch.tensor(session.stats.probs)
    assert len(probs[DEVICE]) == len(frames)
    torch.testing.assert_close(probs[DEVICE], probs["cpu"], rtol=0, atol=3e-2)


def test_save_load_round_trip_on_the_gpu(tiny_tokenizer, tmp_path):
    model, processor = make_tiny(tiny_tokenizer)
    model.to(DEVICE, torch.bfloat16)
    save_model(model, processor, tmp_path / "saved")
    loaded, loaded_processor = load_model(tmp_path / "saved", device=DEVICE, dtype=torch.bfloat16)
    state = loaded.state_dict()
    assert all(state[k].device.type == DEVICE and torch.equal(state[k], v) for k, v in model.state_dict().items())
    frames = (torch.rand(6, 30, 40, 3, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8).numpy()
    pixels = processor.preprocess_frames(frames)[None].to(DEVICE)
    with torch.no_grad():
        torch.testing.assert_close(loaded.get_perception_tokens(pixel_values=pixels), model.get_perception_tokens(pixel_values=pixels), rtol=0, atol=0)
    assert loaded_processor.encode_gate_prompt(QUERY) == processor.encode_gate_prompt(QUERY)


# ------------------------------------------------------------------------------------ 7B preset


@pytest.fixture(scope="module")
def model_7b(tiny_tokenizer_dir):
    """The paper-sized model with random weights, built on the GPU in bf16 (~18 GB)."""
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(DEVICE):
            model, processor = build_model(StreamMindConfig.from_preset("streammind-7b"), AutoTokenizer.from_pretrained(tiny_tokenizer_dir))
    finally:
        torch.set_default_dtype(previous)
    model.requires_grad_(False)
    yield model.eval(), processor
    del model
    torch.cuda.empty_cache()


def test_7b_streaming_equals_the_parallel_forward(model_7b):
    model, processor = model_7b
    frames = np.random.default_rng(0).integers(0, 256, size=(24, 48, 64, 3), dtype=np.uint8)
    session = StreamingSession(model, processor, query=QUERY, threshold=1.0)
    with torch.inference_mode():
        for t, frame in enumerate(frames):
            session.push(frame, t / 2.0)
        streamed = session.turn_tokens().float()  # no reply: every frame's token is in the turn memory
        tokens = model.get_perception_tokens(pixel_values=processor.preprocess_frames(frames)[None].to(DEVICE))
        prompt = torch.tensor([processor.encode_gate_prompt(QUERY)], device=DEVICE)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=DEVICE)
        probs = model.gate_logits(tokens, mask, None, prompt).float().softmax(-1)[0, :, 1].cpu()
    # bf16 tolerances (mamba's test table): the two paths round differently.
    torch.testing.assert_close(streamed, tokens[0].float(), rtol=3e-2, atol=5e-2)
    torch.testing.assert_close(torch.tensor(session.stats.probs), probs, rtol=0, atol=3e-2)


def test_7b_lora_stage1_step_reads_the_features_the_7b_tower_cached(model_7b, small_world, tiny_tokenizer_dir, tmp_path):
    model, processor = model_7b
    records = load_annotations(small_world / "train.jsonl")[:2]
    cache = FeatureCache(tmp_path, vision_cache_key(model.config, model.vision))
    clips = clips_of(records, small_world)
    cold = extract_features(model.vision, processor.frame_processor, cache, clips, 2.0, num_workers=2, progress=False)
    warm = extract_features(model.vision, processor.frame_processor, cache, clips, 2.0, num_workers=2, progress=False)
    assert (cold.extracted, cold.frames, warm.extracted, warm.cached) == (2, clip_frames(clips), 0, 2)

    collate = StreamCollator.from_processor(processor)
    cached = StreamDataset(records, small_world, processor, stage=1, feature_cache=cache)
    live = StreamDataset(records, small_world, processor, stage=1)
    batch = {k: v.to(DEVICE) for k, v in collate([cached[0], cached[1]]).items()}
    live_batch = {k: v.to(DEVICE) for k, v in collate([live[0], live[1]]).items()}
    assert batch["frame_features"].dtype == torch.bfloat16
    with torch.no_grad():
        reference = model(**live_batch).loss.float()  # the tower runs inside the forward

    apply_lora(model, ModelArguments(preset="streammind-7b", tokenizer_path=str(tiny_tokenizer_dir), lora=True))
    try:
        set_trainable(model, ["perception", "*lora_*"])
        params = dict(model.named_parameters())
        base = next(n for n in params if n.endswith("layers.0.self_attn.q_proj.base_layer.weight"))
        frozen = {n: params[n].clone() for n in (base, "vision.clip.embeddings.patch_embedding.weight", "gate.head.weight")}
        optimizer = torch.optim.AdamW([p for p in params.values() if p.requires_grad], lr=1e-4)
        losses = []
        for _ in range(3):
            loss = model(**batch).loss
            losses.append(loss.item())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        assert losses[0] == pytest.approx(reference.item(), rel=2e-2)  # cached features = the tower's own, in bf16
        assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
        assert any(p.abs().sum() > 0 for n, p in params.items() if "lora_B" in n)
        assert all(torch.equal(params[n], v) for n, v in frozen.items())
    finally:
        model.language_model = model.language_model.unload()
        model.requires_grad_(False)
