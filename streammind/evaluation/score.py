"""Re-score free-running streaming predictions against stream annotations (`streammind score`).

    streammind score --predictions P.jsonl --references R.jsonl --out M.json \
        [--table M.md] [--tolerances 1 2 5] [--trigger-tolerance 1] [--caption-tolerance 1]

Inputs (JSON Lines):
- predictions, one line per video:
  {"id": ..., "video": ..., "replies": [{"time": s, "text": str, "prob": float}],
   "error": optional str}
- references, the canonical stream annotation (docs/design.md §4):
  {"video": ..., "query": ..., "turns": [{"time": s, "text": str}], "id": optional}

Both files are checked line by line when read (`load_predictions`, `load_references`): a
line that is not UTF-8 or not JSON, or a record of the wrong shape (a reply without a
finite "time", a reference that breaks the stream-annotation rules, ...) is an error naming
`file:line`, reported by the command as one line (exit status 2).

A reference is matched to the prediction with the same "id" when the reference has an
"id", otherwise to the prediction with the same "video". Nothing is dropped silently:
- a reference without a prediction is scored as a video with no replies and listed under
  counts.missing_prediction_ids;
- a prediction with an "error" is scored with the replies it has and listed under
  counts.error_ids;
- a prediction with no replies is listed under counts.empty_prediction_ids, and replies
  with empty text are counted (and scored as empty captions);
- a prediction that matches no reference is listed under counts.unmatched_prediction_ids.

Outputs: the metrics JSON (free-running metrics from `metrics.py`, micro and per-video
mean; caption metrics over the replies matched one-to-one to events within
--caption-tolerance seconds; counts; per-video scores) and, with --table, a markdown
rendering written by `write_markdown_table`, which evaluators reuse.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import ArgumentParser, UserError, run_command
from ..fileio import read_jsonl, write_json
from ..training.annotations import AnnotationError, StreamAnnotation
from .metrics import (
    DEFAULT_TOLERANCES,
    TRIGGER_TOLERANCE,
    TimedText,
    aggregate_stream_scores,
    caption_metrics,
    match_events,
    score_stream_video,
)
from .tasks import RecordError, write_markdown_table

logger = logging.getLogger(__name__)


def _finite(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def check_prediction(record: Any, where: str) -> dict:
    """One prediction record (module docstring); returns it, or raises RecordError naming `where`."""
    if not isinstance(record, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "id" not in record and "video" not in record:
        raise RecordError(f"{where}: a prediction needs an 'id' or a 'video'")
    error = record.get("error")
    if error is not None and not isinstance(error, str):
        raise RecordError(f"{where}: 'error' must be a string, got {type(error).__name__}")
    if "replies" not in record:
        if not error:
            raise RecordError(f"{where}: a prediction needs 'replies' (or an 'error')")
        return record
    replies = record["replies"]
    if not isinstance(replies, list):
        raise RecordError(f"{where}: 'replies' must be a list, got {type(replies).__name__}")
    for k, reply in enumerate(replies):
        if not isinstance(reply, dict):
            raise RecordError(f"{where}: reply {k}: expected an object with 'time' and 'text', got {type(reply).__name__}")
        if not _finite(reply.get("time")):
            raise RecordError(f"{where}: reply {k}: 'time' must be a finite number of seconds, got {reply.get('time')!r}")
        if "text" not in reply or not (reply["text"] is None or isinstance(reply["text"], str)):
            raise RecordError(f"{where}: reply {k}: 'text' must be a string (or null), got {reply.get('text')!r}")
        if "prob" in reply and reply["prob"] is not None and not _finite(reply["prob"]):
            raise RecordError(f"{where}: reply {k}: 'prob' must be a finite number, got {reply['prob']!r}")
    return record


def check_reference(record: Any, where: str) -> dict:
    """One reference record: a canonical stream annotation; returns it, or raises RecordError naming `where`."""
    try:
        StreamAnnotation.from_dict(record, where)
    except AnnotationError as error:
        raise RecordError(str(error)) from error
    return record


def load_predictions(path: str | Path) -> list[dict]:
    """A predictions JSONL, every line checked (`check_prediction`)."""
    return [check_prediction(record, where) for where, record in read_jsonl(path, RecordError)]


def load_references(path: str | Path) -> list[dict]:
    """A references JSONL (canonical stream annotations), every line checked (`check_reference`)."""
    return [check_reference(record, where) for where, record in read_jsonl(path, RecordError)]


def _reference_key(reference: Mapping) -> tuple[str, str]:
    """(field, value) identifying a reference: its "id" when present, else its "video"."""
    field = "id" if "id" in reference else "video"
    return field, str(reference[field])


def _index(records: Sequence[Mapping], field: str) -> dict[str, list[int]]:
    """Value of `field` -> positions of the records that carry it."""
    index: dict[str, list[int]] = {}
    for position, record in enumerate(records):
        if field in record:
            index.setdefault(str(record[field]), []).append(position)
    return index


def _prediction_name(prediction: Mapping) -> str:
    """How a prediction is named in the counts: its id, else its video."""
    return str(prediction["id"]) if "id" in prediction else str(prediction["video"])


def score_predictions(
    *,
    predictions: Sequence[Mapping],
    references: Sequence[Mapping],
    tolerances: Sequence[float] = DEFAULT_TOLERANCES,
    trigger_tolerance: float = TRIGGER_TOLERANCE,
    caption_tolerance: float = TRIGGER_TOLERANCE,
    use_meteor: bool = True,
) -> dict:
    """Score free-running predictions against references (records as in the module docstring).

    Returns:
        {"protocol", "settings", "counts", "micro", "per_video_mean",
         "per_video_mean_num_videos", "captions", "per_video"}.
    """
    keys = [_reference_key(reference) for reference in references]
    duplicates = sorted(key for key, count in Counter(keys).items() if count > 1)
    if duplicates:
        raise ValueError(
            f"references share a key (give them distinct 'id' fields): {duplicates[:10]}"
        )
    indexes = {"id": _index(predictions, "id"), "video": _index(predictions, "video")}

    used: set[int] = set()
    per_video, caption_predictions, caption_references = [], {}, {}
    missing, errors, empty = [], [], []
    num_empty_texts = 0
    for reference, (field, key) in zip(references, keys):
        events = [TimedText(float(turn["time"]), str(turn["text"])) for turn in reference["turns"]]
        positions = indexes[field].get(key, [])
        if len(positions) > 1:
            raise ValueError(f"{len(positions)} predictions have {field}={key!r}")
        error = None
        if positions:
            used.add(positions[0])
            prediction = predictions[positions[0]]
            error = prediction.get("error")
            if "replies" not in prediction and not error:
                raise ValueError(f"prediction {key!r} has neither 'replies' nor an 'error'")
            replies = [
                TimedText(float(reply["time"]), reply["text"] if reply["text"] is not None else "")
                for reply in prediction.get("replies", [])
            ]
            if error:
                errors.append(key)
            if not replies:
                empty.append(key)
            num_empty_texts += sum(not reply.text.strip() for reply in replies)
        else:
            missing.append(key)
            replies = []

        scores = score_stream_video(
            prediction=replies,
            reference=events,
            tolerances=tolerances,
            trigger_tolerance=trigger_tolerance,
        )
        pairs = match_events(
            prediction=[reply.time for reply in replies],
            reference=[event.time for event in events],
            tolerance=caption_tolerance,
        )
        for reply_index, event_index in pairs:
            caption_id = f"{key}#{event_index}"
            caption_predictions[caption_id] = replies[reply_index].text
            caption_references[caption_id] = [events[event_index].text]
        per_video.append(
            {
                "key": key,
                "video": reference["video"],
                "missing_prediction": not positions,
                "error": error,
                "num_caption_pairs": len(pairs),
                **scores,
            }
        )

    unmatched = [_prediction_name(p) for i, p in enumerate(predictions) if i not in used]
    aggregated = aggregate_stream_scores(per_video)
    counts = {
        "num_videos": len(references),
        "num_prediction_records": len(predictions),
        "num_missing_predictions": len(missing),
        "missing_prediction_ids": missing,
        "num_errors": len(errors),
        "error_ids": errors,
        "num_empty_predictions": len(empty),
        "empty_prediction_ids": empty,
        "num_empty_reply_texts": num_empty_texts,
        "num_unmatched_predictions": len(unmatched),
        "unmatched_prediction_ids": unmatched,
        "num_replies": sum(video["num_predictions"] for video in per_video),
        "num_events": sum(video["num_references"] for video in per_video),
    }
    return {
        "protocol": "free_running",
        "settings": {
            "tolerances": [float(t) for t in tolerances],
            "trigger_tolerance": float(trigger_tolerance),
            "caption_tolerance": float(caption_tolerance),
        },
        "counts": counts,
        "micro": aggregated["micro"],
        "per_video_mean": aggregated["per_video_mean"],
        "per_video_mean_num_videos": aggregated["per_video_mean_num_videos"],
        "captions": caption_metrics(
            predictions=caption_predictions, references=caption_references, use_meteor=use_meteor
        ),
        "per_video": per_video,
    }


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------


PROG = "streammind score"


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--predictions", required=True, help="predictions JSONL, one line per video"
    )
    parser.add_argument("--references", required=True, help="canonical stream annotation JSONL")
    parser.add_argument("--out", required=True, help="metrics JSON to write")
    parser.add_argument("--table", default=None, help="optional markdown table to write")
    parser.add_argument(
        "--tolerances", type=float, nargs="+", default=list(DEFAULT_TOLERANCES),
        help="seconds for one-to-one precision / recall / F1",
    )
    parser.add_argument(
        "--trigger-tolerance", type=float, default=TRIGGER_TOLERANCE,
        help="±seconds for TriggerAcc, TimVal and reply_exact_match",
    )
    parser.add_argument(
        "--caption-tolerance", type=float, default=TRIGGER_TOLERANCE,
        help="±seconds of the one-to-one matching whose reply/event pairs get caption metrics",
    )
    parser.add_argument(
        "--skip-meteor", action="store_true", help="do not run METEOR (it needs Java)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Score a predictions file and write the metrics JSON (and optionally a table)."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for path, flag in ((args.out, "--out"), (args.table, "--table")):
        if path is not None and Path(path).is_dir():
            raise UserError(f"{path}: {flag} names a directory; give a file path")
    metrics = score_predictions(
        predictions=load_predictions(args.predictions),
        references=load_references(args.references),
        tolerances=args.tolerances,
        trigger_tolerance=args.trigger_tolerance,
        caption_tolerance=args.caption_tolerance,
        use_meteor=not args.skip_meteor,
    )
    out = write_json(args.out, metrics, allow_nan=False)
    logger.info("wrote %s", out)
    if args.table:
        table = write_markdown_table(metrics, args.table, title="Free-running streaming metrics")
        logger.info("wrote %s", table)
    counts = metrics["counts"]
    logger.info(
        "%d videos, %d missing predictions, %d with errors, %d empty, %d unmatched predictions",
        counts["num_videos"], counts["num_missing_predictions"], counts["num_errors"],
        counts["num_empty_predictions"], counts["num_unmatched_predictions"],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command(PROG, main))
