"""Which layers carry the gap between a network and the sum of its cells: the cells as a chain.

    python -m tools.layer_chain [--arch wrn-40-2] [--scale 0.3 0.55 1.0] [--networks R/metrics.json]
                                [--sample N] [--rounds 3] [--carry-over]

A table times each layer as a single-layer model in the network context of its recipe (other
layer types first, the L2 written over, dense vector work: `latency.context`). Inside the
network, a layer runs after the network's own other layers, whose weights and activations have
passed through the caches since its last use. This tool times, in one process and alternating
rounds, for every network:

- the whole network (fastest of 40 invocations, as a report times it);
- every layer's single-layer model in the local recipe's context (fastest of 20, as a table
  times it), summed less one invoke overhead per extra layer: the table's prediction made from
  exact cells;
- the same single-layer models as a **chain**: all of them invoked in the network's order, 40
  times round, each timed on its own (its fastest counts), so that every layer runs after the
  network's other layers as it does inside the network. Each model keeps its own input and
  output buffers, which the network shares: a chain's weightless layers (additions, batch-norms)
  find their input cold where the network's find it just written;
- the **mix**: the chain's convolutions with the recipe's other layers;
- the **warm** chain: the same, but each model's input written (untimed) right before its
  invocation, as the layer before it writes it inside the network, so that only the weights
  are as the other layers leave them; and the **warm mix**, its convolutions with the recipe's
  other layers.

With `--carry-over`, every network of `--networks` is also predicted without its chain: each
convolution's recipe cell times its type's chain / recipe ratio on the uniform networks,
interpolated linearly by the networks' weights (the nearest ratio outside their range), the
other layers as the recipe times them. That is the model a table could carry (ratios measured
on a few uniform networks at build time); the column says whether it holds for networks the
ratios were not measured on; it is printed for the chain's ratios and for the warm chain's. In
the plain chain a convolution's input comes cold from its own buffer, where the network's was
just written: it charges the convolution for that as well as for its weights, which overshoots
networks with wide activations and small weights (MobileNetV2, `docs/measuring.md` §1).

Every timing waits for the speed gate (`latency.devices.speed_gate`). Prints one line per
network (each column's sum against the network, %), then the kinds of the last network's
layers. Nothing is stored; run it twice for its spread.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np

from latency.context import evict_bytes_for, local_l2_bytes, partner_models, weight_bytes
from latency.devices import runner
from latency.devices.defaults import LOCAL_VECTOR_S, local_defaults
from latency.devices.speed_gate import SpeedGate, sentinel_model, sentinel_reader
from latency.generate import CellModels
from latency.layer_types import layer_kind, network_layer_types
from latency.networks import network_cells
from latency.overhead import estimate_overhead, probe_models
from latency.quiet import absorb_runtime_banner, add_verbose_flag, quiet_runtime
from models.families import KNOWN_ARCHS, get_arch
from tools.idle_cost import fastest_invocation

#: the kinds whose chain timings the mix takes: the layers whose weights the network's others evict
WEIGHTED_KINDS = ("conv",)
#: the sums printed per network, each against the network
COLUMNS = ("recipe", "chain", "mix", "warm", "warm mix")


def chain_fastest(models: list, rounds: int, write_inputs: bool = False) -> list[float]:
    """Each model's fastest invocation when all of them run in order, `rounds` times round.

    With `write_inputs`, each model's input is written (untimed) right before its invocation, as
    the layer before it writes it inside the network: the input warm, the weights as the other
    models left them."""
    best = [math.inf] * len(models)
    invokes = [m.invoke for m in models]
    writes = [[(m.set_tensor, *pair) for pair in runner.random_inputs(m)] if write_inputs else [] for m in models]
    clock = time.perf_counter
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            for i, invoke in enumerate(invokes):
                for set_tensor, index, value in writes[i]:
                    set_tensor(index, value)
                t = clock()
                invoke()
                seconds = clock() - t
                if seconds < best[i]:
                    best[i] = seconds
    finally:
        if gc_was_enabled:
            gc.enable()
    return best


def networks_to_time(arch, scales: list[float], metrics: str | None,
                     sample: int = 0) -> list[tuple[str, dict[str, int]]]:
    from latency.networks import sample_networks
    from search.channels import scaled_widths

    out = [(f"uniform-{s:g}", scaled_widths(arch, arch.full_widths(), s)) for s in scales]
    if metrics:
        try:
            data = json.loads(Path(metrics).read_text())
            networks = [(n["label"], n["widths"]) for n in data["networks"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"--networks {metrics}: not a report's metrics.json ({exc!r}); give R/metrics.json "
                             "of a latency-report") from None
        if data.get("arch") not in (None, arch.name):
            raise SystemExit(f"--networks {metrics}: a report of {data.get('arch')}, not {arch.name}; pass --arch")
        out += networks
    if sample:
        out += [(n.label, n.widths) for n in sample_networks(arch, sample)]
    return out


def type_ratios(results: list, column: str = "chain") -> dict[str, list[tuple[float, float]]]:
    """Each convolution type's `column` / recipe ratio: (weight bytes of the network, ratio) per network."""
    out: dict[str, list[tuple[float, float]]] = {}
    for _, cells, med, _, _, weights in results:
        sums: dict[str, list[float]] = {}
        for i, c in enumerate(cells):
            if layer_kind(c[0]) in WEIGHTED_KINDS:
                pair = sums.setdefault(c[0], [0.0, 0.0])
                pair[0] += med["recipe"][i]
                pair[1] += med[column][i]
        for key, (recipe, chain) in sums.items():
            out.setdefault(key, []).append((weights, chain / recipe))
    return {k: sorted(v) for k, v in out.items()}


