"""The shared evaluation interface: `Task`, the runner, failure counting, reports and CLI helpers.

A benchmark (`eval/<benchmark>.py`) defines one `Task` subclass:

- `examples()`: the examples to evaluate, in order (each with an id, `example_id`);
- `run(model, processor, example)`: one raw prediction record (a JSON-ready dict); raises
  `BadSample(reason, message)` when the example cannot be evaluated (a video that fails to
  decode, a missing annotation, ...);
- `score(prediction=..., reference=...)`: pure per-example scores of a successful
  prediction, keyword-only so that the two can never be swapped;
- `aggregate(scores)`: the dataset metrics from the per-example scores. Failed examples
  are not scored (a video that never ran has no perplexity); they are counted instead.

`run_task` runs a task and writes to the output directory given on the command line:
`predictions.jsonl` (one line per example, failures included with an "error" and a
"reason"), `metrics.json` and `metrics.md` (`write_markdown_table`). Nothing is dropped
silently: every failure, every failure the task met while loading its data
(`Task.load_failures`, e.g. an annotation pass without narrations) and every empty
prediction (`Task.is_empty`) is counted and listed under "failures" in the metrics.

The streaming benchmarks run both of their protocols through `streammind.evaluation.protocols`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..errors import ArgumentParser, BadSample, UsageError, UserError
from ..fileio import atomic_write, write_text
from ..fileio import write_json as _write_json

logger = logging.getLogger(__name__)

PROTOCOLS = ("free", "teacher", "both")
_DTYPES = ("float32", "bfloat16", "float16")
# Longest list of ids rendered inline in the markdown table; the JSON keeps them all.
_MAX_LISTED = 10


class RecordError(UserError, ValueError):
    """A predictions or references line of the wrong shape (the message names ``file:line``)."""


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
        """The raw prediction record of one example; raises BadSample (counted)."""
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
            except BadSample as error:
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
# Markdown reports
# ---------------------------------------------------------------------------------------


def _format_value(value) -> str:
    """One table cell: floats to 4 decimals, None as n/a, short lists inline."""
    if value is None:
        text = "n/a"
    elif isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, float):
        text = f"{value:.4f}"
    elif isinstance(value, (list, tuple)):
        shown = ", ".join(_format_value(item) for item in value[:_MAX_LISTED])
        text = shown + (f", … ({len(value)} total)" if len(value) > _MAX_LISTED else "")
        text = text or "(none)"
    else:
        text = str(value)
    return text.replace("|", "\\|")


def _flatten(mapping: Mapping, prefix: str = "") -> list[tuple[str, object]]:
    """Nested dicts -> (dotted key, value) rows; lists of dicts are summarised by length."""
    rows = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows += _flatten(value, prefix=f"{name}.")
        elif isinstance(value, (list, tuple)) and any(isinstance(item, Mapping) for item in value):
            rows.append((name, f"{len(value)} entries (see the JSON file)"))
        else:
            rows.append((name, value))
    return rows


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table as lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def write_markdown_table(metrics: Mapping, path: str | Path, *, title: str = "Metrics") -> Path:
    """Write a metrics dict as human-readable markdown tables.

    Top-level scalars form one table; each top-level dict gets its own section with nested
    keys dotted. When "micro" and "per_video_mean" are both present they are shown side by
    side with the number of videos behind each mean ("per_video_mean_num_videos"). Lists
    of records (such as "per_video") are summarised by their length.

    Args:
        metrics: any JSON-like dict of metrics.
        path: output file; its parent directory is created.
        title: the top-level heading.

    Returns:
        The path written.
    """
    lines = [f"# {title}", ""]
    sections = dict(metrics)
    paired_rows = []
    micro, mean = sections.get("micro"), sections.get("per_video_mean")
    if isinstance(micro, Mapping) and isinstance(mean, Mapping):
        del sections["micro"], sections["per_video_mean"]
        mean_counts = sections.pop("per_video_mean_num_videos", {})
        for name in list(micro) + [name for name in mean if name not in micro]:
            values = (micro.get(name), mean.get(name), mean_counts.get(name))
            paired_rows.append([name] + [_format_value(value) for value in values])
    scalars = {key: value for key, value in sections.items() if not isinstance(value, Mapping)}
    if scalars:
        rows = [[key, _format_value(value)] for key, value in _flatten(scalars)]
        lines += _table(["key", "value"], rows) + [""]
    if paired_rows:
        header = ["metric", "micro (pooled counts)", "per-video mean", "videos in mean"]
        lines += ["## Aggregated over videos", ""] + _table(header, paired_rows) + [""]
    for key, value in sections.items():
        if isinstance(value, Mapping):
            rows = [[name, _format_value(item)] for name, item in _flatten(value)]
            lines += [f"## {key}", ""] + _table(["key", "value"], rows) + [""]
    return write_text(path, "\n".join(lines).rstrip("\n") + "\n")


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

    from ..builder import load_model

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
    "Failure",
    "PROTOCOLS",
    "RecordError",
    "Task",
    "apply_limit",
    "build_parser",
    "failure_summary",
    "load_model_from_args",
    "reuse_loaded_models",
    "run_task",
    "setup_logging",
    "write_json",
    "write_markdown_table",
]
