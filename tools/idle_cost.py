"""What a network's layers pay when their data waits between two uses, as it does inside a network.

    python -m tools.idle_cost [--arch wrn-40-2] [--scale 1.0] [--gap-ms 2 7] [--rounds 3]
                              [--write-mb 9] [--read-mb 64]

Inside a network, a layer's weights were last used one whole network ago; a table's cell in the
network context (`latency.context`) finds them a few microseconds after twice the L2 was written
over them. On a quiet host the two agree once the weights are beyond L2; on a host whose
neighbours turn over the shared last-level cache, weights that wait come back from further away.
This tool times, in one process and alternating rounds, the whole network (fastest of 40
invocations) and every layer's single-layer model in the network context (fastest of 20), once
as the local recipe times cells and once after spinning `--gap-ms` before every invocation
(touching no memory), and prints the sums less one invoke overhead per extra layer next to the
network, then the layers the last column moves most. `--write-mb` and `--read-mb` add columns
that put the caches in other states instead of the recipe's: that many MB written before every
invocation (dirty lines), or read (clean lines, as a network's read-only weights leave them; more
than the last-level cache: weights from memory). Nothing is gated or stored: a one-process probe
of this host's state, to run twice for its spread.
"""
from __future__ import annotations

import argparse
import statistics
import time

from latency.context import evict_bytes_for, local_l2_bytes, partner_models
from latency.devices import runner
from latency.generate import CellModels
from latency.layer_types import network_layer_types
from latency.networks import network_cells
from latency.overhead import estimate_overhead, probe_models
from latency.quiet import absorb_runtime_banner, add_verbose_flag, quiet_runtime
from models.families import KNOWN_ARCHS, get_arch


def fastest_invocation(invoke, n: int) -> float:
    best = float("inf")
    for _ in range(n):
        t = time.perf_counter()
        invoke()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="wrn-40-2", help=f"architecture ({KNOWN_ARCHS}); default wrn-40-2")
    p.add_argument("--scale", type=float, default=1.0, help="every group at this fraction of its width (1.0)")
    p.add_argument("--gap-ms", type=float, nargs="+", default=[2.0, 7.0], metavar="MS",
                   help="spin this long before every invocation of a cell; one column each (default 2 7)")
    p.add_argument("--rounds", type=int, default=3, help="rounds over the network and every cell (3)")
    p.add_argument("--write-mb", type=float, nargs="*", default=[], metavar="MB",
                   help="write this many MB before every invocation instead of the recipe's; one column each (none)")
    p.add_argument("--read-mb", type=float, nargs="*", default=[], metavar="MB",
                   help="read this many MB (clean lines) before every invocation instead of the recipe's writes; "
                        "one column each (none)")
    add_verbose_flag(p)
    args = p.parse_args(argv)
    quiet_runtime(args.verbose)
    absorb_runtime_banner()
    if not 0 < args.scale <= 1 or args.rounds < 1 or any(g <= 0 for g in args.gap_ms + args.write_mb + args.read_mb):
        p.error("--scale must be in (0, 1], --rounds >= 1 and every --gap-ms, --write-mb and --read-mb > 0")
    from models.keras_builder import to_tflite

    arch = get_arch(args.arch)
    widths = {g.name: max(1, round(g.full * args.scale)) for g in arch.prunable_groups}
    evict = evict_bytes_for(arch, local_l2_bytes())
    cells = network_cells(arch, widths)
    renderer = CellModels(network_layer_types([arch]))
    loaded = [runner.load_model(renderer.render(*c)) for c in cells]
    partners = [runner.load_model(m) for m in partner_models(arch)]
    probes = [(label, n, runner.load_model(m)) for label, n, m in probe_models()]
    network = runner.load_model(to_tflite(arch, widths))
    mb = 2**20
    # column -> (spin before, bytes written, bytes read) before every invocation of a cell
    columns = {"recipe": (0.0, evict, 0)}
    columns.update({f"gap {g:g} ms": (g / 1e3, evict, 0) for g in args.gap_ms})
    columns.update({f"write {w:g} MB": (0.0, int(w * mb), 0) for w in args.write_mb})
    columns.update({f"read {r:g} MB": (0.0, 0, int(r * mb)) for r in args.read_mb})
    print(f"{arch.name} at {args.scale:g} of every width: {len(cells)} layers, {evict / mb:.1f} MiB written "
          f"before every cell invocation by the recipe; {args.rounds} rounds", flush=True)

    def in_context(interpreter, column: str) -> float:
        gap_s, write, read = columns[column]
        return runner.time_in_context(interpreter, partners, 20, 2, write, gap_s=gap_s, read_bytes=read)[2]

    net, sums, per = [], {c: [] for c in columns}, {c: [[] for _ in cells] for c in columns}
    overheads = []
    for r in range(args.rounds):
        net.append(fastest_invocation(network.invoke, 40))
        overheads.append(estimate_overhead("local", [(label, n, in_context(it, "recipe")) for label, n, it in probes],
                                           combined="fastest").seconds)
        for c in columns:
            values = [in_context(it, c) for it in loaded]
            sums[c].append(sum(values))
            for i, v in enumerate(values):
                per[c][i].append(v)
        print(f"round {r + 1}: network {net[-1] * 1e6:.0f} us; cells " +
              ", ".join(f"{c} {sums[c][-1] * 1e6:.0f} us" for c in columns), flush=True)
    o = statistics.median(overheads)
    whole = statistics.median(net)
    print(f"invoke overhead o = {o * 1e6:.2f} us; network {whole * 1e6:.1f} us (median of rounds)")
    width = max(len(c) for c in columns)
    for c in columns:
        total = statistics.median(sums[c]) - (len(cells) - 1) * o
        # a tenth of a microsecond: a narrow network is tens of them, and the percentage follows from both
        print(f"  cells, {c:<{width}}, less (n - 1) o: {total * 1e6:8.1f} us  ({100 * (total / whole - 1):+.1f} % "
              "of the network)")
    last = list(columns)[-1]
    ratio = [statistics.median(per[last][i]) / statistics.median(per["recipe"][i]) for i in range(len(cells))]
    print(f"layers the column '{last}' moves most (against the recipe, median of rounds):")
    for i in sorted(range(len(cells)), key=lambda i: -ratio[i])[:6]:
        print(f"  {cells[i][0]} {cells[i][1]}->{cells[i][2]}: {statistics.median(per['recipe'][i]) * 1e6:.1f} us, "
              f"x{ratio[i]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
