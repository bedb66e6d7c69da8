"""The extraction pass: pooled frame features of the frozen vision tower, computed once, on disk.

    streammind features ANNOTATIONS --data-root ROOT (--model DIR | --clip DIR [--preset P]) --out CACHE
        [--fps F] [--shard I N] [--batch-size 64] [--num-workers 2] [--device cuda] [--dtype bfloat16]

Notation: T frames of a clip, S the tower's image size, Dv the tower width, N frames of a batch.

Why a separate pass. The vision tower is frozen in both training stages, so its pooled features
[T, Dv] are the same every epoch and can be computed once. They must be computed on the
training device, in the main process: a data-loader worker that calls the tower either feeds
CPU pixels to a CUDA tower or initialises CUDA inside a forked worker (which hangs). So data
workers only read the cache, and this pass fills it beforehand: DataLoader workers decode and
preprocess clips into CPU pixel values [T, 3, S, S] (nothing else: no model, no CUDA), while
the main process packs the frames of consecutive clips into batches of about `batch_size`,
runs the tower on the device, splits the features back per clip and writes one cache file
per clip. Decoding thus overlaps the tower's work. (The alternative, calling the tower inside
the training step on a cache miss, would tie the first epoch's speed to decoding and make
every rank hold the tower's activations next to the LLM's; a pass that runs once, sharded,
resumable and with a progress bar is simpler to reason about and to rerun.)

- Resumable: each file is written atomically (`FeatureCache.store`), and clips already cached
  are skipped before decoding, so a killed run continues where it stopped.
- Sharded: the clip list (the distinct (video, start, end) of the annotations, in file order)
  is split round-robin, shard i of n taking clips i, i + n, ...; every process derives the
  same list, so the shards cover every clip exactly once, whatever is cached already. Run one
  shard per GPU or host (`--shard I N`) into a shared cache directory.
- Keyed: the cache directory is `CACHE/<vision_cache_key>`, a hash of the tower's weights (in
  their dtype) and of every setting that changes the features; the clip files inside are keyed
  by the video file, the fps and the window. A training run finds the files only when its
  tower, dtype and fps match: pass the `--dtype` training uses (`torch_dtype`).
- Failures: a clip that cannot be decoded is counted and noted in the cache (`.failed`), so the
  training dataset skips or raises on it (`on_bad_sample`) on every rank; a missing video is
  counted only (the dataset's own validation reports it).

`streammind train` runs `extract_features` itself, on the training device, for the clips
missing from `feature_cache_dir`, so the shipped configs need no separate step.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..builder import read_config
from ..configuration import StreamMindConfig
from ..errors import ArgumentParser, run_command
from ..fileio import write_json
from ..media.video import VideoDecodeError, read_video
from ..modeling_perframe import PER_FRAME_PRESETS, PerFrameLLMConfig
from ..vision import FrameProcessor, VisionEncoder
from .annotations import StreamAnnotation, load_annotations

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class FeatureCache:
    """Pooled CLIP features on disk, one file per clip, under a key of everything that affects them.

    Layout: `root/<model_key>/<clip digest>.pt`, the clip digest covering the video's absolute
    path, size and mtime, the sampling fps and the [start, end) window. Each file holds the
    features [T, Dv] (in the tower's dtype) and the frame times [T], so a cached clip is never
    decoded again. A clip that cannot be decoded gets a `<clip digest>.failed` JSON note
    (reason, message) instead, so that every rank's dataset can skip or raise on it.

    Writes are atomic (a temporary file renamed into place): a killed extraction leaves no
    partial entry, and several ranks may store the same clip at once.

    Args:
        root: cache directory.
        model_key: identifies the frozen tower (`vision_cache_key(config, vision)`).
    """

    root: str | os.PathLike
    model_key: str
    FORMAT = 3  # bumped when the file content or the key changes; older files are simply not found

    @property
    def directory(self) -> Path:
        return Path(self.root) / self.model_key

    def path(self, video: str, fps: float, start: float | None, end: float | None) -> Path:
        stat = os.stat(video)
        clip_key = json.dumps([self.FORMAT, os.path.abspath(video), stat.st_size, int(stat.st_mtime), fps, start, end])
        digest = hashlib.sha1(clip_key.encode()).hexdigest()[:20]
        return self.directory / f"{digest}.pt"

    def contains(self, video, fps, start, end) -> bool:
        """Whether the clip's features are cached."""
        return self.path(video, fps, start, end).exists()

    def load(self, video, fps, start, end) -> tuple[torch.Tensor, np.ndarray] | None:
        """(features [T, Dv], frame times [T]) of a cached clip, or None."""
        p = self.path(video, fps, start, end)
        if not p.exists():
            return None
        entry = torch.load(p, weights_only=True)
        return entry["features"], entry["times"].numpy()

    def store(self, video, fps, start, end, features: torch.Tensor, times: np.ndarray) -> None:
        """Write a clip's features [T, Dv] and frame times [T] (atomically; drops a failure note)."""
        p = self.path(video, fps, start, end)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f"{p.name}.{os.getpid()}.tmp")  # ranks of one run may store the same clip at once
        torch.save({"features": features.detach().cpu(), "times": torch.as_tensor(np.asarray(times), dtype=torch.float64)}, tmp)
        tmp.replace(p)
        p.with_suffix(".failed").unlink(missing_ok=True)

    def mark_failed(self, video, fps, start, end, reason: str, message: str) -> None:
        """Record that the clip cannot be decoded (`reason` is a BadSample category)."""
        p = self.path(video, fps, start, end).with_suffix(".failed")
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f"{p.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"reason": reason, "message": message}))
        tmp.replace(p)

    def failure(self, video, fps, start, end) -> tuple[str, str] | None:
        """(reason, message) recorded by `mark_failed`, or None."""
        p = self.path(video, fps, start, end).with_suffix(".failed")
        if not p.exists():
            return None
        note = json.loads(p.read_text())
        return note["reason"], note["message"]


