"""Timing only while this machine runs at full speed: a sentinel model gates every timing.

A shared machine (a VM) has phases in which everything runs 1.4-1.7x slower, from a quarter
second to minutes, and on some days most of the time (docs/measuring.md §5). A fastest-of-passes
estimator absorbs short phases only when the passes of one model fall into different phases: a
report times its networks in a second or two, all in one phase, and a table built in a slow
stretch is slower throughout than the report that checks it. The gate reads the machine's speed
with a sentinel (a chain of one-element MULs, a microsecond per invocation) right before and
right after every timed model: the readings are bimodal, within 1.1x of the fastest reading or
beyond 1.4x, and the cells timed between two fast readings are within 4 % of their fastest
ever. So a model is timed once the sentinel reads fast, and timed again when the reading after it
was slow. Waiting is bounded: after `max_wait_s` the model is timed anyway and counted, and the
models after it wait only once a reading is fast again, so a machine that stays slow costs one
wait per slow stretch, is measured as it is, and says so.

A model kept although the machine never read fast around it says so (`last_slow`): a table
stores that flag with the timing, and a cell whose every pass was kept so is timed again after
the passes (`latency.retime`).

The baseline is the fastest reading the gate has seen: a few seconds of readings when it starts,
and every reading since.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Tuple, TypeVar

__all__ = ["SpeedGate", "GateStats", "SLOW_FACTOR"]

T = TypeVar("T")

#: a reading beyond this multiple of the baseline is a slow phase (fast readings stay within
#: 1.1x, slow ones are 1.4x and more)
SLOW_FACTOR = 1.25
#: invocations of the sentinel per reading; the reading is their fastest
READING_RUNS = 20
#: readings taken when the gate starts, to find the machine's fast state
CALIBRATE_S = 2.0
#: longest wait for a fast reading before one model is timed anyway
MAX_WAIT_S = 2.0
#: timings of one model in all (the first included) while readings after it say slow
MAX_TRIES = 4


@dataclass
class GateStats:
    """What the gate did, summed over the models it timed."""

    models: int = 0
    # models whose first reading was slow; the share of slow readings overstates it, since a
    # wait takes a reading every 20 us
    found_slow: int = 0
    waited: int = 0  # models that waited for a fast reading
    waited_s: float = 0.0
    retimed: int = 0  # extra timings after a slow reading
    slow: int = 0  # models kept although the machine never read fast around them
    readings: int = 0
    slow_readings: int = 0

    def add(self, other: "GateStats") -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def summary(self) -> str:
        """One line for a user, or '' when the machine never read slow."""
        if not self.slow_readings:
            return ""
        share = 100.0 * self.found_slow / max(1, self.models)
        line = (f"this machine read slow before {self.found_slow} of {self.models} models ({share:.0f} %; other work "
                f"on the host?): {self.waited} of them waited for full speed ({self.waited_s:.1f} s in all), "
                f"{self.retimed} timings were taken again")
        if self.slow:
            line += f"; {self.slow} were kept although it never read fast around them (waited {MAX_WAIT_S:g} s)"
        return line


def is_slow(reading_s: float, baseline_s: float, factor: float = SLOW_FACTOR) -> bool:
    """Whether a reading is from a slow phase, against the fastest reading seen."""
    return reading_s > factor * baseline_s


class SpeedGate:
    """Times a model only between two readings of the sentinel that say full speed.

    `read` returns one speed reading in seconds (`sentinel_reader` makes it from a loaded
    sentinel interpreter); `clock` is the clock waits are measured with.
    """

    def __init__(self, read: Callable[[], float], calibrate_s: float = CALIBRATE_S,
                 max_wait_s: float = MAX_WAIT_S, max_tries: int = MAX_TRIES, factor: float = SLOW_FACTOR,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if max_tries < 1 or max_wait_s < 0 or factor <= 1.0:
            raise ValueError("max_tries must be >= 1, max_wait_s >= 0 and factor > 1")
        self._read, self._clock = read, clock
        self.max_wait_s, self.max_tries, self.factor = max_wait_s, max_tries, factor
        self.baseline_s = math.inf
        self.stats = GateStats()
        self._stayed_slow = False  # the last wait found no fast reading
        self.last_slow = False  # the last model `timed` was kept although it never read fast around it
        end = clock() + calibrate_s
        while True:
            self._reading()
            if clock() >= end:
                break

    def _reading(self) -> float:
        r = self._read()
        if not (r > 0 and math.isfinite(r)):
            raise RuntimeError(f"implausible speed reading {r!r} s")
        self.baseline_s = min(self.baseline_s, r)
        slow = is_slow(r, self.baseline_s, self.factor)
        self.stats.readings += 1
        self.stats.slow_readings += slow
        return r

    def fast_now(self) -> bool:
        return not is_slow(self._reading(), self.baseline_s, self.factor)

    def wait_until_fast(self) -> Tuple[bool, float]:
        """(whether a fast reading came, seconds spent on slow readings before it), spinning on
        readings for at most `max_wait_s`. After a wait that found none, the next models do not
        wait until a reading is fast again: a stretch that stays slow costs one wait, not one
        per model."""
        start, slow_seen = self._clock(), False
        while True:
            if self.fast_now():
                self._stayed_slow = False
                return True, self._clock() - start if slow_seen else 0.0
            slow_seen = True
            waited = self._clock() - start
            if self._stayed_slow:
                return False, 0.0
            if waited >= self.max_wait_s:
                self._stayed_slow = True
                return False, waited

    def timed(self, measure: Callable[[], T]) -> T:
        """`measure()` taken at full speed: after a fast reading, and again (up to `max_tries`
        timings) while the reading after it says slow. The last timing is returned; one taken
        after `max_wait_s` without a fast reading is kept as it is (waiting again would not help)."""
        stats = self.stats
        stats.models += 1
        waited_any = False
        for attempt in range(self.max_tries):
            fast, waited = self.wait_until_fast()
            if attempt == 0 and (not fast or waited > 0):
                stats.found_slow += 1
            if waited > 0:
                waited_any = True
                stats.waited_s += waited
            result = measure()
            self.last_slow = False
            if fast and self.fast_now():
                break
            if not fast or attempt + 1 == self.max_tries:
                stats.slow += 1
                self.last_slow = True
                break
            stats.retimed += 1
        stats.waited += waited_any
        return result

    def take_stats(self) -> GateStats:
        """The stats since the last call, and a fresh count."""
        stats, self.stats = self.stats, GateStats()
        return stats


def sentinel_reader(interpreter: Any, runs: int = READING_RUNS) -> Callable[[], float]:
    """A speed reading: the fastest of `runs` invocations of the sentinel interpreter."""
    invoke, clock = interpreter.invoke, time.perf_counter

    def read() -> float:
        best = math.inf
        for _ in range(runs):
            start = clock()
            invoke()
            best = min(best, clock() - start)
        return best

    return read


@functools.lru_cache(maxsize=1)
def sentinel_model() -> bytes:
    """The sentinel: a chain of 8 one-element MULs (the per-invoke overhead probe of that length),
    converted once per process."""
    from latency.overhead import probe_models

    return probe_models((8,))[0][2]
