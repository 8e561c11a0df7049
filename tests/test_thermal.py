"""Heat on a device: reading the sensor and the throttle flags, the limits a profile sets, the
device-side pause, and the pass engine timing again what was timed throttled.

The emulated Pi (tests/test_pi_builds.py) runs the same code end to end over SSH; these need
no device: real files for the sensor, a real process for the throttle command."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from latency.devices.base import Device, DeviceError, DeviceInfo, ModelJob, Timing
from latency.devices.profiles import ProfileError, load_profiles
from latency.devices.runner import read_throttled, wait_until_cool
from latency.devices.thermal import PauseWatch, ThermalLimits, parse_temperature, parse_throttled, timed_hot
from latency.passes import DeviceRun, run_passes
from tests.sshd_fixture import write_devices_file


def test_readings() -> None:
    assert parse_temperature("48312\n") == 48.312 and parse_temperature(b"") is None
    assert parse_temperature("n/a") is None
    # bits 0-3 are the state now; 16-19 only that it happened since boot
    assert parse_throttled("throttled=0x50005\n") is True
    assert parse_throttled("throttled=0x50000") is False
    assert parse_throttled("0x4") is True and parse_throttled("8") is True and parse_throttled("0") is False
    assert parse_throttled("") is None and parse_throttled("vcgencmd: not found") is None
    limits = ThermalLimits(pause_above_c=75.0)
    assert limits.resume_c == 65.0
    assert timed_hot(limits, 80.0, False) is True and timed_hot(limits, 70.0, False) is False
    assert timed_hot(limits, None, None) is None and timed_hot(ThermalLimits(), 99.0, None) is None


def test_runner_reads_the_throttle_command(tmp_path: Path) -> None:
    flags = tmp_path / "flags"
    flags.write_text("throttled=0x4\n")
    assert read_throttled(f"cat {flags}") is True
    flags.write_text("throttled=0x0\n")
    assert read_throttled(f"cat {flags}") is False
    assert read_throttled("exit 1") is None


def test_runner_pauses_until_the_sensor_reads_below_the_resume_limit(tmp_path: Path) -> None:
    sensor = tmp_path / "temp"
    sensor.write_text("80000\n")
    events: list[dict] = []
    readings = iter(["78000", "70000", "64000"])  # still hot, between the limits, cool

    def note(event: dict) -> None:  # the device's firmware, as far as this pause can tell
        events.append(event)
        if event["event"] == "paused":
            sensor.write_text(next(readings))

    wait_until_cool(str(sensor), 75.0, 65.0, note, poll_s=0.001)
    assert [(e["event"], e["temperature_c"]) for e in events] == [
        ("paused", 80.0), ("paused", 78.0), ("paused", 70.0), ("resumed", 64.0)]
    events.clear()
    wait_until_cool(str(sensor), 75.0, 65.0, note, poll_s=0.001)  # cool: no pause at all
    wait_until_cool(str(tmp_path / "absent"), 75.0, 65.0, note, poll_s=0.001)  # no sensor: no pause
    assert events == []


def test_a_pause_that_never_ends_fails_the_batch() -> None:
    notes: list[str] = []
    watch = PauseWatch("pi", ThermalLimits(pause_above_c=75.0, max_pause_s=1e-6), notes.append)
    watch.paused(80.0)
    assert watch.pauses == 1 and watch.temperature_c == 80.0 and "pausing until below 65" in notes[0]
    with pytest.raises(DeviceError, match=r"pi: still 80.0 °C after a pause .*max_pause_s"):
        watch.paused(80.0)
    watch.resumed(60.0)
    assert watch.temperature_c is None and "resumed at 60.0" in notes[-1]


def test_profile_thermal_fields(tmp_path: Path) -> None:
    path = write_devices_file(tmp_path / "d.toml", {"pi": {"host": "h", "pause_above_c": 70, "resume_below_c": 60,
                                                          "thermal_sensor": "sensor", "throttle_command": "cat f"}})
    limits = load_profiles(path)["pi"].thermal
    assert (limits.pause_above_c, limits.resume_c, limits.sensor, limits.throttle_command) == (70.0, 60.0, "sensor",
                                                                                               "cat f")
    for bad, message in (({"pause_above_c": 60, "resume_below_c": 70}, "must be below pause_above_c"),
                         ({"resume_below_c": 60}, "needs pause_above_c"),
                         ({"l2_bytes": 0}, "l2_bytes must be >= 1")):
        with pytest.raises(ProfileError, match=message):
            load_profiles(write_devices_file(tmp_path / "b.toml", {"pi": {"host": "h", **bad}}))


class ThrottledFirst(Device):
    """Reports a key throttled the first `hot` times it is timed (`always`: every time)."""

    def __init__(self, name: str, hot: int = 1, always: bool = False) -> None:
        self.name, self.hot, self.always = name, hot, always
        self.seen: dict[int, int] = {}

    async def start(self) -> DeviceInfo:
        return DeviceInfo(self.name, "test", "none", "0", "here", 1)

    async def measure(self, batch: list[ModelJob]) -> list[Timing]:
        out = []
        for job in batch:
            n = self.seen[job.cell_id] = self.seen.get(job.cell_id, 0) + 1
            throttled = self.always or (job.cell_id % 2 == 0 and n <= self.hot)
            out.append(Timing(job.cell_id, 0.001, 0.0, 50.0, throttled))
        return out

    async def close(self) -> None:
        pass


def _run(devices: list[Device], batches: list, max_failures: int = 3):
    stored: list[tuple[str, int, int]] = []
    lines: list[str] = []

    def commit(run: DeviceRun, p: int, keys: list[int], timings: list[Timing]) -> int:
        assert not any(t.throttled for t in timings)
        stored.extend((run.device.name, k, p) for k in keys)
        return len(keys)

    runs = [DeviceRun(d, i) for i, d in enumerate(devices)]
    outcome = asyncio.run(run_passes(runs, batches, lambda keys: [ModelJob(k, b"") for k in keys], commit,
                                     max_failures=max_failures, report=lines.append))
    return outcome, stored, lines


def test_the_engine_times_again_what_was_timed_throttled(monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_backoff(_: float) -> None:
        return None

    monkeypatch.setattr(asyncio, "sleep", no_backoff)  # the engine's back-off after a failure
    device = ThrottledFirst("pi", hot=2)
    outcome, stored, lines = _run([device], [(0, [0, 1, 2, 3]), (1, [0, 1, 2, 3])])
    # every (key, pass) stored exactly once, none of them throttled; the even keys timed twice more
    assert sorted((k, p) for _, k, p in stored) == [(k, p) for k in range(4) for p in range(2)]
    assert outcome.left == 0 and outcome.retired == [] and device.seen == {0: 4, 1: 2, 2: 4, 3: 2}
    assert any("2 of 4 models were timed while throttled" in ln for ln in lines)

    # a device throttled all the time (a weak power supply) is retired, saying why; nothing stored
    outcome, stored, lines = _run([ThrottledFirst("weak", always=True)], [(0, [k]) for k in range(6)])
    assert stored == [] and outcome.left == 6
    assert len(outcome.retired) == 1 and "every model of the batch was timed while the device was throttled" in (
        outcome.retired[0])
    # beside a good device, the good one measures everything
    outcome, stored, lines = _run([ThrottledFirst("weak", always=True), ThrottledFirst("good", hot=0)],
                                  [(0, [k]) for k in range(6)])
    assert sorted(k for _, k, _ in stored) == list(range(6)) and {d for d, _, _ in stored} == {"good"}
