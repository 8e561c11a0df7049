"""Predictions per second of full WRN-40-2 width assignments from an open table.

    python -m tools.bench_predict [--table tables/rpi3b-wrn-40-2.sqlite] [--n 20000]

Prints the rate of `Predictor.predict` on random valid assignments (blocks removed included)
and, for comparison, the obvious alternative: summing `breakdown()` (a Python loop over layers).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from latency.table import LatencyTable
from models.families import get_arch


def random_widths(arch, rng, n, patterns: int | None):
    """Random widths; the blocks removed come from `patterns` distinct sets (as in a search,
    which revisits the same few), or are drawn anew for every assignment (None)."""
    removable = [g.name for g in arch.prunable_groups if g.may_be_zero]
    pool = [set(rng.choice(removable, size=int(rng.integers(0, 4)), replace=False)) for _ in range(patterns or 0)]
    out = []
    for _ in range(n):
        zero = pool[int(rng.integers(len(pool)))] if pool else {g for g in removable if rng.random() < 0.1}
        out.append({g.name: 0 if g.name in zero else int(rng.integers(max(1, g.full // 4), g.full + 1))
                    for g in arch.prunable_groups})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", default="tables/rpi3b-wrn-40-2.sqlite")
    p.add_argument("--arch", default="wrn-40-2")
    p.add_argument("--n", type=int, default=20000)
    args = p.parse_args()
    arch = get_arch(args.arch)
    table = LatencyTable.open(args.table)
    predictor = table.predictor(arch)
    ws = random_widths(arch, np.random.default_rng(0), args.n, patterns=50)
    t0 = time.perf_counter()
    fast = [predictor.predict(w) for w in ws]
    t_fast = time.perf_counter() - t0
    cold = random_widths(arch, np.random.default_rng(1), args.n // 10, patterns=None)
    fresh = table.predictor(arch, allow_missing=True)  # an empty plan cache
    t0 = time.perf_counter()
    for w in cold:
        fresh.predict(w)
    t_cold = time.perf_counter() - t0
    # the plan of a new set of removed blocks: which layers run (Arch.plan_positions), then the folds
    from latency.fusion import RuntimePlanner

    zero_flags = [arch.zero_flags({g for g, c in w.items() if c == 0}) for w in cold]
    planner = RuntimePlanner(arch)
    t0 = time.perf_counter()
    for z in zero_flags:
        planner(z)
    t_planner = time.perf_counter() - t0
    t0 = time.perf_counter()
    for z in zero_flags:
        arch.plan_positions(z)
    t_alive = time.perf_counter() - t0
    m = max(1, args.n // 20)
    t0 = time.perf_counter()
    slow = [sum(l.seconds or 0.0 for l in predictor.breakdown(w)) for w in ws[:m]]
    t_slow = (time.perf_counter() - t0) * args.n / m
    assert np.allclose(fast[:m], slow), "predict and breakdown disagree"
    print(f"table {args.table}, {args.arch}, {args.n} random width assignments")
    print(f"predict():          {args.n / t_fast:10,.0f} predictions/s (removed blocks from 50 sets, as a search revisits them)")
    print(f"predict(), cold:    {len(cold) / t_cold:10,.0f} predictions/s (every assignment removes a new set of blocks)")
    print(f"sum of breakdown(): {args.n / t_slow:10,.0f} predictions/s (per-layer Python loop)")
    print(f"ratio: {t_slow / t_fast:.1f}x")
    print(f"plan of a new set of removed blocks: {t_planner / len(cold) * 1e6:.1f} µs (RuntimePlanner; of which "
          f"{t_alive / len(cold) * 1e6:.1f} µs Arch.plan_positions, the rest the batch-norm folds)")


if __name__ == "__main__":
    main()
