"""The gate's parallel layout and window rule: `gate_layout` against a frame-by-frame reference,
`turn_position`, the turn-memory bound, and the loss settings.

Run: .venv/bin/python -m pytest tests/model/test_gate.py -q
"""

from __future__ import annotations

import pytest
import torch

from streammind.gate import GateLossConfig, gate_layout, turn_position
from streammind.sampling import memory_frames


def reference_segments(length: int, respond: list[bool], window: int) -> list[list[int]]:
    """Segments of one row, frame by frame: a new one at t = 0, after a response, and after `window` frames."""
    segments, run = [], 0
    for t in range(length):
        if t == 0 or respond[t - 1] or run == window:
            segments.append([])
            run = 0
        segments[-1].append(t)
        run += 1
    return segments


@pytest.mark.parametrize("window", [1, 2, 3, 7])
def test_gate_layout_matches_the_frame_by_frame_rule(window):
    g = torch.Generator().manual_seed(window)
    B, T = 4, 17
    lengths = [17, 9, 1, 12]
    frame_mask = torch.arange(T)[None] < torch.tensor(lengths)[:, None]
    respond = torch.rand(B, T, generator=g) < 0.2
    layout = gate_layout(frame_mask, respond, window)
    expected = []
    for b, n in enumerate(lengths):
        expected += [(b, [b * T + t for t in seg]) for seg in reference_segments(n, respond[b].tolist(), window)]
    assert layout.sample.tolist() == [b for b, _ in expected]
    got = [[i for i in row if i >= 0] for row in layout.frames.tolist()]
    assert got == [frames for _, frames in expected]
    assert layout.frames.shape[1] == max(len(frames) for _, frames in expected)


def test_gate_layout_of_an_empty_batch():
    layout = gate_layout(torch.zeros(2, 3, dtype=torch.bool), torch.zeros(2, 3, dtype=torch.bool), 4)
    assert layout.sample.shape == (0,) and layout.frames.shape == (0, 0)


def test_turn_position_is_the_window_rule_on_ints_and_tensors():
    assert [turn_position(n, 4) for n in range(9)] == [0, 1, 2, 3, 0, 1, 2, 3, 0]
    assert turn_position(torch.tensor([0, 3, 4, 5]), 4).tolist() == [0, 3, 0, 1]
    assert turn_position(7, 1) == 0  # the per-frame gate


def test_memory_frames_keeps_the_newest():
    assert [memory_frames(n, 5) for n in (0, 3, 5, 9)] == [0, 3, 5, 5]


def test_gate_loss_config_checks_its_settings():
    assert GateLossConfig() == GateLossConfig(kind="ce", class_weights=(0.15, 0.85), focal_gamma=2.0)
    with pytest.raises(ValueError, match="unknown gate loss 'hinge'"):
        GateLossConfig(kind="hinge")
    with pytest.raises(ValueError, match="silent, respond"):
        GateLossConfig(class_weights=(1.0,))
