"""Box overlap and optimal one-to-one assignment for tracking.

`linear_assignment` is an exact minimum-cost matching, solved by SciPy's `linear_sum_assignment`
(a compiled shortest-augmenting-path solver). Our earlier NumPy version of the same method ran its
augmenting-path search in Python: 0.1-1 ms per call at tracking sizes on our CPU, 10% of a video
worker's main thread on the H100 host (py-spy, docs/benchmarks.md); SciPy takes 7-21 us.

A pair may only be matched when its cost is at most `max_cost`. This is solved exactly by giving every
row a private "stay unmatched" column of cost `max_cost`: the optimum then never takes a pair costing
more than leaving both sides unmatched.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from rtpose.errors import RtposeError

_FORBIDDEN = 1e9


def iou_matrix(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of every box in `boxes_a` (N, 4) with every box in `boxes_b` (M, 4), x1y1x2y2 -> (N, M)."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0.0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0.0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0.0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def linear_assignment(cost: np.ndarray, max_cost: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimum-total-cost matching that only pairs entries with cost <= max_cost.

    Returns (matches (P, 2) int64 of [row, col], unmatched rows, unmatched cols), each sorted.
    """
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2:
        raise RtposeError(f"assignment cost must be a 2-D matrix, got shape {cost.shape}")
    if not np.isfinite(max_cost):
        raise RtposeError("assignment max_cost must be finite")
    n, m = cost.shape
    if n == 0 or m == 0:
        return np.zeros((0, 2), np.int64), np.arange(n, dtype=np.int64), np.arange(m, dtype=np.int64)
    allowed = np.isfinite(cost) & (cost <= max_cost)
    padded = np.full((n, m + n), _FORBIDDEN)
    padded[:, :m] = np.where(allowed, cost, _FORBIDDEN)
    padded[np.arange(n), m + np.arange(n)] = max_cost  # each row's own "unmatched" option
    col_of_row = np.empty(n, dtype=np.int64)
    assigned_rows, assigned_cols = linear_sum_assignment(padded)
    col_of_row[assigned_rows] = assigned_cols  # every row gets a column: there are m + n of them
    rows = np.flatnonzero(col_of_row < m)
    rows = rows[allowed[rows, col_of_row[rows]]]
    matches = np.empty((len(rows), 2), np.int64)
    matches[:, 0], matches[:, 1] = rows, col_of_row[rows]
    free_rows, free_cols = np.ones(n, bool), np.ones(m, bool)
    free_rows[matches[:, 0]] = False
    free_cols[matches[:, 1]] = False
    return matches, np.flatnonzero(free_rows).astype(np.int64), np.flatnonzero(free_cols).astype(np.int64)
