"""The pass engine: timing models on devices in passes, each pass in its own shuffled order.

Everything this project times goes through here: a table's cells, whole networks, exact-layer
cells and overhead probes. A plan is a list of batches `(pass, keys)`: every pass over the keys
that lack it, in an order that is a function of the seed and the pass only (a resumed run
keeps it; a fixed order would let thermal drift correlate with the keys). One queue of
batches is worked through by every device concurrently; each batch's models are rendered
while the device works on the one before (holding its `host_work_guard`: a device timing on
this machine times nothing meanwhile), and each finished batch is committed through a
callback before the device takes the next, so an interruption loses at most the batches in
flight. A failed batch goes back to the queue for any device (a device with nothing left to
take waits while batches are out on others, since one may come back); a device failing
`max_failures` batches in a row is retired. A timing taken while the device was throttled or
too hot (`Timing.throttled`) is not stored: its key goes back to the queue and is timed again,
so every (key, pass) keeps exactly one normal measurement; a batch that came back throttled
throughout counts as a failure of its device. Passes may be spread over a span of time
(`pass_offsets`): a pass's batches then wait for its start, so that a key's passes meet
the host in different states, as a table's cells meet it over a build.
"""
from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Collection, Hashable, Iterable, Sequence, TypeVar

from .devices.base import Device, DeviceError, DeviceInfo, ModelJob, Timing
from .progress import Progress

K = TypeVar("K", bound=Hashable)
Report = Callable[[str], None] | None
#: consecutive failed batches before a device is retired
MAX_FAILURES = 3


class WrongTimings(DeviceError):
    """A device answered for other models than it was given: nothing it returns can be trusted."""


def pass_order(keys: Iterable[K], seed: int, pass_index: int) -> list[K]:
    """The keys in the shuffled order of pass `pass_index` (a function of the seed and pass only)."""
    order = sorted(keys)
    random.Random(f"{seed}:{pass_index}").shuffle(order)
    return order


def plan_passes(keys: Iterable[K], done: Collection[tuple[K, int]], passes: int, per_call: int,
                seed: int) -> list[tuple[int, list[K]]]:
    """(pass, keys) batches of at most `per_call` keys of what is left to time: for every pass,
    the keys without a `(key, pass)` in `done`, in that pass's order."""
    if passes < 1 or per_call < 1:
        raise ValueError("passes and models per call must be >= 1")
    keys = list(keys)
    batches = []
    for p in range(passes):
        todo = [k for k in pass_order(keys, seed, p) if (k, p) not in done]
        batches += [(p, todo[i:i + per_call]) for i in range(0, len(todo), per_call)]
    return batches


def pass_offsets(passes_left: Iterable[int], passes: int, span_s: float) -> dict[int, float]:
    """How many seconds after the first timing each pass left may start, when `passes` passes
    are spread over `span_s` seconds: the i-th pass left at i * span_s / passes, so a resumed
    run keeps the gap between two passes. Empty when `span_s` is 0 (back to back)."""
    if passes < 1 or span_s < 0:
        raise ValueError("passes must be >= 1 and the span >= 0")
    if span_s == 0:
        return {}
    return {p: i * span_s / passes for i, p in enumerate(sorted(set(passes_left)))}


@dataclass(frozen=True)
class DeviceRun:
    """A started device and the run (`runs` row) its timings are stored under."""

    device: Device
    run_id: int


@dataclass
class PassOutcome:
    stored: int = 0  # rows the commits reported stored
    retired: list[str] = field(default_factory=list)  # why each retired device failed
    left: int = 0  # batches no device measured
    stopped: bool = False  # the stop event ended it


async def start_devices(devices: Sequence[Device], start_run: Callable[[DeviceInfo], int],
                        report: Report = None) -> tuple[list[DeviceRun], list[str]]:
    """Starts every device and a run for each; a device that cannot start is left out and its
    error returned with the others'."""
    started, failed = [], []
    for device in devices:
        if report is not None:
            device.report = report  # notes while it works (a pause for heat)
        try:
            info = await device.start()
        except DeviceError as exc:
            failed.append(str(exc))
            if report:
                report(f"device {device.name} could not start: {exc}")
            continue
        started.append(DeviceRun(device, start_run(info)))
    return started, failed


