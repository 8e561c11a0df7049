"""latency-report with the options only a diagnosis needs.

    python -m tools.report_diagnostics --table T --arch wrn-40-2 --sample 20 --exact-layers [...]

Takes every flag of `latency-report` (same meaning, same defaults), plus:

* ``--exact-layers``: also time every layer of every network as a single-layer model at its
  exact widths (no interpolation, no smoothing), timed as the table's cells were: their sum
  against the network separates the table's own error from the bias of summing layers;
* ``--raw``: predict from the unsmoothed cell values (the table's estimator of the passes);
* ``--no-op-check``: skip comparing every timed network's ops with those of its cells;
* ``--measured-in OLD_TABLE``: first copy the stored passes of these networks (and the
  device's overhead probes) from another table file, e.g. the one a rebuilt table replaces;
* ``--no-overhead``: do not measure the per-invoke overhead;
* ``--exact-evict-mb MB``: time the exact cells with MB written over the caches before every
  invocation instead of the table's eviction;
* ``--exact-placements K``: load every exact cell K times per pass, each elsewhere in memory,
  instead of the table's placements.

A table file holds one set of exact cells: use a copy of the table per variant.
"""
from __future__ import annotations

import sys

from latency.cli_report import Diagnostics, report_parser, run
from latency.store import TableFileError, TableStore
from latency.store_networks import exact_cell_passes


def holds_exact_cells(table: str, device: str) -> bool:
    """Whether a table file already holds exact cells of `device` (read only; False for a file
    that is not a table, which the report itself then names)."""
    try:
        store = TableStore.open(table)
    except TableFileError:
        return False
    try:
        return bool(exact_cell_passes(store, device))
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    p = report_parser(prog="python -m tools.report_diagnostics")
    p.description = __doc__.split("\n\n")[0]
    d = p.add_argument_group("diagnostics")
    d.add_argument("--exact-layers", action="store_true",
                   help="also time every layer at its exact widths, as the table's cells were timed")
    d.add_argument("--raw", action="store_true", help="predict from the unsmoothed cell values")
    d.add_argument("--no-op-check", action="store_true",
                   help="skip comparing every timed network's ops with those of its cells")
    d.add_argument("--measured-in", metavar="OLD_TABLE",
                   help="first copy the stored passes of these networks from another table file")
    d.add_argument("--no-overhead", action="store_true", help="do not measure the per-invoke overhead")
    d.add_argument("--exact-evict-mb", type=float, metavar="MB",
                   help="with --exact-layers: MB written over the caches before every exact cell's invocation "
                        "(default: the table's eviction)")
    d.add_argument("--exact-placements", type=int, metavar="K",
                   help="with --exact-layers: loads of every exact cell per pass (default: the table's placements)")
    args = p.parse_args(argv)
    if args.exact_evict_mb is not None and (args.exact_evict_mb < 0 or not args.exact_layers):
        p.error("--exact-evict-mb needs --exact-layers and a size >= 0")
    if args.exact_placements is not None and (args.exact_placements < 1 or not args.exact_layers):
        p.error("--exact-placements needs --exact-layers and a count >= 1")
    variant = args.exact_evict_mb is not None or args.exact_placements is not None
    if variant and not args.remeasure and holds_exact_cells(args.table, args.device):
        p.error(f"{args.table} already holds exact cells, timed in another context: they would be reused; "
                "give a copy of the table without them (or --remeasure, which also times the networks again)")
    evict = None if args.exact_evict_mb is None else int(args.exact_evict_mb * 2**20)
    return run(args, Diagnostics(exact_layers=args.exact_layers, raw=args.raw, op_check=not args.no_op_check,
                                 measured_in=args.measured_in, measure_overhead=not args.no_overhead,
                                 exact_evict_bytes=evict, exact_placements=args.exact_placements))


if __name__ == "__main__":
    sys.exit(main())
