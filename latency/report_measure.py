"""What `latency-report` times before it compares: the overhead probes of a back-to-back table,
the networks with the build's check networks (`latency.network_check`), the check cells
(`latency.host_check`) and, for a diagnosis, the exact cells; and the span its passes are
spread over. The devices come made from `cli_report`'s plan; every finished call is stored."""
from __future__ import annotations

import argparse
from typing import Callable

Report = Callable[[str], None] | None


def build_networks(table: str, arch, device: str) -> list:
    """The check networks the build timed on `device` and stored in the table (read only)."""
    import json

    from latency.networks import Network
    from latency.store import TableStore
    from latency.store_networks import network_labels

    store = TableStore.open(table)
    try:
        return [Network(label, json.loads(key), "check") for key, label in network_labels(store, arch, device).items()]
    finally:
        store.close()


def default_span_s(cells_span_s: float, device_span_s: float) -> float:
    """The device's span for a table whose cells were measured over at least that long, else 0."""
    return device_span_s if cells_span_s >= device_span_s else 0.0


def check_passes_before(passes: int) -> int:
    """Passes of the check cells a report times before its networks (the rest come after)."""
    return (passes + 1) // 2


def cells_span_s(table: str) -> float:
    """Seconds between the table's first and last cell timing (read only)."""
    from latency.store import TableStore

    store = TableStore.open(table)
    try:
        return store.measured_span_s()
    finally:
        store.close()


async def measure(plan, store, args: argparse.Namespace, diag, report: Report = None):
    """Times what the store lacks on the plan's device: the overhead probes (a back-to-back
    table), the networks (again while their passes disagree, with --max-spread), the exact
    cells on request. Returns (MeasureResult, the overhead measured now or None)."""
    from latency import network_timing as nt
    from latency.overhead import measure_overhead
    from latency.metrics import pass_spread_pct
    from latency.store_networks import exact_cell_passes, measured_networks

    recipe, device, arch, networks = plan.table.recipe, plan.device, plan.arch, plan.networks
    pause = recipe.cooldown_s
    info = await device.start()
    try:
        overhead = None
        if diag.measure_overhead and not recipe.in_network:  # a network-context table holds its own
            overhead = await measure_overhead(store, device, info, plan.passes, args.seed, args.remeasure, pause,
                                              report, estimator=recipe.estimator)
        keys = {n.key for n in networks}  # the build's check networks are timed with them
        timed = list(networks) + [n for n in plan.check_networks if n.key not in keys]
        started = {id(device): (device, info)}

        async def start(d):  # a device per timing, started once
            if id(d) not in started:
                started[id(d)] = (d, await d.start())
            return started[id(d)][1]

        checks = plan.check_device
        try:
            # the check cells' first passes before the networks, the rest after them: the check
            # spans the minutes the networks were timed in (docs/measuring.md, "The device then and now")
            before = check_passes_before(plan.passes) if plan.check_cells and (
                args.remeasure or nt.networks_lacking(store, arch, timed, device.name, plan.passes)) else 0
            if before:
                await nt.measure_cells(store, arch, plan.check_cells, checks, await start(checks), before,
                                       args.seed, args.remeasure, cooldown_s=pause, report=report,
                                       table="check_cells", retime=False)
            result = await nt.measure_networks(store, arch, timed, device, info, plan.passes, args.seed,
                                               args.remeasure, args.models_per_call, pause, report,
                                               span_s=plan.span_s)
            for attempt in range(args.retries if args.max_spread is not None else 0):
                stored = measured_networks(store, arch, device.name)
                disturbed = [n for n in networks if pass_spread_pct(stored[n.key].seconds) > args.max_spread]
                if not disturbed:
                    break
                if report:
                    report(f"measuring {len(disturbed)} networks again (passes more than {args.max_spread} % "
                           f"apart), attempt {attempt + 1}/{args.retries}")
                again = await nt.measure_networks(store, arch, disturbed, device, info, plan.passes,
                                                  args.seed + attempt + 1, True, args.models_per_call, pause, report,
                                                  span_s=plan.span_s)
                result.measured_now += again.measured_now
            # timed with the networks: by a report that measures them, or one finishing an interrupted check
            if plan.check_cells and (result.measured_now or exact_cell_passes(store, checks.name, "check_cells")):
                await nt.measure_cells(store, arch, plan.check_cells, checks, await start(checks), plan.passes,
                                       args.seed, args.remeasure and not before, cooldown_s=pause, report=report,
                                       table="check_cells")
            if plan.cell_device is not None:
                await nt.measure_exact_cells(store, arch, networks, plan.cell_device, await start(plan.cell_device),
                                             plan.passes, args.seed, args.remeasure, cooldown_s=pause, report=report)
        finally:
            for other, _ in started.values():
                if other is not device:
                    await other.close()
        result.info = info
        return result, overhead
    finally:
        await device.close()
