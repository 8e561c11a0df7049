"""Device names users type (`--device local`, `--device rpi3b`, a farm) -> Device objects."""
from __future__ import annotations

from pathlib import Path

from .base import Device, TimingSettings
from .defaults import device_names


def make_devices(spec: str, timing: TimingSettings, workers: int = 1,
                 devices_file: str | Path | None = None) -> list[Device]:
    """`local`, a profile name, a group (farm) name, or a comma-separated list of profiles,
    each timing as `timing` says (one table, one recipe)."""
    names = device_names(spec)
    if names == ["local"]:
        from .local import LocalDevice

        return [LocalDevice(workers=workers, settings=timing)]
    if "local" in names:
        raise ValueError("'local' cannot be combined with SSH devices in one build (their timings differ)")
    try:
        from .profiles import devices_from_profiles
    except ImportError:
        raise ValueError(f"unknown device {spec!r}; known devices: local") from None
    return devices_from_profiles(names, timing, devices_file)
