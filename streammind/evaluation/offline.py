"""The offline answering path shared by the offline benchmarks (SPEC §7), and their task base.

Notation: T sampled frames, S = image size, D LLM width, k = perception tokens kept for
the turn (`processor.placeholders_for(T)`), V vocabulary, K beams.

One question about one clip is answered the way a stage-1 model was trained to answer a
turn, in one `[INST]` turn:

    frames --uniform sampling (T = 32 by default)--> uint8 [T, H, W, 3]
        --processor.preprocess_frames--> pixel values [T, 3, S, S]
        --model.get_perception_tokens--> tokens [1, T, D] (CLIP, EPFE scan over the clip)
        --model.select_turn_tokens (the config's sampling)--> [k, D]
    <s>[INST] <<SYS>>..<</SYS>>\\n\\n{question}<video>*k\\n [/INST]  --merge_video_tokens-->
        inputs_embeds [1, S_text, D] --the inference engine's LLM--> greedy or beam search

Frame sampling. `uniform_times` splits the window [start, end) into T equal chunks and
takes the middle of each, t_i = start + (i + 0.5) (end - start) / T, as the original
StreamMind's offline path does with its `num_frames` = 32 (reference/original-code.md
§1.6); no frame is repeated to pad short clips, and frames are picked by presentation
time (`streammind.datasets.video`). `load_frames` also offers a fixed-rate grid (`fps`,
the VideoLLM-online way of feeding every 2 fps frame of a segment; a window holding more
than `max_frames` grid times is sampled uniformly with `max_frames` instead), and reads
directories of image files (MVBench's frame-type tasks) with a given frame rate.

Decoding runs in the inference engine (`streammind.engine`), one shared per model: greedy
(`Engine.generate`) stops at EOS or after `max_new_tokens` tokens; beam search
(`Engine.beam_search`, rules in `streammind.engine.beam_search`) ranks the 2K best
continuations of K live beams at every step, an EOS among the first K closing a hypothesis
scored sum(log p) / length ** length_penalty. `answer_beams` returns the
`num_return_sequences` best texts, best first (the Ego4D LTA protocol: 5 beams, 5 returned
sequences). Everything runs at batch size 1 (one clip).

Text matching shared by COIN and Ego4D LTA: `levenshtein` (unit-cost edit distance of two
sequences) and `NearestMatcher` (the Levenshtein-nearest entry of a fixed list of strings,
vectorised over the list with numpy; ties go to the lexicographically smallest string).

Running (on `eval.common`): `OfflineTask` is a `Task` with clip sampling, `--shard` and
`--limit`; `evaluate` runs it with `eval.common.run_task` (predictions.jsonl,
metrics.json, metrics.md in `--out`, failures counted under "failures"), or, with
`--predictions`, replays saved prediction files through the same runner
(`SavedPredictions`) to re-score without a model (merging shards on the way). A clip that
is missing, undecodable or empty raises `EvalFailure` ("missing_video",
"undecodable_video", "empty_video"); the offline tasks count such examples as wrong in
their main metric and also report the metric over the examples that ran.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from eval.common import EvalFailure, Task, apply_limit, build_parser, load_model_from_args, run_task
from eval.score import RecordError, read_records
from streammind.datasets.video import VideoDecodeError, probe_video, read_video
from streammind.engine import Engine

logger = logging.getLogger(__name__)

DEFAULT_NUM_FRAMES = 32  # the original StreamMind's offline `num_frames`
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".gif")


# ---------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------


@dataclass
class Frames:
    """Sampled frames: uint8 [T, H, W, 3] and their times [T] in seconds."""

    frames: np.ndarray
    times: np.ndarray


def uniform_times(start: float, end: float, num_frames: int) -> np.ndarray:
    """Middles of `num_frames` equal chunks of [start, end): float64 [num_frames]."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if not end > start:
        raise ValueError(f"empty window [{start}, {end})")
    step = (end - start) / num_frames
    return start + (np.arange(num_frames, dtype=np.float64) + 0.5) * step


def find_video(directory: str | Path, stem: str, suffixes: Sequence[str] = VIDEO_SUFFIXES) -> Path | None:
    """`directory/stem` if it exists, else `directory/stem<suffix>` for the first suffix that exists, else None."""
    directory = Path(directory)
    for path in [directory / stem] + [directory / f"{stem}{suffix}" for suffix in suffixes]:
        if path.exists():
            return path
    return None


