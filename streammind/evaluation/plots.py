"""Timeline plot for one streamed video: gate probability against ground-truth events.

The figure shows the gate's respond probability over time, the decision threshold, the
ground-truth event times (vertical lines) and the times the model replied (markers on the
probability curve). It is drawn on a `matplotlib.figure.Figure` with the Agg canvas
attached explicitly, so neither importing this module nor calling the function touches
pyplot or the global backend; matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def plot_filename(example_id: str) -> str:
    """A file name for an example's plot: ids such as "match/1" keep their folders apart ("/" -> "__")."""
    return str(example_id).strip("/").replace("/", "__") + ".png"


def plot_timeline(
    times: Sequence[float],
    probs: Sequence[float],
    threshold: float,
    gt_times: Sequence[float],
    reply_times: Sequence[float],
    path: str | Path,
    title: str | None = None,
) -> Path:
    """Draw one video's gate timeline to a PNG.

    Args:
        times: T frame times in seconds (increasing).
        probs: T gate respond probabilities, one per frame time.
        threshold: the decision threshold drawn as a horizontal line.
        gt_times: ground-truth event times in seconds.
        reply_times: times in seconds at which the model replied.
        path: output PNG; its parent directory is created.
        title: optional figure title.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    times = np.asarray(times, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    if times.shape != probs.shape or times.ndim != 1:
        raise ValueError(
            f"times and probs must be 1-D of equal length, got {times.shape} and {probs.shape}"
        )
    gt_times = np.asarray(gt_times, dtype=np.float64).reshape(-1)
    reply_times = np.asarray(reply_times, dtype=np.float64).reshape(-1)

    figure = Figure(figsize=(10, 3.2), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    axes.plot(times, probs, color="tab:blue", linewidth=1.2, label="gate P(respond)")
    axes.axhline(
        threshold, color="tab:gray", linestyle="--", linewidth=1, label=f"threshold {threshold:g}"
    )
    if gt_times.size:
        # One artist for all events, so the legend has a single entry.
        axes.vlines(
            gt_times, 0, 1, colors="tab:green", linewidth=1, alpha=0.8, label="ground-truth event"
        )
    if reply_times.size:
        # Markers sit on the probability curve at the reply time (at the threshold without one).
        if times.size:
            marker_y = np.interp(reply_times, times, probs)
        else:
            marker_y = np.full(reply_times.shape, threshold)
        axes.scatter(
            reply_times, marker_y, color="tab:red", marker="v", s=36, zorder=3, label="reply"
        )
    axes.set_ylim(-0.02, 1.05)
    axes.set_xlabel("time (s)")
    axes.set_ylabel("gate P(respond)")
    if title:
        axes.set_title(title)
    # Outside the axes, so the legend never hides the curve.
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    figure.tight_layout()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path