def carried_over(cells: list, recipe: list[float], weights: float, ratios: dict) -> float:
    """A network's sum of cells with every convolution scaled by its type's ratio at these weights."""
    total = 0.0
    for c, value in zip(cells, recipe):
        points = ratios.get(c[0]) if layer_kind(c[0]) in WEIGHTED_KINDS else None
        if points:
            total += value * float(np.interp(weights, [w for w, _ in points], [r for _, r in points]))
        else:
            total += value
    return total


def print_carry_over(uniform: list, others: list, column: str) -> None:
    ratios = type_ratios(uniform, column)
    span = (min(r[5] for r in uniform), max(r[5] for r in uniform))
    print(f"carried over: the recipe's cells, every convolution times its type's {column} / recipe ratio on the "
          f"{len(uniform)} uniform networks ({span[0] / 2**20:.2f}-{span[1] / 2**20:.2f} MB), by weights")
    errors = []
    for label, cells, med, net, extra, weights in others:
        errors.append(100 * ((carried_over(cells, med["recipe"], weights, ratios) - extra) / net - 1))
        outside = "" if span[0] <= weights <= span[1] else "  (outside the uniform range: nearest ratio)"
        print(f"{label:>14} {weights / 2**20:6.2f}MB {errors[-1]:+7.1f}%{outside}")
    if errors:
        print(f"carried over: MAPE {sum(map(abs, errors)) / len(errors):.2f} %, worst {max(map(abs, errors)):.2f} %, "
              f"mean {sum(errors) / len(errors):+.2f} % over {len(errors)} networks")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="wrn-40-2", help=f"architecture ({KNOWN_ARCHS}); default wrn-40-2")
    p.add_argument("--scale", type=float, nargs="*", default=[0.3, 0.55, 1.0],
                   help="uniform networks at these fractions of every width (default 0.3 0.55 1.0)")
    p.add_argument("--networks", metavar="METRICS",
                   help="also the networks of a report (its metrics.json), after the uniform ones")
    p.add_argument("--sample", type=int, default=0, metavar="N",
                   help="also the N networks `latency-report --sample N` times (default none)")
    p.add_argument("--rounds", type=int, default=3, help="rounds over every network and its cells (3)")
    p.add_argument("--carry-over", action="store_true",
                   help="also predict the --networks / --sample networks from the uniform networks' "
                        "chain / recipe ratios")
    add_verbose_flag(p)
    args = p.parse_args(argv)
    if args.rounds < 1 or args.sample < 0 or any(not 0 < s <= 1 for s in args.scale):
        p.error("--rounds must be >= 1, --sample >= 0 and every --scale in (0, 1]")
    quiet_runtime(args.verbose)
    absorb_runtime_banner()
    from models.keras_builder import to_tflite

    arch = get_arch(args.arch)
    nets = networks_to_time(arch, args.scale, args.networks, args.sample)
    if not nets:
        p.error("nothing to time: give --scale values, --networks or --sample")
    if args.carry_over and (len(args.scale) < 1 or len(nets) == len(args.scale)):
        p.error("--carry-over needs --scale values (where the ratios are measured) and --networks or --sample")
    renderer = CellModels(network_layer_types([arch]))
    partners = [runner.load_model(m) for m in partner_models(arch)]
    probes = [(label, n, runner.load_model(m)) for label, n, m in probe_models()]
    evict = evict_bytes_for(arch, local_l2_bytes())
    runs = local_defaults().recipe.runs
    gate = SpeedGate(sentinel_reader(runner.load_model(sentinel_model(), 1)))

    def recipe(model) -> float:
        return runner.time_in_context(model, partners, runs, 2, evict, vector_s=LOCAL_VECTOR_S)[2]

    print(f"{arch.name}: {len(nets)} networks, {args.rounds} rounds; cells in the local recipe's context "
          f"({evict / 2**20:.1f} MiB written, {LOCAL_VECTOR_S * 1e6:g} us of vector work before each invocation)")
    print(f"{'network':>14} {'weights':>8} {'network':>9}" + "".join(f" {c:>8}" for c in COLUMNS))
    results = []
    for label, widths in nets:
        cells = network_cells(arch, widths)
        # inputs set once, by the load: the plain chain leaves them as the network's other layers leave them
        models = [runner.load_model(renderer.render(*c)) for c in cells]
        network = runner.load_model(to_tflite(arch, widths))
        whole, overheads = [], []
        per = {c: [[] for _ in cells] for c in ("recipe", "chain", "warm")}
        for _ in range(args.rounds):
            whole.append(gate.timed(lambda: fastest_invocation(network.invoke, 40)))
            for i, value in enumerate(gate.timed(lambda: chain_fastest(models, 40))):
                per["chain"][i].append(value)
            for i, value in enumerate(gate.timed(lambda: chain_fastest(models, 40, write_inputs=True))):
                per["warm"][i].append(value)
            overheads.append(estimate_overhead("local", [(lb, n, recipe(m)) for lb, n, m in probes],
                                               combined="fastest").seconds)
            for i, m in enumerate(models):
                per["recipe"][i].append(gate.timed(lambda: recipe(m)))
        med = {c: [statistics.median(v) for v in values] for c, values in per.items()}
        weighted = [layer_kind(c[0]) in WEIGHTED_KINDS for c in cells]
        med["mix"] = [a if w else b for a, b, w in zip(med["chain"], med["recipe"], weighted)]
        med["warm mix"] = [a if w else b for a, b, w in zip(med["warm"], med["recipe"], weighted)]
        net = statistics.median(whole)
        extra = (len(cells) - 1) * statistics.median(overheads)
        weights = weight_bytes(arch, widths)
        row = "".join(f" {100 * ((sum(med[c]) - extra) / net - 1):+7.1f}%" for c in COLUMNS)
        print(f"{label:>14} {weights / 2**20:6.2f}MB {net * 1e6:7.0f}us{row}", flush=True)
        results.append((label, cells, med, net, extra, weights))
    stats = gate.take_stats().summary()
    if stats:
        print(stats)
    if args.carry_over:
        for column in ("chain", "warm"):
            print_carry_over(results[:len(args.scale)], results[len(args.scale):], column)
    label, cells, med = results[-1][:3]
    kinds: dict[str, list[int]] = {}
    for i, c in enumerate(cells):
        kinds.setdefault(c[0], []).append(i)
    print(f"{label}, by layer type (sum of the layers' medians): recipe, chain, warm chain, each / recipe")
    for key, idx in sorted(kinds.items(), key=lambda kv: -sum(med["recipe"][i] for i in kv[1])):
        a, b, w = (sum(med[c][i] for i in idx) for c in ("recipe", "chain", "warm"))
        print(f"  {key:28} {a * 1e6:8.1f} us {b * 1e6:8.1f} us {w * 1e6:8.1f} us  x{b / a:.3f} x{w / a:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
