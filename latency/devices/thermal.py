"""Heat on an SSH device: its limits, its sensor readings, and a pause watched from this side.

A Raspberry Pi that heats up lowers its clock, and what it times then is slower than the
table should say. Instead of a fixed sleep before every model, the device itself paces the
work (the runner's batch loop and the benchmark_model shell loop, both device-side): before a
model, when its sensor reads above ``pause_above_c`` it waits until it reads below
``resume_below_c``, printing a line now and then so that the call stays alive. Every timing
carries the temperature and the throttle flags read right after it; one taken while the SoC was
throttled (``vcgencmd get_throttled`` bits 0-3: under-voltage, frequency capped, throttled, soft
temperature limit, all *now*) or above the limit is marked ``Timing.throttled``, and the pass
engine measures it again instead of storing it (`latency.passes`).

Pure functions here; the device-side halves are in `latency.devices.runner` (Python) and
`latency.devices.ssh_benchmark` (shell).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from .base import DeviceError

#: where Linux publishes the SoC temperature (millidegrees Celsius)
DEFAULT_SENSOR = "/sys/class/thermal/thermal_zone0/temp"
#: the Pi firmware's throttle state: "throttled=0x50005"
DEFAULT_THROTTLE_COMMAND = "vcgencmd get_throttled"
#: bits 0-3 of get_throttled describe the state *now*; bits 16-19 only that it happened since boot
THROTTLED_NOW_MASK = 0xF
#: seconds between two sensor readings while paused (device side)
PAUSE_POLL_S = 1.0
#: seconds between two progress notes of one pause (this side)
PAUSE_NOTE_EVERY_S = 60.0


@dataclass(frozen=True)
class ThermalLimits:
    """A device's heat settings (profile fields of the same names)."""

    sensor: str = DEFAULT_SENSOR  # a file holding millidegrees; relative paths start in work_dir
    pause_above_c: float | None = None  # None: no pacing (temperatures are still recorded)
    resume_below_c: float | None = None
    throttle_command: str = DEFAULT_THROTTLE_COMMAND
    max_pause_s: float = 1800.0  # a device that does not cool within this is failing

    @property
    def paces(self) -> bool:
        return self.pause_above_c is not None

    @property
    def resume_c(self) -> float | None:
        """The temperature a pause ends below (10 degrees under the pause limit by default)."""
        if self.pause_above_c is None:
            return None
        return self.resume_below_c if self.resume_below_c is not None else self.pause_above_c - 10.0

    def check(self) -> None:
        """Raises ValueError naming the field that is out of range."""
        if self.resume_below_c is not None and self.pause_above_c is None:
            raise ValueError("resume_below_c needs pause_above_c (the temperature a pause starts above)")
        if self.paces and not self.resume_c < self.pause_above_c:
            raise ValueError(f"resume_below_c ({self.resume_c:g}) must be below pause_above_c ({self.pause_above_c:g})")
        if not self.max_pause_s > 0:
            raise ValueError(f"max_pause_s must be > 0, got {self.max_pause_s}")
        if not self.sensor or not self.throttle_command:
            raise ValueError("thermal_sensor and throttle_command must not be empty")

    def too_hot(self, temperature_c: float | None) -> bool:
        return self.paces and temperature_c is not None and temperature_c > self.pause_above_c

    def describe(self) -> dict:
        """Provenance for the run's settings."""
        return {"thermal_sensor": self.sensor, "pause_above_c": self.pause_above_c, "resume_below_c": self.resume_c,
                "throttle_command": self.throttle_command, "max_pause_s": self.max_pause_s}


def millidegrees(celsius: float) -> int:
    """A limit as the sysfs sensor writes temperatures (integer millidegrees)."""
    return int(round(celsius * 1000))


def parse_temperature(text: str | bytes) -> float | None:
    """Degrees Celsius from a sysfs sensor's millidegrees ('48312'); None when absent or unreadable."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    try:
        return int(text.strip()) / 1000.0
    except ValueError:
        return None


def parse_throttled(text: str | bytes) -> bool | None:
    """True when the throttle flags say the SoC is throttled *now*: 'throttled=0x50005' (vcgencmd)
    or a bare number ('0x4', '4'); None when there is no reading."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    value = text.strip().splitlines()[0] if text.strip() else ""
    value = value.split("=", 1)[1] if "=" in value else value
    try:
        flags = int(value.strip(), 0)
    except ValueError:
        return None
    return bool(flags & THROTTLED_NOW_MASK)


def timed_hot(limits: ThermalLimits, temperature_c: float | None, throttled: bool | None) -> bool | None:
    """What a timing's `throttled` says: the flags, or True when the sensor read above the limit
    right after it (the model was timed on a hot SoC, maybe at a lowered clock)."""
    if limits.too_hot(temperature_c):
        return True
    return throttled


class PauseWatch:
    """This side's view of a device's pauses: notes for the user, and a limit on how long."""

    def __init__(self, who: str, limits: ThermalLimits, report: Callable[[str], None] | None = None) -> None:
        self.who, self.limits, self.report = who, limits, report
        self.started: float | None = None  # monotonic time the pause began
        self.temperature_c: float | None = None  # the latest reading while paused; None when not paused
        self.pauses = 0
        self.paused_s = 0.0
        self._noted = 0.0

    def _note(self, text: str) -> None:
        if self.report is not None:
            self.report(f"{self.who}: {text}")

    def paused(self, temperature_c: float | None) -> None:
        """A 'paused' line from the device: the first of a pause, or one of its heartbeats."""
        now = time.monotonic()
        self.temperature_c = temperature_c
        shown = "unknown" if temperature_c is None else f"{temperature_c:.1f} °C"
        if self.started is None:
            self.started, self._noted = now, now
            self.pauses += 1
            self._note(f"{shown}, above pause_above_c={self.limits.pause_above_c:g}: pausing until below "
                       f"{self.limits.resume_c:g} °C")
            return
        waited = now - self.started
        if waited > self.limits.max_pause_s:
            raise DeviceError(f"{self.who}: still {shown} after a pause of {waited:.0f} s (max_pause_s="
                              f"{self.limits.max_pause_s:g}): it does not cool down; check its cooling, or raise "
                              "pause_above_c / max_pause_s in its profile")
        if now - self._noted >= PAUSE_NOTE_EVERY_S:
            self._noted = now
            self._note(f"still {shown} after {waited:.0f} s")

    def resumed(self, temperature_c: float | None) -> None:
        if self.started is None:
            return
        waited = time.monotonic() - self.started
        self.paused_s += waited
        self.started, self.temperature_c = None, None
        shown = "" if temperature_c is None else f" at {temperature_c:.1f} °C"
        self._note(f"resumed{shown} after a pause of {waited:.0f} s")

    def ended(self) -> None:
        """The call ended (or failed): a pause in it is over."""
        if self.started is not None:
            self.paused_s += time.monotonic() - self.started
        self.started, self.temperature_c = None, None
