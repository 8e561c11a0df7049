"""Whether a network and the sum of its cells move together: both timed in one process, round
after round.

    python -m tools.composition_drift [--arch mbv2-tiny] [--sample 8] [--rounds 6] [--passes 6]

A table's cells are timed during a build, a report's networks later; on a shared host either
can move in between. This tool takes the time out: in every round it times, in one process,
interleaved in shuffled passes and each behind the speed gate as the local device does, the
exact cell of every layer of `--sample` sampled networks in its network context (as the local
recipe times cells, `runner.time_in_context`), the networks themselves back to back (as
`latency-report` times them) and the per-invoke overhead probes. Every value is the median over
passes of each pass's fastest invocation (the local estimator), counting the passes the gate
timed at full speed.

Per round it prints the sentinel's median reading (how busy the host is), the exact sums less
the overhead against the networks (mean, lowest and highest error), the networks against the
first round, and each layer kind's cells against the first round (median over its cells). A
round whose networks held while the sums moved says the cells, not the networks, follow the
host (docs/measuring.md §1). Nothing is stored.
"""
from __future__ import annotations

import argparse
import gc
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from latency.layer_types import layer_kind
from latency.quiet import absorb_runtime_banner, add_verbose_flag, quiet_runtime
from models.families import KNOWN_ARCHS, get_arch

Cell = tuple[str, int, int]


@dataclass(frozen=True)
class Round:
    """One round's values, seconds: per cell, per network, per probe chain length."""

    cells: dict[Cell, float]
    networks: list[float]
    probes: dict[int, float]
    sentinel_s: float


@dataclass(frozen=True)
class Loaded:
    """The models of a run, loaded once: per job key (kind, what) its interpreter and whether it
    is timed in the network context; the partners that context runs before each invocation."""

    jobs: dict[tuple[str, Any], tuple[Any, bool]]
    partners: list[Any]


def sum_errors_pct(rnd: Round, network_cells: Sequence[Sequence[Cell]]) -> list[float]:
    """Per network, the sum of its exact cells less one overhead per extra layer, against the
    network, in percent (the overhead: the intercept of the round's probes)."""
    from latency.metrics import corrected_prediction, fit_line

    overhead = max(fit_line(list(rnd.probes), list(rnd.probes.values()))[0], 0.0)
    return [100.0 * (corrected_prediction([rnd.cells[c] for c in cells], overhead) / measured - 1.0)
            for cells, measured in zip(network_cells, rnd.networks)]


def moves_against(first: Round, now: Round) -> tuple[float, dict[str, float]]:
    """(median ratio of the networks now to the first round, per layer kind the median ratio of
    its cells)."""
    nets = float(np.median(np.array(now.networks) / np.array(first.networks)))
    by_kind: dict[str, list[float]] = {}
    for cell, value in now.cells.items():
        by_kind.setdefault(layer_kind(cell[0]), []).append(value / first.cells[cell])
    return nets, {k: float(np.median(v)) for k, v in sorted(by_kind.items())}


def combine(passes: Sequence[tuple[float, float, bool]]) -> float:
    """(mean, fastest, kept slow) per pass combined as a report combines a network's passes
    (`Measured.value`): the median of the fastest invocations of those at full speed."""
    from latency.networks import Measured

    means, fastest, slow = zip(*passes)
    return Measured(seconds=means, run_ids=(), fastest=fastest, slow=slow).value("median-fastest")


def _time_round(models: Loaded, gate: Any, passes: int, runs: int, warmup: int,
                seed: int) -> dict[Any, list[tuple[float, float, bool]]]:
    """Every model once per pass, in a new shuffled order each pass: (mean, fastest, kept slow)
    rows."""
    from latency.devices.runner import time_in_context, time_loaded_stats

    rows: dict[Any, list[tuple[float, float, bool]]] = {key: [] for key in models.jobs}
    partners = models.partners
    order = list(models.jobs)
    gc.disable()  # a collection inside a timing would be charged to the model
    try:
        for p in range(passes):
            random.Random(seed * 1000 + p).shuffle(order)
            for key in order:
                interpreter, in_context = models.jobs[key]
                if in_context:
                    def measure() -> tuple[float, int, float]:
                        return time_in_context(interpreter, partners, runs, warmup)
                else:
                    def measure() -> tuple[float, int, float]:
                        return time_loaded_stats(interpreter, runs, warmup)
                mean, _, fastest = gate.timed(measure)
                rows[key].append((mean, fastest, gate.last_slow))
    finally:
        gc.enable()
    return rows


