"""What the shipped Raspberry Pi 3B table says about measuring WRN-40-2 on a Pi (docs/pi-builds.md).

    python -m tools.pi_reference [--table tables/rpi3b-wrn-40-2.sqlite]

1. Channel-block steps: for every layer type and axis, the amplitude of the latency's component
   of period 4, 8, 16 and 32 channels (after a cubic trend), as a share of the latency, and what
   it was before the thesis's Gaussian smoothing (sigma 3 keeps exp(-2 pi^2 sigma^2 / P^2) of a
   period-P component: 1.5e-5 at 4, 0.06 at 8, 0.50 at 16).
2. Sparse grids: the error of each candidate grid's linear interpolation against the table's own
   cells, per cell and for 200 random WRN-40-2 width assignments (the table is smoothed, so this
   is the interpolation of its curvature, not of steps it no longer shows).
3. Each grid's cells, layer time per pass (every cell once, read as `build-tables` reads the
   reference), mean cell and pure timed compute at 2 + 50 runs and 3 passes.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

PERIODS = (4, 8, 16, 32)
GRIDS = ((1, 0), (4, 0), (4, 4), (4, 8), (8, 0), (8, 8))


def attenuation(period: float, sigma: float = 3.0) -> float:
    """What a Gaussian filter of `sigma` keeps of a sinusoid of `period` samples."""
    return float(np.exp(-2 * np.pi ** 2 * sigma ** 2 / period ** 2))


def periodic_amplitudes(values: np.ndarray, periods=PERIODS) -> dict[int, float]:
    """Median over rows (the upper three quarters of the other axis) of the amplitude of each
    period along the last axis, after a cubic trend, as a share of the row's mean."""
    n = values.shape[1]
    x = np.arange(4, n - 4)  # away from the filter's 'nearest' edges
    found: dict[int, list[float]] = {p: [] for p in periods}
    for row in values[values.shape[0] // 4:]:
        y = row[4:n - 4]
        residual = y - np.polyval(np.polyfit(x, y, 3), x)
        for p in periods:
            found[p].append(2 * abs(np.mean(residual * np.exp(-2j * np.pi * x / p))) / y.mean())
    return {p: float(np.median(v)) for p, v in found.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", default=str(Path(__file__).resolve().parents[1] / "tables" / "rpi3b-wrn-40-2.sqlite"))
    p.add_argument("--arch", default="wrn-40-2")
    args = p.parse_args()
    from latency import eta
    from latency.layer_types import axis_values, grid_cells, network_layer_types
    from latency.smoothing import fill_sparse
    from latency.table import LatencyTable
    from models.families import get_arch

    table = LatencyTable.open(args.table)
    print("1. periodic components along each axis, % of the latency: in the table -> before smoothing "
          f"(sigma 3 kept {attenuation(4):.1g}, {attenuation(8):.2f}, {attenuation(16):.2f}, {attenuation(32):.2f})")
    for key, t in table.types.items():
        for axis, name in ((1, "c_out"), (0, "c_in")):
            values = table.values[key] if axis == 1 else table.values[key].T
            if values.shape[1] < 32:
                continue
            amps = periodic_amplitudes(values)
            # where smoothing kept under 1 %, what is left is the analysis's floor, not a step
            print(f"  {key:12s} {name:5s} " + "  ".join(
                f"P{q}: {100 * a:.3f} -> " + (f"{100 * a / attenuation(q):.2g}" if attenuation(q) > 0.01 else "?")
                for q, a in amps.items()))

    arch = get_arch(args.arch)
    groups = [g for g in arch.groups if g.prunable]
    rng = np.random.default_rng(0)
    widths = [{g.name: int(rng.integers(max(1, g.full // 4), g.full + 1)) for g in groups} for _ in range(200)]
    exact = [table.predict(arch, w) for w in widths]
    print("\n2. sparse grids interpolated against the table's cells: per cell (median, p99, max) | networks (median, max)")
    for step, block in GRIDS[1:]:
        filled, errors = {}, []
        for key, t in table.types.items():
            v = table.values[key]
            rows = [c - t.in_lo for c in axis_values(t.in_lo, t.in_hi, step, block)]
            cols = [c - t.out_lo for c in axis_values(t.out_lo, t.out_hi, step, block)] if v.shape[1] > 1 else [0]
            filled[key] = fill_sparse(v, rows, cols)
            errors.append((np.abs(filled[key] - v) / v).ravel())
        e = 100 * np.concatenate(errors)
        sparse = LatencyTable(table.path, table.meta, table.types, filled, table.measured, table.layer_map, table.recipe)
        net = [100 * abs(sparse.predict(arch, w) - x) / x for w, x in zip(widths, exact)]
        print(f"  step:{step} block:{block}: {np.median(e):.2f} %, {np.percentile(e, 99):.2f} %, {e.max():.2f} % | "
              f"{np.median(net):.3f} %, {max(net):.3f} %")

    types = network_layer_types([arch])
    print(f"\n3. {arch.name} grids read from the table: cells, layer time per pass, mean cell, pure timed compute "
          "(2 + 50 runs, 3 passes)")
    for step, block in GRIDS:
        grid = {k: grid_cells(t, step, block) for k, t in types.items()}
        sums = eta.reference_latencies(grid, types, table.types, table.values)
        timed = eta.timed_compute_s(sums.seconds, 2, 50, 3)
        print(f"  step:{step} block:{block}: {sums.cells:,} cells, {sums.seconds:.1f} s, "
              f"{1e3 * sums.seconds / sums.cells:.3f} ms, {eta.format_duration(timed)}"
              f" ({sums.estimated_cells} cells from the cost model)")


if __name__ == "__main__":
    main()