async def run_passes(runs: Sequence[DeviceRun], batches: Iterable[tuple[int, list[K]]],
                     render: Callable[[list[K]], list[ModelJob]],
                     commit: Callable[[DeviceRun, int, list[K], list[Timing]], int], *,
                     max_failures: int = MAX_FAILURES, pause_s: float = 0.0, stop: asyncio.Event | None = None,
                     offsets: dict[int, float] | None = None, progress: Progress | None = None,
                     report: Report = None) -> PassOutcome:
    """Times `batches` on the started devices of `runs` (`device.concurrency` batches in flight
    on each) until the queue is empty, every device is retired, or `stop` is set (the batches
    in flight finish first).

    `render(keys)` makes a batch's models (in a thread, under the device's host-work guard);
    `commit(run, pass, keys, timings)` stores a finished batch (timings in the order of the
    keys) and returns the rows stored. `pause_s` is a pause between two calls of one device;
    `offsets` (`pass_offsets`) holds a pass's batches back until that many seconds after the
    device's first answer (its start-up, a speed gate's calibration, is not part of the span). Raises
    WrongTimings when a device answers for other models than it was given.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    for b in batches:
        queue.put_nowait(b)
    outcome = PassOutcome()
    # batches taken from the queue and neither committed nor put back: while any is out, an idle
    # worker waits instead of ending, since a failing device may still put its batch back
    out = 0
    changed = asyncio.Event()
    # when a device first answered: the passes' offsets count from here
    first_answer: list[float] = []
    answered = asyncio.Event()

    def stopped() -> bool:
        return stop is not None and stop.is_set()

    def notify() -> None:
        nonlocal changed
        changed.set()
        changed = asyncio.Event()

    def take():
        nonlocal out
        if stopped():
            return None
        try:
            item = queue.get_nowait()
        except asyncio.QueueEmpty:
            return None
        out += 1
        return item

    def settle(put_back=None) -> None:
        """A batch taken is done with: committed, or put back (`put_back`) for any device."""
        nonlocal out
        if put_back is not None:
            queue.put_nowait(put_back)
        out -= 1
        notify()

    async def take_or_wait():
        """The next batch, or None when the queue is empty and no batch is out that may come back."""
        while True:
            item = take()
            if item is not None or out == 0 or stopped():
                return item
            await changed.wait()

    def guarded_render(device: Device, keys: list) -> list[ModelJob]:
        with device.host_work_guard():  # no model is timed on this machine meanwhile
            return render(keys)

    def start_render(device: Device, item):
        return loop.run_in_executor(None, guarded_render, device, item[1]) if item is not None else None

    async def worker(run: DeviceRun) -> None:
        device, failures, calls = run.device, 0, 0
        item = take()
        rendering = start_render(device, item)
        while True:
            if item is None:
                item = await take_or_wait()
                if item is None:
                    return
                rendering = start_render(device, item)
            p, keys = item
            jobs_future = rendering
            # the next batch renders while the device works on this one
            item = take()
            rendering = start_render(device, item)
            if calls and pause_s > 0:
                await asyncio.sleep(pause_s)
            if offsets and offsets.get(p, 0.0) > 0:
                await answered.wait()
                await asyncio.sleep(max(0.0, first_answer[0] + offsets[p] - time.monotonic()))
            calls += 1
            try:
                jobs = await jobs_future
                try:
                    timings = await device.measure(jobs)
                finally:
                    if not answered.is_set():
                        first_answer.append(time.monotonic())
                        answered.set()
                if [t.cell_id for t in timings] != [j.cell_id for j in jobs]:
                    raise WrongTimings(f"device {device.name} returned timings for other models than it was given")
                if timings and all(t.throttled for t in timings):
                    raise DeviceError(f"{device.name}: every model of the batch was timed while the device was "
                                      "throttled or above its temperature limit (under-voltage, or a cooling "
                                      "problem?); it is timed again")
            except WrongTimings:
                raise
            except DeviceError as exc:
                settle(put_back=(p, keys))  # the batch goes back for any device
                failures += 1
                if report:
                    report(f"{exc} (failure {failures}/{max_failures} of device {device.name})")
                if failures >= max_failures:
                    if item is not None:
                        settle(put_back=item)
                    outcome.retired.append(str(exc))
                    if report:
                        report(f"device {device.name} retired; its batches go to the other devices")
                    return
                await asyncio.sleep(min(2.0 ** failures, 30.0))  # back off before retrying
                continue
            failures = 0
            hot = [k for k, t in zip(keys, timings) if t.throttled]
            if hot:  # timed again, by any device; the rest of the batch is stored
                queue.put_nowait((p, hot))
                if report:
                    report(f"{device.name}: {len(hot)} of {len(keys)} models were timed while throttled or too hot: "
                           "they are timed again")
                keys, timings = map(list, zip(*[(k, t) for k, t in zip(keys, timings) if not t.throttled]))
            try:
                stored = commit(run, p, keys, timings)
            finally:
                settle()
            outcome.stored += stored
            if progress is not None:
                progress.advance(stored, p)

    tasks = [asyncio.create_task(worker(r)) for r in runs for _ in range(max(1, r.device.concurrency))]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    outcome.left = queue.qsize()
    outcome.stopped = stop is not None and stop.is_set()
    return outcome


def require_all_measured(outcome: PassOutcome, what: str) -> None:
    """Raises DeviceError when batches are left because every device failed."""
    if outcome.left and not outcome.stopped:
        raise DeviceError(f"every device failed; {outcome.left} batches of {what} are left unmeasured (every "
                          "finished one is saved: run the same command again to continue). Failures: "
                          + "; ".join(outcome.retired))


async def run_recorded(store, device: Device, info: DeviceInfo, batches: Iterable[tuple[int, list[K]]],
                       render: Callable[[list[K]], list[ModelJob]],
                       commit: Callable[[DeviceRun, int, list[K], list[Timing]], int], what: str, total: int,
                       already: int, pause_s: float = 0.0, report: Callable[[str], None] | None = None,
                       offsets: dict[int, float] | None = None) -> tuple[int, PassOutcome]:
    """`run_passes` on one started device under a run row of the table `store` (status
    'finished' when every batch is measured, else 'interrupted'); every batch measured or a
    DeviceError. Returns the run's id and the outcome."""
    run_id = store.start_run(info)
    status = "interrupted"
    try:
        progress = Progress(total, already, report, label=f"{what} timings")
        outcome = await run_passes([DeviceRun(device, run_id)], batches, render, commit, pause_s=pause_s,
                                   offsets=offsets, progress=progress, report=report)
        progress.finish()
        require_all_measured(outcome, what)
        status = "finished"
    finally:
        store.end_run(run_id, status)
    return run_id, outcome
