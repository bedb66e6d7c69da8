"""Streaming-dialogue dataset: canonical annotations + videos -> model-ready examples.

Notation: T frames sampled at `fps` by presentation time, K turns.

One example is one annotation record (a video x annotation pass):
- frames at the fps grid over [start, end) (the whole video by default);
- turn k ends at the frame at (or last before) its annotation time; its frames are those
  after the previous turn's end; the dialogue is rendered by the processor (query on the
  first turn, the annotation texts as replies) — stage 1;
- gate labels: respond (1) on each turn-end frame, silent (0) on every other frame,
  including the frames after the last turn — stage 2.

Bad input never silently disappears: a missing / undecodable / empty video, a video path
that leaves `data_root` (absolute, or escaping it with `..`; accepted only with
`allow_outside_root=True`), an annotation past the video's end, two turns on one frame, or
an empty turn list either raises (the default, `on_error="raise"`) or is skipped and
counted (`on_error="skip"`); `skipped` holds the counts by reason, and training prints them
at the end of the run. A dataset left with no example at all raises (`no_usable_records`),
whatever `on_error` says. The containment check is on the path as written (symbolic links
inside `data_root` are followed as the owner of the data root set them up).

Optional caches: decoded clips (or their cached features) in memory (`cache_decoded`, for
small datasets such as the synthetic world), and pooled frame features on disk
(`FeatureCache`, valid only while the vision tower is frozen) keyed by everything that
affects them.

The dataset never holds or calls a model: examples are CPU tensors (preprocessed pixel values,
or cached features), so data-loader workers never touch the tower or CUDA. The feature cache
is filled beforehand, on the training device, by the extraction pass (`streammind features`;
`streammind train` runs it itself when `feature_cache_dir` is set); a clip missing from the
cache raises `MissingFeatures`, naming the clip and the command that fills the cache.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import BadSample, UserError
from ..media.video import VideoDecodeError, probe_video, read_video
from ..processing import ChatTurn, StreamMindProcessor
from .annotations import StreamAnnotation, load_annotations
from .features import FeatureCache

logger = logging.getLogger(__name__)

# Annotation times are compared with frame times with this slack (float rounding of k / fps).
_TIME_EPS = 1e-6


class MissingFeatures(UserError, LookupError):
    """A clip has no entry in the feature cache: the extraction pass has not run over it."""


def turn_end_frames(frame_times: np.ndarray, turn_times: list[float]) -> list[int]:
    """End index (exclusive) of each turn: 1 + the last frame with time <= the turn's time.

    Raises BadSample when a turn is before the first frame, past the last frame's slot, or
    shares its frame with the previous turn.
    """
    if len(frame_times) == 0:
        raise BadSample("empty_video", "the video has no frames in the requested window")
    step = frame_times[1] - frame_times[0] if len(frame_times) > 1 else np.inf
    ends = []
    for t in turn_times:
        if t < frame_times[0] - _TIME_EPS:
            raise BadSample("turn_before_start", f"turn at {t:.3f}s is before the first frame ({frame_times[0]:.3f}s)")
        if t > frame_times[-1] + step + _TIME_EPS:
            raise BadSample("turn_past_end", f"turn at {t:.3f}s is past the video's end (last frame {frame_times[-1]:.3f}s)")
        end = int(np.searchsorted(frame_times, t + _TIME_EPS, side="right"))
        if ends and end <= ends[-1]:
            raise BadSample("turns_share_a_frame", f"turn at {t:.3f}s falls on the same frame as the previous turn")
        ends.append(end)
    return ends


class StreamDataset(Dataset):
    """Canonical stream annotations as training examples.

    Args:
        annotations: path to the JSONL file (or already loaded records).
        data_root: directory that the records' `video` paths are relative to.
        processor: the model's processor (renderer, frame preprocessing, sampling counts).
        stage: 1 (dialogue + LM labels) or 2 (per-frame gate labels); "both" gives both.
        fps: sampling rate (default: the model config's `frames_per_second`).
        on_error: "raise" or "skip" (skips are counted in `skipped`).
        cache_decoded: keep decoded clips (with a feature cache: their features) in memory.
        feature_cache: return pooled features [T, Dv] read from this cache instead of pixels;
            every clip must be in it (`streammind features` fills it), else `MissingFeatures`.
        allow_outside_root: accept video paths that leave `data_root` (absolute or `..`).
    """

    def __init__(
        self,
        annotations: str | os.PathLike | list[StreamAnnotation],
        data_root: str | os.PathLike,
        processor: StreamMindProcessor,
        stage: int | str = 1,
        fps: float | None = None,
        on_error: str = "raise",
        cache_decoded: bool = False,
        feature_cache: FeatureCache | None = None,
        allow_outside_root: bool = False,
    ):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if stage not in (1, 2, "both"):
            raise ValueError(f"stage must be 1, 2 or 'both', got {stage!r}")
        self.records = load_annotations(annotations) if isinstance(annotations, (str, os.PathLike)) else list(annotations)
        self.data_root = Path(data_root)
        self.processor = processor
        self.stage = stage
        self.fps = fps or processor.config.frames_per_second
        self.on_error = on_error
        self.cache_decoded = cache_decoded
        self.feature_cache = feature_cache
        self.annotations = str(annotations) if isinstance(annotations, (str, os.PathLike)) else None
        self._decoded: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.allow_outside_root = allow_outside_root
        self._features: dict[int, tuple[torch.Tensor, np.ndarray]] = {}
        self.skipped: Counter[str] = Counter()
        self.index = self._validate()

    def _fail(self, record: StreamAnnotation, err: BadSample) -> None:
        message = f"{record.video} (id {record.id}): {err}"
        if self.on_error == "raise":
            raise BadSample(err.reason, message) from err
        self.skipped[err.reason] += 1
        logger.warning("skipping %s", message)

    def _validate(self) -> list[int]:
        """Cheap checks up front (file, duration, turns) so that skips are known before training."""
        keep = []
        for i, rec in enumerate(self.records):
            try:
                if not rec.turns:
                    raise BadSample("no_turns", "the record has an empty turn list")
                video = Path(rec.video)
                if not self.allow_outside_root and (video.is_absolute() or os.path.normpath(video).split(os.sep)[0] == os.pardir):
                    raise BadSample("outside_data_root", f"video path {rec.video} leaves data_root {self.data_root} "
                                                         "(set allow_outside_root to accept it)")
                path = self.data_root / rec.video
                if not path.is_file():
                    raise BadSample("missing_video", f"video file not found: {path}")
                try:
                    info = probe_video(path)
                except VideoDecodeError as e:
                    raise BadSample("undecodable_video", str(e)) from e
                end = rec.end if rec.end is not None else info.duration_s
                if rec.turns[-1].time > end + 1.0 / self.fps + _TIME_EPS:
                    raise BadSample("turn_past_end", f"turn at {rec.turns[-1].time:.3f}s is past the video's end ({end:.3f}s)")
            except BadSample as err:
                self._fail(rec, err)
                continue
            keep.append(i)
        if not keep:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.skipped.items())) or "the file holds no record"
            raise BadSample("no_usable_records", f"{self.annotations or 'the annotation records'}: no usable example, every record was skipped ({reasons})")
        return keep

    def __len__(self) -> int:
        return len(self.index)

    def _frames(self, i: int, rec: StreamAnnotation) -> tuple[np.ndarray, np.ndarray]:
        if i in self._decoded:
            return self._decoded[i]
        try:
            clip = read_video(self.data_root / rec.video, fps=self.fps, start=rec.start, end=rec.end)
        except VideoDecodeError as e:
            raise BadSample("undecodable_video", str(e)) from e
        out = (clip.frames, clip.times)
        if self.cache_decoded:
            self._decoded[i] = out
        return out

    def _cached_features(self, i: int, rec: StreamAnnotation) -> tuple[torch.Tensor, np.ndarray]:
        """(features [T, Dv], frame times [T]) of record i's clip from the feature cache."""
        if i in self._features:
            return self._features[i]
        video = str(self.data_root / rec.video)
        cached = self.feature_cache.load(video, self.fps, rec.start, rec.end)
        if cached is not None:
            if self.cache_decoded:  # small datasets: one file read per clip, not one per epoch
                self._features[i] = cached
            return cached
        failed = self.feature_cache.failure(video, self.fps, rec.start, rec.end)
        if failed is not None:
            raise BadSample(*failed)
        annotations = self.annotations or "<annotations.jsonl>"
        raise MissingFeatures(
            f"{video} (fps {self.fps:g}, window [{rec.start}, {rec.end})) is not in the feature cache "
            f"{self.feature_cache.directory}; fill it first on the training device: streammind features {annotations} "
            f"--data-root {self.data_root} (--model <saved model> | --clip <tower>) --out {self.feature_cache.root} --fps {self.fps:g} "
            "(streammind train does this itself when feature_cache_dir is set)"
        )

    def example(self, i: int) -> dict:
        """Build example i (may raise BadSample, or MissingFeatures for a clip absent from the cache)."""
        rec = self.records[self.index[i]]
        feats = None
        if self.feature_cache is not None:
            feats, times = self._cached_features(self.index[i], rec)
        else:
            frames, times = self._frames(self.index[i], rec)
        ends = turn_end_frames(times, [t.time for t in rec.turns])
        # Stage 1 needs no frames after the last reply; stage 2 labels every frame.
        n = ends[-1] if self.stage == 1 else len(times)
        ex: dict = {}
        if feats is not None:
            ex["frame_features"] = feats[:n]
        else:
            ex["pixel_values"] = self.processor.preprocess_frames(frames[:n])
        if self.stage in (1, "both"):
            turns, start = [], 0
            for k, (end, turn) in enumerate(zip(ends, rec.turns)):
                turns.append(ChatTurn(self.processor.placeholders_for(end - start), user=rec.query if k == 0 else None, reply=turn.text))
                start = end
            ex["input_ids"], ex["labels"] = self.processor.encode_conversation(turns)
            ex["turn_ends"] = ends
        if self.stage in (2, "both"):
            labels = [0] * n
            for end in ends:
                labels[end - 1] = 1
            ex["gate_labels"] = labels
            ex["gate_prompt_ids"] = self.processor.encode_gate_prompt(rec.query)
        return ex

    def __getitem__(self, i: int) -> dict:
        try:
            return self.example(i)
        except BadSample as err:
            self._fail(self.records[self.index[i]], err)
            # A sample that broke after validation: count it and use the next one.
            return self[(i + 1) % len(self)]


__all__ = ["MissingFeatures", "StreamDataset", "turn_end_frames"]
