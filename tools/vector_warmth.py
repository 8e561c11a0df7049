"""Whether a layer runs slower after heavy vector work, as inside a network, than after partner models alone.

    python -m tools.vector_warmth [--arch wrn-16-1] [--scale 1.0 0.5] [--widths FILE ...]
                                  [--vector-us 30 300] [--gap-us 300] [--passes 4]

Inside a network every layer runs right after other layers' dense vector arithmetic; the network
context's partners (`latency.context`) run the smallest model of each other layer type before a
cell: other code, almost no arithmetic. On a CPU whose clock drops under sustained wide-vector
work (AVX-512 on Intel server cores), a layer of a few microseconds can finish before the drop
when timed as a cell, and not inside a network. For each `--scale` (and each `--widths` file, a
widths JSON as `search` writes it, e.g. a report's network) this tool times, in one
process, in shuffled passes, each through the speed gate: the whole network (as a report does),
every one of its layers' cells after the partners alone ("partners only"), the same after
`--vector-us` of small float32 matrix products before every invocation
(`runner.time_in_context(vector_s=...)`), and after `--gap-us` of spinning that touches no vector
unit (the control: the same wait without the work). It prints each column's sum less one invoke
overhead per extra layer against the network, and each column against "partners only" per layer
kind. Nothing is stored. The local recipe does
what this found: 30 us of the same work before each invocation (`latency.devices.defaults`).
"""
from __future__ import annotations

import argparse
import gc
import random
import time
from typing import Any, Callable

import numpy as np

from latency.layer_types import layer_kind
from latency.quiet import absorb_runtime_banner, add_verbose_flag, quiet_runtime
from models.arch import WidthError
from models.families import KNOWN_ARCHS, get_arch
from models.thesis_names import load_widths_any
from tools.composition_drift import combine


def columns(vector_us: list[float], gap_us: list[float]) -> dict[str, dict[str, float]]:
    """Column name -> the keyword arguments of `time_in_context` it times cells with."""
    cols: dict[str, dict[str, float]] = {"partners only": {}}
    cols.update({f"vector {v:g} us": {"vector_s": v * 1e-6} for v in vector_us})
    cols.update({f"spin {g:g} us": {"gap_s": g * 1e-6} for g in gap_us})
    return cols


