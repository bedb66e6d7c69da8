"""The offline benchmarks' task: clip sampling, sharding, a limit, and re-scoring saved predictions.

`OfflineTask` is a `tasks.Task` that samples each example's clip (`clip_sampling`) and
answers it (`answering`); `evaluate` runs it with `tasks.run_task` (predictions.jsonl,
metrics.json, metrics.md in `--out`, failures counted under "failures"), or, with
`--predictions`, replays saved prediction files through the same runner (`SavedPredictions`)
to re-score without a model (merging `--shard` runs on the way). A clip that is missing,
undecodable or empty is a `BadSample` ("missing_video", "undecodable_video",
"empty_video"); the offline tasks count such examples as wrong in their main metric and also
report the metric over the examples that ran.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import BadSample
from ..fileio import read_jsonl
from .clip_sampling import DEFAULT_NUM_FRAMES, Frames, load_frames
from .tasks import RecordError, Task, apply_limit, build_parser, load_model_from_args, run_task


class OfflineTask(Task):
    """An offline benchmark: a `Task` with clip sampling, sharding and a limit.

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
        """The example's frames by this task's sampling settings; failures raise BadSample."""
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
            raise BadSample("missing_prediction", "no saved prediction for this example")
        if "error" in record:
            raise BadSample(record.get("reason", "saved_failure"), record["error"])
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
        for where, record in read_jsonl(path, RecordError):
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
    """`tasks.build_parser` without the gate's options, --model optional (re-scoring saved
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


__all__ = ["OfflineTask", "SavedPredictions", "build_offline_parser", "evaluate", "load_saved_predictions", "model_for"]
