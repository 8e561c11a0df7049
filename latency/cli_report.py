"""`latency-report`: validate a latency table against whole networks measured on a device.

Networks are timed as the table's recipe says (its runs, warm-up, threads, pause, minimum
timed duration; back to back), and their passes combined by the table's estimator, so both
sides of the comparison are measured alike. `tools/report_diagnostics.py` runs the same
report with the options only a diagnosis needs (`Diagnostics`).
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from latency.quiet import add_verbose_flag, quiet_runtime
from models.families import KNOWN_ARCHS

PROG = "latency-report"


def report_parser(prog: str = PROG) -> argparse.ArgumentParser:
    from latency.host_check import CHECK_CELLS  # numpy: imported where main handles Ctrl-C

    p = argparse.ArgumentParser(
        prog=prog,
        description="Measure whole networks on a device, timed as the table's recipe says (its runs, warm-up and "
        "threads; --passes passes in shuffled order), store every pass in the table file, predict them from the "
        "table and write report.md, metrics.json, scatter.png and breakdown.png. Networks already measured on the "
        "device for every pass are not measured again (--remeasure forces it). For a table timed back to back, "
        "the device's per-invoke overhead is measured once (chains of trivial ops) and stored in the table.",
    )
    p.add_argument("--table", required=True, help="table file (.sqlite) from build-tables")
    p.add_argument("--device", default="local", help="'local' or an SSH device profile (default: local)")
    p.add_argument("--devices-file", help="TOML file of SSH device profiles (default: tables/devices.toml)")
    p.add_argument("--arch", default="wrn-40-2", help=f"network ({KNOWN_ARCHS}); default wrn-40-2")
    p.add_argument("--widths", nargs="+", action="extend", default=[], metavar="FILE_OR_DIR",
                   help="width assignment JSON files, or directories of them")
    p.add_argument("--sample", type=int, default=0, metavar="N",
                   help="also N sampled networks spanning the latency range (uniform scalings and random per-group "
                        "widths, removed blocks included; seeded)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled networks and of the pass orders (0)")
    p.add_argument("--passes", type=int,
                   help="passes over the networks, each in a new order (default: the device's, 10 local, 3 SSH)")
    p.add_argument("--span", type=float, metavar="SECONDS",
                   help="spread the passes over this many seconds, so that a network's fastest pass meets the host "
                        "in several states, as the table's cells did (default: 300 for a table whose cells were "
                        "measured over at least that long, else 0: back to back)")
    p.add_argument("--models-per-call", type=int, default=4, metavar="N", help="networks per device call (4)")
    p.add_argument("--remeasure", action="store_true", help="measure again, replacing the stored passes")
    p.add_argument("--max-spread", type=float, metavar="PCT",
                   help="measure a network again (all passes) when its passes are more than PCT %% apart "
                        "(max - min over mean); default: never")
    p.add_argument("--retries", type=int, default=2, help="times a --max-spread network is measured again (2)")
    p.add_argument("--correction", choices=("none", "overhead"),
                   help="'overhead': predict sum(cell - o) + o with the per-invoke overhead o; 'none': the plain "
                        "sum. Default: as the predictor does ('overhead' for a network-context table, else 'none')")
    p.add_argument("--allow-missing", action="store_true", help="leave out layer types the table lacks")
    p.add_argument("--check-cells", type=int, default=CHECK_CELLS, metavar="N",
                   help="time N of the table's own cells again with the networks, as the table timed them, and "
                        f"say how far the device moved since the build (default {CHECK_CELLS}; 0: no check)")
    p.add_argument("--out", help="report directory (default: reports/<device>-<arch>)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    add_verbose_flag(p)
    return p


@dataclass(frozen=True)
class Diagnostics:
    """Options of a report that only a diagnosis needs (`tools/report_diagnostics.py`)."""

    exact_layers: bool = False  # also time every layer at its exact widths, as the table's cells were
    raw: bool = False  # predict from the unsmoothed cell values
    op_check: bool = True  # compare every timed network's ops with those of its cells
    measured_in: str | None = None  # copy stored network passes from another table file first
    measure_overhead: bool = True  # measure the per-invoke overhead (back-to-back tables)
    exact_evict_bytes: int | None = None  # exact cells with this eviction instead of the table's
    exact_placements: int | None = None  # exact cells with this many placements instead of the table's


def main(argv: list[str] | None = None) -> int:
    try:
        return run(report_parser().parse_args(argv))
    except KeyboardInterrupt:  # outside the measurement's own handling (imports, conversion, plots)
        print("\ninterrupted: every finished device call is saved in the table; run the same command again to "
              "continue", file=sys.stderr)
        return 130


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


@dataclass
class _Plan:
    """Everything a report needs before any device time is spent."""

    arch: object
    networks: list
    table: object  # LatencyTable
    predictor: object
    passes: int
    span_s: float  # the passes are spread over this many seconds
    correction: str
    device: object
    timing: object  # TimingSettings of the whole networks
    cell_device: object | None  # times exact cells (None: not asked for)
    check_cells: list  # the table's cells timed again (latency.host_check)
    check_then: dict  # their values in the table
    check_device: object | None  # times them as the table's cells were timed
    check_networks: list  # the build's check networks (latency.network_check), timed with the networks


@dataclass
class _Stored:
    """What the table file holds for the report after measuring."""

    table_devices: list[str]  # where the table's cells were measured
    meta: dict
    measured: dict  # network key -> Measured
    exact: dict  # network key -> sum of its exact cells
    ops_of: dict  # network key -> ops of its timed model
    run_ids: list[int]
    run_rows: dict
    span_s: float  # from the networks' first stored pass to their last
    result: object  # MeasureResult of this report
    measured_overhead: object | None  # OverheadEstimate measured now
    host_check: object | None = None  # HostCheck of the table's cells timed with the networks
    network_check: object | None = None  # NetworkCheck of the build's check networks timed with them


def _prepare(args: argparse.Namespace, diag: Diagnostics) -> _Plan:
    """Checks the request and makes the devices; raises ValueError (and kin) on bad input."""
    from latency.devices.defaults import defaults_for, device_names
    from latency.devices.registry import make_devices
    from latency.generate import adopt_table_templates
    from latency.host_check import choose_check_cells
    from latency.network_timing import exact_cell_timing, table_cells, whole_network_timing
    from latency.networks import load_networks, network_cells, sample_networks
    from latency.overhead import table_overhead
    from latency.report_measure import build_networks, cells_span_s, default_span_s
    from latency.table import LatencyTable
    from models.families import get_arch

    for name in ("passes", "models_per_call"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("sample", "retries", "check_cells"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.max_spread is not None and args.max_spread <= 0:
        raise ValueError("--max-spread must be > 0")
    if args.span is not None and not 0 <= args.span < float("inf"):
        raise ValueError(f"--span must be a number of seconds >= 0, got {args.span:g}")
    arch = get_arch(args.arch)
    networks = load_networks(arch, args.widths) + (sample_networks(arch, args.sample, args.seed) if args.sample else [])
    if not networks:
        raise ValueError("no networks: give --widths FILE_OR_DIR and/or --sample N")
    networks = list({n.key: n for n in reversed(networks)}.values())[::-1]  # first label of a duplicate wins
    defaults = defaults_for(args.device, args.devices_file)
    passes = args.passes or defaults.report_passes
    table = LatencyTable.open(args.table, smoothed=not diag.raw)
    adopt_table_templates(args.table)  # check cells, partners and the op check as the table rendered them
    span_s = args.span if args.span is not None else default_span_s(cells_span_s(args.table), defaults.report_span_s)
    recipe = table.recipe
    correction = args.correction or ("overhead" if recipe.in_network else "none")
    local = device_names(args.device) == ["local"]
    if recipe.in_network and local != (recipe.device_kind == "local"):
        where = "the local device" if recipe.device_kind == "local" else "SSH devices"
        raise ValueError(f"this table's cells were timed in a network context on {where}; validate it there "
                         f"(the device it was built on), not on {args.device!r}")
    predictor = table.predictor(arch, allow_missing=args.allow_missing)
    for n in networks:  # fail before any device time is spent
        predictor.predict(n.widths)
    if correction == "overhead" and not diag.measure_overhead and table_overhead(table.meta) is None:
        raise ValueError("--correction overhead needs the per-invoke overhead, which this table does not hold "
                         "yet: let the report measure it (no --no-overhead)")
    timing = whole_network_timing(recipe, local)
    devices = make_devices(args.device, timing, 1, args.devices_file)
    if len(devices) != 1:
        raise ValueError(f"--device {args.device!r} names {len(devices)} devices; a report measures on one")
    made = {timing: devices[0]}

    def device_for(cell_timing):  # one device per timing
        if cell_timing not in made:
            made[cell_timing] = make_devices(args.device, cell_timing, 1, args.devices_file)[0]
        return made[cell_timing]

    cell_device = check_device = None
    then = table_cells(args.table) if args.check_cells else {}
    check_cells = choose_check_cells([network_cells(arch, n.widths) for n in networks], then, args.check_cells)
    if check_cells:
        check_device = device_for(exact_cell_timing(recipe, arch, local))
    if diag.exact_layers:  # exact cells are timed as the table's cells were
        cell_timing = exact_cell_timing(recipe, arch, local)
        if diag.exact_evict_bytes is not None:
            cell_timing = dataclasses.replace(cell_timing, evict_bytes=diag.exact_evict_bytes)
        if diag.exact_placements is not None:
            cell_timing = dataclasses.replace(cell_timing, placements=diag.exact_placements)
        cell_device = device_for(cell_timing)
    return _Plan(arch, networks, table, predictor, passes, span_s, correction, devices[0], timing, cell_device,
                 check_cells, {c: then[c] for c in check_cells}, check_device,
                 build_networks(args.table, arch, devices[0].name))


def run(args: argparse.Namespace, diag: Diagnostics = Diagnostics()) -> int:
    """The report `args` (of `report_parser`) ask for, with `diag`'s diagnostic options."""
    # heavy imports stay inside: spawned device workers re-import the caller's main module
    quiet_runtime(args.verbose)
    from latency import store_networks as sn
    from latency.devices.base import DeviceError
    from latency.host_check import host_check
    from latency.network_check import network_check
    from latency.network_timing import check_values, exact_sums
    from latency.report_measure import measure
    from latency.networks import Measured, ValidationError
    from latency.recipe import RecipeError
    from latency.smoothing import EstimatorError
    from latency.store import TableFileError, TableStore
    from latency.table import PredictionError
    from models.arch import WidthError

    report = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        plan = _prepare(args, diag)
    except (ValueError, WidthError, TableFileError, PredictionError, RecipeError) as exc:
        return _error(str(exc))
    arch, networks, recipe, device = plan.arch, plan.networks, plan.table.recipe, plan.device
    out = Path(args.out or f"reports/{device.name}-{arch.name}")
    try:  # before any device time is spent
        out.mkdir(parents=True, exist_ok=True)
        if not os.access(out, os.W_OK):
            raise PermissionError(errno.EACCES, "not writable")
    except OSError as exc:
        return _error(f"cannot write the report into {out}: {exc.strerror or exc}; choose a writable --out")

    store = None
    try:
        store = TableStore.open(args.table, write=True)  # the report stores its measurements
        table_devices = sn.table_devices(store)
        if diag.measured_in:
            src = TableStore.open(diag.measured_in)
            try:
                copied = sn.copy_measurements(src, store, arch, device.name, [n.key for n in networks])
            finally:
                src.close()
            if report:
                report(f"copied {copied} stored passes from {Path(diag.measured_in).name}")
        try:
            result, measured_overhead = asyncio.run(measure(plan, store, args, diag, report))
        except KeyboardInterrupt:
            again = "the same command without --remeasure" if args.remeasure else "the same command"
            print(f"\ninterrupted: every finished device call is saved in {args.table}; run {again} again to "
                  "continue", file=sys.stderr)
            return 130
        measured = sn.measured_networks(store, arch, device.name)
        run_ids = sorted({r for n in networks if n.key in measured for r in measured[n.key].run_ids})
        stored = _Stored(table_devices, store.meta(), measured, exact_sums(store, arch, networks, device.name,
                                                                             recipe.estimator),
                         sn.stored_ops(store, arch, device.name), run_ids, sn.run_rows(store, run_ids),
                         sn.networks_span_s(store, arch, device.name, [n.key for n in networks]), result,
                         measured_overhead)
        if plan.check_cells:
            stored.host_check = host_check(plan.check_cells, plan.check_then,
                                           check_values(store, plan.check_device.name, recipe.estimator))
        if plan.check_networks:
            then = sn.measured_networks(store, arch, device.name, "build_networks")
            stored.network_check = network_check(
                {n.key: n.label for n in plan.check_networks},
                {k: m.value(recipe.estimator) for k, m in then.items()},
                {n.key: measured[n.key].value(recipe.estimator) for n in plan.check_networks if n.key in measured})
    except (DeviceError, TableFileError, ValidationError, OSError, EstimatorError) as exc:
        return _error(str(exc))
    finally:
        if store is not None:
            store.close()

    gated = getattr(device, "gate_stats", None)
    if report and gated is not None and gated.summary():
        report(f"{device.name}: {gated.summary()}")
    missing = [n.label for n in networks if len(measured.get(n.key, Measured((), ())).seconds) < plan.passes]
    if missing:
        return _error(f"networks lack passes after measuring: {', '.join(missing)}")
    return _write(args, diag, plan, stored, out, report)


