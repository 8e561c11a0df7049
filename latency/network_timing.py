"""Timing whole networks, and every layer of them as a single-layer model, for a table.

Whole networks are converted with `to_tflite` and timed back to back with the table's recipe
(warm-up, `runs` invocations, threads, pause), `passes` passes each in a freshly shuffled
order, through the pass engine (`latency.passes`), spread over a span of minutes when asked
(a network's fastest pass then meets the host in several states, as a cell's fastest did
over the table's build); every pass is stored in the table file
(`whole_networks`). On request every layer is also timed at its exact widths (`exact_cells`),
rendered and timed as the table's cells were (`recipe.timing`, in their context): their sum
against the network isolates the bias of summing from the table's own interpolation,
smoothing and cell noise.
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence, TypeVar

from models.arch import Arch
from .devices.base import Device, DeviceInfo, ModelJob, Timing, TimingSettings
from .networks import Network, network_cells, network_model
from .op_coverage import model_op_counts
from .passes import DeviceRun, pass_offsets, plan_passes, run_recorded
from .recipe import TableRecipe
from .retime import plan_retimes
from .smoothing import estimate
from .store import TableStore
from .store_networks import (Cell, add_exact_cell_passes, add_network_passes, exact_cell_passes, exact_cell_values,
                             forget_exact_cells, forget_networks, slow_cells, slow_networks, stored_passes)

Report = Callable[[str], None] | None
K = TypeVar("K")


def whole_network_timing(recipe: TableRecipe, local: bool = True) -> TimingSettings:
    """How whole networks are timed for a table: back to back, with its recipe's runs, warm-up,
    threads and pause, and on the local device its minimum timed duration (SSH devices time
    exactly `runs` invocations)."""
    return TimingSettings(runs=recipe.runs, warmup=recipe.warmup, threads=recipe.threads, cooldown_s=recipe.cooldown_s,
                          min_time_s=recipe.min_time_s if local else 0.0)


def exact_cell_timing(recipe: TableRecipe, arch: Arch, local: bool = True) -> TimingSettings:
    """How a table's cells were timed (`recipe.timing`, in their context), for exact cells."""
    from .context import partner_models

    timing = recipe.timing(partner_models(arch) if recipe.in_network else ())
    return timing if local else dataclasses.replace(timing, min_time_s=0.0)


@dataclass
class MeasureResult:
    measured_now: int = 0  # passes stored by this call
    already: int = 0  # passes found in the store
    run_id: int | None = None
    info: DeviceInfo | None = None
    wall_s: float = 0.0


