"""Device names users type (`--device local`, `--device rpi3b`, a farm) -> Device objects."""
from __future__ import annotations

from pathlib import Path

from .base import Device, TimingSettings


def known_devices(devices_file: str | Path | None = None) -> list[str]:
    names = ["local"]
    try:
        from .profiles import load_profiles
    except ImportError:  # SSH devices not installed in this build
        return names
    try:
        return names + sorted(load_profiles(devices_file))
    except (OSError, ValueError):
        return names


def min_time_s(spec: str, min_time_ms: float | None) -> float:
    """The minimum timed duration per model for `--device spec --min-time-ms min_time_ms`: the
    local default when not given; SSH devices time exactly their runs and refuse one."""
    if min_time_ms is not None and min_time_ms < 0:
        raise ValueError("--min-time-ms must be >= 0")
    if spec.strip() != "local":
        if min_time_ms:
            raise ValueError("--min-time-ms is a local-device option: SSH devices time exactly --runs invocations")
        return 0.0
    from .local import DEFAULT_MIN_TIME_S

    return DEFAULT_MIN_TIME_S if min_time_ms is None else min_time_ms / 1000.0


def make_devices(spec: str, timing: TimingSettings, workers: int = 1,
                 devices_file: str | Path | None = None, cli_set: set[str] | None = None) -> list[Device]:
    """`local`, a profile name, a group (farm) name, or a comma-separated list of profiles.

    `cli_set`: the timing fields the user gave explicitly (they override a profile's)."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise ValueError("--device is empty; known devices: " + ", ".join(known_devices(devices_file)))
    if names == ["local"]:
        from .local import LocalDevice

        return [LocalDevice(workers=workers, settings=timing)]
    if "local" in names:
        raise ValueError("'local' cannot be combined with SSH devices in one build (their timings differ)")
    try:
        from .profiles import devices_from_profiles
    except ImportError:
        raise ValueError(f"unknown device {spec!r}; known devices: local") from None
    return devices_from_profiles(names, timing, devices_file, cli_set=cli_set)