# Fields of the tower's config that do not change its features given its weights: metadata and
# init-only settings (the weights themselves are hashed), and output switches. Leaving them out
# keeps the key equal whether a tower was loaded from a path, a hub id or a saved StreamMind model.
_KEY_IGNORED_VISION_FIELDS = frozenset({
    "_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype", "id2label", "label2id", "problem_type",
    "initializer_range", "initializer_factor", "output_hidden_states", "output_attentions", "return_dict",
})


def vision_cache_key(config, vision: torch.nn.Module) -> str:
    """Hash of the settings and weights that determine pooled features (16 hex digits).

    Covers the tower's architecture (`config.vision_config` less metadata), the feature layer,
    the pooling, the image preprocessing (mode, mean, std; the size is in the vision config),
    and every tensor of `vision`'s state dict: name, dtype, shape and raw bytes in the stored
    dtype (a bf16 tower and its fp32 copy give different features, hence different keys).
    Hashing the raw bytes avoids an fp32 copy: a CLIP-L/336 tower (304 M parameters) hashes in
    about a second on one CPU core. Only the tower is hashed, never the LLM.

    Args:
        config: the StreamMindConfig the tower belongs to.
        vision: the `VisionEncoder` (any device; tensors are copied to the CPU one at a time).
    """
    vision_cfg = {k: v for k, v in config.vision_config.to_dict().items() if k not in _KEY_IGNORED_VISION_FIELDS}
    h = hashlib.sha1()
    h.update(json.dumps([vision_cfg, config.vision_feature_layer, config.frame_pooling, config.image_preprocess,
                         list(config.image_mean), list(config.image_std)], sort_keys=True, default=str).encode())
    for name, p in sorted(vision.state_dict().items()):
        t = p.detach().contiguous().cpu()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # the stored bytes, no conversion
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Clip:
    """One cache entry: a video file (data root joined) and the record's window (seconds or None)."""

    video: str
    start: float | None = None
    end: float | None = None


