"""`latency-report`: validate a latency table against whole networks measured on a device."""
from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from latency.devices.local import DEFAULT_MIN_TIME_S
from latency.smoothing import ESTIMATORS, EstimatorError
from models.families import KNOWN_ARCHS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="latency-report",
        description="Measure whole networks on a device (warm-up, mean of --runs invocations, --passes passes in "
        "shuffled order), store every pass in the table file, predict them from the table and write report.md, "
        "metrics.json and scatter.png. Networks already measured on the device for every pass are not measured "
        "again (--remeasure forces it). The per-invoke overhead of the device is measured once (chains of trivial "
        "ops) and stored in the table; predictions subtract the n - 1 overheads the sum of n layers counts too much.",
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
                   help="passes over the networks, each in a new order (default 10 on the local device, where a "
                        "shared machine has slow phases lasting several seconds and a network is quick to time; "
                        "3 elsewhere)")
    p.add_argument("--runs", type=int, default=50, help="timed invocations per network and pass (50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed invocations before them (5)")
    p.add_argument("--threads", type=int, default=1, help="interpreter threads (1)")
    p.add_argument("--min-time-ms", type=float,
                   help=f"local device: time more than --runs invocations until this many milliseconds are timed, "
                        f"as build-tables does (default {DEFAULT_MIN_TIME_S * 1000:g})")
    p.add_argument("--cooldown", type=float, default=0.0, help="seconds of pause between models and calls (0)")
    p.add_argument("--batch-size", type=int, default=4, help="networks per device call (4)")
    p.add_argument("--remeasure", action="store_true", help="measure again, replacing the stored passes")
    p.add_argument("--max-spread", type=float, metavar="PCT",
                   help="measure a network again (all passes) when its passes are more than PCT %% apart "
                        "(max - min over mean): another process or a throttled CPU disturbed it")
    p.add_argument("--retries", type=int, default=2, help="times a disturbed network is measured again (2)")
    p.add_argument("--measured-in", metavar="OLD_TABLE",
                   help="copy the stored measurements of these networks from another table file (e.g. the one a "
                        "rebuilt table replaces) before measuring what is still missing")
    p.add_argument("--correction", choices=("none", "overhead"),
                   help="'overhead': predict sum(cell - o) + o with the per-invoke overhead o measured on the table's "
                        "device; 'none': the plain sum. Default: 'overhead' for a table timed in a network context "
                        "(build-tables --context network, which measures o in that context), else 'none'. The "
                        "report shows both")
    p.add_argument("--estimator", choices=tuple(ESTIMATORS),
                   help="how a network's passes combine: mean (the thesis's method); median or min resist passes "
                        "slowed by another process on a shared device; fastest takes the fastest single invocation "
                        "of all passes. Default: the estimator the table's cells "
                        "were built with (build-tables --estimator), so both sides are measured alike")
    p.add_argument("--no-overhead", action="store_true", help="do not measure the per-invoke overhead")
    p.add_argument("--exact-layers", action="store_true",
                   help="also time every network layer's single-layer model at its exact widths (no interpolation, "
                        "no smoothing), to separate the table's own error from the bias of summing layers")
    p.add_argument("--no-op-check", action="store_true",
                   help="skip comparing the ops of the worst network with those of its single-layer models")
    p.add_argument("--raw", action="store_true", help="predict from the unsmoothed per-cell values (the table's estimator of the passes)")
    p.add_argument("--allow-missing", action="store_true", help="leave out layer types the table lacks")
    p.add_argument("--out", help="report directory (default reports/<device>-<arch>)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def main(argv: list[str] | None = None) -> int:
    # heavy imports stay inside main: spawned device workers re-import the caller's main module
    parser = _parser()
    args = parser.parse_args(argv)
    from latency import context as cx
    from latency.devices.base import DeviceError, TimingSettings
    from latency.devices.registry import make_devices, min_time_s
    from latency.store import TableFileError, TableStore
    from latency.table import LatencyTable, PredictionError
    from latency import validate as v
    from models.arch import WidthError
    from models.families import get_arch

    report = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    if args.passes is None:
        args.passes = 10 if args.device == "local" else 3
    try:
        for name in ("passes", "runs", "threads", "batch_size"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if args.warmup < 0 or args.cooldown < 0 or args.sample < 0 or args.retries < 0:
            raise ValueError("--warmup, --cooldown, --sample and --retries must be >= 0")
        if args.max_spread is not None and args.max_spread <= 0:
            raise ValueError("--max-spread must be > 0")
        arch = get_arch(args.arch)
        networks = v.load_networks(arch, args.widths) + (v.sample_networks(arch, args.sample, args.seed)
                                                          if args.sample else [])
        if not networks:
            raise ValueError("no networks: give --widths FILE_OR_DIR and/or --sample N")
        networks = list({n.key: n for n in reversed(networks)}.values())[::-1]  # first label of a duplicate wins
        table = LatencyTable.open(args.table, smoothed=not args.raw)
        if args.estimator is None:
            args.estimator = table.meta.get("estimator") or "mean"
        in_network = cx.is_network_context(table.meta)
        if args.correction is None:
            args.correction = "overhead" if in_network else "none"
        if in_network and args.device != "local":
            raise ValueError("this table's cells were timed in a network context on the local device; "
                             f"validate it on --device local, not {args.device!r}")
        predictor = table.predictor(arch, allow_missing=args.allow_missing)
        for n in networks:  # fail before any device time is spent
            predictor.predict(n.widths)
        if args.correction == "overhead" and args.no_overhead and v.table_overhead(table.meta) is None:
            raise ValueError("--correction overhead needs the per-invoke overhead, which this table does not hold "
                             "yet: drop --no-overhead to measure it")
        timing = TimingSettings(runs=args.runs, warmup=args.warmup, threads=args.threads, cooldown_s=args.cooldown,
                                min_time_s=min_time_s(args.device, args.min_time_ms))
        devices = make_devices(args.device, timing, 1, args.devices_file)
        if len(devices) != 1:
            raise ValueError(f"--device {args.device!r} names {len(devices)} devices; a report measures on one")
        # exact cells are timed as the table's cells were; whole networks always back to back
        cell_device = devices[0]
        if in_network:
            from dataclasses import replace

            from latency.devices.local import LocalDevice

            cell_device = LocalDevice(settings=replace(
                timing, min_time_s=0.0, partners=cx.partner_models(arch),
                evict_bytes=table.meta[cx.CONTEXT_META_KEY]["evict_bytes"]), name=devices[0].name)
    except (ValueError, WidthError, TableFileError, PredictionError) as exc:
        print(f"latency-report: error: {exc}", file=sys.stderr)
        return 2
    device = devices[0]
    out = Path(args.out or f"reports/{device.name}-{arch.name}")

    store = TableStore.open(args.table)
    try:
        table_devices = v.table_devices(store)
        if args.measured_in:
            src = TableStore.open(args.measured_in)
            try:
                copied = v.copy_measurements(src, store, arch, device.name, [n.key for n in networks])
            finally:
                src.close()
            if report:
                report(f"copied {copied} stored passes from {Path(args.measured_in).name}")

        async def measure() -> tuple[v.MeasureResult, v.OverheadEstimate | None]:
            info = await device.start()
            try:
                overhead = None
                if not args.no_overhead and not in_network:  # a network-context table holds its own
                    overhead = await v.measure_overhead(store, device, info, args.passes, args.seed,
                                                        args.remeasure, args.cooldown, report,
                                                        estimator=args.estimator)
                result = await v.measure_networks(store, arch, networks, device, info, args.passes, args.seed,
                                                  args.remeasure, args.batch_size, args.cooldown, report)
                for attempt in range(args.retries if args.max_spread is not None else 0):
                    stored = v.measured_networks(store, arch, device.name)
                    disturbed = [n for n in networks if v.pass_spread_pct(stored[n.key].seconds) > args.max_spread]
                    if not disturbed:
                        break
                    if report:
                        report(f"measuring {len(disturbed)} networks again (passes more than {args.max_spread} % "
                               f"apart), attempt {attempt + 1}/{args.retries}")
                    again = await v.measure_networks(store, arch, disturbed, device, info, args.passes,
                                                     args.seed + attempt + 1, True, args.batch_size, args.cooldown,
                                                     report)
                    result.measured_now += again.measured_now
                if args.exact_layers:
                    cell_info = info if cell_device is device else await cell_device.start()
                    try:
                        await v.measure_exact_cells(store, arch, networks, cell_device, cell_info, args.passes,
                                                    args.seed, args.remeasure, cooldown_s=args.cooldown, report=report)
                    finally:
                        if cell_device is not device:
                            await cell_device.close()
                result.info = info
                return result, overhead
            finally:
                await device.close()

        try:
            result, measured_overhead = asyncio.run(measure())
        except KeyboardInterrupt:
            print(f"\ninterrupted: every finished device call is saved in {args.table}; run the same command "
                  "again to continue", file=sys.stderr)
            return 130
        measured = v.measured_networks(store, arch, device.name)
        exact = v.exact_sums(store, arch, networks, device.name, args.estimator)
        ops_of = v.stored_ops(store, arch, device.name)
        meta = store.meta()
        runs = sorted({r for n in networks for r in measured[n.key].run_ids})
        run_rows = {r["id"]: r for r in store.db["runs"].rows_where(f"id in ({','.join('?' * len(runs))})", runs)}
    except (DeviceError, TableFileError, v.ValidationError, OSError, EstimatorError) as exc:
        print(f"latency-report: error: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()

    missing = [n.label for n in networks if len(measured.get(n.key, v.Measured((), ())).seconds) < args.passes]
    if missing:
        print(f"latency-report: error: networks lack passes after measuring: {', '.join(missing)}", file=sys.stderr)
        return 2
    # an overhead describes the predictions only when measured on the device the table was built on
    table_overhead = v.table_overhead(meta)
    if table_overhead is not None and table_devices and table_overhead.device not in table_devices:
        table_overhead = None
    if args.correction == "overhead" and table_overhead is None:
        print("latency-report: error: --correction overhead needs the per-invoke overhead measured on the table's "
              f"device ({', '.join(table_devices) or 'unknown'}): run without --no-overhead on that device",
              file=sys.stderr)
        return 2
    applied = table_overhead if args.correction == "overhead" else None
    notes = []
    if table_devices and device.name not in table_devices:
        notes.append(f"the table was measured on {', '.join(table_devices)}, the networks on {device.name}")
    if table.coverage_note():
        notes.append(table.coverage_note())
    try:
        for n in networks:  # every network's passes hold what the estimator combines
            measured[n.key].value(args.estimator)
        rows = v.compare(table, arch, networks, measured, table_overhead, applied is not None, args.allow_missing,
                         exact, args.estimator)
    except EstimatorError as exc:
        print(f"latency-report: error: {exc} (--remeasure measures them again; nothing stored is lost otherwise)",
              file=sys.stderr)
        return 2

    from latency.report import ReportInput, _num, worst, write_report

    w = worst(rows)
    op_check = None
    if not args.no_op_check:
        if report:
            report("op check: the ops of every timed network against those of its layers' cells")
        from latency.generate import CellModels
        from latency.layer_types import network_layer_types

        generator = CellModels(network_layer_types([arch]))
        checks = {n.label: v.op_check(arch, n.widths, ops_of[n.key], generator) for n in networks if n.key in ops_of}
        op_check = {"networks": checks, "checked": len(checks), "match": sum(c["matches"] for c in checks.values()),
                    "with_fused_layers": sum(bool(c["fused"]) for c in checks.values())}
    runtimes = sorted({f"{r['runtime']} {r['runtime_version']}" for r in run_rows.values()})
    inp = ReportInput(
        arch=arch.name, device=device.name, table_name=Path(args.table).name, table_devices=table_devices,
        table_meta={k: meta.get(k) for k in ("grid_step", "passes", "sigma", "estimator", "smoothing_edges",
                                             "cell_context")}, rows=rows, overhead=applied,
        overhead_measured=measured_overhead or v.table_overhead(meta, device.name),
        worst_breakdown=predictor.breakdown(w.network.widths),
        measurement={"runtime": ", ".join(runtimes), "estimator": args.estimator, "runs": args.runs, "warmup": args.warmup, "passes": args.passes,
                     "threads": args.threads, "run_ids": runs, "measured_now": result.measured_now,
                     "already_stored": result.already},
        op_check=op_check, notes=notes,
    )
    metrics = write_report(out, inp)
    print(f"report: {out}/report.md")
    print(f"networks: {metrics['n']} (measured now: {result.measured_now} passes, already stored: {result.already})")
    print(f"MAPE {_num(metrics['mape'], '.2f')} %, worst {_num(metrics['max_ape'], '.2f')} %, "
          f"Pearson {_num(metrics['pearson'], '.5f')}, slope {_num(metrics['slope'], '.4f')}"
          + (f"; plain sum: MAPE {_num(metrics['alternatives']['sum_of_layers']['mape'], '.2f')} %" if applied else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
