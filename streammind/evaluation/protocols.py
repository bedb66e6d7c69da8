"""Both protocols of a streaming benchmark, into one summary.

`run_stream_protocols` runs the free-running protocol (`free_running.run_free_running`: the
real streaming runtime over each video) and/or the teacher-forced one (`teacher_forced`:
a `Task` run by `tasks.run_task`) into `<out>/free` and `<out>/teacher`, and writes a
summary of both, with their headline numbers and failure counts, to `<out>/metrics.json`
and `<out>/metrics.md`. The streaming benchmark modules (`eval/synthetic.py`,
`eval/ego4d_narration.py`, `eval/soccernet.py`) only load their records and call it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..streaming_perframe import default_threshold
from .free_running import run_free_running
from .tasks import PROTOCOLS, run_task, write_json, write_markdown_table
from .teacher_forced import TeacherForcedTask


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
        task: a stream task (`TeacherForcedTask`): its `examples()` are
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


__all__ = ["run_stream_protocols"]
