"""Pure maths of a table: per-cell statistics, interpolation of sparse grids, smoothing."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.interpolate import RegularGridInterpolator
from scipy.ndimage import gaussian_filter


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


def smooth(grid: np.ndarray, sigma: float) -> np.ndarray:
    """2-D Gaussian filter over the (c_in, c_out) grid, as in the thesis (mode 'nearest');
    sigma 0 returns the grid unchanged."""
    grid = np.asarray(grid, dtype=float)
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return grid.copy()
    if np.isnan(grid).any():
        raise ValueError("cannot smooth a grid with unmeasured cells: fill it first")
    return gaussian_filter(grid, sigma=sigma, mode="nearest")