def measure_scale(arch_name: str, scale: float, cols: dict[str, dict[str, float]], passes: int,
                  report: Callable[[str], None] = print, runs: int = 20, warmup: int = 2,
                  top: int = 3, widths: dict[str, int] | None = None, label: str = "") -> dict[str, float]:
    """Times one scaling of the architecture; reports its lines and returns, per column, the sum of
    the cells less the overhead against the network, in per cent."""
    from latency.context import partner_models
    from latency.devices.runner import load_model, time_in_context, time_loaded_stats
    from latency.devices.speed_gate import SpeedGate, sentinel_model, sentinel_reader
    from latency.generate import CellModels
    from latency.layer_types import network_layer_types
    from latency.metrics import corrected_prediction, fit_line
    from latency.networks import network_cells, network_model
    from latency.overhead import PROBE_CHAIN, probe_models
    from search.channels import scaled_widths

    arch = get_arch(arch_name)
    if widths is None:
        widths = scaled_widths(arch, arch.full_widths(), scale)
    cells = network_cells(arch, widths)
    renderer = CellModels(network_layer_types([arch]))
    loaded: dict[Any, Any] = {("cell", c): load_model(renderer.render(*c)) for c in sorted(set(cells))}
    loaded.update({("probe", n): load_model(m) for _, n, m in probe_models(PROBE_CHAIN)})
    network = load_model(network_model(arch, widths))
    partners = [load_model(m) for m in partner_models(arch)]
    for p in partners:
        p.invoke()  # first invocations allocate and pack
    gate = SpeedGate(sentinel_reader(load_model(sentinel_model())))
    jobs: list[tuple[Any, str]] = [(key, col) for key in loaded for col in cols] + [("network", "")]
    rows: dict[tuple[Any, str], list[tuple[float, float, bool]]] = {job: [] for job in jobs}
    gc.disable()  # a collection inside a timing would be charged to the model
    try:
        for p in range(passes):
            random.Random(p).shuffle(jobs)
            for key, col in jobs:
                if key == "network":
                    def measure() -> tuple[float, int, float]:
                        return time_loaded_stats(network, runs, warmup)
                else:
                    def measure() -> tuple[float, int, float]:
                        return time_in_context(loaded[key], partners, runs, warmup, **cols[col])
                mean, _, fastest = gate.timed(measure)
                rows[(key, col)].append((mean, fastest, gate.last_slow))
    finally:
        gc.enable()
    net = combine(rows[("network", "")])
    where = f"widths {label}" if label else f"{scale:g} of every width"
    report(f"{arch_name} at {where}: {len(cells)} layers, network {net * 1e6:.1f} us; "
           f"{gate.take_stats().summary() or 'the host read fast throughout'}")
    errors: dict[str, float] = {}
    values = {col: {key[1]: combine(rows[(key, col)]) for key in loaded if key[0] == "cell"} for col in cols}
    for col in cols:
        probes = {key[1]: combine(rows[(key, col)]) for key in loaded if key[0] == "probe"}
        overhead = max(fit_line(list(probes), list(probes.values()))[0], 0.0)
        total = corrected_prediction([values[col][c] for c in cells], overhead)
        errors[col] = 100.0 * (total / net - 1.0)
        kinds: dict[str, list[float]] = {}
        for cell, v in values[col].items():
            kinds.setdefault(layer_kind(cell[0]), []).append(v / values["partners only"][cell])
        by_kind = ", ".join(f"{k} {np.median(r):.3f}" for k, r in sorted(kinds.items()))
        report(f"  cells, {col:14s} less {overhead * 1e6:.2f} us per extra layer: {total * 1e6:8.1f} us "
               f"({errors[col]:+.1f} % of the network); against partners only by kind: {by_kind}")
    counts = {c: cells.count(c) for c in set(cells)}
    base = values["partners only"]
    for col in list(cols)[1:]:
        moved = sorted(counts, key=lambda c: -abs(values[col][c] - base[c]) * counts[c])[:top]
        report(f"  {col}: the layers it moves most: " + ", ".join(
            f"{c[0]} {c[1]}->{c[2]} x{counts[c]} {base[c] * 1e6:.1f} -> {values[col][c] * 1e6:.1f} us" for c in moved))
    return errors


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="wrn-16-1", help=f"architecture ({KNOWN_ARCHS}); default wrn-16-1")
    p.add_argument("--scale", type=float, nargs="*", default=[1.0, 0.5], help="fractions of every width (1.0 0.5)")
    p.add_argument("--widths", nargs="+", default=[], metavar="FILE",
                   help="also these networks: widths JSON files, as `predict-latency --widths` reads them")
    p.add_argument("--vector-us", type=float, nargs="+", default=[30.0, 300.0], metavar="US",
                   help="vector work before every cell invocation; one column each (default 30 300)")
    p.add_argument("--gap-us", type=float, nargs="*", default=[300.0], metavar="US",
                   help="spinning without vector work instead; one column each (default 300)")
    p.add_argument("--passes", type=int, default=4, help="shuffled passes over every model (4)")
    add_verbose_flag(p)
    args = p.parse_args(argv)
    if not all(0 < s <= 1 for s in args.scale) or args.passes < 1 or \
            not all(v > 0 for v in args.vector_us + args.gap_us):
        p.error("--scale must be in (0, 1], --passes >= 1 and every --vector-us and --gap-us > 0")
    quiet_runtime(args.verbose)
    absorb_runtime_banner()
    start = time.monotonic()
    cols = columns(args.vector_us, args.gap_us)
    try:
        chosen = [(name, load_widths_any(get_arch(args.arch), name)) for name in args.widths]
    except WidthError as exc:
        p.error(str(exc))
    if not args.scale and not chosen:
        p.error("nothing to time: give --scale or --widths")
    for scale in args.scale:
        measure_scale(args.arch, scale, cols, args.passes, report=lambda line: print(line, flush=True))
    for name, widths in chosen:
        measure_scale(args.arch, 1.0, cols, args.passes, report=lambda line: print(line, flush=True),
                      widths=widths, label=name)
    print(f"{time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
