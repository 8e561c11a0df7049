"""Pure maths of a table: per-cell statistics, interpolation of sparse grids, smoothing."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy.interpolate import RegularGridInterpolator
from scipy.ndimage import gaussian_filter


#: how the passes of one model combine into its value: the mean (the thesis), the median, or the
#: minimum (the undisturbed pass, where disturbances only ever slow a pass down) of the passes'
#: mean invocations; or of each pass's fastest invocation: "fastest", the fastest of all passes
#: (the undisturbed time, where a shared machine slows whole passes down in phases lasting
#: seconds), or "median-fastest", the median over passes (each pass loads the model afresh, and
#: the minimum over loads picks each layer's luckiest memory layout, which a network summed from
#: them cannot have all at once); the measurements behind them: docs/measuring.md
ESTIMATORS: dict[str, Callable[[Sequence[float]], float]] = {
    "mean": lambda a: float(np.mean(a)), "median": lambda a: float(np.median(a)), "min": lambda a: float(np.min(a)),
    "fastest": lambda a: float(np.min(a)), "median-fastest": lambda a: float(np.median(a)),
}

#: the per-pass figure each estimator combines: the pass's mean invocation or its fastest one
ESTIMATOR_COLUMNS: dict[str, str] = {"mean": "seconds", "median": "seconds", "min": "seconds", "fastest": "fastest",
                                     "median-fastest": "fastest"}
#: estimators that take the smallest value: a pass timed while the machine read slow can only be
#: slower, so they keep every pass (the others count only the passes at full speed when a cell
#: has one: `TableStore.raw_by_cell`)
SMALLEST_ESTIMATORS = frozenset({"min", "fastest"})


class EstimatorError(ValueError):
    """Measurements that do not hold what an estimator needs."""


def estimate(estimator: str, values: Sequence[float | None], what: str = "a model") -> float:
    """`values` (one per pass, from the estimator's column) combined by `estimator`."""
    if any(v is None for v in values):
        raise EstimatorError(
            f"{what} has passes without their fastest invocation (measured by an older version or by "
            f"benchmark_model, which does not report it): use --estimator min, or measure again")
    return ESTIMATORS[estimator](values)


def cell_stats(values: Sequence[float]) -> tuple[float, float, float, int]:
    """(mean, median, std, count) of one cell's passes."""
    a = np.asarray(values, dtype=float)
    if a.size == 0:
        raise ValueError("a cell with no measurement has no statistics")
    return float(a.mean()), float(np.median(a)), float(a.std(ddof=1)) if a.size > 1 else 0.0, int(a.size)


def fill_sparse(values: np.ndarray, rows: Sequence[int], cols: Sequence[int]) -> np.ndarray:
    """Linear interpolation of a grid measured at the Cartesian product of `rows` x `cols`
    (indices into `values`, both including the first and last index) to every cell.

    Never extrapolates: the edges of the grid must be among the measured rows and columns."""
    values = np.asarray(values, dtype=float)
    rows, cols = np.asarray(sorted(rows)), np.asarray(sorted(cols))
    n_rows, n_cols = values.shape
    if rows[0] != 0 or rows[-1] != n_rows - 1 or cols[0] != 0 or cols[-1] != n_cols - 1:
        raise ValueError("a sparse grid must include both edges of every axis (no extrapolation)")
    known = values[np.ix_(rows, cols)]
    if np.isnan(known).any():
        raise ValueError("a measured cell of the sparse grid has no value")
    if len(rows) == n_rows and len(cols) == n_cols:
        return values.copy()
    if n_cols == 1:
        return np.interp(np.arange(n_rows), rows, known[:, 0])[:, None]
    if n_rows == 1:
        return np.interp(np.arange(n_cols), cols, known[0])[None, :]
    interp = RegularGridInterpolator((rows, cols), known, method="linear")
    ii, jj = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    return interp(np.stack([ii.ravel(), jj.ravel()], axis=1)).reshape(n_rows, n_cols)


EDGE_MODES = ("linear", "nearest")


def local_linear_operator(n: int, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """(n, n) matrix of 1-D Gaussian smoothing with a local linear fit at each point.

    Row i fits a + b (j - i) to the points j within `truncate` sigma, weighted by the Gaussian,
    and returns a. Where the window is symmetric (away from the edges) that is exactly the
    normalised Gaussian average; near an edge it is not pulled towards the inside of the grid,
    which on a latency rising with channels would lower every edge cell (a full-width layer
    sits on the edge of both axes)."""
    if n == 1 or sigma == 0:
        return np.eye(n)
    d = np.arange(n)[None, :] - np.arange(n)[:, None]  # j - i
    w = np.exp(-0.5 * (d / sigma) ** 2) * (np.abs(d) <= truncate * sigma + 0.5)
    s0, s1, s2 = w.sum(1), (w * d).sum(1), (w * d * d).sum(1)
    det = s0 * s2 - s1 * s1
    # a = sum_j w_j (s2 - s1 d_j) f_j / det; det > 0 whenever the window holds two points
    return w * (s2[:, None] - s1[:, None] * d) / det[:, None]


def smooth(grid: np.ndarray, sigma: float, edges: str = "linear") -> np.ndarray:
    """2-D Gaussian filter over the (c_in, c_out) grid; sigma 0 returns the grid unchanged.

    `edges`: 'linear' (default) fits a local plane at the edges, so a cell on the edge keeps the
    level its neighbours' trend gives it; 'nearest' is `scipy.ndimage.gaussian_filter` with
    mode 'nearest' (the thesis), which lowers the edge cells of a rising grid."""
    grid = np.asarray(grid, dtype=float)
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if edges not in EDGE_MODES:
        raise ValueError(f"unknown edge mode {edges!r}: use one of {', '.join(EDGE_MODES)}")
    if sigma == 0:
        return grid.copy()
    if np.isnan(grid).any():
        raise ValueError("cannot smooth a grid with unmeasured cells: fill it first")
    if edges == "nearest":
        return gaussian_filter(grid, sigma=sigma, mode="nearest")
    # the Gaussian weights are separable, so the local fit on (1, dx, dy, dx dy) is the 1-D fit
    # along one axis followed by the other
    rows, cols = grid.shape
    return local_linear_operator(rows, sigma) @ grid @ local_linear_operator(cols, sigma).T
