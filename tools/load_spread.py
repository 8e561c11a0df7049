"""How far a whole network's speed moves from one load of it to the next.

    python -m tools.load_spread [--arch wrn-10-1] [--networks 4] [--loads 20]

Each network of `latency-report`'s sample is loaded `--loads` times, each load after a pad of
random size taken from the heap (every load and pad stays alive, so no two loads share
addresses), and timed back to back through the speed gate as the report times networks: the
fastest of 20 invocations per load. A network runs each of its layers where that load put it;
this prints how far the loads spread, and how far the fastest load lies below the median one,
which is what a table of each cell's luckiest place would miss (docs/measuring.md §7).
"""
from __future__ import annotations

import argparse
import random
import statistics

from latency.devices.runner import load_model, time_loaded_stats
from latency.devices.speed_gate import SpeedGate, sentinel_model, sentinel_reader
from latency.networks import sample_networks
from latency.quiet import absorb_runtime_banner, add_verbose_flag, quiet_runtime
from models.families import KNOWN_ARCHS, get_arch
from models.keras_builder import to_tflite
from tools.timing_conditions import fastest_of_loads


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="wrn-10-1", help=f"architecture ({KNOWN_ARCHS}); default wrn-10-1")
    p.add_argument("--networks", type=int, default=4, help="networks of the report's sample (4)")
    p.add_argument("--loads", type=int, default=20, help="loads of every network (20)")
    add_verbose_flag(p)
    args = p.parse_args(argv)
    if args.networks < 1 or args.loads < 2:
        p.error("--networks must be >= 1 and --loads >= 2")
    quiet_runtime(args.verbose)
    absorb_runtime_banner()
    arch = get_arch(args.arch)
    gate, rng = SpeedGate(sentinel_reader(load_model(sentinel_model()))), random.Random(0)
    print(f"{arch.name}: {args.networks} networks, {args.loads} loads each, the fastest of 20 invocations per load")
    print(f"{'network':>14s} {'fastest':>9s} {'median':>9s} {'slowest':>9s}  fastest/median")
    ratios = []
    for net in sample_networks(arch, args.networks):
        values = fastest_of_loads(to_tflite(arch, net.widths), lambda net_: time_loaded_stats(net_, 20, 2), gate,
                                  args.loads, rng)
        med = statistics.median(values)
        ratios.append(min(values) / med)
        print(f"{net.label:>14s} {min(values):7.1f}us {med:7.1f}us {max(values):7.1f}us  {min(values) / med:.3f}",
              flush=True)
    print(f"fastest load / median load: {min(ratios):.3f} .. {max(ratios):.3f} (median {statistics.median(ratios):.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
