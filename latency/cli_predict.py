"""`predict-latency`: the latency of a width assignment from a table file."""
from __future__ import annotations

import argparse
import json
import sys

from models.arch import WidthError
from models.thesis_names import load_widths_any
from models.families import KNOWN_ARCHS, get_arch
from .quiet import add_verbose_flag, quiet_runtime
from .store import TableFileError
from .table import LatencyTable, PredictionError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="predict-latency",
        description="Predict the latency of a network at a width assignment as the sum of its layers' cells "
        "in a latency table.",
    )
    parser.add_argument("--table", required=True, help="table file (.sqlite) from build-tables")
    parser.add_argument("--arch", default="wrn-40-2", help=f"network ({KNOWN_ARCHS}); default wrn-40-2")
    parser.add_argument("--widths", help="width assignment JSON {group: channels} (default: full widths)")
    parser.add_argument("--json", action="store_true", help="print JSON (with the per-layer breakdown)")
    parser.add_argument("--breakdown", action="store_true", help="print the per-layer breakdown")
    parser.add_argument("--raw", action="store_true", help="use the unsmoothed means of the passes")
    parser.add_argument("--allow-missing", action="store_true",
                        help="leave out layer types the table lacks (and list them) instead of failing")
    add_verbose_flag(parser)
    args = parser.parse_args(argv)
    quiet_runtime(args.verbose)
    try:
        arch = get_arch(args.arch)
        widths = load_widths_any(arch, args.widths) if args.widths else arch.full_widths()
        table = LatencyTable.open(args.table, smoothed=not args.raw)
        predictor = table.predictor(arch, allow_missing=args.allow_missing)
        seconds = predictor.predict(widths)
        layers = predictor.breakdown(widths)
    except (ValueError, WidthError, TableFileError, PredictionError) as exc:
        print(f"predict-latency: error: {exc}", file=sys.stderr)
        return 2
    note = table.coverage_note()
    left_out = [l.layer for l in layers if l.seconds is None]
    if args.json:
        print(json.dumps({
            "table": str(args.table), "arch": arch.name, "seconds": seconds, "ms": seconds * 1e3,
            "widths": widths, "note": note, "left_out": left_out,
            "layers": [l.__dict__ for l in layers],
        }, indent=1))
        return 0
    if args.breakdown:
        for l in layers:
            ms = "   (not in table)" if l.seconds is None else f"{l.seconds * 1e3:9.3f} ms"
            print(f"{l.layer:<18} {l.type_key or '-':<26} {l.c_in:>5} {l.c_out:>5} {ms}")
    print(f"{arch.name}: {seconds * 1e3:.1f} ms predicted from {args.table}")
    if note:
        print(f"note: {note}")
    if left_out and not note:
        print(f"left out ({len(left_out)} layers the table lacks): {', '.join(left_out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
