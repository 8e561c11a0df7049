"""How well does a device repeat its own whole-network timings? The floor under any table's accuracy.

    python -m tools.repeatability --arch wrn-40-2 [--device local] [--estimator fastest] FIRST.sqlite SECOND.sqlite

`latency-report` stores every pass of every network it measures in the table file. Run it,
copy the table file (or keep the one a rebuilt table replaces), run it again later with
`--remeasure` on the copy, and give both files here: the networks measured in both are
compared as if the first run predicted the second, with the report's own metrics. No table
can be expected to predict a device more closely than the device repeats itself, so a
report's MAPE and worst error are only meaningful well above these.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Mapping

from latency.metrics import percent_errors, validation_metrics
from latency.networks import Measured
from latency.smoothing import ESTIMATORS
from latency.store import TableStore
from latency.store_networks import measured_networks
from models.arch import Arch
from models.families import KNOWN_ARCHS, get_arch


class RepeatabilityError(ValueError):
    """Nothing to compare: the files lack common measured networks."""


def repeat_rows(first: Mapping[str, Measured], second: Mapping[str, Measured],
                estimator: str) -> list[tuple[str, float, float]]:
    """(network key, first s, second s) of the networks measured in both runs, each run's
    passes combined by `estimator`, smallest first."""
    common = sorted(set(first) & set(second))
    if not common:
        raise RepeatabilityError("the two files have no measured network in common: run latency-report with the "
                                 "same --arch, --widths/--sample and --seed on both")
    rows = [(k, first[k].value(estimator), second[k].value(estimator)) for k in common]
    return sorted(rows, key=lambda r: r[2])


def repeat_metrics(rows: list[tuple[str, float, float]]) -> dict:
    """The report's metrics of the first run taken as a prediction of the second."""
    return validation_metrics([r[1] for r in rows], [r[2] for r in rows])


def _load(path: Path, arch: Arch, device: str) -> dict[str, Measured]:
    store = TableStore.open(path)
    try:
        nets = measured_networks(store, arch, device)
    finally:
        store.close()
    if not nets:
        raise RepeatabilityError(f"{path}: no {arch.name} network measured on device {device!r}; "
                                 f"run latency-report --table {path} --device {device} --arch {arch.name} first")
    return nets


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.repeatability", description=__doc__.split("\n\n")[0],
                                epilog="Both files hold latency-report's stored passes; the second run should "
                                       "be a --remeasure of the first's networks on a copy of its table file.")
    p.add_argument("first", type=Path, help="table file of the earlier report run")
    p.add_argument("second", type=Path, help="table file of the later report run")
    p.add_argument("--arch", required=True, help=f"network family member ({KNOWN_ARCHS})")
    p.add_argument("--device", default="local", help="device name the networks were measured on (local)")
    p.add_argument("--estimator", choices=tuple(ESTIMATORS), default="fastest",
                   help="how each run's passes combine (fastest: the local tables' estimator, which latency-report "
                        "uses for them)")
    args = p.parse_args(argv)
    try:
        arch = get_arch(args.arch)
        rows = repeat_rows(_load(args.first, arch, args.device), _load(args.second, arch, args.device),
                           args.estimator)
        m = repeat_metrics(rows)
    except ValueError as exc:  # TableFileError, RepeatabilityError, EstimatorError, unknown --arch
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{arch.name} on {args.device}: {m['n']} networks measured in both runs ({args.estimator} of passes)")
    print(f"{'first ms':>10s} {'second ms':>10s} {'diff %':>8s}")
    for (_, a, b), e in zip(rows, percent_errors([r[1] for r in rows], [r[2] for r in rows])):
        print(f"{a * 1e3:10.4f} {b * 1e3:10.4f} {e:+8.2f}")
    print(f"first as a prediction of second: MAPE {m['mape']:.2f} %, worst {m['max_ape']:.2f} %, "
          f"mean {m['mean_error']:+.2f} %, Pearson {m['pearson']:.5f}, within 5 % {m['within_5'] * 100:.0f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