def _image_files(directory: Path) -> list[Path]:
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise EvalFailure("empty_video", f"{directory}: a frame directory without image files")
    return files


def _load_frame_dir(directory: Path, times: np.ndarray, fps: float) -> np.ndarray:
    """Frame i of a directory of images (sorted by name) is shown from i / fps on."""
    from PIL import Image

    files = _image_files(directory)
    indices = np.clip(np.floor(times * fps + 1e-6).astype(np.int64), 0, len(files) - 1)
    frames = [np.asarray(Image.open(files[i]).convert("RGB")) for i in indices]
    if len({f.shape for f in frames}) > 1:
        raise EvalFailure("undecodable_video", f"{directory}: frames of different sizes")
    return np.stack(frames)


def load_frames(
    path: str | Path,
    *,
    num_frames: int | None = DEFAULT_NUM_FRAMES,
    fps: float | None = None,
    start: float | None = None,
    end: float | None = None,
    max_frames: int | None = None,
    frame_dir_fps: float | None = None,
) -> Frames:
    """Sample a clip's frames, uniformly (`num_frames`) or on a fixed-rate grid (`fps`).

    Args:
        path: a video file, or a directory of image files (then `frame_dir_fps` is needed).
        num_frames: T for uniform sampling (the middles of T equal chunks of the window).
        fps: sample every 1/fps seconds from `start` instead (used when given); a window
            holding more than `max_frames` grid times is sampled uniformly with
            `max_frames` frames instead.
        start, end: the window in seconds (default: the whole video); `end` is clamped to
            the video's duration.
        max_frames: cap for grid sampling.
        frame_dir_fps: frame rate of an image directory.

    Returns:
        Frames with uint8 frames [T, H, W, 3] and times [T].

    Raises:
        EvalFailure: "missing_video", "undecodable_video", or "empty_video" (the window
            holds no frame); the runner counts it.
    """
    try:
        return _load_frames(Path(path), num_frames, fps, start, end, max_frames, frame_dir_fps)
    except VideoDecodeError as error:
        raise EvalFailure("undecodable_video", str(error)) from error


def _load_frames(path: Path, num_frames, fps, start, end, max_frames, frame_dir_fps) -> Frames:
    """`load_frames` without the error translation."""
    if not path.exists():
        raise EvalFailure("missing_video", f"video file not found: {path}")
    if fps is None and num_frames is None:
        raise ValueError("give num_frames (uniform sampling) or fps (grid sampling)")
    start = 0.0 if start is None else max(0.0, float(start))
    if path.is_dir():
        if frame_dir_fps is None:
            raise ValueError(f"{path} is a frame directory but no frame rate was given for it")
        duration = len(_image_files(path)) / frame_dir_fps
    else:
        duration = probe_video(path).duration_s
    stop = duration if end is None else min(float(end), duration)
    if not stop > start:
        raise EvalFailure("empty_video", f"{path}: window [{start:.3f}, {stop:.3f}) s is empty (video duration {duration:.3f} s)")
    grid = np.arange(start, stop, 1.0 / fps, dtype=np.float64) if fps is not None else None
    if grid is not None and (max_frames is None or len(grid) <= max_frames):
        if path.is_dir():
            return Frames(_load_frame_dir(path, grid, frame_dir_fps), grid)
        clip = read_video(path, fps=fps, start=start, end=stop)
        return Frames(clip.frames, clip.times)
    # Uniform sampling (also for a grid longer than max_frames).
    count = num_frames if grid is None else max_frames
    times = uniform_times(start, stop, count)
    if path.is_dir():
        return Frames(_load_frame_dir(path, times, frame_dir_fps), times)
    # The chunk middles form a grid of step (stop - start) / count starting half a step in.
    step = (stop - start) / count
    clip = read_video(path, fps=1.0 / step, start=float(times[0]), end=stop, max_frames=count)
    return Frames(clip.frames, clip.times)


# ---------------------------------------------------------------------------------------
# Prompt and decoding
# ---------------------------------------------------------------------------------------


