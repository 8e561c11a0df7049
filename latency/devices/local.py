"""This machine's CPU as a timing device: ai-edge-litert in spawned worker processes.

Workers are started with the 'spawn' context: forking a parent that has imported TensorFlow or
PyTorch can deadlock or inherit their thread pools. Each batch goes to one worker in one call
(models travel as bytes; the interpreter reads them from memory, no temp files), and the worker
times every model with `latency.devices.runner`, the same code the Pi runs.

Nothing heavy of ours runs while a model is timed: the workers and the table builder share a
timing token (a lock). A worker holds it to load a model (creating a LiteRT interpreter packs
the weights for XNNPACK) and to time it; the builder holds it to render models
(`host_work_guard`). Overlapping them would buy speed with wrong tables: a small layer timed
beside our own work runs measurably slower (docs/measuring.md). For the same reason a worker
gets one batch at a time (nothing is sent to it while it times), and it never lets its core go
idle before timing: it spins while it waits for the token, and after waiting for a batch it
spins as long as it waited (at most `runner.RAMP_UP_S`): a core that idled runs slower for a
while. The per-model overhead is amortised by `min_time_s` (back to back): tiny models are
timed longer. And a model is timed only between two readings of a sentinel model that say the
machine runs at full speed (`speed_gate`): a shared host has slow phases that no pass order
can be sure to miss.

Spawned workers re-import the parent's `__main__` module: a script using LocalDevice needs the
``if __name__ == "__main__":`` guard, and whatever that module imports at top level (TensorFlow,
say) every worker imports again at start-up.

Workers end with their parent, however it ends (a SIGKILL included), and ignore SIGINT: a
terminal's Ctrl-C reaches the whole process group, and the parent alone coordinates the stop
(`latency.devices.worker_lifetime`).
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import multiprocessing
import os
import random
import socket
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterator, Optional, TypeVar

from latency.devices.base import Device, DeviceError, DeviceInfo, ModelJob, Timing, TimingSettings
from latency.devices.speed_gate import GateStats, SpeedGate
from latency.devices.worker_lifetime import exit_with_parent, ignore_terminal_interrupt, spawning_without_sigint

__all__ = ["LocalDevice"]

# (seconds, measured_at, temperature_c, throttled, runs, fastest, slow) per timed model
_Row = tuple[float, float, Optional[float], Optional[bool], int, float, Optional[bool]]
_T = TypeVar("_T")


# the device's timing token in a worker process; set by _worker_init
_timing_token: contextlib.AbstractContextManager = contextlib.nullcontext()


def _worker_init(token: contextlib.AbstractContextManager | None = None, parent_pid: int | None = None,
                 kernel_signal: bool = False) -> None:
    global _timing_token
    ignore_terminal_interrupt()  # first: Ctrl-C is the parent's to handle
    if parent_pid is not None:
        exit_with_parent(parent_pid, kernel_signal)
    if token is not None:
        _timing_token = token
    # import the runtime when the process starts, not inside the first timed batch
    from . import runner as tflite_runner

    tflite_runner.interpreter_class()
    from latency.quiet import absorb_runtime_banner

    absorb_runtime_banner()  # the runtime's start-up banner, unless --verbose


def _worker_info() -> dict:
    from . import runner as tflite_runner

    return tflite_runner.runtime_info()


def _worker_time_batch(
    jobs: list[tuple[int, bytes]], runs: int, warmup: int, threads: int, cooldown_s: float, min_time_s: float = 0.0,
    partners: tuple[bytes, ...] = (), evict_bytes: int = 0, sentinel: bytes = b"", placements: int = 1,
    vector_s: float = 0.0,
) -> tuple[list[_Row], tuple[int, str] | None, GateStats | None]:
    """Time jobs in order; stops at the first failing model and returns (rows so far, (cell, why),
    what the speed gate did). With `partners`, every model is timed in a network context
    (`time_in_context`, all of them before every invocation), exactly `runs` times. With a
    `sentinel` model, every model is timed only while the machine runs at full speed
    (`speed_gate.SpeedGate`), and says whether it was kept although it never read fast. Each
    model is loaded `placements` times, each elsewhere in memory (`runner.placed_timing_flagged`):
    the loads at full speed count."""
    from .runner import load_model, placed_timing_flagged, read_sensors, time_in_context, time_loaded_stats

    _ramp_up()
    gate = _speed_gate(sentinel, threads) if sentinel else None
    rows: list[_Row] = []
    partner_interpreters = []
    for model in partners:
        with _holding_token():
            partner_interpreters.append(load_model(model, threads))
            partner_interpreters[-1].invoke()
    if partner_interpreters:
        def timing(interpreter) -> tuple[float, int, float]:
            return time_in_context(interpreter, partner_interpreters, runs, warmup, evict_bytes, vector_s=vector_s)
    else:
        def timing(interpreter) -> tuple[float, int, float]:
            return time_loaded_stats(interpreter, runs, warmup, min_time_s)

    def measure(interpreter) -> tuple[float, int, float, bool]:
        if gate is None:
            return (*timing(interpreter), False)
        return (*gate.timed(lambda: timing(interpreter)), gate.last_slow)

    for position, (cell_id, model) in enumerate(jobs):
        if position and cooldown_s > 0:
            time.sleep(cooldown_s)
            _ramp_up()
        try:
            with _holding_token():
                seconds, done, fastest, slow = placed_timing_flagged(
                    functools.partial(load_model, model, threads), measure, placements, _placement_rng)
                measured_at = time.time()
        except Exception as exc:  # reported to the parent as a DeviceError naming the cell
            return rows, (cell_id, f"{type(exc).__name__}: {exc}"), _gate_stats(gate)
        temperature, throttled = read_sensors()
        rows.append((seconds, measured_at, temperature, throttled, done, fastest, slow if gate is not None else None))
    _last_busy[0] = time.perf_counter()
    return rows, None, _gate_stats(gate)


# pads that place each load of a model elsewhere in memory (runner.placed_timing)
_placement_rng = random.Random()

# the worker's speed gate, made (and calibrated) with its first gated batch
_gate: list = []


def _speed_gate(sentinel: bytes, threads: int) -> "SpeedGate":
    from .runner import load_model
    from .speed_gate import sentinel_reader

    if not _gate:
        with _holding_token():  # the calibration's readings need the machine to themselves
            _gate.append(SpeedGate(sentinel_reader(load_model(sentinel, threads))))
    return _gate[0]


def _gate_stats(gate: "SpeedGate | None") -> GateStats | None:
    return gate.take_stats() if gate is not None else None


# when this worker last finished a batch (it may have sat idle since)
_last_busy = [0.0]


def _ramp_up() -> None:
    """Spins the core back to full speed after the worker sat idle since its last batch."""
    from .runner import keep_busy, ramp_up_s

    keep_busy(ramp_up_s(time.perf_counter() - _last_busy[0]))


@contextlib.contextmanager
def _holding_token() -> Iterator[None]:
    """The timing token, waited for without letting the core idle (`runner.acquire_spinning`)."""
    from .runner import acquire_spinning

    token = _timing_token
    if isinstance(token, contextlib.nullcontext):
        yield
        return
    acquire_spinning(token)
    try:
        yield
    finally:
        token.release()


class LocalDevice(Device):
    """Times models on this machine's CPU.

    `workers` processes take batches concurrently, but hold the timing token in turn, so one
    model is loaded or timed at a time whatever their number; more than one only hides the
    hand-over between batches. With `speed_gate` (the default) a model is timed only while a
    sentinel model says the machine runs at full speed; `gate_stats` sums what that cost.
    A gated timing says in `Timing.slow` whether it was kept although the machine never read
    fast around it; a build times again the cells whose every pass was (`latency.retime`).
    """

    def __init__(
        self,
        workers: int = 1,
        settings: TimingSettings | None = None,
        name: str = "local",
        speed_gate: bool = True,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.name = name
        self.workers = workers
        # one batch per worker at a time: a batch queued behind the running one is pickled and
        # sent while a model is timed, and that overlap alone made small convs 6 % slower in a
        # table (docs/measuring.md §3); the worker spins its core back to speed after the wait
        self.concurrency = workers
        self.settings = settings if settings is not None else TimingSettings()
        if self.settings.runs < 1 or self.settings.warmup < 0 or self.settings.threads < 1 \
                or self.settings.min_time_s < 0 or self.settings.placements < 1:
            raise ValueError(f"invalid timing settings {self.settings}")
        self._pool: ProcessPoolExecutor | None = None
        self._info: DeviceInfo | None = None
        self._token = None
        # every model timed between two full-speed readings of a sentinel (speed_gate)
        self.speed_gate = speed_gate
        self._sentinel = b""
        self.gate_stats = GateStats()
        self._noted_slow_s = 0.0

    def _new_pool(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("spawn")
        # a new token with every pool: a worker that died holding the old one never released it.
        # The first one starts multiprocessing's resource tracker: it too ignores Ctrl-C at once
        with spawning_without_sigint():
            self._token = context.Lock()
        # workers are spawned by the thread that submits work: this one, the event loop's. The
        # kernel's parent-death signal follows that thread, so it is used only from the main
        # thread, which lives as long as the process; elsewhere the workers' watchdog serves
        from_main_thread = threading.current_thread() is threading.main_thread()
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=context,
            initializer=_worker_init,
            initargs=(self._token, os.getpid(), from_main_thread),
        )

    def _submit(self, call: Callable[[], _T]) -> asyncio.Future[_T]:
        """Hands `call` to a worker; a worker started for it ignores Ctrl-C from its first instant."""
        with spawning_without_sigint():
            return asyncio.get_running_loop().run_in_executor(self._pool, call)

    @contextlib.contextmanager
    def host_work_guard(self) -> Iterator[None]:
        token = self._token
        # a worker that died holding the token never releases it; the pool that replaces it
        # brings a new one, so a waiting guard moves on to that
        while token is not None and not token.acquire(timeout=1.0):
            token = self._token
        try:
            yield
        finally:
            if token is not None:
                token.release()

    async def start(self) -> DeviceInfo:
        if self._info is not None:
            return self._info
        self._pool = self._new_pool()
        try:
            # also proves the worker can import a runtime before the builder queues work here
            runtime = await self._submit(_worker_info)
        except BrokenProcessPool as exc:
            await self._discard_pool()
            raise DeviceError(f"{self.name}: worker process failed to start: {exc}") from exc
        except ImportError as exc:
            await self._discard_pool()
            raise DeviceError(f"{self.name}: {exc}") from exc
        if self.speed_gate and not self._sentinel:
            from .speed_gate import sentinel_model

            self._sentinel = await asyncio.to_thread(sentinel_model)
        settings = dataclasses.asdict(self.settings)
        settings["partners"] = len(self.settings.partners)  # the models themselves are not provenance
        in_network = ("in a network context: before each timed invocation, partners other layers' models "
                      "invoked (vector_s of dense float32 matrix products and evict_bytes written over the caches "
                      "first, when > 0) and the input set again; "
                      "exactly runs invocations" if self.settings.partners else
                      "random input set once; warm-up; perf_counter around runs invocations (more until "
                      "min_time_s is timed) / invocations")
        settings.update(
            workers=self.workers,
            method=in_network + "; nothing else of ours runs meanwhile (timing token)"
            + ("; timed only between two full-speed readings of a sentinel model (speed gate)"
               if self.speed_gate else "")
            + (f"; each model loaded {self.settings.placements} times, each elsewhere in memory: the fastest "
               "invocation over all of them, the mean over all their invocations"
               if self.settings.placements > 1 else ""),
            python=runtime["python"],
            numpy=runtime["numpy"],
            machine=runtime["machine"],
        )
        self._info = DeviceInfo(
            name=self.name,
            kind="local",
            runtime=runtime["runtime"],
            runtime_version=runtime["runtime_version"],
            host=socket.gethostname(),
            threads=self.settings.threads,
            settings=settings,
        )
        return self._info

    async def measure(self, batch: list[ModelJob]) -> list[Timing]:
        if self._pool is None:
            raise DeviceError(f"{self.name}: measure() before start()")
        if not batch:
            return []
        s = self.settings
        call = functools.partial(
            _worker_time_batch,
            [(job.cell_id, job.model) for job in batch],
            s.runs,
            s.warmup,
            s.threads,
            s.cooldown_s,
            s.min_time_s,
            s.partners,
            s.evict_bytes,
            self._sentinel,
            s.placements,
            s.vector_s,
        )
        try:
            rows, failure, gated = await self._submit(call)
        except BrokenProcessPool as exc:
            # a worker died (e.g. the runtime crashed on a model); replace the pool so the
            # device stays usable for the other batches
            await self._discard_pool()
            self._pool = self._new_pool()
            cells = ", ".join(str(job.cell_id) for job in batch)
            raise DeviceError(
                f"{self.name}: worker process died while timing cells [{cells}]: {exc}"
            ) from exc
        if gated is not None:
            self._note_gate(gated)
        if failure is not None:
            cell_id, reason = failure
            raise DeviceError(f"{self.name}: cell {cell_id}: {reason}")
        if len(rows) != len(batch):
            raise DeviceError(f"{self.name}: {len(rows)} timings for a batch of {len(batch)}")
        return [
            Timing(
                cell_id=job.cell_id,
                seconds=seconds,
                measured_at=measured_at,
                temperature_c=temperature,
                throttled=throttled,
                runs=runs if runs != s.runs * s.placements else None,  # None: as the settings say
                fastest_s=fastest,
                slow=slow,
            )
            for job, (seconds, measured_at, temperature, throttled, runs, fastest, slow) in zip(batch, rows)
        ]

    def _note_gate(self, gated: GateStats) -> None:
        """Adds a batch's gate stats; tells the user each further minute spent waiting for speed."""
        g = self.gate_stats
        g.add(gated)
        if self.report is not None and g.waited_s >= self._noted_slow_s + 60.0:
            self._noted_slow_s = g.waited_s
            self.report(f"{self.name}: {g.waited_s:.0f} s spent waiting for full speed so far (slow before "
                        f"{100.0 * g.found_slow / max(1, g.models):.0f} % of the models)")

    async def _discard_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)

    async def close(self) -> None:
        await self._discard_pool()
        self._info = None
