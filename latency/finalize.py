"""Derives the per-cell aggregates and smoothed values of a table file from its raw rows."""
from __future__ import annotations

import numpy as np

from .layer_types import LayerType
from .smoothing import (EDGE_MODES, ESTIMATOR_COLUMNS, ESTIMATORS, SMALLEST_ESTIMATORS, cell_stats, estimate,
                        fill_sparse, smooth)
from .store import TableStore


def type_grid(t: LayerType) -> tuple[np.ndarray, np.ndarray]:
    """Channel values along each axis of a type's full range (one-axis types: [0])."""
    ins = np.arange(t.in_lo, t.in_hi + 1)
    outs = np.arange(t.out_lo, t.out_hi + 1) if t.two_axes else np.array([0])
    return ins, outs


def finalize(store: TableStore, sigma: float, estimator: str = "mean", edges: str = "linear") -> dict[str, str]:
    """Recomputes `aggregates` for every type whose grid is completely measured; returns the
    types left out with the reason (incomplete), so nothing half-measured is ever predicted.

    `estimator` is what is smoothed: the mean of the passes (the thesis) or their median (a
    pass disturbed by another process on a shared machine then does not leak into the table) or
    their minimum (the undisturbed state, when disturbances only ever slow a pass down), or the
    fastest single invocation of all passes (`smoothing.ESTIMATORS`).
    `edges`: how smoothing treats the grid's edges (`smoothing.smooth`)."""
    if edges not in EDGE_MODES:
        raise ValueError(f"edges must be one of {EDGE_MODES}, got {edges!r}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {tuple(ESTIMATORS)}, got {estimator!r}")
    cells = store.cells()
    raw = store.raw_by_cell()  # the passes at full speed, where a cell has one
    column = ESTIMATOR_COLUMNS[estimator]
    every_pass = estimator in SMALLEST_ESTIMATORS
    per_pass = raw if column == "seconds" and not every_pass else \
        store.raw_by_cell(column, full_speed_only=not every_pass)
    by_type: dict[str, list[tuple[int, int, int]]] = {}
    for cell_id, (key, c_in, c_out) in cells.items():
        by_type.setdefault(key, []).append((cell_id, c_in, c_out))
    rows: list[dict] = []
    skipped: dict[str, str] = {}
    for key, t in store.layer_types().items():
        type_cells = by_type.get(key, [])
        missing = [c for c in type_cells if c[0] not in raw]
        if not type_cells or missing:
            skipped[key] = f"{len(type_cells) - len(missing)} of {len(type_cells)} cells measured"
            continue
        ins, outs = type_grid(t)
        values = np.full((len(ins), len(outs)), np.nan)
        stats = {}
        for cell_id, c_in, c_out in type_cells:
            i, j = c_in - t.in_lo, (c_out - t.out_lo) if t.two_axes else 0
            stats[(i, j)] = cell_stats(raw[cell_id])
            values[i, j] = estimate(estimator, per_pass[cell_id], f"cell {key} ({c_in}, {c_out})")
        measured_rows = sorted({i for i, _ in stats})
        measured_cols = sorted({j for _, j in stats})
        filled = fill_sparse(values, measured_rows, measured_cols)
        smoothed = smooth(filled, sigma, edges)
        for i, c_in in enumerate(ins):
            for j, c_out in enumerate(outs):
                s = stats.get((i, j))
                rows.append({
                    "type_key": key, "c_in": int(c_in), "c_out": int(c_out),
                    "mean": s[0] if s else None, "median": s[1] if s else None, "std": s[2] if s else None,
                    "count": s[3] if s else 0, "value": float(filled[i, j]), "smoothed": float(smoothed[i, j]),
                    "measured": int(s is not None),
                })
    store.write_aggregates(rows)
    store.set_meta(incomplete_types=skipped)  # what was derived with is the table's recipe
    return skipped
