"""The speed gate: a model timed only between two full-speed readings of a sentinel.

The decisions are checked with scripted readings and a scripted clock (what the gate does on
a machine that is slow at a given moment cannot be arranged on a real one); the sentinel itself
and the local device's use of it run for real.
"""
from __future__ import annotations

import asyncio
from typing import Iterator

import pytest

from latency.devices.base import ModelJob, TimingSettings
from latency.devices.local import LocalDevice
from latency.devices.runner import load_model
from latency.devices.speed_gate import GateStats, SpeedGate, is_slow, sentinel_model, sentinel_reader

FAST, SLOW = 1.0e-6, 1.5e-6


class Script:
    """Readings in the order given (the last repeats); every reading advances the clock 1 ms."""

    def __init__(self, readings: list[float]) -> None:
        self.readings, self.now, self.taken = list(readings), 0.0, 0

    def read(self) -> float:
        self.now += 1e-3
        self.taken += 1
        return self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]

    def clock(self) -> float:
        return self.now


def gate_for(readings: list[float], **kw) -> tuple[SpeedGate, Script]:
    script = Script([FAST] + readings)  # one calibration reading
    return SpeedGate(script.read, calibrate_s=0.0, clock=script.clock, **kw), script


def counter() -> tuple[list[int], object]:
    calls: list[int] = []

    def measure() -> int:
        calls.append(len(calls))
        return len(calls)
    return calls, measure


def test_is_slow_against_the_fastest_reading() -> None:
    assert not is_slow(1.2e-6, 1.0e-6)
    assert is_slow(1.3e-6, 1.0e-6)
    assert is_slow(1.1e-6, 1.0e-6, factor=1.05)


def test_fast_machine_times_once_without_waiting() -> None:
    gate, _ = gate_for([FAST])
    calls, measure = counter()
    assert gate.timed(measure) == 1
    assert calls == [0] and not gate.last_slow
    assert gate.stats == GateStats(models=1, readings=3)  # calibration, before, after


def test_waits_for_a_fast_reading_before_timing() -> None:
    gate, script = gate_for([SLOW, SLOW, SLOW, FAST, FAST])
    calls, measure = counter()
    gate.timed(measure)
    assert calls == [0]
    s = gate.stats
    assert (s.found_slow, s.waited, s.retimed, s.slow, s.slow_readings) == (1, 1, 0, 0, 3)
    assert s.waited_s == pytest.approx(4e-3)  # three slow readings and the fast one


def test_times_again_when_the_reading_after_is_slow() -> None:
    # before fast, after slow; before fast, after fast
    gate, _ = gate_for([FAST, SLOW, FAST, FAST])
    calls, measure = counter()
    assert gate.timed(measure) == 2  # the last timing is returned
    assert (gate.stats.retimed, gate.stats.slow) == (1, 0)


def test_gives_up_after_max_tries_and_counts_it() -> None:
    gate, _ = gate_for([FAST, SLOW] * 3, max_tries=3)  # fast before every timing, slow after it
    calls, measure = counter()
    gate.timed(measure)
    assert len(calls) == 3
    assert (gate.stats.retimed, gate.stats.slow) == (2, 1) and gate.last_slow


def test_a_machine_that_stays_slow_is_timed_after_the_longest_wait() -> None:
    gate, script = gate_for([SLOW], max_wait_s=0.05)
    calls, measure = counter()
    gate.timed(measure)
    assert calls == [0]  # once: waiting again would not help
    assert (gate.stats.waited, gate.stats.slow) == (1, 1)
    assert 0.05 <= gate.stats.waited_s < 0.06
    assert "kept although it never read fast" in gate.stats.summary()


def test_baseline_follows_the_fastest_reading() -> None:
    gate, _ = gate_for([0.5e-6, FAST, FAST])  # a faster state found later
    calls, measure = counter()
    gate.timed(measure)  # reads 0.5 (fast), times, reads 1.0: slow against the new baseline
    assert gate.baseline_s == 0.5e-6
    assert gate.stats.retimed == 1


def test_implausible_reading_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="implausible speed reading"):
        SpeedGate(lambda: 0.0, calibrate_s=0.0)


def test_take_stats_starts_a_fresh_count() -> None:
    gate, _ = gate_for([FAST])
    gate.timed(counter()[1])
    taken = gate.take_stats()
    assert taken.models == 1 and gate.stats == GateStats()
    total = GateStats()
    total.add(taken)
    total.add(taken)
    assert total.models == 2 and total.readings == 2 * taken.readings


def test_summary_is_empty_on_a_steady_machine() -> None:
    assert GateStats(models=5, readings=50).summary() == ""
    line = GateStats(models=10, found_slow=3, waited=2, waited_s=1.5, retimed=1, readings=100,
                     slow_readings=25).summary()
    assert "slow before 3 of 10 models (30 %" in line and "2 of them waited" in line and "1 timings were taken again" in line


def test_real_sentinel_reads_this_machine() -> None:
    read = sentinel_reader(load_model(sentinel_model()))
    gate = SpeedGate(read, calibrate_s=0.05)
    assert 0 < gate.baseline_s < 1e-3
    calls, measure = counter()
    gate.timed(measure)
    assert 1 <= len(calls) <= gate.max_tries
    assert gate.stats.readings > 2


def test_local_device_gates_every_model_and_can_be_told_not_to() -> None:
    model = sentinel_model()

    async def run(gated: bool) -> LocalDevice:
        device = LocalDevice(settings=TimingSettings(runs=5, warmup=1), speed_gate=gated)
        try:
            info = await device.start()
            timings = await device.measure([ModelJob(i, model) for i in range(6)])
        finally:
            await device.close()
        assert [t.cell_id for t in timings] == list(range(6))
        assert all(t.fastest_s and t.fastest_s > 0 for t in timings)
        assert ("speed gate" in info.settings["method"]) == gated
        return device

    gated = asyncio.run(run(True))
    assert gated.gate_stats.models == 6
    assert gated.gate_stats.readings >= 12  # a reading before and after each model at least
    assert asyncio.run(run(False)).gate_stats.models == 0


def test_a_slow_stretch_costs_one_wait_not_one_per_model() -> None:
    gate, _ = gate_for([SLOW] * 200 + [FAST], max_wait_s=0.05)
    calls, measure = counter()
    for _ in range(5):
        gate.timed(measure)
    # the first model waits 50 readings; the next ones read once each and are timed at once
    assert len(calls) == 5 and gate.stats.waited == 1 and gate.stats.slow == 5
    assert gate.stats.readings < 1 + 51 + 2 * 5
    for _ in range(200):  # the slow readings run out: the gate waits again once it read fast
        gate.timed(measure)
    assert gate.stats.slow < 205 and not gate._stayed_slow



def test_a_model_kept_although_never_fast_says_so() -> None:
    gate, _ = gate_for([SLOW], max_wait_s=0.005)
    gate.timed(counter()[1])
    assert gate.last_slow
    gate, _ = gate_for([SLOW, FAST, FAST])  # waited, then fast around it
    gate.timed(counter()[1])
    assert not gate.last_slow


def test_local_device_says_which_timings_were_kept_slow() -> None:
    model = sentinel_model()

    async def run() -> list:
        device = LocalDevice(settings=TimingSettings(runs=5, warmup=1))
        try:
            await device.start()
            return await device.measure([ModelJob(i, model) for i in range(4)])
        finally:
            await device.close()

    assert all(t.slow in (True, False) for t in asyncio.run(run()))  # read around every timing