def _write(args: argparse.Namespace, diag: Diagnostics, plan: _Plan, stored: _Stored, out: Path, report) -> int:
    """Compares, writes the report directory and prints its summary."""
    from latency.comparison import compare
    from latency.op_coverage import op_check_summary
    from latency.overhead import table_overhead
    from latency.report import ReportInput, _num, worst, write_report
    from latency.smoothing import EstimatorError

    arch, networks, recipe, device, table = plan.arch, plan.networks, plan.table.recipe, plan.device, plan.table
    meta, table_devices, measured, result = stored.meta, stored.table_devices, stored.measured, stored.result
    # an overhead describes the predictions only when measured on the device the table was built on
    overhead = table_overhead(meta)
    if overhead is not None and table_devices and overhead.device not in table_devices:
        overhead = None
    if plan.correction == "overhead" and overhead is None:
        return _error("--correction overhead needs the per-invoke overhead measured on the table's device "
                      f"({', '.join(table_devices) or 'unknown'}): report on that device")
    applied = overhead if plan.correction == "overhead" else None
    notes = []
    if table_devices and device.name not in table_devices:
        notes.append(f"the table was measured on {', '.join(table_devices)}, the networks on {device.name}")
    if table.coverage_note():
        notes.append(table.coverage_note())
    try:
        for n in networks:  # every network's passes hold what the estimator combines
            measured[n.key].value(recipe.estimator)
        rows = compare(table, arch, networks, measured, overhead, applied is not None, args.allow_missing,
                       stored.exact, recipe.estimator)
    except EstimatorError as exc:
        return _error(f"{exc} (--remeasure measures them again; nothing stored is lost otherwise)")
    op_check = None
    if diag.op_check:
        if report:
            report("op check: the ops of every timed network against those of its layers' cells")
        op_check = op_check_summary(arch, networks, stored.ops_of)
    runtimes = sorted({f"{r['runtime']} {r['runtime_version']}" for r in stored.run_rows.values()})
    inp = ReportInput(
        arch=arch.name, device=device.name, table_name=Path(args.table).name, table_devices=table_devices,
        recipe=recipe, rows=rows, overhead=applied,
        overhead_measured=stored.measured_overhead or table_overhead(meta, device.name),
        worst_breakdown=plan.predictor.breakdown(worst(rows).network.widths),
        measurement={"runtime": ", ".join(runtimes), "estimator": recipe.estimator, "runs": recipe.runs,
                     "warmup": recipe.warmup, "passes": plan.passes, "span_s": stored.span_s, "threads": recipe.threads,
                     "min_time_s": plan.timing.min_time_s, "run_ids": stored.run_ids,
                     "measured_now": result.measured_now, "already_stored": result.already},
        op_check=op_check, notes=notes, host_check=stored.host_check, network_check=stored.network_check,
    )
    metrics = write_report(out, inp)
    print(f"report: {out}/report.md")
    print(f"networks: {metrics['n']} (measured now: {result.measured_now} passes, already stored: {result.already})")
    print(f"MAPE {_num(metrics['mape'], '.2f')} %, worst {_num(metrics['max_ape'], '.2f')} %, "
          f"Pearson {_num(metrics['pearson'], '.5f')}, slope {_num(metrics['slope'], '.4f')}"
          + (f"; plain sum: MAPE {_num(metrics['alternatives']['sum_of_layers']['mape'], '.2f')} %" if applied else ""))
    if stored.host_check is not None:
        print(stored.host_check.sentence())
    elif plan.check_cells:
        print("host check: none, the networks were measured before this report (--remeasure measures both again)")
    if stored.network_check is not None:
        print(stored.network_check.sentence())
    return 0


if __name__ == "__main__":
    sys.exit(main())
