"""notebooks/stream_demo.ipynb runs end to end (tiny model, a short clip), so it cannot rot.

Run: .venv/bin/python -m pytest tests/test_notebook.py -q

Executes every cell with nbclient in a fresh kernel, with STREAMMIND_MODEL pointing at a
tiny model saved to a temporary directory and STREAMMIND_VIDEO at a 6-second sample clip.
"""

from __future__ import annotations

import pytest

from streammind import save_model
from tests.helpers import CLIP, REPO, make_tiny

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = REPO / "notebooks" / "stream_demo.ipynb"


def test_stream_demo_notebook_runs(tmp_path, tiny_tokenizer, monkeypatch):
    clip = CLIP
    model, processor = make_tiny(tiny_tokenizer, max_reply_tokens=4)  # random weights: keep replies short
    save_model(model, processor, tmp_path / "model")
    monkeypatch.setenv("STREAMMIND_MODEL", str(tmp_path / "model"))
    monkeypatch.setenv("STREAMMIND_VIDEO", str(clip))
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the kernel imports this checkout even when it is not installed

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError on the first failing cell

    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert f"video: {clip}" in text and '"frames": 13' in text
    assert any("image/png" in out.get("data", {}) for out in outputs), "the timeline plot was not drawn"
    assert "(query joined) Tell me when something changes colour." in text