async def measure_networks(store: TableStore, arch: Arch, networks: Sequence[Network], device: Device,
                           info: DeviceInfo, passes: int = 3, seed: int = 0, remeasure: bool = False,
                           models_per_call: int = 4, cooldown_s: float = 0.0, report: Report = None,
                           convert: Callable[[Arch, Mapping[str, int]], bytes] | None = None,
                           span_s: float = 0.0, table: str = "whole_networks") -> MeasureResult:
    """Measures every network on `device` for each pass it lacks in the store's `table`
    (`store_networks.NETWORK_TABLES`; all passes with `remeasure`, replacing the stored ones);
    commits after every device call. With
    `span_s`, the passes are spread over that many seconds (`latency.passes.pass_offsets`).

    `device` is started by the caller (`info` is what its start returned) and stays open.
    Models are converted up front, so the converter never runs while the device times (on
    the local CPU it would disturb the timings).
    """
    if passes < 1 or models_per_call < 1:
        raise ValueError("passes and models per call must be >= 1")
    started = time.time()
    by_key: dict[str, Network] = {}
    for net in networks:
        by_key.setdefault(net.key, net)
    if remeasure:
        forget_networks(store, arch, by_key, device.name, table)
    done = stored_passes(store, arch, device.name, table)
    plan = plan_passes(by_key, done, passes, models_per_call, seed)
    result = MeasureResult(already=sum(1 for k, p in done if k in by_key and p < passes), info=info)
    convert = convert or network_model
    ids = {k: i for i, k in enumerate(sorted(by_key))}  # opaque ids for the device
    models: dict[str, bytes] = {}
    ops: dict[str, Counter] = {}

    def prepare(keys: Iterable[str]) -> None:  # converted before the device times, never while
        needed = sorted(set(keys) - models.keys())
        for i, k in enumerate(needed):
            if report:
                report(f"converting network {i + 1}/{len(needed)}: {by_key[k].label}")
            models[k] = convert(arch, by_key[k].widths)
            ops[k] = model_op_counts(models[k])

    def render(keys: list[str]) -> list[ModelJob]:
        return [ModelJob(ids[k], models[k]) for k in keys]

    def commit(run: DeviceRun, p: int, keys: list[str], timings: list[Timing]) -> int:
        return add_network_passes(store, arch, device.name, run.run_id, p,
                                  [(by_key[k], models[k], ops[k], t) for k, t in zip(keys, timings)], info.settings,
                                  table)

    what = "network" if table == "whole_networks" else "check network"
    if plan:
        prepare(k for _, keys in plan for k in keys)
        offsets = pass_offsets((p for p, _ in plan), passes, span_s)
        if report and offsets:
            report(f"timing {len(offsets)} passes spread over {span_s * len(offsets) / passes:.0f} s, one every "
                   f"{span_s / passes:.0f} s (--span)")
        result.run_id, outcome = await run_recorded(store, device, info, plan, render, commit, what,
                                                    passes * len(by_key), result.already, cooldown_s, report, offsets)
        result.measured_now = outcome.stored

    def slow() -> dict[str, int]:
        return {k: p for k, p in slow_networks(store, arch, device.name, table).items() if k in by_key}

    result.measured_now += await retime_slow(store, device, info, slow, passes, models_per_call, seed, prepare,
                                             render, commit, what, cooldown_s, report)
    result.wall_s = time.time() - started
    return result


def networks_lacking(store: TableStore, arch: Arch, networks: Sequence[Network], device: str, passes: int,
                     table: str = "whole_networks") -> bool:
    """Whether some of `networks` lacks one of its first `passes` passes on `device` in `table`."""
    done = stored_passes(store, arch, device, table)
    return any((n.key, p) not in done for n in networks for p in range(passes))


async def retime_slow(store: TableStore, device: Device, info: DeviceInfo, slow: Callable[[], Mapping[K, int]],
                      passes: int, per_call: int, seed: int, prepare: Callable[[Iterable[K]], None],
                      render: Callable[[list[K]], list[ModelJob]],
                      commit: Callable[[DeviceRun, int, list[K], list[Timing]], int], what: str,
                      cooldown_s: float = 0.0, report: Report = None) -> int:
    """Times again, one more pass at a time, the models whose every pass was kept slow (`slow`
    reads them from the store: key -> last pass), as a build does its cells (`latency.retime`):
    up to `MAX_EXTRA_PASSES` passes beyond the `passes` planned. Returns the passes stored."""
    stored = 0
    while True:
        batches, _ = plan_retimes(slow(), passes, per_call, seed)
        if not batches:
            return stored
        keys = [k for _, ks in batches for k in ks]
        if report:
            report(f"timing {len(keys)} {what}s again: every pass of them ran while the machine read slow")
        prepare(keys)
        _, outcome = await run_recorded(store, device, info, batches, render, commit, what, len(keys), 0,
                                        cooldown_s, report)
        stored += outcome.stored


async def measure_exact_cells(store: TableStore, arch: Arch, networks: Sequence[Network], device: Device,
                              info: DeviceInfo, passes: int = 3, seed: int = 0, remeasure: bool = False,
                              models_per_call: int = 32, cooldown_s: float = 0.0, report: Report = None) -> int:
    """Times the single-layer model of every layer of the networks at its exact widths
    (rendered exactly as the table builder renders cells), each cell once per pass, in
    shuffled order; returns the passes stored now. `device` is started by the caller and set
    to time as the table's cells were (`exact_cell_timing`)."""
    cells = sorted({c for n in networks for c in network_cells(arch, n.widths)})
    return await measure_cells(store, arch, cells, device, info, passes, seed, remeasure, models_per_call,
                               cooldown_s, report)


