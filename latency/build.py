"""Builds a latency table: cells -> models -> devices -> committed measurements -> aggregates.

One queue of batches (each pass over the not-yet-measured cells, in a freshly shuffled order)
is worked through by every device concurrently. Models are rendered ahead of the devices in a
thread (holding the device's `host_work_guard`: a device timing on this machine times nothing
meanwhile), and every finished batch is committed before the next is taken, so an interrupted
build loses at most the batches in flight and a re-run continues where it stopped.
"""
from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from models.arch import Arch
from .devices.base import Device, DeviceError, ModelJob, Timing
from .context import CONTEXT_META_KEY, check_context
from .finalize import finalize
from .generate import CellModels
from .layer_types import grid_cells, network_layer_types
from .op_map import check_network_ops
from .progress import Progress
from .store import TableFileError, TableStore


@dataclass(frozen=True)
class BuildSettings:
    passes: int = 3
    grid_step: int = 1
    grid_block: int = 0  # also both sides of every multiple of this channel count (layer_types.axis_values)
    sigma: float = 3.0
    edges: str = "linear"  # smoothing at the grid's edges: local linear fit, or 'nearest' (thesis)
    estimator: str = "mean"  # of the passes, before smoothing: mean (thesis) or median
    batch_size: int = 32
    seed: int = 0
    max_failures: int = 3  # consecutive failed batches before a device is retired
    verify_ops: bool = True  # convert the whole network once and map its ops to the layer types
    cell_context: dict | None = None  # how the devices time cells (latency/context.py), recorded first


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


class BuildError(RuntimeError):
    """The build cannot go on (no device left); everything measured so far is saved."""


class BuildInterrupted(BuildError):
    """Stopped on request (Ctrl-C): the batches in flight finished and were saved."""


def plan_batches(cell_ids: list[int], done: set[tuple[int, int]], passes: int, batch_size: int,
                 seed: int) -> list[tuple[int, list[int]]]:
    """(pass, cell ids) batches of what is left to measure; each pass in its own shuffled order
    (the order is a function of the seed and pass only, so a resumed build keeps it)."""
    batches = []
    for p in range(passes):
        order = sorted(cell_ids)
        random.Random(f"{seed}:{p}").shuffle(order)
        todo = [c for c in order if (c, p) not in done]
        batches += [(p, todo[i:i + batch_size]) for i in range(0, len(todo), batch_size)]
    return batches


async def build_table(arch: Arch, out: str | Path, devices: list[Device], settings: BuildSettings,
                      runs_per_cell: int, report: Callable[[str], None] | None = None,
                      stop: asyncio.Event | None = None) -> BuildResult:
    """Measures what is left of the table in `out` and finalizes it. Setting `stop` makes every
    device finish its batch in flight (committed) and take no new one; BuildInterrupted then."""
    if settings.passes < 1 or settings.batch_size < 1:
        raise ValueError("passes and batch size must be >= 1")
    if not devices:
        raise ValueError("no device to measure on")
    started = time.time()
    types = network_layer_types([arch])
    store = TableStore.create_or_open(out, arch.name, {"grid_step": settings.grid_step,
                                                        "grid_block": settings.grid_block})
    try:
        stored_block = store.meta().get("grid_block") or 0  # tables from before blocks: none
        if stored_block != settings.grid_block:
            raise TableFileError(f"{out}: its grid measures both sides of every multiple of {stored_block} channels "
                                 f"(0: none), not {settings.grid_block}: pass --block {stored_block} to continue it, "
                                 "or choose another --out")
        if settings.cell_context is not None:  # before any measurement: a resumed build reads it back
            if store.layer_types():  # a table started earlier: its cells must be timed alike
                check_context(store.meta(), settings.cell_context)
            store.set_meta(**{CONTEXT_META_KEY: settings.cell_context})
        for t in types.values():
            store.add_layer_type(t, settings.grid_step, grid_cells(t, settings.grid_step, settings.grid_block))
        store.set_meta(passes=settings.passes)
        cells = store.cells()
        done = store.measured_passes()
        batches = plan_batches(list(cells), done, settings.passes, settings.batch_size, settings.seed)
        total = len(cells) * settings.passes
        already = sum(1 for c, p in done if p < settings.passes)
        result = BuildResult(Path(out), len(cells), 0, already, 0.0, 0.0)
        if batches:
            await _measure_all(arch, store, cells, types, devices, batches, settings, runs_per_cell, total, already,
                               result, report, stop or asyncio.Event())
        t_finalize = time.time()
        result.incomplete_types = finalize(store, settings.sigma, settings.estimator, settings.edges)
        result.finalize_s = time.time() - t_finalize
        result.wall_s = time.time() - started
        return result
    finally:
        store.close()


