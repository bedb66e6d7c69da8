"""The shared evaluation interface: `Task`, the runner, failure counting and the CLI helper.

A benchmark (`eval/<benchmark>.py`) defines one `Task` subclass:

- `examples()`: the examples to evaluate, in order (each with an id, `example_id`);
- `run(model, processor, example)`: one raw prediction record (a JSON-ready dict); raises
  `EvalFailure(reason, message)` when the example cannot be evaluated (a video that fails
  to decode, a missing annotation, ...);
- `score(prediction=..., reference=...)`: pure per-example scores of a successful
  prediction, keyword-only so that the two can never be swapped;
- `aggregate(scores)`: the dataset metrics from the per-example scores. Failed examples
  are not scored (a video that never ran has no perplexity); they are counted instead.

`run_task` runs a task and writes to the output directory given on the command line:
`predictions.jsonl` (one line per example, failures included with an "error" and a
"reason"), `metrics.json` and `metrics.md` (via `eval.score.write_markdown_table`).
Nothing is dropped silently: every failure, every failure the task met while loading its
data (`Task.load_failures`, e.g. an annotation pass without narrations) and every empty
prediction (`Task.is_empty`) is counted and listed under "failures" in the metrics.

The streaming benchmarks share `run_stream_protocols`: the free-running protocol
(`eval.streaming.run_free_running`) and/or the teacher-forced protocol (a `Task`, see
`eval.teacher_forced`) into `<out>/free` and `<out>/teacher`, plus a summary of both in
`<out>/metrics.json` and `<out>/metrics.md`.

Reference: SPEC §7, STYLE §4.8.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from eval.score import write_markdown_table
from streammind.atomic import atomic_write
from streammind.atomic import write_json as _write_json
from streammind.errors import ArgumentParser, UsageError

if TYPE_CHECKING:
    from eval.teacher_forced import TeacherForcedTask

logger = logging.getLogger(__name__)

PROTOCOLS = ("free", "teacher", "both")
_DTYPES = ("float32", "bfloat16", "float16")


class EvalFailure(Exception):
    """An example that cannot be evaluated; `reason` is the counted category."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Failure:
    """One counted failure: which example, the category and the message."""

    id: str
    reason: str
    message: str

    def to_dict(self) -> dict:
        return {"id": self.id, "reason": self.reason, "message": self.message}


class Task:
    """One benchmark: examples, how the model answers one, how one is scored, the totals."""

    name = "task"

    def __init__(self) -> None:
        # Examples lost before `examples()` (while reading the benchmark's data).
        self.load_failures: list[Failure] = []

    def examples(self) -> Sequence[Any]:
        raise NotImplementedError

    def example_id(self, example: Any) -> str:
        return str(example["id"])

    def run(self, model, processor, example: Any) -> dict:
        """The raw prediction record of one example; raises EvalFailure (counted)."""
        raise NotImplementedError

    def score(self, *, prediction: dict, reference: Any) -> dict:
        """Pure per-example scores of a successful prediction against its example."""
        raise NotImplementedError

    def aggregate(self, scores: Sequence[dict]) -> dict:
        """Dataset metrics from the per-example scores of the examples that ran."""
        raise NotImplementedError

    def is_empty(self, prediction: dict) -> bool:
        """Whether a successful prediction is empty (counted, still scored)."""
        return False

    def after_run(self, predictions: Sequence[dict], out_dir: Path) -> None:
        """Extra outputs (plots, ...) once every example has run; nothing by default."""


def failure_summary(failures: Sequence[Failure], num_examples: int, empty_ids: Sequence[str] = ()) -> dict:
    """The "failures" block of a metrics JSON."""
    return {
        "num_examples": num_examples,
        "num_failed": len(failures),
        "by_reason": dict(sorted(Counter(f.reason for f in failures).items())),
        "failed": [f.to_dict() for f in failures],
        "num_empty_predictions": len(empty_ids),
        "empty_prediction_ids": list(empty_ids),
    }


def plot_filename(example_id: str) -> str:
    """A file name for an example's plot: ids such as "match/1" keep their folders apart."""
    return str(example_id).strip("/").replace("/", "__") + ".png"


