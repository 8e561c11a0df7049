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


def random_widths(arch, rng, n):
    out = []
    for _ in range(n):
        w = {}
        for g in arch.prunable_groups:
            lo = 0 if g.may_be_zero and rng.random() < 0.1 else 1
            w[g.name] = int(rng.integers(lo if lo == 0 else max(1, g.full // 4), g.full + 1)) if lo else 0
        out.append(w)
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
    ws = random_widths(arch, np.random.default_rng(0), args.n)
    for w in ws[:200]:  # warm the plan cache as a search would
        predictor.predict(w)
    t0 = time.perf_counter()
    fast = [predictor.predict(w) for w in ws]
    t_fast = time.perf_counter() - t0
    m = max(1, args.n // 20)
    t0 = time.perf_counter()
    slow = [sum(l.seconds or 0.0 for l in predictor.breakdown(w)) for w in ws[:m]]
    t_slow = (time.perf_counter() - t0) * args.n / m
    assert np.allclose(fast[:m], slow), "predict and breakdown disagree"
    print(f"table {args.table}, {args.arch}, {args.n} random width assignments")
    print(f"predict():          {args.n / t_fast:10,.0f} predictions/s")
    print(f"sum of breakdown(): {args.n / t_slow:10,.0f} predictions/s (per-layer Python loop)")
    print(f"ratio: {t_slow / t_fast:.1f}x")


if __name__ == "__main__":
    main()
