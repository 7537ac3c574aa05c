"""Exact assignment against brute force, and IoU against a direct loop."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from rtpose.errors import RtposeError
from rtpose.tracking.matching import iou_matrix, linear_assignment


def _brute_force_cost(cost: np.ndarray, max_cost: float) -> float:
    """Lowest total over every way to give each row a distinct column or nothing (nothing costs max_cost)."""
    n, m = cost.shape
    best = np.inf
    for choice in itertools.permutations(range(m + n), n):  # columns >= m mean "unmatched"
        total = 0.0
        for row, col in enumerate(choice):
            total += max_cost if col >= m else (cost[row, col] if cost[row, col] <= max_cost else np.inf)
        best = min(best, total)
    return best


def test_assignment_is_optimal_against_brute_force() -> None:
    rng = np.random.default_rng(0)
    for _ in range(120):
        n, m = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        cost = rng.random((n, m))
        max_cost = float(rng.uniform(0.2, 1.1))
        matches, free_rows, free_cols = linear_assignment(cost, max_cost)
        assert len(set(matches[:, 0])) == len(matches) and len(set(matches[:, 1])) == len(matches)
        assert (cost[matches[:, 0], matches[:, 1]] <= max_cost).all()
        assert sorted([*matches[:, 0], *free_rows]) == list(range(n))
        assert sorted([*matches[:, 1], *free_cols]) == list(range(m))
        total = cost[matches[:, 0], matches[:, 1]].sum() + max_cost * (n - len(matches))
        assert total == pytest.approx(_brute_force_cost(cost, max_cost), abs=1e-9)


def test_assignment_beats_greedy_where_greedy_fails() -> None:
    # greedy takes (0, 0) = 0.1 first and must then pay 0.9; the optimum is 0.2 + 0.2
    cost = np.array([[0.1, 0.2], [0.2, 0.9]])
    matches, _, _ = linear_assignment(cost, 1.0)
    assert sorted(map(tuple, matches.tolist())) == [(0, 1), (1, 0)]


def test_assignment_edge_cases() -> None:
    matches, rows, cols = linear_assignment(np.zeros((0, 3)), 0.5)
    assert matches.shape == (0, 2) and rows.size == 0 and cols.tolist() == [0, 1, 2]
    matches, rows, cols = linear_assignment(np.full((2, 2), 0.9), 0.5)  # nothing cheap enough
    assert matches.shape == (0, 2) and rows.tolist() == [0, 1] and cols.tolist() == [0, 1]
    with pytest.raises(RtposeError, match="2-D"):
        linear_assignment(np.zeros(3), 0.5)


def test_iou_matrix_matches_direct_computation() -> None:
    rng = np.random.default_rng(1)
    a = np.concatenate([rng.uniform(0, 50, (6, 2)), rng.uniform(60, 100, (6, 2))], axis=1)
    b = np.concatenate([rng.uniform(0, 80, (4, 2)), rng.uniform(80, 120, (4, 2))], axis=1)
    got = iou_matrix(a, b)
    for i, j in itertools.product(range(6), range(4)):
        w = max(0.0, min(a[i, 2], b[j, 2]) - max(a[i, 0], b[j, 0]))
        h = max(0.0, min(a[i, 3], b[j, 3]) - max(a[i, 1], b[j, 1]))
        area_a = (a[i, 2] - a[i, 0]) * (a[i, 3] - a[i, 1])
        area_b = (b[j, 2] - b[j, 0]) * (b[j, 3] - b[j, 1])
        assert got[i, j] == pytest.approx(w * h / (area_a + area_b - w * h))
    assert iou_matrix(np.zeros((0, 4)), b).shape == (0, 4)
