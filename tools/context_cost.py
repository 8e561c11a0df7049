"""Does a layer timed alone cost what it costs inside a network? Compare timing contexts.

    python -m tools.context_cost [--arch wrn-40-2] [--networks 8] [--groups 32,96] [--passes 3]

A table times every cell back to back: the same single-layer model invoked again and again,
so its weights, code and buffers are as warm as they can be. Inside a network a layer runs
after the other layers. This tool times networks sampled like `latency-report` does (spanning
their size) and the single-layer model of every layer they run at its exact widths, in
several contexts, and prints per network how far the sum of its layers, less one invoke
overhead per extra layer, is from the network:

* ``alone``: back to back, like the tables (fastest invocation, at least --min-time-ms);
* ``rot-B``: all the cells of all the networks shuffled into groups of B models that take
  turns (`latency.devices.runner.time_rotation`: each invocation timed alone, its input written again
  just before), so a cell runs after B - 1 other layers of the family;
* ``own``: each network's own distinct single-layer models taking turns (a layer repeated at
  the same widths, as in a uniform network, is one model here, so the group's footprint is
  smaller than the network's).

The overhead probes (chains of trivial MULs) are timed in the same context as the cells they
correct: back to back for ``alone``, inside every rotation group for ``rot-B`` and ``own``.
Every context is timed once per pass, passes in a new order each; values are the fastest of
all passes. Nothing is stored; it is an instrument for the composition bias of summed layers.
"""
from __future__ import annotations

import argparse
import random
import statistics

import numpy as np

from latency.generate import CellModels
from latency.layer_types import network_layer_types
from latency.quiet import absorb_runtime_banner, add_verbose_flag, quiet_runtime
from latency.devices.runner import load_model, time_loaded_stats, time_rotation
from latency.metrics import overhead_corrected, percent_errors
from latency.networks import network_cells, network_model, sample_networks
from latency.overhead import estimate_overhead, probe_models
from models.counts import network_params
from models.families import KNOWN_ARCHS, get_arch


