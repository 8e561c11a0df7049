"""What every device (local CPU, SSH Raspberry Pi, ...) offers to the table builder.

A device times batches of single-layer `.tflite` models. The builder owns the queue, the
passes and the store; a device only measures what it is handed and says how it measured.
"""
from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class TimingSettings:
    """The thesis's method: warm-up, then the mean of `runs` invocations of one image."""

    runs: int = 50
    warmup: int = 2
    threads: int = 1
    cooldown_s: float = 0.0  # pause between calls (a Pi heats up; the local CPU needs none)
    # more runs than `runs` until this much time is timed (benchmark_model's --min_secs): a tiny
    # layer's runs last less than loading it (docs/measuring.md)
    min_time_s: float = 0.0
    # time each model as it runs inside a network (runner.time_in_context): other
    # layers' models invoked before every invocation, and with evict_bytes the caches written
    # over first; empty = back to back (the thesis). The local device and the SSH runner
    partners: tuple[bytes, ...] = ()
    evict_bytes: int = 0
    # and with vector_s, that long of dense vector arithmetic first, as the heavy layers before
    # it leave the core (runner._vector_work; docs/measuring.md §1)
    vector_s: float = 0.0
    # loads of each model, each elsewhere in memory (runner.placed_timing): where a small layer's
    # buffers lie moves it; a network runs it at about the luckiest place
    placements: int = 1


@dataclass(frozen=True)
class ModelJob:
    """One model to time: `cell_id` is opaque to the device and comes back in the Timing."""

    cell_id: int
    model: bytes


@dataclass(frozen=True)
class Timing:
    cell_id: int
    seconds: float  # mean latency of one invocation
    measured_at: float  # unix time when the timing finished
    temperature_c: float | None = None
    # throttled, or above the device's pause limit, when timed: the engine times it again
    throttled: bool | None = None
    runs: int | None = None  # invocations timed, when more than the settings' runs (min_time_s)
    fastest_s: float | None = None  # the fastest single invocation (None: the device cannot tell)
    # kept although the machine never read fast around it (the speed gate's longest wait); None:
    # not read. Stored: a cell counts its passes at full speed, and one without any is timed again
    slow: bool | None = None


@dataclass(frozen=True)
class DeviceInfo:
    """Provenance stored with every run in the table file."""

    name: str  # e.g. "local", "rpi3b-a"
    kind: str  # e.g. "local", "ssh"
    runtime: str  # e.g. "ai-edge-litert", "tflite-runtime", "benchmark_model"
    runtime_version: str
    host: str
    threads: int
    settings: dict = field(default_factory=dict)


class DeviceError(RuntimeError):
    """A device failed to measure; the message says which device and why."""


class Device(abc.ABC):
    """Async so that several SSH devices can work through one queue concurrently."""

    name: str
    #: how many batches the builder may have in flight on this device at once
    concurrency: int = 1
    #: where a device says what it is doing besides timing (a pause for heat); set by the pass engine
    report: Callable[[str], None] | None = None

    @abc.abstractmethod
    async def start(self) -> DeviceInfo:
        """Connect / spawn workers; return the provenance of this device."""

    @abc.abstractmethod
    async def measure(self, batch: list[ModelJob]) -> list[Timing]:
        """Time every model of the batch once (one pass); one Timing per job, same order.

        Raises DeviceError when the device cannot measure (never returns a made-up value).
        """

    def host_work_guard(self) -> contextlib.AbstractContextManager:
        """Held by the builder around its own heavy work (rendering models). A device that times
        on this machine holds its timing token for it, so that no model is timed meanwhile: on a
        small machine the cores share caches and even hyperthreads, and a small layer timed
        beside other work runs slower (docs/measuring.md)."""
        return contextlib.nullcontext()

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and worker processes."""
