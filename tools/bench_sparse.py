"""Sparse grids: fraction of cells measured with step:K, and the error of the interpolated cells
against a full-grid build of the same table.

    python -m tools.bench_sparse [--arch wrn-10-1] [--runs 20] [--table FULL.sqlite]

Builds (or reuses) a full-grid local table, then, from the same measurements, keeps only the
cells a step:K grid would measure, interpolates the rest and compares every interpolated cell
with its measured full-grid value (the median of its passes) and with the smoothed full grid
(sigma 3, which averages out the timing noise the raw cells carry). Same measurements, so the
figures isolate the interpolation error.
"""
from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

import numpy as np


def interpolation_errors(store, step: int, sigma: float) -> tuple[int, int, np.ndarray, np.ndarray]:
    from latency.finalize import type_grid
    from latency.layer_types import grid_cells
    from latency.smoothing import fill_sparse, smooth

    raw, cells = store.raw_by_cell(), store.cells()
    means: dict[str, np.ndarray] = {}
    types = store.layer_types()
    for key, t in types.items():
        ins, outs = type_grid(t)
        means[key] = np.full((len(ins), len(outs)), np.nan)
    for cell_id, (key, c_in, c_out) in cells.items():
        t = types[key]
        means[key][c_in - t.in_lo, (c_out - t.out_lo) if t.two_axes else 0] = np.median(raw[cell_id])
    n_sparse = n_full = 0
    vs_raw, vs_smooth = [], []
    for key, t in types.items():
        full = means[key]
        sparse_cells = grid_cells(t, step)
        rows = sorted({c - t.in_lo for c, _ in sparse_cells})
        cols = sorted({(o - t.out_lo) if t.two_axes else 0 for _, o in sparse_cells})
        filled = fill_sparse(full, rows, cols)
        interpolated = np.ones(full.shape, bool)
        interpolated[np.ix_(rows, cols)] = False
        reference_smooth = smooth(full, sigma)
        vs_raw.append(np.abs(filled - full)[interpolated] / full[interpolated])
        vs_smooth.append(np.abs(smooth(filled, sigma) - reference_smooth)[interpolated] / reference_smooth[interpolated])
        n_sparse += len(sparse_cells)
        n_full += full.size
    return n_sparse, n_full, np.concatenate(vs_raw) * 100, np.concatenate(vs_smooth) * 100


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="wrn-10-1")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--passes", type=int, default=1)
    p.add_argument("--sigma", type=float, default=3.0)
    p.add_argument("--table", help="an existing full-grid table of --arch (default: build one)")
    args = p.parse_args()
    from latency.build import build_table
    from latency.devices.local import LocalDevice
    from latency.recipe import TableRecipe
    from latency.store import TableStore
    from models.families import get_arch

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.table) if args.table else Path(tmp) / "full.sqlite"
        if not args.table:
            recipe = TableRecipe(device_kind="local", passes=args.passes, runs=args.runs, sigma=args.sigma)
            r = asyncio.run(build_table(get_arch(args.arch), path, [LocalDevice(settings=recipe.timing())], recipe))
            print(f"full grid of {args.arch}: {r.cells:,} cells, {args.passes} pass(es) of {args.runs} runs, "
                  f"built in {r.wall_s:.0f} s")
        store = TableStore.open(path)
        try:
            for step in (4, 8):
                n_sparse, n_full, raw_err, smooth_err = interpolation_errors(store, step, args.sigma)
                print(f"step:{step}: {n_sparse:,} of {n_full:,} cells measured ({100 * n_sparse / n_full:.1f}%); "
                      f"interpolated cells vs measured full grid: median {np.median(raw_err):.2f}%, "
                      f"p95 {np.percentile(raw_err, 95):.1f}%, max {raw_err.max():.1f}%; "
                      f"after smoothing (sigma {args.sigma:g}) vs smoothed full grid: median {np.median(smooth_err):.2f}%, "
                      f"max {smooth_err.max():.1f}%")
        finally:
            store.close()


if __name__ == "__main__":
    main()