def clips_of(records: Iterable[StreamAnnotation], data_root: str | os.PathLike) -> list[Clip]:
    """The distinct clips of `records`, in first-appearance order (a record per annotation pass
    often shares its video and window with another)."""
    seen: dict[Clip, None] = {}
    for rec in records:
        seen.setdefault(Clip(str(Path(data_root) / rec.video), rec.start, rec.end))
    return list(seen)


def shard(clips: Sequence[Clip], index: int, count: int) -> list[Clip]:
    """Shard `index` of `count` (round-robin): clips index, index + count, ..."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard must be I N with 0 <= I < N, got {index} {count}")
    return list(clips[index::count])


@dataclass
class ExtractionStats:
    """What one pass did over its clips (`failed` maps a clip to 'reason: message')."""

    clips: int = 0
    extracted: int = 0
    cached: int = 0
    failed: dict[Clip, str] = field(default_factory=dict)
    frames: int = 0
    seconds: float = 0.0

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        reasons = Counter(message.split(":", 1)[0] for message in self.failed.values())
        failed = f"{len(self.failed)} failed" + (f" {dict(reasons)}" if self.failed else "")
        return (f"{self.clips} clips: {self.extracted} extracted, {self.cached} already cached, {failed}; "
                f"{self.frames} frames in {self.seconds:.1f} s ({self.frames_per_s:.0f} frames/s)")

    def to_dict(self) -> dict:
        return {"clips": self.clips, "extracted": self.extracted, "cached": self.cached, "failed": len(self.failed),
                "frames": self.frames, "seconds": round(self.seconds, 3), "frames_per_s": round(self.frames_per_s, 1)}


class _DecodedClips(Dataset):
    """Worker side of the pass: clip i -> (i, pixel values [T, 3, S, S] float32 CPU, times [T], error).

    Holds only paths, the fps and the frame preprocessing: never a model, never CUDA.
    """

    def __init__(self, clips: Sequence[Clip], fps: float, frame_processor: FrameProcessor):
        self.clips = list(clips)
        self.fps = fps
        self.frame_processor = frame_processor

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, np.ndarray | None, str | None]:
        clip = self.clips[i]
        try:
            decoded = read_video(clip.video, fps=self.fps, start=clip.start, end=clip.end)
        except VideoDecodeError as e:
            return i, None, None, f"undecodable_video: {e}"
        except ValueError as e:  # the window holds no frame at this fps
            return i, None, None, f"empty_video: {e}"
        return i, self.frame_processor(decoded.frames), decoded.times, None


def _as_is(item):
    """Collate of the pass's loader: items go to the main process unchanged."""
    return item


