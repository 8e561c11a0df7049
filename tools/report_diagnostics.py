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
* ``--no-overhead``: do not measure the per-invoke overhead.
"""
from __future__ import annotations

import sys

from latency.cli_report import Diagnostics, report_parser, run


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
    args = p.parse_args(argv)
    return run(args, Diagnostics(exact_layers=args.exact_layers, raw=args.raw, op_check=not args.no_op_check,
                                 measured_in=args.measured_in, measure_overhead=not args.no_overhead))


if __name__ == "__main__":
    sys.exit(main())
