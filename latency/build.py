"""Builds a latency table: cells -> models -> devices -> committed measurements -> aggregates.

One queue of batches (each pass over the not-yet-measured cells, in a freshly shuffled order)
is worked through by every device concurrently. Models are rendered ahead of the devices in a
thread (holding the device's `host_work_guard`: a device timing on this machine times nothing
meanwhile), and every finished batch is committed before the next is taken, so an interrupted
build loses at most the batches in flight and a re-run continues where it stopped.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from models.arch import Arch
from .devices.base import Device, ModelJob, Timing
from .context import OVERHEAD_META_KEY
from .finalize import finalize
from .generate import CellModels, adopt_templates, converter_version
from .layer_types import grid_cells, network_layer_types
from .op_map import check_network_ops
from .overhead import (PROBE_LABELS, is_probe_batch, probe_jobs, probe_models, probe_rounds_todo, store_probe_batch,
                       stored_overhead, with_probe_rounds)
from .passes import DeviceRun, WrongTimings, plan_passes, run_passes, start_devices
from .progress import Progress
from .recipe import TableRecipe, check_resume
from .retime import plan_retimes
from .store import TableFileError, TableStore
from .store_networks import table_devices


@dataclass(frozen=True)
class BuildOptions:
    """How a build runs; what its numbers mean is the table's recipe (`latency.recipe`)."""

    models_per_call: int = 32  # models handed to a device in one call
    seed: int = 0  # of the pass orders
    max_failures: int = 3  # consecutive failed batches before a device is retired
    verify_ops: bool = True  # convert the whole network once and map its ops to the layer types


@dataclass
class BuildResult:
    path: Path
    cells: int
    measured_now: int
    already_measured: int
    wall_s: float
    timed_s: float  # sum over timings of runs x latency: the pure timed compute
    prepare_s: float = 0.0  # template conversion and op check before the first measurement
    measure_s: float = 0.0  # from the first batch handed to a device to the last one stored
    finalize_s: float = 0.0  # aggregates, interpolation and smoothing
    incomplete_types: dict[str, str] = field(default_factory=dict)
    retired: list[str] = field(default_factory=list)
    retimed: int = 0  # timings of cells whose every pass before was kept slow (latency.retime)
    kept_slow: int = 0  # cells kept although every pass of theirs read slow


class BuildError(RuntimeError):
    """The build cannot go on (no device left); everything measured so far is saved."""


class BuildInterrupted(BuildError):
    """Stopped on request (Ctrl-C): the batches in flight finished and were saved."""


def check_devices(devices: list[Device], recipe: TableRecipe) -> None:
    """Refuses devices set to time otherwise than the recipe says (an API caller's mistake:
    the table would store the recipe's settings beside other timings)."""
    want = recipe.timing(partners=(b"",) if recipe.in_network else ())
    for d in devices:
        s = getattr(d, "settings", None)
        if s is None:
            continue
        fields = ("runs", "placements", "warmup", "threads", "min_time_s", "cooldown_s", "evict_bytes", "vector_s")
        diff = [f for f in fields if getattr(s, f) != getattr(want, f)]
        if bool(s.partners) != recipe.in_network:
            diff.append("partners")
        if diff:
            raise ValueError(f"device {d.name} times with {', '.join(f'{f}={getattr(s, f)!r}' for f in diff)}, "
                             f"not as the recipe says: make it with recipe.timing(...)")


async def build_table(arch: Arch, out: str | Path, devices: list[Device], recipe: TableRecipe,
                      options: BuildOptions = BuildOptions(), report: Callable[[str], None] | None = None,
                      stop: asyncio.Event | None = None) -> BuildResult:
    """Measures what is left of the table in `out` as `recipe` says, and derives it. A table
    being continued must have been measured with the same recipe (`recipe.check_resume`);
    its derivation fields (estimator, smoothing) may change. Setting `stop` makes every device
    finish its batch in flight (committed) and take no new one; BuildInterrupted then."""
    if options.models_per_call < 1:
        raise ValueError("models per call must be >= 1")
    if not devices:
        raise ValueError("no device to measure on")
    check_devices(devices, recipe)
    started = time.time()
    types = network_layer_types([arch])
    created = not Path(out).exists()
    store = TableStore.create_or_open(out, arch.name, recipe)
    try:
        check_resume(store.recipe(), recipe, str(out))
        adopt_templates(store.layer_types(), store.templates())  # a resumed build renders what it timed
        store.set_recipe(recipe)  # before any measurement: a resumed build reads it back
        for t in types.values():
            store.add_layer_type(t, recipe.grid_step, grid_cells(t, recipe.grid_step, recipe.grid_block))
        cells = store.cells()
        done = store.measured_passes()
        batches = plan_passes(cells, done, recipe.passes, options.models_per_call, options.seed)
        total = len(cells) * recipe.passes
        already = sum(1 for c, p in done if p < recipe.passes)
        result = BuildResult(Path(out), len(cells), 0, already, 0.0, 0.0)
        # a network-context table's per-invoke overhead is timed among its cells: every cell
        # paid it once, a network pays it once, so the predictor counts it once (`latency.context`)
        names = sorted({d.name for d in devices} | set(table_devices(store)))
        rounds = probe_rounds_todo(store, names, recipe.passes) \
            if recipe.in_network and (batches or not _has_overhead(store)) else []
        plan = with_probe_rounds(batches, rounds) if rounds else batches
        if plan or plan_retimes(store.slow_cells(), recipe.passes, 1, options.seed)[0]:
            await _measure_all(arch, store, cells, types, devices, plan, options, recipe.passes, recipe.runs,
                               total + len(rounds) * len(PROBE_LABELS), already, result, report,
                               stop or asyncio.Event())
        result.kept_slow = len(plan_retimes(store.slow_cells(), recipe.passes, 1, options.seed)[1])
        t_finalize = time.time()
        result.incomplete_types = finalize(store, recipe.sigma, recipe.estimator, recipe.edges)
        result.finalize_s = time.time() - t_finalize
        if recipe.in_network and not result.incomplete_types and (plan or not _has_overhead(store)):
            # also when this run timed no probe: an interrupted build may have timed them all
            o = stored_overhead(store, names, recipe.estimator)
            if o is not None:
                store.set_meta(**{OVERHEAD_META_KEY: o.to_meta()})
                if report:
                    report(f"per-invoke overhead in the network context: {o.seconds * 1e6:.2f} us")
        result.wall_s = time.time() - started
        return result
    finally:
        try:
            used = bool(store.measured_passes()) or store.db["runs"].count > 0
        except Exception:  # noqa: BLE001 - an unreadable file is kept as it is; the real error follows
            used = True
        store.close()
        if created and not used and not Path(out).with_name(Path(out).name + "-wal").exists():
            # no device started on the file this call created: no skeleton is left behind for a
            # later build to continue
            Path(out).unlink(missing_ok=True)


