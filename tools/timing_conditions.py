"""What this CPU does to a timing besides the model: idle spells, slow phases, partners, the speed gate.

    python -m tools.timing_conditions [--arch wrn-10-1] [--seconds 30]

Three measurements, each printed as it finishes (docs/measuring.md §5, §7):

* idle: one small conv timed in its network context (fastest of 20 invocations) right after
  the core did nothing for 0, 5 or 50 ms, and after 50 ms idle then 20 ms of spinning
  (`runner.keep_busy`, what the local worker does after a wait);
* phases: for --seconds, the fastest invocation of a chain of 8 one-element MULs in every
  quarter second, with no idling: the share of quarter seconds more than 20 % slower than the
  fastest one, and how long they last;
* partners: small cells timed after every draw of 3 partners out of the architecture's
  (seeds 0-15), against all partners at once;
* partner loads: the same convs timed in 8 batches, the partners loaded afresh for each batch as
  a build's worker does, each cell loaded 3 times per batch (gated): how far a batch's fastest is
  from the fastest of all batches, against the spread of the 3 loads within a batch;
* placements: the same convs loaded 12 times with the partners fixed, each load elsewhere in
  memory (a pad of random size first, as `runner.placed_timing` does): how far each load's fastest is from the fastest load;
* speed gate: for --seconds, the convs of the partner test timed in turn, each between two
  readings of the speed gate's sentinel (`latency.devices.speed_gate`): how much slower than
  its fastest a cell is when the readings around it were fast, and when they were slow.
"""
from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any, Callable

from latency.context import partner_models
from latency.devices.runner import keep_busy, load_model, time_in_context
from latency.devices.speed_gate import SLOW_FACTOR, SpeedGate, sentinel_model, sentinel_reader
from latency.generate import CellModels
from latency.layer_types import network_layer_types
from latency.quiet import absorb_runtime_banner, add_verbose_flag, quiet_runtime
from latency.overhead import probe_models
from models.families import KNOWN_ARCHS, get_arch


def idle_effect(cell, partners, rounds: int = 8) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for _ in range(rounds):
        for label, idle_s, spin_s in (("busy", 0.0, 0.0), ("idle 5 ms", 0.005, 0.0), ("idle 50 ms", 0.05, 0.0),
                                      ("idle 50 ms, spin 20 ms", 0.05, 0.02)):
            if idle_s:
                time.sleep(idle_s)
            keep_busy(spin_s)
            out.setdefault(label, []).append(time_in_context(cell, partners, 20, 2)[2] * 1e6)
    return out


def slow_phases(interpreter, seconds: float, window_s: float = 0.25) -> list[float]:
    clock, fastest = time.perf_counter, []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        best, start = float("inf"), clock()
        while clock() - start < window_s:
            t = clock()
            interpreter.invoke()
            best = min(best, clock() - t)
        fastest.append(best * 1e6)
    return fastest


def partner_loads(cells: dict[str, bytes], partner_bytes, batches: int = 8,
                  loads: int = 3) -> dict[str, list[list[float]]]:
    """cell -> per batch (partners loaded afresh) the fastest invocation of each of `loads` loads."""
    gate = SpeedGate(sentinel_reader(load_model(sentinel_model())))
    out: dict[str, list[list[float]]] = {k: [] for k in cells}
    for _ in range(batches):
        partners = [load_model(m) for m in partner_bytes]
        for p in partners:
            p.invoke()
        for key, model in cells.items():
            row = []
            for _ in range(loads):
                cell = load_model(model)
                row.append(gate.timed(lambda: time_in_context(cell, partners, 20, 2))[2])
            out[key].append(row)
    return out


def fastest_of_loads(model: bytes, measure: Callable[[Any], tuple], gate: SpeedGate, loads: int,
                     rng: random.Random) -> list[float]:
    """The fastest invocation (us) of each of `loads` loads of `model`, each placed elsewhere in
    memory (a pad of random size taken from the heap first, as `runner.placed_timing` does) and
    timed by `measure(interpreter)` (a runner timing: its third field is the fastest) through
    the speed gate."""
    kept, fastest = [], []  # every load and pad stays alive, so no two loads share addresses
    for _ in range(loads):
        kept.append(bytearray(rng.randrange(64, 65536)))
        interpreter = load_model(model)
        kept.append(interpreter)
        fastest.append(gate.timed(lambda: measure(interpreter))[2] * 1e6)
    return fastest


def placement_spread(cells: dict[str, bytes], partners, loads: int = 12) -> dict[str, list[float]]:
    """cell -> the fastest invocation (us) of each of `loads` loads, each placed elsewhere in
    memory, the partners unchanged."""
    gate, rng = SpeedGate(sentinel_reader(load_model(sentinel_model()))), random.Random(0)
    return {key: fastest_of_loads(model, lambda cell: time_in_context(cell, partners, 20, 2), gate, loads, rng)
            for key, model in cells.items()}


