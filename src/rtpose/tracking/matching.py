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
    # np.maximum(x, 0) rather than np.clip: the same numbers, at a fraction of the call overhead
    width = np.maximum(
        np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0.0
    )
    height = np.maximum(
        np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0.0
    )
    inter = width * height
    area_a = np.maximum(a[:, 2] - a[:, 0], 0.0) * np.maximum(a[:, 3] - a[:, 1], 0.0)
    area_b = np.maximum(b[:, 2] - b[:, 0], 0.0) * np.maximum(b[:, 3] - b[:, 1], 0.0)
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
    np.copyto(padded[:, :m], cost, where=allowed)
    padded.flat[m :: m + n + 1] = max_cost  # each row's own "unmatched" option, (i, m + i)
    rows, cols = linear_sum_assignment(padded)  # every row gets a column: there are m + n of them
    paired = cols < m
    paired[paired] = allowed[rows[paired], cols[paired]]
    matches = np.stack([rows[paired], cols[paired]], axis=1).astype(np.int64, copy=False)
    free_cols = np.ones(m, bool)
    free_cols[matches[:, 1]] = False
    return matches, rows[~paired].astype(np.int64, copy=False), np.flatnonzero(free_cols).astype(np.int64)