def _pixel_values(model, processor, frames_or_pixel_values) -> torch.Tensor:
    """uint8 frames [T, H, W, 3] or pixel values [T, 3, S, S] / [1, T, 3, S, S] -> [1, T, 3, S, S]."""
    x = frames_or_pixel_values
    if isinstance(x, np.ndarray) or (isinstance(x, torch.Tensor) and x.dtype == torch.uint8) or isinstance(x, (list, tuple)):
        x = processor.preprocess_frames(x)  # [T, 3, S, S]
    if x.ndim == 4:
        x = x[None]  # [T, 3, S, S] -> [1, T, 3, S, S]
    if x.ndim != 5 or x.shape[0] != 1 or x.shape[2] != 3:
        raise ValueError(f"expected frames [T, H, W, 3] or pixel values [T, 3, S, S], got {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError("no frames to answer from")
    param = next(model.vision.parameters())
    return x.to(param.device, param.dtype)


@torch.inference_mode()
def encode_prompt(model, processor, frames_or_pixel_values, question: str) -> torch.Tensor:
    """The question turn with the clip's perception tokens scattered in: inputs_embeds [1, S_text, D]."""
    pixel_values = _pixel_values(model, processor, frames_or_pixel_values)  # [1, T, 3, S, S]
    T = pixel_values.shape[1]
    tokens = model.get_perception_tokens(pixel_values=pixel_values)  # [1, T, D]
    turn_ends = torch.tensor([[T]], device=tokens.device)
    video_tokens = model.select_turn_tokens(tokens, turn_ends)[0]  # [k, D]
    ids = processor.encode_turn_prefix(question, processor.placeholders_for(T), first=True)
    ids = torch.tensor([ids], device=tokens.device)
    return model.merge_video_tokens(ids, video_tokens)  # count-checked scatter


def answer(
    model,
    processor,
    frames_or_pixel_values,
    question: str,
    *,
    max_new_tokens: int = 256,
    num_beams: int = 1,
    length_penalty: float = 1.0,
) -> str:
    """Answer one question about one clip.

    Args:
        model: a StreamMindForCausalLM (eval mode).
        processor: its StreamMindProcessor.
        frames_or_pixel_values: uint8 frames [T, H, W, 3] (numpy or torch), or pixel
            values [T, 3, S, S] already preprocessed.
        question: the user text of the turn.
        max_new_tokens: generation cap.
        num_beams: 1 = greedy; > 1 = beam search, the best beam returned.
    Returns:
        The decoded answer (special tokens dropped, stripped).
    """
    if num_beams > 1:
        return answer_beams(model, processor, frames_or_pixel_values, question, max_new_tokens=max_new_tokens,
                            num_beams=num_beams, num_return_sequences=1, length_penalty=length_penalty)[0]
    embeds = encode_prompt(model, processor, frames_or_pixel_values, question)
    return processor.decode(Engine.for_model(model, processor).generate(embeds, max_new_tokens))


def answer_beams(
    model,
    processor,
    frames_or_pixel_values,
    question: str,
    *,
    max_new_tokens: int = 256,
    num_beams: int = 5,
    num_return_sequences: int = 5,
    length_penalty: float = 1.0,
) -> list[str]:
    """Like `answer`, with beam search: the `num_return_sequences` best texts, best first."""
    embeds = encode_prompt(model, processor, frames_or_pixel_values, question)
    hypotheses = Engine.for_model(model, processor).beam_search(embeds, max_new_tokens=max_new_tokens, num_beams=num_beams,
                                                                num_return_sequences=num_return_sequences, length_penalty=length_penalty)
    return [processor.decode(h.ids) for h in hypotheses]


# ---------------------------------------------------------------------------------------
# Text matching (COIN, Ego4D LTA)
# ---------------------------------------------------------------------------------------


def levenshtein(a: Sequence, b: Sequence) -> int:
    """Unit-cost edit distance (insert, delete, substitute) between two sequences."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


class NearestMatcher:
    """The Levenshtein-nearest string of a fixed list (ties: the lexicographically smallest).

    The DP runs over all entries at once: entries are code-point rows padded to a matrix
    [N, L]; for each character of the query one row update needs only a cumulative minimum
    (row[j] = min(a[j], row[j-1] + 1) is j + cummin(a[j] - j)). Results are cached.
    """

    def __init__(self, choices: Iterable[str]):
        self.choices = sorted(set(choices))
        if not self.choices:
            raise ValueError("NearestMatcher needs at least one choice")
        self._index = {c: i for i, c in enumerate(self.choices)}
        width = max(len(c) for c in self.choices)
        self._codes = np.full((len(self.choices), width), -1, dtype=np.int32)  # -1 never equals a character
        for i, c in enumerate(self.choices):
            self._codes[i, : len(c)] = [ord(ch) for ch in c]
        self._lengths = np.array([len(c) for c in self.choices])
        self._cache: dict[str, tuple[str, int]] = {}

    def distances(self, text: str) -> np.ndarray:
        """Edit distance from `text` to every choice: int [N] (order of `self.choices`)."""
        N, L = self._codes.shape
        j = np.arange(L + 1, dtype=np.int64)
        row = np.broadcast_to(j, (N, L + 1)).copy()  # distances from "" to each prefix
        for i, ch in enumerate(text, start=1):
            cost = (self._codes != ord(ch)).astype(np.int64)  # [N, L]
            a = np.empty_like(row)
            a[:, 0] = i
            a[:, 1:] = np.minimum(row[:, 1:] + 1, row[:, :-1] + cost)  # deletion / substitution
            row = np.minimum.accumulate(a - j, axis=1) + j  # insertion chains
        return row[np.arange(N), self._lengths]

    def nearest(self, text: str) -> tuple[str, int]:
        """(nearest choice, its distance)."""
        if text in self._index:
            return text, 0
        if text not in self._cache:
            d = self.distances(text)
            best = int(np.flatnonzero(d == d.min())[0])  # choices are sorted: the first is the smallest
            self._cache[text] = (self.choices[best], int(d[best]))
        return self._cache[text]


# ---------------------------------------------------------------------------------------
# Tasks, re-scoring and the command line (on top of eval.common)
# ---------------------------------------------------------------------------------------


class OfflineTask(Task):
    """An offline benchmark: an `eval.common.Task` with clip sampling, sharding and a limit.

    Subclasses implement `load_examples()` (dicts with "id" and "reference", plus "video",
    "question" and optional "start" / "end" / "frame_dir_fps"), `run`, `score` and
    `aggregate`. `examples()` applies the shard and the limit once and keeps the list, so
    `aggregate` can count failed examples as wrong (`num_examples`).

    Args:
        num_frames, fps, max_frames: clip sampling (`load_frames`).
        max_new_tokens: decoding cap.
        limit: keep the first `limit` examples (after sharding).
        shard: (index, count): keep examples index, index + count, ...
    """

    name = "offline"
    title = "Offline benchmark"

    def __init__(
        self,
        *,
        num_frames: int | None = DEFAULT_NUM_FRAMES,
        fps: float | None = None,
        max_frames: int | None = None,
        max_new_tokens: int = 256,
        limit: int | None = None,
        shard: tuple[int, int] | None = None,
    ):
        super().__init__()
        if shard is not None and not 0 <= shard[0] < shard[1]:
            raise ValueError(f"shard index must be in [0, count), got {shard}")
        self.num_frames, self.fps, self.max_frames = num_frames, fps, max_frames
        self.max_new_tokens = max_new_tokens
        self.limit, self.shard = limit, shard
        self._examples: list[dict] | None = None

    def load_examples(self) -> list[dict]:
        raise NotImplementedError

    def examples(self) -> list[dict]:
        if self._examples is None:
            examples = self.load_examples()
            if self.shard is not None:
                examples = examples[self.shard[0] :: self.shard[1]]
            self._examples = self.keep(apply_limit(examples, self.limit))
        return self._examples

    def keep(self, examples: list[dict]) -> list[dict]:
        """A last filter of the selected examples; what it drops must go to `load_failures`."""
        return examples

    @property
    def num_examples(self) -> int:
        """Examples evaluated (those that failed included)."""
        return len(self.examples())

    def load_clip(self, example: Mapping) -> Frames:
        """The example's frames by this task's sampling settings; failures raise EvalFailure."""
        return load_frames(example["video"], num_frames=self.num_frames, fps=self.fps, start=example.get("start"),
                           end=example.get("end"), max_frames=self.max_frames, frame_dir_fps=example.get("frame_dir_fps"))

    def is_empty(self, prediction: Mapping) -> bool:
        text = prediction.get("prediction")
        if isinstance(text, list):
            return all(not str(t).strip() for t in text)
        return not str(text or "").strip()

    def settings(self) -> dict:
        """Sampling and decoding settings, recorded in the metrics."""
        return {"num_frames": self.num_frames if self.fps is None else None, "fps": self.fps,
                "max_new_tokens": self.max_new_tokens, "shard": list(self.shard) if self.shard else None, "limit": self.limit}


class SavedPredictions(Task):
    """A task whose `run` replays saved prediction records: `run_task` then re-scores them.

    A saved failure is replayed as the same failure; an example without a saved record
    fails with reason "missing_prediction". Scoring, aggregation and extra outputs are the
    wrapped task's.
    """

    def __init__(self, task: Task, records: Mapping[str, Mapping]):
        super().__init__()
        self.task, self.records = task, records
        self.name = task.name
        self.load_failures = task.load_failures

    def examples(self):
        return self.task.examples()

    def example_id(self, example) -> str:
        return self.task.example_id(example)

    def run(self, model, processor, example) -> dict:
        record = self.records.get(self.task.example_id(example))
        if record is None:
            raise EvalFailure("missing_prediction", "no saved prediction for this example")
        if "error" in record:
            raise EvalFailure(record.get("reason", "saved_failure"), record["error"])
        return {k: v for k, v in record.items() if k != "id"}

    def score(self, *, prediction: dict, reference) -> dict:
        return self.task.score(prediction=prediction, reference=reference)

    def aggregate(self, scores: Sequence[dict]) -> dict:
        return self.task.aggregate(scores)

    def is_empty(self, prediction: dict) -> bool:
        return self.task.is_empty(prediction)

    def after_run(self, predictions: Sequence[dict], out_dir: Path) -> None:
        self.task.after_run(predictions, out_dir)


def load_saved_predictions(paths: Sequence[str | Path]) -> dict[str, dict]:
    """Records of one or more predictions.jsonl files (e.g. shards) by id; a bad line or a repeated id
    fails with `RecordError` naming ``file:line``."""
    saved: dict[str, dict] = {}
    for path in paths:
        for where, record in read_records(path):
            if not isinstance(record, dict) or "id" not in record:
                raise RecordError(f"{where}: expected a prediction object with an 'id'")
            key = str(record["id"])
            if key in saved:
                raise RecordError(f"{where}: id {key!r} appears twice in the saved predictions")
            saved[key] = record
    return saved


def build_offline_parser(
    prog: str, description: str, *, max_new_tokens: int, annotations_help: str | None = None
) -> argparse.ArgumentParser:
    """`eval.common.build_parser` without the gate's options, --model optional (re-scoring saved
    predictions needs none), --annotations only for benchmarks that take it (`annotations_help`
    given), plus the offline ones."""
    parser = build_parser(prog, description, annotations_help=annotations_help, stream=False, model_required=False)
    parser.add_argument("--num-frames", type=int, default=DEFAULT_NUM_FRAMES,
                        help="frames sampled uniformly per clip, the middles of equal chunks (default: %(default)s)")
    parser.add_argument("--fps", type=float, default=None,
                        help="sample on a fixed-rate grid instead (uniform with the model's max_turn_frames when longer)")
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help="decoding cap (default: %(default)s)")
    parser.add_argument("--shard", type=int, nargs=2, metavar=("INDEX", "COUNT"), default=None,
                        help="evaluate examples INDEX, INDEX+COUNT, ... (merge the shards with --predictions)")
    parser.add_argument("--predictions", nargs="+", type=Path, default=None,
                        help="re-score saved predictions.jsonl file(s) instead of running a model")
    return parser


def model_for(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """(model, processor), or (None, None) when re-scoring saved predictions."""
    if args.predictions:
        return None, None
    if not args.model:
        parser.error("--model is required unless --predictions is given")
    return load_model_from_args(args)


def evaluate(task: OfflineTask, model, processor, args: argparse.Namespace) -> dict:
    """Run the task with the model, or re-score --predictions, into --out."""
    title = task.title
    if args.predictions:
        task = SavedPredictions(task, load_saved_predictions(args.predictions))
    return run_task(task, model, processor, args.out, title=title)


__all__ = [
    "DEFAULT_NUM_FRAMES",
    "Frames",
    "NearestMatcher",
    "OfflineTask",
    "SavedPredictions",
    "answer",
    "answer_beams",
    "build_offline_parser",
    "encode_prompt",
    "evaluate",
    "find_video",
    "levenshtein",
    "load_frames",
    "load_saved_predictions",
    "model_for",
    "uniform_times",
]