def _has_overhead(store: TableStore) -> bool:
    return OVERHEAD_META_KEY in store.meta()


async def _measure_all(arch: Arch, store: TableStore, cells: dict, types: dict, devices: list[Device], batches: list,
                       settings: BuildOptions, passes: int, runs_per_cell: int, total: int, already: int,
                       result: BuildResult, report: Callable[[str], None] | None, stop: asyncio.Event) -> None:
    """Times `batches` of cells on every device through the pass engine (`latency.passes`),
    each finished batch committed to the store; then, in up to `retime.MAX_EXTRA_PASSES` extra
    passes, the cells whose every pass read slow (`latency.retime`)."""
    generator = CellModels(types)
    loop = asyncio.get_running_loop()
    started: list[DeviceRun] = []
    progress: Progress | None = None
    status = "interrupted"
    try:
        started, failed = await start_devices(devices, store.start_run, report)
        result.retired += failed
        if not started:
            raise BuildError("no device could start: " + "; ".join(result.retired))

        t_prepare = time.time()
        todo_types = sorted({cells[c][0] for _, batch in batches if not is_probe_batch(batch) for c in batch})
        probes: dict[str, bytes] = {}
        if any(is_probe_batch(batch) for _, batch in batches):
            if report:
                report("converting the per-invoke overhead probes")
            probes = {label: m for label, _, m in await loop.run_in_executor(None, probe_models)}
        for i, key in enumerate(todo_types):
            if stop.is_set():  # a Ctrl-C while converting stops here, not after every template
                raise BuildInterrupted("stopped on request before measuring; nothing was lost")
            if report:
                report(f"converting template {i + 1}/{len(todo_types)}: {key}")
            await loop.run_in_executor(None, generator.template, key)
        store.add_templates(generator.stored_form(todo_types), converter_version())
        if settings.verify_ops and not stop.is_set():
            if report:
                report(f"checking that the layer types cover every op of the converted {arch.name}")
            ops = await loop.run_in_executor(None, check_network_ops, arch, generator)
            store.set_meta(network_ops=ops)

        result.prepare_s = time.time() - t_prepare
        progress = Progress(total, already, report)

        def render(batch: list) -> list[ModelJob]:
            if is_probe_batch(batch):
                return probe_jobs(batch, probes)
            return [ModelJob(c, generator.render(*cells[c], seed=c)) for c in batch]

        def commit(run: DeviceRun, p: int, batch: list, timings: list[Timing]) -> int:
            if is_probe_batch(batch):
                return store_probe_batch(store, run.device.name, run.run_id, batch, timings, probes)
            stored = store.add_measurements(run.run_id, run.device.name, p, timings)
            result.measured_now += stored
            result.timed_s += sum(t.seconds * (t.runs or runs_per_cell) for t in timings)
            return stored

        async def measure_plan(plan: list, progress: Progress) -> None:
            try:
                outcome = await run_passes(started, plan, render, commit, max_failures=settings.max_failures,
                                           stop=stop, progress=progress, report=report)
            except WrongTimings as exc:
                raise BuildError(str(exc)) from exc
            result.retired += outcome.retired
            if outcome.stopped:
                raise BuildInterrupted(
                    f"stopped on request; {result.measured_now:,} measurements taken in this run are saved")
            if outcome.left:
                raise BuildError(
                    f"every device failed; {outcome.left} batches are left unmeasured (all finished ones are saved: "
                    "run the same command again to continue). Failures: " + "; ".join(result.retired)
                )

        t_measure = time.time()
        if batches:
            await measure_plan(batches, progress)
        progress.finish()
        progress = None  # finished: not again on the way out
        while True:
            extra, _ = plan_retimes(store.slow_cells(), passes, settings.models_per_call, settings.seed)
            if not extra:
                break
            n = sum(len(keys) for _, keys in extra)
            if report:
                report(f"{n:,} cells were timed only while this machine never read fast around them: timing them "
                       "once more")
            before, again = result.measured_now, Progress(n, 0, report, label="re-timings")
            await measure_plan(extra, again)
            again.finish()
            result.retimed += result.measured_now - before
            result.measured_now = before  # "measured now" counts the planned passes; `retimed` the rest
        result.measure_s = time.time() - t_measure
        status = "finished"
    finally:
        for run in started:
            store.end_run(run.run_id, status)
        for d in devices:
            try:
                await d.close()
            except Exception:  # noqa: BLE001 - closing must not hide the real error
                pass
        if progress is not None:
            progress.finish()