def gate_effect(cells: dict, partners, seconds: float) -> dict[str, dict[bool, list[float]]]:
    """cell -> {readings around it slow?: its timings / its fastest}, timed in turn for `seconds`."""
    read = sentinel_reader(load_model(sentinel_model()))
    rows, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        for key, model in cells.items():
            before = read()
            fastest = time_in_context(model, partners, 20, 2)[2]
            rows.append((key, max(before, read()), fastest))
    floor = min(r for _, r, _ in rows)
    best = {k: min(f for kk, _, f in rows if kk == k) for k in cells}
    out: dict[str, dict[bool, list[float]]] = {k: {False: [], True: []} for k in cells}
    for key, reading, fastest in rows:
        out[key][reading > SLOW_FACTOR * floor].append(fastest / best[key])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="wrn-10-1", help=f"architecture ({KNOWN_ARCHS}); default wrn-10-1")
    p.add_argument("--seconds", type=float, default=30.0, help="how long to watch for slow phases (30)")
    add_verbose_flag(p)
    args = p.parse_args(argv)
    quiet_runtime(args.verbose)
    absorb_runtime_banner()
    arch = get_arch(args.arch)
    partners = [load_model(m) for m in partner_models(arch)]
    types = network_layer_types([arch])
    renderer = CellModels(types)
    convs = [k for k in sorted(types) if types[k].two_axes][:4]

    def widths(key: str, extra: int) -> tuple[int, int]:
        t = types[key]
        return min(t.in_hi, t.in_lo + extra), min(t.out_hi, t.out_lo + extra)

    cell = load_model(renderer.render(convs[0], *widths(convs[0], 7)))
    print(f"idle spells: {convs[0]} at {widths(convs[0], 7)}, fastest of 20 invocations in context, 8 rounds (us)")
    for label, values in idle_effect(cell, partners).items():
        print(f"  {label:24s} median {statistics.median(values):7.2f}  min {min(values):7.2f}  max {max(values):7.2f}")

    chain = load_model(probe_models()[3][2])  # 8 MULs
    chain.invoke()
    windows = slow_phases(chain, args.seconds)
    floor = min(windows)
    slow = [w > 1.2 * floor for w in windows]
    runs, current = [], 0
    for s in slow:
        if s:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    if current:
        runs.append(current)
    slowdown = statistics.median([w / floor for w, s in zip(windows, slow) if s]) if any(slow) else 1.0
    print(f"slow phases over {args.seconds:.0f} s: {100 * sum(slow) / len(slow):.1f} % of quarter seconds more than "
          f"20 % slower than the fastest ({floor:.2f} us), median slowdown {slowdown:.2f}x, "
          f"longest {0.25 * max(runs, default=0):.2f} s")

    print("partner draws: fastest of 3 x 50 invocations after each of 16 draws of 3 partners, and after all (us)")
    for key in convs:
        model = load_model(renderer.render(key, *widths(key, 3)))
        keep_busy(0.02)
        draws = [min(time_in_context(model, partners, 50, 2, seed=s)[2] for _ in range(3)) * 1e6 for s in range(16)]
        every = min(time_in_context(model, partners, 50, 2, n_partners=len(partners))[2] for _ in range(3)) * 1e6
        print(f"  {key:28s} draws {min(draws):7.2f} .. {max(draws):7.2f} (median {statistics.median(draws):7.2f}), "
              f"all {len(partners)}: {every:7.2f}")

    print("partner loads: each batch's fastest / the fastest of 8 batches (partners loaded afresh per batch), "
          "and the median spread of 3 loads of the cell within a batch")
    rendered = {key: renderer.render(key, *widths(key, 7)) for key in convs}
    for key, rows in partner_loads(rendered, partner_models(arch)).items():
        floor = min(min(r) for r in rows)
        within = statistics.median([max(r) / min(r) for r in rows])
        print(f"  {key:28s} batches " + " ".join(f"{min(r) / floor:.3f}" for r in rows) + f"  | within {within:.3f}")

    print("placements: each load's fastest / the fastest of 12 loads (partners unchanged, each load elsewhere in "
          "memory)")
    for key, values in placement_spread(rendered, partners).items():
        floor = min(values)
        print(f"  {key:28s} " + " ".join(f"{v / floor:.3f}" for v in sorted(values)))

    print(f"speed gate over {args.seconds:.0f} s: each cell's timings / its fastest, by the sentinel readings "
          f"around it (slow: beyond {SLOW_FACTOR:g}x the fastest reading)")
    cells = {key: load_model(renderer.render(key, *widths(key, 7))) for key in convs}
    for key, by in gate_effect(cells, partners, args.seconds).items():
        parts = [f"{'slow' if slow else 'fast'} n {len(v):5d} median {statistics.median(v):.3f} "
                 f"p90 {sorted(v)[int(0.9 * (len(v) - 1))]:.3f}" for slow, v in sorted(by.items()) if v]
        print(f"  {key:28s} " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
