"""Token sampling by value: how many tokens a turn keeps, and which, from first principles.

Run: .venv/bin/python -m pytest tests/model/test_sampling.py -q
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from streammind.sampling import num_selected, select_indices, select_tokens


def exact_count(n: int, ratio: str) -> int:
    """ceil(ratio * n) in exact rational arithmetic, clamped to [1, n] (0 for an empty turn)."""
    if n == 0:
        return 0
    return min(n, max(1, math.ceil(Fraction(ratio) * n)))


@pytest.mark.parametrize("strategy", ["similarity", "uniform"])
@pytest.mark.parametrize("ratio", ["0.1", "0.2", "0.25", "0.3", "0.5", "0.7", "0.9", "1", "0"])
def test_count_is_the_exact_ceiling_of_ratio_times_n(strategy, ratio):
    # 0.3 * 10 = 3.0000000000000004 and 0.7 * 10 = 7.000000000000001 in floats: a plain
    # ceil would keep one token more than p * n exactly on these boundaries.
    for n in range(0, 41):
        assert num_selected(n, strategy, float(ratio)) == exact_count(n, ratio), (n, ratio)


def test_count_boundaries_written_out():
    assert num_selected(10, "similarity", 0.3) == 3  # exactly 3, not 4
    assert num_selected(10, "similarity", 0.31) == 4  # just past the boundary
    assert num_selected(4, "uniform", 0.5) == 2
    assert num_selected(5, "uniform", 0.5) == 3  # 2.5 rounds up
    assert num_selected(3, "similarity", 0.01) == 1  # never fewer than one
    assert num_selected(3, "similarity", 2.0) == 3  # never more than n
    assert num_selected(1, "similarity", 0.5) == 1
    assert num_selected(0, "similarity", 0.5) == 0
    assert num_selected(0, "all", 0.5) == 0
    assert num_selected(7, "all", 0.1) == 7
    with pytest.raises(ValueError, match="'exponential'"):
        num_selected(7, "exponential", 0.5)


def _unit(angle_deg: float, norm: float = 1.0) -> list[float]:
    a = math.radians(angle_deg)
    return [norm * math.cos(a), norm * math.sin(a)]


def test_similarity_is_cosine_to_the_newest_token():
    """The kept tokens are those pointing closest to the newest one, whatever their length.

    Angles from the newest token (at 0 deg): 170, 10, 90, 5, 60 (but 100x longer), 30.
    Cosine to the newest keeps 5, 10, 30 deg plus the newest itself; a dot product would
    take the long vector at 60 deg, and similarity to the first token (at 170 deg) or to
    the mean would pick others.
    """
    angles = [170, 10, 90, 5, 60, 30, 0]
    norms = [1, 1, 1, 1, 100, 1, 1]
    tokens = torch.tensor([_unit(a, s) for a, s in zip(angles, norms)])
    idx = select_indices(tokens, "similarity", 4 / 7)
    assert idx.tolist() == [1, 3, 5, 6]  # time order, not similarity order
    assert torch.equal(select_tokens(tokens, "similarity", 4 / 7), tokens[[1, 3, 5, 6]])

    # Only the direction counts: shrinking the newest token does not change the choice,
    # and the farthest directions are dropped first as the ratio falls.
    scaled = tokens.clone()
    scaled[-1] *= 0.01
    assert select_indices(scaled, "similarity", 4 / 7).tolist() == [1, 3, 5, 6]
    assert select_indices(tokens, "similarity", 2 / 7).tolist() == [3, 6]
    assert select_indices(tokens, "similarity", 1 / 7).tolist() == [6]


def test_similarity_ties_go_to_later_frames_and_the_newest_is_kept():
    same = torch.ones(6, 3)  # every token identical: all similarities are 1
    assert select_indices(same, "similarity", 0.5).tolist() == [3, 4, 5]
    # The newest token is kept even when an older copy of it exists.
    tokens = torch.tensor([_unit(0), _unit(90), _unit(0)])
    assert select_indices(tokens, "similarity", 0.3).tolist() == [2]
    assert select_indices(tokens, "similarity", 0.5).tolist() == [0, 2]


def test_similarity_works_on_low_precision_tokens():
    tokens = torch.tensor([_unit(a) for a in (80, 20, 50, 0)], dtype=torch.bfloat16)
    assert select_indices(tokens, "similarity", 0.5).tolist() == [1, 3]


@pytest.mark.parametrize(
    "n, ratio, expected",
    [
        (7, 3 / 7, [0, 3, 6]),  # linspace(6, 0, 3) = 6, 3, 0
        (10, 0.2, [0, 9]),  # the oldest and the newest
        (9, 0.5, [0, 2, 4, 6, 8]),  # every other frame, ending at the newest
        (5, 0.2, [4]),  # k = 1 keeps the newest
        (4, 1.0, [0, 1, 2, 3]),
    ],
)
def test_uniform_is_evenly_spaced_and_ends_at_the_newest(n, ratio, expected):
    tokens = torch.randn(n, 4)
    assert select_indices(tokens, "uniform", ratio).tolist() == expected


def test_all_keeps_every_token_in_order():
    tokens = torch.randn(5, 3)
    assert select_indices(tokens, "all", 0.1).tolist() == [0, 1, 2, 3, 4]
    assert torch.equal(select_tokens(tokens, "all", 0.1), tokens)


@pytest.mark.parametrize("strategy, ratio", [("similarity", 0.5), ("uniform", 0.5), ("all", 0.5), ("similarity", 1.0)])
def test_indices_live_on_the_tokens_device(strategy, ratio):
    """Every tensor made here follows the tokens' device (the meta device stands in for a GPU:
    mixing it with a CPU tensor raises)."""
    idx = select_indices(torch.empty(7, 3, device="meta"), strategy, ratio)
    assert idx.device.type == "meta" and idx.dtype == torch.long and idx.shape == (num_selected(7, strategy, ratio),)
