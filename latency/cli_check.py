"""`check-device NAME`: what an SSH device has and lacks for its profile's timer, and how to install it.

Exit status: 0 when every device named can run its profile's timer, 1 when something is missing
(the install commands are printed), 2 for a usage error or a device that cannot be reached.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys

from latency.quiet import add_verbose_flag, quiet_runtime


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="check-device",
        description="Connect to an SSH device of the devices file (host key checked) and report its architecture, "
        "OS, Python, numpy and TFLite interpreter, the profile's benchmark_model, temperature, throttling and the "
        "free space of its work directory; for what its timer lacks, print the commands that install it. "
        "Exit status 0: ready; 1: something missing; 2: usage or connection error.",
    )
    p.add_argument("device", help="a device profile or group of the devices file")
    p.add_argument("--devices-file", help="TOML file of SSH device profiles (default: tables/devices.toml)")
    p.add_argument("--setup", action="store_true",
                   help="create a venv in the device's work directory and pip-install the runner's packages "
                        "there (the device must reach a package index)")
    add_verbose_flag(p)
    return p


async def _check(profile, setup: bool) -> int:
    from latency.devices.check import install_advice, probe_device, report_lines, setup_device

    facts = await probe_device(profile)
    print(f"{profile.name} ({profile.target}, timer {profile.timer}, profile in {profile.source})")
    for line in report_lines(facts, profile):
        print(line)
    advice = install_advice(facts, profile)
    if advice.ready:
        print(f"ready: {profile.name} can run its timer ({profile.timer})")
        return 0
    if setup and profile.timer == "runner":
        if await setup_device(profile, facts, print):
            venv_profile = dataclasses.replace(profile, python=advice.python)
            after = install_advice(await probe_device(venv_profile), venv_profile)
            if after.ready:
                print(f"set up: now set in profile [devices.{profile.name}] of {profile.source}:")
                print(f"    {advice.profile_lines[0]}")
                return 0
            print("set up, but still missing: " + "; ".join(after.missing))
        return 1
    print(f"missing for timer {profile.timer}: " + "; ".join(advice.missing))
    if advice.commands:
        system = facts.os.describe() if facts.os.name or facts.os.pretty else "OS unknown"
        print(f"install on the device ({system}, {facts.arch or 'unknown architecture'}):")
        for command in advice.commands:
            print(f"    {command}")
    if advice.profile_lines:
        print(f"then set in profile [devices.{profile.name}] of {profile.source}:")
        for line in advice.profile_lines:
            print(f"    {line}")
    for note in advice.notes:
        print(f"note: {note}")
    if advice.packages and profile.timer == "runner":
        print(f"or let check-device do it: check-device {profile.name} --setup")
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    quiet_runtime(args.verbose)
    from latency.devices.base import DeviceError
    from latency.devices.profiles import ProfileError, expand_names, find_devices_file, load_profiles

    try:
        path = find_devices_file(args.devices_file)
        profiles = expand_names([args.device], load_profiles(path), str(path))
    except ProfileError as exc:
        parser.error(str(exc))
    worst = 0
    for profile in profiles:
        try:
            worst = max(worst, asyncio.run(_check(profile, args.setup)))
        except DeviceError as exc:
            print(f"check-device: error: {exc}", file=sys.stderr)
            worst = 2
        except KeyboardInterrupt:
            return 130
    return worst


if __name__ == "__main__":
    sys.exit(main())