async def _measure_all(arch: Arch, store: TableStore, cells: dict, types: dict, devices: list[Device], batches: list,
                       settings: BuildSettings, runs_per_cell: int, total: int, already: int,
                       result: BuildResult, report: Callable[[str], None] | None, stop: asyncio.Event) -> None:
    generator = CellModels(types)
    loop = asyncio.get_running_loop()
    pending: asyncio.Queue = asyncio.Queue()
    for b in batches:
        pending.put_nowait(b)
    started: list[tuple[Device, int]] = []
    progress: Progress | None = None
    status = "interrupted"
    try:
        for device in devices:
            try:
                info = await device.start()
            except DeviceError as exc:
                result.retired.append(str(exc))
                if report:
                    report(f"device {device.name} could not start: {exc}")
                continue
            started.append((device, store.start_run(info)))
        if not started:
            raise BuildError("no device could start: " + "; ".join(result.retired))

        t_prepare = time.time()
        todo_types = sorted({cells[c][0] for _, batch in batches for c in batch})
        for i, key in enumerate(todo_types):
            if report:
                report(f"converting template {i + 1}/{len(todo_types)}: {key}")
            await loop.run_in_executor(None, generator.template, key)
        if settings.verify_ops:
            if report:
                report(f"checking that the layer types cover every op of the converted {arch.name}")
            ops = await loop.run_in_executor(None, check_network_ops, arch, generator)
            store.set_meta(network_ops=ops)

        result.prepare_s = time.time() - t_prepare
        progress = Progress(total, already, report)

        def render(device: Device, batch: list[int]) -> list[ModelJob]:
            with device.host_work_guard():  # no model is timed on this machine meanwhile
                return [ModelJob(c, generator.render(*cells[c], seed=c)) for c in batch]

        def take():
            if stop.is_set():
                return None
            try:
                return pending.get_nowait()
            except asyncio.QueueEmpty:
                return None

        async def worker(device: Device, run_id: int) -> None:
            failures = 0
            # the next batch is rendered while the device works on the current one (between its
            # timings, when the device is this machine)
            item = take()
            rendering = loop.run_in_executor(None, render, device, item[1]) if item else None
            while item is not None:
                p, batch = item
                jobs_future = rendering
                item = take()
                rendering = loop.run_in_executor(None, render, device, item[1]) if item else None
                try:
                    timings: list[Timing] = await device.measure(await jobs_future)
                except DeviceError as exc:
                    pending.put_nowait((p, batch))  # the batch goes back for any device
                    failures += 1
                    if report:
                        report(f"{exc} (failure {failures}/{settings.max_failures} of device {device.name})")
                    if failures >= settings.max_failures:
                        if item is not None:
                            pending.put_nowait(item)
                        result.retired.append(str(exc))
                        if report:
                            report(f"device {device.name} retired; its cells go to the other devices")
                        return
                    await asyncio.sleep(min(2.0 ** failures, 30.0))  # back off before retrying
                    continue
                failures = 0
                if [t.cell_id for t in timings] != batch:
                    raise BuildError(f"device {device.name} returned timings for other cells than it was given")
                stored = store.add_measurements(run_id, device.name, p, timings)
                result.measured_now += stored
                result.timed_s += sum(t.seconds * (t.runs or runs_per_cell) for t in timings)
                progress.advance(stored, p)

        t_measure = time.time()
        tasks = [asyncio.create_task(worker(d, run_id)) for d, run_id in started
                 for _ in range(max(1, d.concurrency))]
        try:
            await asyncio.gather(*tasks)
            result.measure_s = time.time() - t_measure
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        if stop.is_set():
            raise BuildInterrupted(f"stopped on request; {result.measured_now:,} measurements taken in this run are saved")
        if not pending.empty():
            raise BuildError(
                f"every device failed; {pending.qsize()} batches are left unmeasured (all finished ones are saved: "
                "run the same command again to continue). Failures: " + "; ".join(result.retired)
            )
        status = "finished"
    finally:
        for d, run_id in started:
            store.end_run(run_id, status)
        for d in devices:
            try:
                await d.close()
            except Exception:  # noqa: BLE001 - closing must not hide the real error
                pass
        if progress is not None:
            progress.finish()


