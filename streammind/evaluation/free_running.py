"""Free-running streaming evaluation: the real runtime over each video, then scoring.

For every annotation record: reset a streaming session (`StreamingSession` for StreamMind,
`PerFrameSession` for the per-frame-LLM baseline, both through `open_session` of
`streammind.streaming_perframe`) with the record's query, feed the video's frames at the
target fps by presentation time, and record each reply (time, text, decision probability) and
the probability of every frame. Then score with `score.score_predictions` (precision / recall /
F1 at ±1/2/5 s, TriggerAcc, TimVal, reply exact match, caption metrics on matched replies).

Outputs in `out_dir`: `predictions.jsonl` (one line per video, re-scorable with
`streammind score`), `metrics.json`, `metrics.md`, and `plots/<id>.png` timelines
(gate probability, threshold, ground-truth events, replies; "/" in an id becomes "__")
for the first `num_plots` videos. A video that fails to decode is recorded with an
"error" field and counted, never dropped.

Reference: docs/design.md §6 (the free-running protocol).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from ..fileio import atomic_write, write_json
from ..media.video import VideoDecodeError, iter_frames
from ..streaming import SessionInputError, StreamingSession, push_clip_chunks
from ..streaming_perframe import PerFrameSession, open_session
from ..training.annotations import StreamAnnotation
from .plots import plot_filename, plot_timeline
from .score import score_predictions
from .tasks import write_markdown_table

logger = logging.getLogger(__name__)


def _window(frames, start: float | None, end: float | None):
    """The (time, frame) pairs of [start, end)."""
    for t, frame in frames:
        if start is not None and t < start:
            continue
        if end is not None and t >= end:
            break
        yield float(t), frame


def stream_record(session: StreamingSession | PerFrameSession, record: StreamAnnotation, data_root: Path, fps: float, on_reply=None) -> dict:
    """Run one video through the session; returns its prediction record (with an "error" when the
    video fails or the session refuses the query, e.g. one over the LLM budget).

    The whole video is known ahead, so the session takes it a chunk of frames at a time
    (`StreamingSession.push_clip`: the results of frame-by-frame streaming, several times faster).
    """
    replies, error = [], None
    try:
        session.reset(query=record.query)
    except SessionInputError as e:
        logger.warning("video %s: query refused: %s", record.video, e)
        return {"id": record.id or record.video, "video": record.video, "query": record.query, "replies": [],
                "frame_times": [], "frame_probs": [], "skipped_frames": 0, "error": f"query refused: {e}"}
    frames = iter_frames(data_root / record.video, fps=fps)

    def collect(reply) -> None:
        item = {"time": reply.time, "text": reply.text, "prob": round(reply.prob, 6)}
        replies.append(item)
        if on_reply is not None:
            on_reply(item)

    try:
        push_clip_chunks(session, _window(frames, record.start, record.end), on_reply=collect)
    except VideoDecodeError as e:
        error = str(e)
        logger.warning("video %s failed: %s", record.video, e)
    return {
        "id": record.id or record.video,
        "video": record.video,
        "query": record.query,
        "replies": replies,
        "frame_times": [round(t, 6) for t in session.stats.times],
        "frame_probs": [round(p, 6) for p in session.stats.probs],
        "skipped_frames": frames.skipped,
        **({"error": error} if error else {}),
    }


def headline(metrics: dict) -> dict:
    """The few numbers people quote: pooled over all events / replies of the split."""
    micro, counts = metrics["micro"], metrics["counts"]
    return {
        "num_videos": counts["num_videos"],
        "trigger_acc": micro.get("trigger_acc"),
        "timval": micro.get("timval"),
        "trigger_f1_1s": micro.get("f1@1s"),
        "trigger_f1_2s": micro.get("f1@2s"),
        "trigger_f1_5s": micro.get("f1@5s"),
        "reply_exact_match": micro.get("reply_exact_match"),
        "num_events": counts["num_events"],
        "num_replies": counts["num_replies"],
        "num_errors": counts["num_errors"],
    }


def run_free_running(
    model,
    processor,
    records: Sequence[StreamAnnotation],
    data_root: str | Path,
    out_dir: str | Path,
    fps: float | None = None,
    threshold: float | None = None,
    num_plots: int = 8,
    use_meteor: bool = True,
) -> dict:
    """Stream every record, write predictions / metrics / plots to `out_dir`, return the metrics."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data_root = Path(data_root)
    fps = fps or model.config.frames_per_second
    session = open_session(model, processor, threshold=threshold)
    predictions = []
    with atomic_write(out / "predictions.jsonl") as f:
        for record in tqdm(records, desc="streaming", unit="video"):
            pred = stream_record(session, record, data_root, fps)
            predictions.append(pred)
            f.write(json.dumps(pred) + "\n")
    references = [r.to_dict() for r in records]
    for r, rec in zip(references, records):
        r.setdefault("id", rec.id or rec.video)
    metrics = score_predictions(predictions=predictions, references=references, use_meteor=use_meteor)
    metrics["headline"] = headline(metrics)
    metrics["threshold"] = session.threshold
    metrics["fps"] = fps
    write_json(out / "metrics.json", metrics)
    write_markdown_table({k: v for k, v in metrics.items() if k != "per_video"}, out / "metrics.md", title="Free-running streaming")
    for pred, rec in list(zip(predictions, records))[:num_plots]:
        plot_timeline(pred["frame_times"], pred["frame_probs"], session.threshold, [t.time for t in rec.turns],
                      [r["time"] for r in pred["replies"]], out / "plots" / plot_filename(pred["id"]),
                      title=f"{pred['id']}: {rec.query}")
    return metrics


__all__ = ["headline", "run_free_running", "stream_record"]
