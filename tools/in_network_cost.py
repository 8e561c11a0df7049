"""How much slower each block of a network runs inside the network than its layers timed alone.

    python -m tools.in_network_cost [--arch wrn-40-2] [--scale 0.6 | --widths FILE] [--passes 6]
                                    [--context network|alone]

A table predicts a network as the sum of its layers, each timed alone as a single-layer model,
less one invoke overhead per extra layer. This tool finds where that sum and the network part
ways: it times prefixes of the network (the image up to the end of every residual addition,
converted like the whole network) and the single-layer model of every layer at its exact
widths. A block's time inside the network is the difference of two consecutive prefixes; its
time alone is the sum of its layers' cells less one overhead each (the first block keeps one).
Every layer is its own cell here, a batch-norm too where a table times it with the addition
before it (`latency.fusion`), so that each block is charged for its own layers.

Everything is timed by the local device with its speed gate, as a table and a report time it:
the prefixes as `latency-report` times networks (back to back), the cells and the overhead
probes as the local recipe times cells (`--context network`: in the architecture's network
context, at several placements; `alone`: back to back). Every model is timed once per pass, in
shuffled order; each value is the fastest invocation of all passes (the tables' local
estimator). Prints one line per block, then the whole network.
"""
from __future__ import annotations

import argparse
import asyncio
import random

from latency.context import evict_bytes_for
from latency.devices.base import ModelJob, TimingSettings
from latency.devices.defaults import local_defaults
from latency.devices.local import LocalDevice
from latency.devices.runner import read_l2_bytes
from latency.generate import CellModels
from latency.layer_types import network_layer_types
from latency.network_timing import exact_cell_timing, whole_network_timing
from latency.networks import load_networks, network_cells
from latency.overhead import estimate_overhead, probe_models
from latency.quiet import absorb_runtime_banner, add_verbose_flag, quiet_runtime
from models.arch import Arch
from models.families import KNOWN_ARCHS, get_arch
from models.keras_builder import to_tflite_prefixes


def cell_timing(arch: Arch, context: str) -> TimingSettings:
    """How the local recipe times a cell of `arch` in `context` ('network' or 'alone'), as
    `build-tables --device local [--context alone]` sets it up."""
    defaults = local_defaults()
    if context == "alone":
        recipe = defaults.recipe.replace(context="alone", min_time_s=defaults.alone_min_time_s, vector_s=0.0)
    else:
        recipe = defaults.recipe.replace(evict_bytes=evict_bytes_for(arch, read_l2_bytes()))
    return exact_cell_timing(recipe, arch)


async def fastest_of_passes(models: dict, is_cell, arch: Arch, context: str, passes: int) -> dict:
    """key -> the fastest invocation over `passes` gated passes (cells and probes as the local
    recipe times cells, the rest as latency-report times networks)."""
    devices = {True: LocalDevice(settings=cell_timing(arch, context)),
               False: LocalDevice(settings=whole_network_timing(local_defaults().recipe))}
    keys, rng = list(models), random.Random(0)
    fastest: dict = {}
    for device in devices.values():
        await device.start()
    try:
        for p_ in range(passes):
            print(f"pass {p_ + 1}/{passes}: {len(keys)} models", flush=True)
            rng.shuffle(keys)
            for cell in (True, False):
                batch = [k for k in keys if is_cell(k) == cell]
                for start in range(0, len(batch), 16):
                    chunk = batch[start:start + 16]
                    timings = await devices[cell].measure([ModelJob(i, models[k]) for i, k in enumerate(chunk)])
                    for t in timings:
                        k = chunk[t.cell_id]
                        fastest[k] = min(t.fastest_s, fastest.get(k, t.fastest_s))
    finally:
        for device in devices.values():
            await device.close()
    return fastest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="wrn-40-2", help=f"architecture ({KNOWN_ARCHS}); default wrn-40-2")
    p.add_argument("--scale", type=float, default=0.6, help="every group at this fraction of its width (0.6)")
    p.add_argument("--widths", metavar="FILE", help="a width assignment (JSON) instead of --scale")
    p.add_argument("--passes", type=int, default=6, help="passes over every model, each in a new order (6)")
    p.add_argument("--context", choices=("network", "alone"), default="network",
                   help="how the cells are timed: as the local recipe does (network) or back to back (alone); "
                        "default network")
    add_verbose_flag(p)
    args = p.parse_args(argv)
    quiet_runtime(args.verbose)
    absorb_runtime_banner()
    if not (0 < args.scale <= 1) or args.passes < 1:
        p.error("--scale must be in (0, 1] and --passes >= 1")
    arch = get_arch(args.arch)
    widths = {g.name: max(1, round(g.full * args.scale)) for g in arch.prunable_groups}
    if args.widths:
        try:
            (network,) = load_networks(arch, [args.widths])
        except (OSError, ValueError) as exc:
            p.error(f"--widths {args.widths}: {exc}")
        widths = network.widths
    active = arch.active_layers(widths)
    # each layer's own cell: a table times an addition together with a batch-norm that alone
    # reads it (latency.fusion); apart, the block that pays for the batch-norm running in place shows
    cells = network_cells(arch, widths, pair_adds=False)
    if len(cells) != len(active):  # a fused batch-norm: layers and runtime layers differ
        p.error("these widths fuse a batch-norm into a convolution; pick other widths")
    ends = [a.layer.name for a in active if a.layer.op == "add"]
    ends = ends + [active[-1].layer.name] if ends[-1:] != [active[-1].layer.name] else ends
    position = {a.layer.name: i for i, a in enumerate(active)}
    print(f"converting {len(ends)} prefixes of {arch.name} at "
          f"{args.widths or f'{args.scale:g} of every width'}", flush=True)
    models = {("prefix", e): m for e, m in to_tflite_prefixes(arch, widths, ends).items()}
    renderer = CellModels(network_layer_types([arch]))
    models.update({("cell", i): renderer.render(*c) for i, c in enumerate(cells)})
    chains = probe_models()
    probes = {label: n for label, n, _ in chains}
    models.update({("probe", label): m for label, _, m in chains})
    value = asyncio.run(fastest_of_passes(models, lambda k: k[0] != "prefix", arch, args.context, args.passes))
    o = estimate_overhead("local", [(label, n, value[("probe", label)]) for label, n in probes.items()],
                          combined="fastest").seconds
    print(f"invoke overhead o = {o * 1e6:.2f} us")
    print(f"{'layers':>9s} {'in network':>11s} {'alone - o':>10s} {'ratio':>6s}  layer types")
    first, before = 0, 0.0
    for e in ends:
        last = position[e]
        layers = range(first, last + 1)
        alone = sum(value[("cell", i)] for i in layers) - (len(layers) - (1 if first == 0 else 0)) * o
        inside = value[("prefix", e)] - before
        kinds = ", ".join(sorted({cells[i][0] for i in layers}))
        print(f"{first:4d}-{last:<4d} {inside * 1e6:9.1f}us {alone * 1e6:8.1f}us {inside / alone:6.3f}  {kinds}")
        first, before = last + 1, value[("prefix", e)]
    total_alone = sum(value[("cell", i)] for i in range(len(cells))) - (len(cells) - 1) * o
    print(f"whole network {before * 1e6:.1f} us, its layers alone less (n - 1) o {total_alone * 1e6:.1f} us: "
          f"ratio {before / total_alone:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
