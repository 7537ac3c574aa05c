"""Box overlap and optimal one-to-one assignment for tracking.

`linear_assignment` is an exact minimum-cost matching (the shortest-augmenting-path form of the
Hungarian method, O(n^2 m)) written here in NumPy so the tracker needs neither scipy nor a compiled
`lap` package. Tracking matrices are small (tens of tracks x tens of detections), where this runs in
well under a millisecond.

A pair may only be matched when its cost is at most `max_cost`. This is solved exactly by giving every
row a private "stay unmatched" column of cost `max_cost`: the optimum then never takes a pair costing
more than leaving both sides unmatched.
"""

from __future__ import annotations

import numpy as np

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


def _min_cost_rows_to_columns(cost: np.ndarray) -> np.ndarray:
    """Optimal assignment of every row of an (n, m) cost matrix, n <= m, to a distinct column.

    Rows are added one at a time; each addition grows a shortest-path tree over columns using reduced
    costs (row potentials u, column potentials v), then flips the augmenting path. Returns the column of
    each row.
    """
    if cost.size == 0:
        return np.zeros(len(cost), dtype=np.int64)
    greedy = cost.argmin(axis=1)
    if len(np.unique(greedy)) == len(greedy) and np.isfinite(cost).all():
        # Every row's first cheapest column is distinct (the usual case in tracking). Then each row's
        # search ends at once on that column, leaving the column potentials at 0: the result is exactly
        # this, without the search.
        return greedy.astype(np.int64)
    return _shortest_augmenting_paths(cost)


def _shortest_augmenting_paths(cost: np.ndarray) -> np.ndarray:
    """The search of `_min_cost_rows_to_columns`, always run in full."""
    n, m = cost.shape
    u = np.zeros(n + 1)
    v = np.zeros(m + 1)
    row_of_col = np.zeros(m + 1, dtype=np.int64)  # 1-based row matched to column j; 0 = free
    for row in range(1, n + 1):
        row_of_col[0] = row
        col = 0
        min_reduced = np.full(m + 1, np.inf)
        previous_col = np.zeros(m + 1, dtype=np.int64)
        used = np.zeros(m + 1, dtype=bool)
        while True:
            used[col] = True
            current_row = row_of_col[col]
            free = ~used[1:]
            reduced = cost[current_row - 1] - u[current_row] - v[1:]
            better = free & (reduced < min_reduced[1:])
            min_reduced[1:][better] = reduced[better]
            previous_col[1:][better] = col
            candidates = np.where(free, min_reduced[1:], np.inf)
            next_col = int(np.argmin(candidates)) + 1
            delta = candidates[next_col - 1]
            used_cols = np.flatnonzero(used)
            u[row_of_col[used_cols]] += delta
            v[used_cols] -= delta
            min_reduced[1:][free] -= delta
            col = next_col
            if row_of_col[col] == 0:
                break
        while col != 0:  # flip the augmenting path
            prior = previous_col[col]
            row_of_col[col] = row_of_col[prior]
            col = prior
    col_of_row = np.zeros(n, dtype=np.int64)
    for col in range(1, m + 1):
        if row_of_col[col] != 0:
            col_of_row[row_of_col[col] - 1] = col - 1
    return col_of_row


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
    col_of_row = _min_cost_rows_to_columns(padded)
    rows = np.flatnonzero(col_of_row < m)
    rows = rows[allowed[rows, col_of_row[rows]]]
    matches = np.empty((len(rows), 2), np.int64)
    matches[:, 0], matches[:, 1] = rows, col_of_row[rows]
    free_rows, free_cols = np.ones(n, bool), np.ones(m, bool)
    free_rows[matches[:, 0]] = False
    free_cols[matches[:, 1]] = False
    return matches, np.flatnonzero(free_rows).astype(np.int64), np.flatnonzero(free_cols).astype(np.int64)
