"""How many passes does a table need? Its first k passes, predicting the same measured networks.

    python -m tools.pass_count --table T --arch A [--device local] [--passes 1,2,3,4,6]

A table's passes are timed in order, each over all its cells, so a table of its first k passes
is the table a k-pass build would have made at the same hour. For each k this derives that
table from a copy of T (its later passes left out, the cells combined and smoothed by T's own
recipe; T is not changed), and predicts the whole networks `latency-report` stored in T with
it: the report's metrics for each k, against the very same measurements. Nothing is timed.
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
from contextlib import closing
from pathlib import Path

from latency.finalize import finalize
from latency.metrics import validation_metrics
from latency.store import TableStore
from latency.store_networks import measured_networks
from latency.table import LatencyTable
from models.families import KNOWN_ARCHS, get_arch


class PassCountError(ValueError):
    """The table cannot answer the question (too few passes, no stored networks)."""


def first_passes_table(src: Path, passes: int, dst: Path) -> None:
    """Writes to `dst` the table `src` would have been after its first `passes` passes: the
    later measurements (re-timed passes included) left out, the recipe's pass count set, the
    aggregates derived again with the recipe's estimator, smoothing and edges."""
    # the backup API, not a file copy: a table in WAL mode may hold committed pages in its -wal file
    with closing(sqlite3.connect(f"file:{src}?mode=ro", uri=True)) as a, closing(sqlite3.connect(dst)) as b:
        a.backup(b)
    store = TableStore.open(dst, write=True)
    try:
        recipe = store.recipe()
        if passes > recipe.passes:
            raise PassCountError(f"{src} has {recipe.passes} passes; ask for at most that many")
        store.drop_passes_from(passes)
        store.set_recipe(recipe.replace(passes=passes))
        incomplete = finalize(store, recipe.sigma, recipe.estimator, recipe.edges)
    finally:
        store.close()
    if incomplete:
        raise PassCountError(f"{src}: incomplete layer types {sorted(incomplete)}: finish the table first")


def pass_metrics(table: Path, arch_name: str, device: str, counts: list[int]) -> list[tuple[int, dict]]:
    """(k, the report's metrics of the first k passes) for each k in `counts`."""
    arch = get_arch(arch_name)
    store = TableStore.open(table)
    try:
        networks = measured_networks(store, arch, device)
        estimator = store.recipe().estimator
    finally:
        store.close()
    if not networks:
        raise PassCountError(f"{table}: no {arch.name} network measured on {device!r}; run latency-report "
                             f"--table {table} --device {device} --arch {arch.name} --sample 20 first")
    keys = sorted(networks)
    measured = [networks[k].value(estimator) for k in keys]
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in counts:
            sub = Path(tmp) / f"first-{k}.sqlite"
            first_passes_table(table, k, sub)
            predictor = LatencyTable.open(sub).predictor(arch)
            predicted = [predictor.predict(json.loads(key)) for key in keys]
            out.append((k, validation_metrics(predicted, measured)))
            sub.unlink()
    return out


def _table_passes(table: Path) -> int:
    store = TableStore.open(table)
    try:
        return store.recipe().passes
    finally:
        store.close()


def _counts(text: str) -> list[int]:
    try:
        counts = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--passes takes pass counts like 1,2,3,6, got {text!r}") from None
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"--passes takes pass counts >= 1, got {text!r}")
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.pass_count", description=__doc__.split("\n\n")[0])
    p.add_argument("--table", type=Path, required=True, help="a finished table with networks stored by latency-report")
    p.add_argument("--arch", required=True, help=f"the table's network ({KNOWN_ARCHS})")
    p.add_argument("--device", default="local", help="device the networks were measured on (default: local)")
    p.add_argument("--passes", type=_counts, default=None,
                   help="pass counts to compare, e.g. 1,2,3,6 (default: 1 up to the table's passes)")
    args = p.parse_args(argv)
    try:
        if not args.table.is_file():
            raise PassCountError(f"no table file {args.table}")
        counts = args.passes or list(range(1, _table_passes(args.table) + 1))
        rows = pass_metrics(args.table, args.arch, args.device, counts)
    except ValueError as exc:  # PassCountError, TableFileError, unknown --arch
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.arch}: {rows[0][1]['n']} stored networks predicted from the first k passes of {args.table.name}")
    print(f"{'k':>3s} {'MAPE %':>7s} {'worst %':>8s} {'Pearson':>8s} {'slope':>7s} {'mean err %':>11s}")
    for k, m in rows:
        print(f"{k:3d} {m['mape']:7.2f} {m['max_ape']:8.2f} {m['pearson']:8.5f} {m['slope']:7.4f} "
              f"{m['mean_error']:+11.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
