"""Device efficiency of a local table build: wall time / pure timed compute.

    python -m tools.bench_build [--arch wrn-40-2] [--grid step:4] [--passes 3] [--workers 1,2]

Builds the same table once per worker count, one after the other, and prints for each:

- the pure timed compute: the sum over all measurements of runs x measured latency, what a
  perfect device would spend;
- the measuring wall time (from the first batch to the last) and the whole build's wall time
  (adding template conversion and the op check), each divided by the pure compute.

Loading the next model while another is timed must not change the timings, so it also prints
the median ratio of every cell's mean latency against the first worker count's table (the
same cells; on a quiet machine it stays within a few per cent of 1).
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
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts to compare (1,2)")
    args = p.parse_args()
    from latency.build import BuildSettings, build_table
    from latency.devices.base import TimingSettings
    from latency.devices.local import LocalDevice
    from latency.layer_types import parse_grid
    from models.families import get_arch

    timing = TimingSettings(runs=args.runs, warmup=args.warmup)
    settings = BuildSettings(passes=args.passes, grid_step=parse_grid(args.grid), batch_size=args.batch_size)
    counts = [int(w) for w in args.workers.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for workers in counts:
            out = Path(tmp) / f"{len(rows)}-w{workers}.sqlite"
            r = asyncio.run(build_table(get_arch(args.arch), out, [LocalDevice(workers=workers, settings=timing)],
                                        settings, args.runs))
            rows.append((workers, r, _cell_means(out)))
            print(f"  built with {workers} worker(s): {r.wall_s:.1f} s", flush=True)
    first = rows[0]
    print(f"{args.arch} grid {args.grid}: {first[1].cells:,} cells x {args.passes} passes, runs {args.runs}, "
          f"warm-up {args.warmup}")
    print(f"{'workers':>8} {'timed compute':>14} {'conversion':>11} {'measuring':>10} {'eff.':>5} "
          f"{'finalize':>9} {'whole build':>12} {'eff.':>5} {'cell ratio vs first':>20}")
    for workers, r, means in rows:
        ratio = statistics.median(means[c] / first[2][c] for c in means if c in first[2])
        print(f"{workers:>8} {r.timed_s:>13.1f}s {r.prepare_s:>10.1f}s {r.measure_s:>9.1f}s "
              f"{r.measure_s / r.timed_s:>5.2f} {r.finalize_s:>8.1f}s {r.wall_s:>11.1f}s {r.wall_s / r.timed_s:>5.2f} "
              f"{ratio:>20.3f}")


if __name__ == "__main__":
    main()