def _models(arch_name: str, sample: int, seed: int) -> tuple[Loaded, list[list[Cell]]]:
    from latency.context import partner_models
    from latency.devices.runner import load_model
    from latency.generate import CellModels
    from latency.layer_types import network_layer_types
    from latency.networks import network_cells, network_model, sample_networks
    from latency.overhead import PROBE_CHAIN, probe_models

    arch = get_arch(arch_name)
    networks = sample_networks(arch, sample, seed)
    cells_of = [network_cells(arch, n.widths) for n in networks]
    renderer = CellModels(network_layer_types([arch]))
    jobs: dict[tuple[str, Any], tuple[Any, bool]] = {}
    for cell in sorted({c for cells in cells_of for c in cells}):
        jobs[("cell", cell)] = (load_model(renderer.render(*cell)), True)
    for i, n in enumerate(networks):
        jobs[("network", i)] = (load_model(network_model(arch, n.widths)), False)
    for _, n_ops, model in probe_models(PROBE_CHAIN):
        jobs[("probe", n_ops)] = (load_model(model), True)
    partners = [load_model(m) for m in partner_models(arch)]
    for p in partners:
        p.invoke()  # first invocations allocate and pack
    return Loaded(jobs, partners), cells_of


def run_rounds(arch_name: str, sample: int, rounds: int, passes: int, runs: int = 20, warmup: int = 2,
               seed: int = 0, report: Callable[[str], None] = print) -> list[Round]:
    """Times `rounds` rounds and reports a line per round (see the module's doc)."""
    from latency.devices.runner import load_model
    from latency.devices.speed_gate import SpeedGate, sentinel_model, sentinel_reader

    models, cells_of = _models(arch_name, sample, seed)
    read = sentinel_reader(load_model(sentinel_model()))
    gate = SpeedGate(read)
    done: list[Round] = []
    for r in range(rounds):
        sentinel_s = float(np.median([read() for _ in range(200)]))
        rows = _time_round(models, gate, passes, runs, warmup, seed + r)
        rnd = Round(cells={k[1]: combine(v) for k, v in rows.items() if k[0] == "cell"},
                    networks=[combine(rows[("network", i)]) for i in range(len(cells_of))],
                    probes={k[1]: combine(v) for k, v in rows.items() if k[0] == "probe"},
                    sentinel_s=sentinel_s)
        done.append(rnd)
        errors = sum_errors_pct(rnd, cells_of)
        nets, kinds = moves_against(done[0], rnd)
        report(f"round {r + 1}: sentinel {sentinel_s * 1e6:.2f} us; exact sums vs networks mean {np.mean(errors):+.2f} % "
               f"({min(errors):+.2f} .. {max(errors):+.2f}); against round 1: networks {nets:.3f}, cells "
               + ", ".join(f"{k} {v:.3f}" for k, v in kinds.items())
               + f"; {gate.take_stats().summary() or 'the host read fast throughout'}")
    return done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="mbv2-tiny", help=f"architecture ({KNOWN_ARCHS}); default mbv2-tiny")
    p.add_argument("--sample", type=int, default=8, help="sampled networks (8)")
    p.add_argument("--rounds", type=int, default=6, help="rounds, each a full measurement (6)")
    p.add_argument("--passes", type=int, default=6, help="passes per round, each in a new order (6)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled networks and the pass orders (0)")
    add_verbose_flag(p)
    args = p.parse_args(argv)
    for name in ("sample", "rounds", "passes"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    quiet_runtime(args.verbose)
    absorb_runtime_banner()
    start = time.monotonic()
    print(f"{args.arch}: {args.sample} networks and their exact cells, {args.rounds} rounds of {args.passes} passes",
          flush=True)
    run_rounds(args.arch, args.sample, args.rounds, args.passes, seed=args.seed,
               report=lambda line: print(line, flush=True))
    print(f"{time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
