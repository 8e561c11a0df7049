"""How far this machine's speed moves over minutes, for a whole network, one of its layers and the
speed gate's sentinel alike.

    python -m tools.host_drift [--arch wrn-40-2] [--windows 20] [--window-s 30]

A table's cells are timed over a build of many minutes, a report's networks within one to three
minutes; on a shared host the two can meet the machine at different speeds (docs/measuring.md
§1, "All five on one day"). For --windows windows of --window-s seconds each, this tool times in
turn, back to back and ungated: the sentinel (fastest of 20 invocations, as the gate reads it),
the network's layer with the most weights as a single-layer model (fastest of 20) and the whole network at
full width (fastest of 5). It prints each window's fastest of each, relative to the fastest
window, how closely the sentinel and the layer follow the network from window to window, and
how far apart the network's fastest lands when taken over runs of consecutive windows (what
spreading a measurement over minutes would buy). Nothing is stored.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import numpy as np

from latency.quiet import absorb_runtime_banner, add_verbose_flag, quiet_runtime
from models.families import KNOWN_ARCHS, get_arch


def window_fastest(readers: dict[str, Callable[[], float]], seconds: float) -> dict[str, float]:
    """The fastest reading of each reader over `seconds`, the readers taking turns."""
    best = {name: float("inf") for name in readers}
    end = time.monotonic() + seconds
    while True:
        for name, read in readers.items():
            best[name] = min(best[name], read())
        if time.monotonic() >= end:
            return best


def span_spread(values: list[float], span: int) -> float:
    """Slowest / fastest, over every run of `span` consecutive windows, of the run's fastest:
    how far apart two measurements each taking the fastest over that many windows can land."""
    if not 1 <= span <= len(values):
        raise ValueError(f"span must be within 1..{len(values)}, got {span}")
    fastest = [min(values[i:i + span]) for i in range(len(values) - span + 1)]
    return max(fastest) / min(fastest)


def drift_summary(rows: list[dict[str, float]], reference: str) -> dict[str, tuple[float, float]]:
    """Per reader: (slowest window / fastest window, Pearson r of its windows with `reference`'s)."""
    out = {}
    ref = np.array([r[reference] for r in rows])
    for name in rows[0]:
        values = np.array([r[name] for r in rows])
        r = float(np.corrcoef(values, ref)[0, 1]) if len(rows) > 2 and values.std() and ref.std() else float("nan")
        out[name] = (span_spread(list(values), 1), r)
    return out


def _readers(arch_name: str) -> tuple[dict[str, Callable[[], float]], str]:
    from latency.devices.runner import load_model, time_loaded_stats
    from latency.devices.speed_gate import sentinel_model, sentinel_reader
    from latency.generate import CellModels
    from latency.layer_types import network_layer_types
    from latency.networks import network_cells, network_model

    arch = get_arch(arch_name)
    types = network_layer_types([arch])
    def weights(cell) -> int:
        return cell[1] * max(cell[2], 1) * types[cell[0]].kernel ** 2

    # the layer with the most weights: the one a network's weight footprint would slow most
    key, c_in, c_out = max(network_cells(arch, {}), key=weights)
    layer = load_model(CellModels(types).render(key, c_in, c_out))
    network = load_model(network_model(arch, {}))
    sentinel = sentinel_reader(load_model(sentinel_model()))
    return ({"sentinel us": lambda: sentinel() * 1e6,
             "layer us": lambda: time_loaded_stats(layer, 20, warmup=0)[2] * 1e6,
             "network ms": lambda: time_loaded_stats(network, 5, warmup=0)[2] * 1e3},
            f"{key} {c_in}->{c_out}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="wrn-40-2", help=f"architecture ({KNOWN_ARCHS}); default wrn-40-2")
    p.add_argument("--windows", type=int, default=20, help="windows to time (20)")
    p.add_argument("--window-s", type=float, default=30.0, help="seconds per window (30)")
    add_verbose_flag(p)
    args = p.parse_args(argv)
    if args.windows < 1 or args.window_s <= 0:
        p.error("--windows must be >= 1 and --window-s > 0")
    quiet_runtime(args.verbose)
    absorb_runtime_banner()
    readers, layer = _readers(args.arch)
    print(f"{args.arch}: the sentinel, its layer with the most weights ({layer}) and the full network, "
          f"{args.windows} windows of {args.window_s:g} s, fastest of each per window", flush=True)
    names = list(readers)
    print("window " + " ".join(f"{n:>12s}" for n in names), flush=True)
    rows = []
    for w in range(args.windows):
        rows.append(window_fastest(readers, args.window_s))
        print(f"{w + 1:6d} " + " ".join(f"{rows[-1][n]:12.3f}" for n in names), flush=True)
    for name, (spread, r) in drift_summary(rows, "network ms").items():
        print(f"{name:12s} slowest window / fastest {spread:.3f}, Pearson r with the network over windows {r:+.2f}")
    network = [row["network ms"] for row in rows]
    spans = sorted({s for s in (1, 2, 4, args.windows // 2) if 1 <= s <= args.windows})
    print("the network's fastest over runs of consecutive windows, slowest run / fastest run: "
          + ", ".join(f"{s} x {args.window_s:g} s {span_spread(network, s):.3f}" for s in spans))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