def write_json(obj: Any, path: str | Path) -> Path:
    """Indented JSON (NaN refused), parent folders created, written atomically."""
    return _write_json(path, obj, allow_nan=False)


def run_task(task: Task, model, processor, out_dir: str | Path, *, title: str | None = None) -> dict:
    """Run every example of `task`, write predictions / metrics / table to `out_dir`.

    Returns:
        The metrics: the task's scores plus "task" and "failures" (load failures, run
        failures and empty predictions, each listed by id).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    examples = list(task.examples())
    ids = [task.example_id(example) for example in examples]
    duplicates = sorted(key for key, count in Counter(ids).items() if count > 1)
    if duplicates:
        raise ValueError(f"{task.name}: examples share ids (give them distinct ids): {duplicates[:10]}")
    predictions, failures, empty = [], list(task.load_failures), []
    # predictions.jsonl appears whole when every example has run (an earlier file stays until then).
    with atomic_write(out / "predictions.jsonl") as handle:
        for example, example_id in zip(tqdm(examples, desc=task.name, unit="example"), ids):
            try:
                prediction = {"id": example_id, **task.run(model, processor, example)}
                if task.is_empty(prediction):
                    empty.append(example_id)
            except EvalFailure as error:
                logger.warning("%s: %s failed (%s): %s", task.name, example_id, error.reason, error)
                failures.append(Failure(example_id, error.reason, str(error)))
                prediction = {"id": example_id, "error": str(error), "reason": error.reason}
            predictions.append(prediction)
            handle.write(json.dumps(prediction, allow_nan=False) + "\n")
    scores = [
        task.score(prediction=prediction, reference=example)
        for prediction, example in zip(predictions, examples)
        if "error" not in prediction
    ]
    metrics = {
        "task": task.name,
        **task.aggregate(scores),
        "failures": failure_summary(failures, len(examples) + len(task.load_failures), empty),
    }
    write_json(metrics, out / "metrics.json")
    write_markdown_table(_without_lists_of_records(metrics), out / "metrics.md", title=title or task.name)
    task.after_run(predictions, out)
    return metrics


def _without_lists_of_records(metrics: dict) -> dict:
    """The table view: drop per-example lists (they stay in the JSON)."""
    return {key: value for key, value in metrics.items() if key != "per_video"}


# ---------------------------------------------------------------------------------------
# Streaming benchmarks: both protocols
# ---------------------------------------------------------------------------------------


def run_stream_protocols(
    task: TeacherForcedTask,
    model,
    processor,
    out_dir: str | Path,
    *,
    protocol: str = "both",
    use_meteor: bool = True,
) -> dict:
    """Free-running and/or teacher-forced evaluation of a stream task.

    Args:
        task: a stream task (`eval.teacher_forced.TeacherForcedTask`): its `examples()` are
            `StreamAnnotation` records under `task.data_root`; `run`/`score` are the
            teacher-forced protocol; its `threshold` (None: the model config's) and
            `num_plots` serve both protocols.
        protocol: "free", "teacher" or "both".
        use_meteor: False skips METEOR in the free-running caption metrics.

    Returns:
        The summary written to `<out>/metrics.json`: {"task", "protocols", "free",
        "teacher", "load_failures"}, each protocol's headline numbers and failure counts;
        the full metrics are in `<out>/<protocol>/metrics.json`.
    """
    from eval.streaming import run_free_running
    from streammind.sessions import default_threshold

    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    out = Path(out_dir)
    threshold = default_threshold(model) if task.threshold is None else task.threshold
    load_failures = task.load_failures
    summary: dict = {
        "task": task.name,
        "protocols": [],
        "load_failures": {
            "num_failed": len(load_failures),
            "by_reason": dict(sorted(Counter(f.reason for f in load_failures).items())),
            "failed_ids": [f.id for f in load_failures],
        },
    }
    if protocol in ("free", "both"):
        metrics = run_free_running(
            model, processor, task.examples(), task.data_root, out / "free",
            threshold=threshold, num_plots=task.num_plots, use_meteor=use_meteor,
        )
        counts = metrics["counts"]
        summary["protocols"].append("free")
        summary["free"] = {
            **metrics["headline"],
            "captions": {k: v for k, v in metrics["captions"].items() if k != "skipped"},
            "threshold": metrics["threshold"],
            "error_ids": counts["error_ids"],
            "num_empty_predictions": counts["num_empty_predictions"],
        }
    if protocol in ("teacher", "both"):
        metrics = run_task(task, model, processor, out / "teacher", title=f"{task.name}: teacher-forced")
        summary["protocols"].append("teacher")
        summary["teacher"] = {
            **metrics["aggregate"],
            "threshold": threshold,
            "extra": metrics["extra"],
            "num_failed": metrics["failures"]["num_failed"],
            "failed_by_reason": metrics["failures"]["by_reason"],
        }
    write_json(summary, out / "metrics.json")
    write_markdown_table(summary, out / "metrics.md", title=f"{task.name}: streaming benchmark")
    return summary


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def _probability(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise argparse.ArgumentTypeError(f"must be a finite number in [0, 1], got {text}")
    return value


def build_parser(
    prog: str, description: str, *, annotations_help: str | None, stream: bool = True, model_required: bool = True
) -> argparse.ArgumentParser:
    """The shared arguments: --model --data-root [--annotations] --out --limit --device
    --dtype, and for stream benchmarks --threshold --protocol --num-plots --skip-meteor.

    `annotations_help=None` leaves --annotations out; `model_required=False` makes --model
    optional (the offline benchmarks re-score saved predictions without a model).
    """
    parser = ArgumentParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=model_required,
                        help="saved StreamMind directory (config, weights, tokenizer)" + ("" if model_required else "; not needed with --predictions"))
    parser.add_argument("--data-root", required=True, type=Path, help="directory the benchmark's videos (and default annotations) live under")
    if annotations_help is not None:
        parser.add_argument("--annotations", type=Path, default=None, help=annotations_help)
    parser.add_argument("--out", required=True, type=Path, help="output directory (predictions, metrics, table, plots)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N examples")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=_DTYPES, default="float32", help="weight dtype (default: %(default)s)")
    parser.add_argument("--allow-partial-load", action="store_true",
                        help="load a model whose weights lack some tensors (or hold extra ones); by default that is an error")
    if stream:
        parser.add_argument("--threshold", type=_probability, default=None,
                            help="gate threshold in [0, 1]: respond when p > threshold (default: the model config's)")
        parser.add_argument("--protocol", choices=PROTOCOLS, default="both", help="free-running, teacher-forced or both (default: %(default)s)")
        parser.add_argument("--num-plots", type=int, default=8, help="timeline plots to draw per protocol (default: %(default)s)")
        parser.add_argument("--skip-meteor", action="store_true", help="do not run METEOR (it needs Java)")
    return parser


_loaded_models: dict[tuple[str, str, str], tuple] | None = None  # set inside `reuse_loaded_models`


@contextlib.contextmanager
def reuse_loaded_models():
    """Inside, `load_model_from_args` loads each (model, device, dtype) once and hands back the
    same (model, processor) to every later call (the offline suite runs several benchmarks in
    one process with one model); outside, every call loads afresh."""
    global _loaded_models
    previous, _loaded_models = _loaded_models, {}
    try:
        yield
    finally:
        _loaded_models = previous


def load_model_from_args(args: argparse.Namespace):
    """(model, processor) from --model / --device / --dtype."""
    import torch

    from streammind import load_model

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    key = (str(args.model), device, args.dtype)
    if _loaded_models is not None and key in _loaded_models:
        return _loaded_models[key]
    loaded = load_model(args.model, device=device, dtype=getattr(torch, args.dtype), strict=not args.allow_partial_load)
    if _loaded_models is not None:
        _loaded_models[key] = loaded
    return loaded


def apply_limit(items: Sequence, limit: int | None) -> list:
    """The first `limit` items (all when None); a negative limit is an error."""
    if limit is not None and limit < 0:
        raise UsageError(f"--limit must be >= 0, got {limit}")
    return list(items if limit is None else items[:limit])


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


__all__ = [
    "EvalFailure",
    "Failure",
    "PROTOCOLS",
    "Task",
    "apply_limit",
    "build_parser",
    "failure_summary",
    "load_model_from_args",
    "plot_filename",
    "reuse_loaded_models",
    "run_stream_protocols",
    "run_task",
    "setup_logging",
    "write_json",
]
