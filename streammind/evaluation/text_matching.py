"""Text matching shared by COIN and Ego4D LTA: edit distance and the nearest label.

`levenshtein` is the unit-cost edit distance of two sequences; `NearestMatcher` finds the
Levenshtein-nearest entry of a fixed list of strings, vectorised over the list with numpy
(ties go to the lexicographically smallest string).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def levenshtein(a: Sequence, b: Sequence) -> int:
    """Unit-cost edit distance (insert, delete, substitute) between two sequences."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


class NearestMatcher:
    """The Levenshtein-nearest string of a fixed list (ties: the lexicographically smallest).

    The DP runs over all entries at once: entries are code-point rows padded to a matrix
    [N, L]; for each character of the query one row update needs only a cumulative minimum
    (row[j] = min(a[j], row[j-1] + 1) is j + cummin(a[j] - j)). Results are cached.
    """

    def __init__(self, choices: Iterable[str]):
        self.choices = sorted(set(choices))
        if not self.choices:
            raise ValueError("NearestMatcher needs at least one choice")
        self._index = {c: i for i, c in enumerate(self.choices)}
        width = max(len(c) for c in self.choices)
        self._codes = np.full((len(self.choices), width), -1, dtype=np.int32)  # -1 never equals a character
        for i, c in enumerate(self.choices):
            self._codes[i, : len(c)] = [ord(ch) for ch in c]
        self._lengths = np.array([len(c) for c in self.choices])
        self._cache: dict[str, tuple[str, int]] = {}

    def distances(self, text: str) -> np.ndarray:
        """Edit distance from `text` to every choice: int [N] (order of `self.choices`)."""
        N, L = self._codes.shape
        j = np.arange(L + 1, dtype=np.int64)
        row = np.broadcast_to(j, (N, L + 1)).copy()  # distances from "" to each prefix
        for i, ch in enumerate(text, start=1):
            cost = (self._codes != ord(ch)).astype(np.int64)  # [N, L]
            a = np.empty_like(row)
            a[:, 0] = i
            a[:, 1:] = np.minimum(row[:, 1:] + 1, row[:, :-1] + cost)  # deletion / substitution
            row = np.minimum.accumulate(a - j, axis=1) + j  # insertion chains
        return row[np.arange(N), self._lengths]

    def nearest(self, text: str) -> tuple[str, int]:
        """(nearest choice, its distance)."""
        if text in self._index:
            return text, 0
        if text not in self._cache:
            d = self.distances(text)
            best = int(np.flatnonzero(d == d.min())[0])  # choices are sorted: the first is the smallest
            self._cache[text] = (self.choices[best], int(d[best]))
        return self._cache[text]


__all__ = ["NearestMatcher", "levenshtein"]
