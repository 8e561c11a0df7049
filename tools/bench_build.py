"""Device efficiency of a local table build: wall time / pure timed compute.

    python -m tools.bench_build [--arch wrn-16-2] [--grid step:4] [--runs 50] [--passes 1]

The pure timed compute is the sum over all measurements of runs x measured latency: what a
perfect device would spend. Everything else (model rendering, interpreter creation, warm-up,
process hand-over, SQLite commits) is overhead. Template conversion is reported separately:
it is a fixed cost of a few seconds per layer type, negligible for a full table.
"""
from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="wrn-16-2")
    p.add_argument("--grid", default="step:4")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--passes", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    from latency.build import BuildSettings, build_table
    from latency.devices.base import TimingSettings
    from latency.devices.local import LocalDevice
    from latency.layer_types import parse_grid
    from models.families import get_arch

    timing = TimingSettings(runs=args.runs, warmup=args.warmup)
    settings = BuildSettings(passes=args.passes, grid_step=parse_grid(args.grid), batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        r = asyncio.run(build_table(get_arch(args.arch), Path(tmp) / "t.sqlite", [LocalDevice(settings=timing)],
                                    settings, args.runs))
    measuring = r.wall_s - r.prepare_s
    print(f"{args.arch} grid {args.grid}: {r.cells:,} cells x {args.passes} passes, runs {args.runs}, warm-up {args.warmup}")
    print(f"pure timed compute:        {r.timed_s:8.1f} s")
    print(f"template conversion:       {r.prepare_s:8.1f} s")
    print(f"measuring wall time:       {measuring:8.1f} s   efficiency {measuring / r.timed_s:.2f}")
    print(f"whole build wall time:     {r.wall_s:8.1f} s   efficiency {r.wall_s / r.timed_s:.2f}")


if __name__ == "__main__":
    main()