async def measure_cells(store: TableStore, arch: Arch, cells: Sequence[Cell], device: Device, info: DeviceInfo,
                        passes: int = 3, seed: int = 0, remeasure: bool = False, models_per_call: int = 32,
                        cooldown_s: float = 0.0, report: Report = None, table: str = "exact_cells",
                        retime: bool = True) -> int:
    """Times the single-layer models of `cells` (rendered as the table builder renders cells),
    each once per pass it lacks in `table` (`store_networks.CELL_TABLES`), in shuffled order;
    returns the passes stored now. With `retime`, cells whose every pass ran slow are timed
    again after them (off for the first part of passes that more will follow)."""
    from .generate import CellModels
    from .layer_types import network_layer_types

    if remeasure:
        forget_exact_cells(store, cells, device.name, table)
    # cells are keyed by their JSON spelling: the pass orders of earlier versions
    keys = {json.dumps(list(c)): c for c in cells}
    done = {(json.dumps(list(c)), p) for c, p in exact_cell_passes(store, device.name, table)}
    plan = plan_passes(keys, done, passes, models_per_call, seed)
    renderer = CellModels(network_layer_types([arch]))
    what = "exact single-layer" if table == "exact_cells" else "check cell"
    ids = {k: i for i, k in enumerate(sorted(keys))}
    models: dict[str, bytes] = {}

    def prepare(ks: Iterable[str]) -> None:
        needed = sorted(set(ks) - models.keys())
        if report and needed:
            report(f"rendering {len(needed)} single-layer models"
                   + (" at the networks' exact widths" if table == "exact_cells" else " of the table's cells to check"))
        models.update((k, renderer.render(*keys[k])) for k in needed)

    def render(ks: list[str]) -> list[ModelJob]:
        return [ModelJob(ids[k], models[k]) for k in ks]

    def commit(run: DeviceRun, p: int, ks: list[str], timings: list[Timing]) -> int:
        return add_exact_cell_passes(store, device.name, run.run_id, p, [(keys[k], t) for k, t in zip(ks, timings)],
                                     table)

    already = sum(1 for k, p in done if k in keys and p < passes)
    stored = 0
    if plan:
        prepare(k for _, ks in plan for k in ks)
        _, outcome = await run_recorded(store, device, info, plan, render, commit, what,
                                        passes * len(keys), already, cooldown_s, report)
        stored = outcome.stored

    def slow() -> dict[str, int]:
        return {k: p for k, p in ((json.dumps(list(c)), p) for c, p in slow_cells(store, device.name, table).items())
                if k in keys}

    if not retime:
        return stored
    return stored + await retime_slow(store, device, info, slow, passes, models_per_call, seed, prepare, render,
                                      commit, what, cooldown_s, report)


def exact_sums(store: TableStore, arch: Arch, networks: Sequence[Network], device: str,
               estimator: str = "mean") -> dict[str, float]:
    """network key -> sum over the layers it runs of the exact cell's passes combined by
    `estimator` (networks with every cell measured only)."""
    values = {c: estimate(estimator, v, f"exact cell {c}") for c, v in exact_cell_values(store, device,
                                                                                          estimator).items()}
    out = {}
    for n in networks:
        cells = network_cells(arch, n.widths)
        if all(c in values for c in cells):
            out[n.key] = sum(values[c] for c in cells)
    return out


def table_cells(path: str) -> dict[Cell, float]:
    """cell -> unsmoothed value of every cell the table at `path` timed (read only)."""
    store = TableStore.open(path)
    try:
        return {(k, i, o): v for k, i, o, v, measured in store.cell_values(smoothed=False) if measured}
    finally:
        store.close()


def check_values(store: TableStore, device: str, estimator: str) -> dict[Cell, float]:
    """cell -> the stored passes of each check cell combined by `estimator`, of the passes at full
    speed when the estimator counts only those (as the table's cells)."""
    from .smoothing import SMALLEST_ESTIMATORS

    return {c: estimate(estimator, v, f"check cell {c}") for c, v in exact_cell_values(
        store, device, estimator, "check_cells", full_speed_only=estimator not in SMALLEST_ESTIMATORS).items()}
