"""Timing a finished table's check networks on its device, and how the table predicts them
(`latency.network_check`): the I/O half, run by build-tables after the cells."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from models.arch import Arch
from .devices.base import Device
from .network_check import BuildCheck, check_networks

#: the table of the store they go in (`store_networks.NETWORK_TABLES`)
TABLE = "build_networks"


async def time_check_networks(path: Path, arch: Arch, device: Device, k: int, passes: int, seed: int = 0,
                              report: Callable[[str], None] | None = None) -> list[BuildCheck]:
    """Times the first `k` check networks of `arch` on `device` (made with the table's
    whole-network timing, not started) for each of `passes` passes the table file at `path`
    lacks (and again, as `network_timing.retime_slow` says, one whose every pass was kept slow),
    stores them, and returns the table's prediction of each next to its timing. A rerun over a
    table that holds them measures nothing."""
    from .network_timing import measure_networks, networks_lacking
    from .store import TableStore
    from .retime import plan_retimes
    from .store_networks import measured_networks, slow_networks

    networks = check_networks(arch, k)
    if not networks:
        return []
    store = TableStore.open(path, write=True)
    try:
        recipe = store.recipe()
        keys = {n.key for n in networks}
        slow = {k: p for k, p in slow_networks(store, arch, device.name, TABLE).items() if k in keys}
        lacking = networks_lacking(store, arch, networks, device.name, passes, TABLE)
        again, _ = plan_retimes(slow, passes, 1, seed)
        if lacking or again:  # else the device stays idle
            info = await device.start()
            try:
                await measure_networks(store, arch, networks, device, info, passes, seed,
                                       cooldown_s=recipe.cooldown_s, report=report, table=TABLE)
            finally:
                await device.close()
        measured = measured_networks(store, arch, device.name, TABLE)
    finally:
        store.close()
    return predicted_checks(path, arch, networks, measured)


def predicted_checks(path: Path, arch: Arch, networks: list, measured: dict) -> list[BuildCheck]:
    """Each network's prediction by the table at `path` next to its stored passes, both as a
    report with the default correction computes them (read only)."""
    from .comparison import compare
    from .overhead import table_overhead
    from .table import LatencyTable

    table = LatencyTable.open(path)
    recipe = table.recipe
    overhead = table_overhead(table.meta)
    # as latency-report's default: the overhead counted once for a network-context table
    rows = compare(table, arch, networks, measured, overhead, recipe.in_network and overhead is not None,
                   estimator=recipe.estimator)
    return [BuildCheck(r.network.label, r.predicted_s, r.measured_s,
                       bool(r.measured.slow) and all(r.measured.slow)) for r in rows]