def spanning(items: list, n: int) -> list:
    """`n` items evenly spaced over a sorted list (all of them when it is shorter)."""
    if n >= len(items):
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def sum_error_pct(layer_seconds: list[float], overhead_s: float, network_s: float) -> float:
    """Error of the sum of a network's layers, less (n - 1) invoke overheads, against the network."""
    predicted = overhead_corrected(sum(layer_seconds), len(layer_seconds), overhead_s)
    return float(percent_errors([predicted], [network_s])[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="wrn-40-2", help=f"architecture ({KNOWN_ARCHS}); default wrn-40-2")
    p.add_argument("--networks", type=int, default=8,
                   help="networks, spanning the size of latency-report's 20 sampled ones (8)")
    p.add_argument("--groups", default="32,96", help="rotation group sizes, comma-separated (32,96)")
    p.add_argument("--passes", type=int, default=3, help="passes over every context (3)")
    p.add_argument("--min-time-ms", type=float, default=5.0, help="timed per model and pass, on average (5)")
    add_verbose_flag(p)
    args = p.parse_args(argv)
    quiet_runtime(args.verbose)
    absorb_runtime_banner()
    try:
        groups = [int(g) for g in args.groups.split(",") if g.strip()]
    except ValueError:
        p.error(f"--groups: comma-separated integers, not {args.groups!r}")
    if args.networks < 1 or args.passes < 1 or any(g < 2 for g in groups):
        p.error("--networks and --passes must be >= 1, every --groups size >= 2")
    arch = get_arch(args.arch)
    min_s = args.min_time_ms / 1e3
    nets = spanning(sorted(sample_networks(arch, 20), key=lambda n: network_params(arch, n.widths)), args.networks)
    cells_of = {n.key: network_cells(arch, n.widths) for n in nets}
    cells = sorted({c for cs in cells_of.values() for c in cs})
    print(f"{arch.name}: {len(nets)} networks, {len(cells)} distinct single-layer models", flush=True)
    renderer = CellModels(network_layer_types([arch]))
    cell_model = {c: renderer.render(*c) for c in cells}
    net_model = {n.key: network_model(arch, n.widths) for n in nets}
    probes = probe_models()
    contexts = ["alone"] + [f"rot-{g}" for g in groups] + ["own"]
    fastest: dict[tuple, float] = {}  # (context, what) -> seconds; what: a cell, a network key, a probe
    overheads: dict[str, list[float]] = {}  # context ("own" + network key for own rotations) -> per group

    def keep(key: tuple, seconds: float) -> None:
        fastest[key] = min(seconds, fastest.get(key, seconds))

    def rotate(context: str, models: list[bytes], keys: list, seed: int) -> None:
        values = time_rotation([load_model(m) for m in models] + [load_model(m) for _, _, m in probes],
                               min_s, seed=seed)
        for k, v in zip(keys, values):
            keep((context, k), v)
        overheads.setdefault(context, []).append(estimate_overhead(
            "local", [(label, n, v) for (label, n, _), v in zip(probes, values[len(keys):])],
            combined="fastest").seconds)

    rng = random.Random(0)
    for p_ in range(args.passes):
        print(f"pass {p_ + 1}/{args.passes}", flush=True)
        for context in rng.sample(contexts, len(contexts)):
            if context == "alone":
                jobs = [(("net", n.key), net_model[n.key]) for n in nets] + \
                       [(c, cell_model[c]) for c in cells] + [(("probe", label, k), m) for label, k, m in probes]
                for key, model in rng.sample(jobs, len(jobs)):
                    keep((context, key), time_loaded_stats(load_model(model), 50, 2, min_s)[2])
                overheads[context] = [estimate_overhead(
                    "local", [(label, k, fastest[(context, ("probe", label, k))]) for label, k, _ in probes],
                    combined="fastest").seconds]
            elif context == "own":
                for n in nets:
                    own = sorted(set(cells_of[n.key]))
                    rotate(context + n.key, [cell_model[c] for c in own], own, rng.randrange(1 << 30))
            else:
                size = int(context.split("-")[1])
                shuffled = rng.sample(cells, len(cells))
                for start in range(0, len(shuffled), size):
                    group = shuffled[start:start + size]
                    rotate(context, [cell_model[c] for c in group], group, rng.randrange(1 << 30))
    o = {c: statistics.median(v) for c, v in overheads.items()}
    own = [o["own" + n.key] for n in nets]
    print("invoke overhead o (median over rotation groups): " + ", ".join(
        f"{c} {o[c] * 1e6:.2f} us" for c in contexts if c in o) + f", own {min(own) * 1e6:.2f}-{max(own) * 1e6:.2f} us")
    print(f"{'network':>14s} {'params':>9s} {'layers':>6s} {'measured':>10s}  " +
          " ".join(f"{c:>8s}" for c in contexts) + "   (sum of layers - (n-1) o vs network, %)")
    errors: dict[str, list[float]] = {c: [] for c in contexts}
    for n in nets:
        measured = fastest[("alone", ("net", n.key))]
        row = []
        for c in contexts:
            ctx = "own" + n.key if c == "own" else c
            e = sum_error_pct([fastest[(ctx, x)] for x in cells_of[n.key]], o[ctx], measured)
            errors[c].append(e)
            row.append(f"{e:+8.2f}")
        print(f"{n.label:>14s} {network_params(arch, n.widths):9d} {len(cells_of[n.key]):6d} "
              f"{measured * 1e6:8.1f}us  " + " ".join(row))
    print(f"{'mean':>42s}  " + " ".join(f"{np.mean(errors[c]):+8.2f}" for c in contexts))
    print(f"{'mean |error|':>42s}  " + " ".join(f"{np.mean(np.abs(errors[c])):8.2f}" for c in contexts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
