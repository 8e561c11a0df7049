"""Device efficiency of a local table build: wall time / pure timed compute.

    python -m tools.bench_build [--arch wrn-40-2] [--grid step:4] [--passes 3] [--configs 1:0,1:5]

Builds the same table once per configuration (local workers : minimum timed ms per model), one
after the other, and prints for each:

- the pure timed compute: the sum over all measurements of runs x measured latency, what a
  perfect device would spend;
- the measuring wall time (from the first batch to the last) and the whole build's wall time
  (adding template conversion and the op check), each divided by the pure compute.

It also prints the median ratio of every cell's mean latency against the first configuration's
table (the same cells): a way of building must not change what it measures.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path


def _cell_means(path: Path) -> dict[int, float]:
    from latency.store import TableStore

    store = TableStore.open(path)
    try:
        return {c: statistics.fmean(v) for c, v in store.raw_by_cell().items() if v}
    finally:
        store.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="wrn-40-2")
    p.add_argument("--grid", default="step:4")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--models-per-call", type=int, default=32)
    p.add_argument("--configs", default="1:0,1:5",
                   help="comma-separated workers:min-time-ms configurations to compare (1:0,1:5)")
    args = p.parse_args()
    from latency.build import BuildOptions, build_table
    from latency.devices.local import LocalDevice
    from latency.layer_types import parse_grid
    from latency.recipe import TableRecipe
    from models.families import get_arch

    options = BuildOptions(models_per_call=args.models_per_call)
    configs = [(int(w), float(t)) for w, t in (c.split(":") for c in args.configs.split(","))]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for workers, min_ms in configs:
            # back to back (the context the minimum timed duration applies to)
            recipe = TableRecipe(device_kind="local", grid_step=parse_grid(args.grid), passes=args.passes,
                                 runs=args.runs, warmup=args.warmup, min_time_s=min_ms / 1000)
            out = Path(tmp) / f"{len(rows)}.sqlite"
            r = asyncio.run(build_table(get_arch(args.arch), out,
                                        [LocalDevice(workers=workers, settings=recipe.timing())], recipe, options))
            rows.append((f"{workers}:{min_ms:g}", r, _cell_means(out)))
            print(f"  built with {workers} worker(s), min time {min_ms:g} ms: {r.wall_s:.1f} s", flush=True)
    first = rows[0]
    print(f"{args.arch} grid {args.grid}: {first[1].cells:,} cells x {args.passes} passes, runs {args.runs}, "
          f"warm-up {args.warmup}")
    print(f"{'w:min ms':>8} {'timed compute':>14} {'conversion':>11} {'measuring':>10} {'eff.':>5} "
          f"{'finalize':>9} {'whole build':>12} {'eff.':>5} {'cell ratio vs first':>20}")
    for config, r, means in rows:
        ratio = statistics.median(means[c] / first[2][c] for c in means if c in first[2])
        print(f"{config:>8} {r.timed_s:>13.1f}s {r.prepare_s:>10.1f}s {r.measure_s:>9.1f}s "
              f"{r.measure_s / r.timed_s:>5.2f} {r.finalize_s:>8.1f}s {r.wall_s:>11.1f}s {r.wall_s / r.timed_s:>5.2f} "
              f"{ratio:>20.3f}")


if __name__ == "__main__":
    main()
