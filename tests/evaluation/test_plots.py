"""The timeline plot in `eval/plots.py` writes a real PNG and leaves global state alone.

Run: .venv/bin/python -m pytest tests/evaluation/test_plots.py -q
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streammind.evaluation.plots import plot_timeline

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_plot_timeline_writes_png(tmp_path):
    import matplotlib

    backend = matplotlib.rcParams["backend"]
    times = np.arange(0, 20, 0.5)
    probs = 0.5 + 0.45 * np.sin(times)
    path = plot_timeline(
        times, probs, 0.6, gt_times=[2.0, 8.0, 14.0], reply_times=[1.5, 8.0],
        path=tmp_path / "plots" / "video.png", title="video 1",
    )
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 10_000
    assert matplotlib.rcParams["backend"] == backend


def test_plot_timeline_without_events_or_replies(tmp_path):
    path = plot_timeline([0.0, 0.5, 1.0], [0.1, 0.2, 0.3], 0.5, [], [], tmp_path / "empty.png")
    assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_plot_timeline_rejects_mismatched_lengths(tmp_path):
    with pytest.raises(ValueError):
        plot_timeline([0.0, 1.0], [0.5], 0.5, [], [], tmp_path / "bad.png")


def test_importing_plots_does_not_import_matplotlib():
    code = "import sys, streammind.evaluation.plots; assert 'matplotlib' not in sys.modules"
    repo_root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=repo_root)
