"""`plot-table`: a latency table as pictures, one heatmap per layer type."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from latency.quiet import add_verbose_flag, quiet_runtime

PROG = "plot-table"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Draw a latency table as PNG pictures, one per layer type: its value (the table's estimator "
        "of the passes, interpolated between grid points, unsmoothed) over input x output channels, with a dot on "
        "every measured cell; a layer type with one channel axis gets a line plot. The table file is only read.",
    )
    p.add_argument("--table", required=True, help="table file (.sqlite) from build-tables")
    p.add_argument("--out", help="directory for the pictures (default: plots/<table file name>)")
    p.add_argument("--types", metavar="KEY,...",
                   help="only these layer types (comma-separated keys, e.g. conv-k3-s1-m32; default: all)")
    add_verbose_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    quiet_runtime(args.verbose)
    from latency.plots import plot_table
    from latency.store import TableFileError

    out = Path(args.out) if args.out else Path("plots") / Path(args.table).stem
    types = [k.strip() for k in args.types.split(",") if k.strip()] if args.types else None
    try:
        written, empty = plot_table(args.table, out, types)
    except TableFileError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{PROG}: error: cannot write the pictures in {out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    print(f"{len(written)} pictures in {out}")
    if empty:
        print(f"no values yet (finish the table with build-tables) for: {', '.join(empty)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