def extract_features(
    vision: VisionEncoder,
    frame_processor: FrameProcessor,
    cache: FeatureCache,
    clips: Sequence[Clip],
    fps: float,
    device: str | torch.device | None = None,
    batch_size: int = 64,
    num_workers: int = 2,
    progress: bool = True,
) -> ExtractionStats:
    """Fill `cache` with the pooled features of every clip not in it yet.

    Args:
        vision: the frozen tower (already on `device`, in the dtype its features are keyed by).
        frame_processor: the model's frame preprocessing (`processor.frame_processor`).
        cache: where features go (`FeatureCache(root, vision_cache_key(config, vision))`).
        clips: the clips of this process (one shard of `clips_of(...)`).
        fps: sampling rate of the frames.
        device: where the tower runs (default: where its weights are).
        batch_size: frames per tower call (clips are packed together; a long clip is chunked).
        num_workers: decoding processes (0 decodes in this process).
        progress: a tqdm bar over the clips.

    Returns:
        ExtractionStats (clips, extracted, cached, failed, frames, seconds).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else next(vision.parameters()).device
    stats = ExtractionStats(clips=len(clips))
    todo = []
    for clip in clips:
        if not os.path.isfile(clip.video):
            stats.failed[clip] = f"missing_video: video file not found: {clip.video}"
        elif cache.contains(clip.video, fps, clip.start, clip.end):
            stats.cached += 1
        else:
            todo.append(clip)
    if not todo:
        return stats

    # A private generator: drawing the workers' base seed must not move the training RNG.
    # Workers are started fresh ("spawn") once this process has touched CUDA or decoded video:
    # forked children inherit the locks of the parent's CUDA and FFmpeg threads, and can hang
    # (seen under pytest on an H200, where earlier tests had decoded clips in the main process).
    context = "spawn" if num_workers and (torch.cuda.is_initialized() or threading.active_count() > 1) else None
    loader = DataLoader(_DecodedClips(todo, fps, frame_processor), batch_size=None, collate_fn=_as_is, num_workers=num_workers,
                        generator=torch.Generator(), multiprocessing_context=context)
    pending: list[tuple[Clip, torch.Tensor, np.ndarray]] = []

    def flush() -> None:
        pixels = torch.cat([p for _, p, _ in pending])  # [N, 3, S, S]
        with torch.no_grad():
            feats = vision.encode_frames(pixels.to(device), chunk_size=batch_size)  # [N, Dv]
        for (clip, _, times), f in zip(pending, feats.split([len(p) for _, p, _ in pending])):
            cache.store(clip.video, fps, clip.start, clip.end, f, times)
            stats.extracted += 1
            stats.frames += len(times)
        pending.clear()

    was_training = vision.training
    vision.eval()
    start = time.perf_counter()
    bar = tqdm(total=len(todo), desc="features", unit="clip", disable=not progress)
    try:
        for i, pixels, times, error in loader:
            if error is not None:
                clip = todo[i]
                stats.failed[clip] = error
                reason, message = error.split(": ", 1)
                cache.mark_failed(clip.video, fps, clip.start, clip.end, reason, message)
                bar.update(1)
                continue
            pending.append((todo[i], pixels, times))
            if sum(len(p) for _, p, _ in pending) >= batch_size:
                n = len(pending)
                flush()
                bar.update(n)
                bar.set_postfix(frames_per_s=f"{stats.frames / (time.perf_counter() - start):.0f}")
        if pending:
            n = len(pending)
            flush()
            bar.update(n)
    finally:
        bar.close()
        vision.train(was_training)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    stats.seconds = time.perf_counter() - start
    return stats


# ------------------------------------------------------------------------- the tower to run


def load_vision(directory: str | os.PathLike, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32) -> tuple[StreamMindConfig, VisionEncoder]:
    """The vision tower of a saved StreamMind directory (or a per-frame-LLM baseline's), without
    loading the LLM or the gate.

    Reads only the `vision.*` tensors (single or sharded safetensors), so a 7B checkpoint costs
    the tower's 0.6 GB, not 17 GB. The weights are cast to `dtype` as `load_model` would.
    """
    from safetensors import safe_open

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory}: not a saved StreamMind model (no config.json there)")
    config = read_config(directory)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({name for key, name in weight_map.items() if key.startswith("vision.")})
    elif (directory / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{directory}: no model.safetensors (or its index) to read the vision tower from")
    state = {}
    for name in files:
        with safe_open(directory / name, framework="pt") as f:
            state.update({key[len("vision."):]: f.get_tensor(key) for key in f.keys() if key.startswith("vision.")})
    vision = VisionEncoder(config.vision_config, config.vision_feature_layer, config.frame_pooling)
    vision.load_state_dict(state)  # strict: a missing or unexpected tower tensor raises with its name
    return config, vision.to(device=device, dtype=dtype).eval()


def tower_from_clip(clip_path: str, preset: str | None, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> tuple[StreamMindConfig, VisionEncoder]:
    """A pretrained CLIP tower with the vision settings training will use.

    `preset`: the preset of a `preset` + `clip_path` training run (e.g. "tiny"); None for a
    `clip_path` + `llm_path` run, whose settings are StreamMindConfig's defaults.
    """
    from transformers import CLIPVisionModel

    clip = CLIPVisionModel.from_pretrained(clip_path, dtype=dtype)
    fields = {"vision_config": clip.config.to_dict()}
    kind = PerFrameLLMConfig if preset in PER_FRAME_PRESETS else StreamMindConfig
    config = kind.from_preset(preset, **fields) if preset else StreamMindConfig(**fields)
    vision = VisionEncoder(config.vision_config, config.vision_feature_layer, config.frame_pooling, clip=clip)
    return config, vision.to(device=device, dtype=dtype).eval()


# ------------------------------------------------------------------------------- the command


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="streammind features", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("annotations", nargs="+", help="stream-annotation JSONL file(s) whose clips to extract")
    parser.add_argument("--data-root", required=True, help="directory the annotations' video paths are relative to")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a saved StreamMind directory (its tower is read; nothing else is loaded)")
    source.add_argument("--clip", help="a CLIP vision directory or hub id (the clip_path of a training run)")
    parser.add_argument("--preset", default=None,
                        help="with --clip: the preset of a preset + clip_path run (e.g. tiny); omit for clip_path + llm_path")
    parser.add_argument("--out", required=True, help="the cache root (a training run's feature_cache_dir)")
    parser.add_argument("--fps", type=float, default=None, help="sampling rate (default: the model's frames_per_second)")
    parser.add_argument("--shard", nargs=2, metavar=("I", "N"), default=["0", "1"], help="process shard I of N (default 0 1: all)")
    parser.add_argument("--batch-size", type=int, default=64, help="frames per tower call")
    parser.add_argument("--num-workers", type=int, default=2, help="decoding processes (0: decode in this process)")
    parser.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                        help="tower weights dtype; must be the torch_dtype of the training run (it is part of the cache key)")
    parser.add_argument("--summary", default=None, help="also write the summary as JSON here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`streammind features`: run the pass over one shard and print its summary; returns the exit status."""
    run(argv)
    return 0


def run(argv: list[str] | None = None) -> dict:
    """Parse the command line, run the pass over one shard; print and return its summary."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        index, count = int(args.shard[0]), int(args.shard[1])
        shard([], index, count)
    except ValueError as e:
        parser.error(f"--shard: {e}")
    if args.preset is not None and args.clip is None:
        parser.error("--preset goes with --clip (a saved --model knows its settings)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype]
    if args.model is not None:
        config, vision = load_vision(args.model, device, dtype)
    else:
        config, vision = tower_from_clip(args.clip, args.preset, device, dtype)
    fps = args.fps or config.frames_per_second
    records = [rec for path in args.annotations for rec in load_annotations(path)]
    clips = shard(clips_of(records, args.data_root), index, count)
    key_start = time.perf_counter()
    cache = FeatureCache(args.out, vision_cache_key(config, vision))
    logger.info("cache key %s in %.1f s; shard %d of %d: %d clips at %g fps -> %s", cache.model_key, time.perf_counter() - key_start,
                index, count, len(clips), fps, cache.directory)
    stats = extract_features(vision, FrameProcessor.from_config(config), cache, clips, fps, device=device,
                             batch_size=args.batch_size, num_workers=args.num_workers, progress=not args.no_progress)
    for clip, error in stats.failed.items():
        logger.warning("failed: %s: %s", clip.video, error)
    summary = {"cache": str(cache.directory), "shard": [index, count], "fps": fps, "device": str(device), "dtype": args.dtype,
               **stats.to_dict()}
    print(f"streammind features: {stats.summary()} -> {cache.directory}")
    if args.summary:
        write_json(args.summary, summary)
    return summary


if __name__ == "__main__":
    raise SystemExit(run_command("streammind features", main))
