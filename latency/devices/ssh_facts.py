"""What an SSH device says about itself through its shell alone, with no Python there: machine,
host name, the size of its L2 cache, and a binary's hash.

The L2 size decides the network timing context's cache eviction (`latency.context`): it is read
from the device's sysfs, else from its profile's ``l2_bytes`` (a Pi 3B's Cortex-A53 has 512 KB;
Raspberry Pi OS kernels do not always describe their caches). A farm's devices must agree: one
table has one recipe.
"""
from __future__ import annotations

import asyncio
import shlex
from pathlib import Path
from typing import Any

from .base import DeviceError
from .profiles import SshProfile
from .ssh_connection import SshConnection, run_command

#: where Linux describes the second-level cache of the first CPU
L2_SIZE_FILE = "/sys/devices/system/cpu/cpu0/cache/index2/size"
#: exit status of the facts command when the binary asked about is not executable
NOT_EXECUTABLE = 96


def facts_command(work_dir: str, binary: str | None = None) -> str:
    """A shell command printing ``__key value`` lines (and first the binary's sha256sum line)."""
    lines = [f"cd {shlex.quote(work_dir)} || exit 97"]
    if binary is not None:
        b = shlex.quote(binary)
        lines.append(f"test -x {b} || exit {NOT_EXECUTABLE}")
        lines.append(f'echo "__sha256 $(sha256sum {b} 2>/dev/null)"')
    lines += ['echo "__machine $(uname -m 2>/dev/null)"',
              'echo "__host $(uname -n 2>/dev/null || hostname 2>/dev/null)"',
              f'echo "__l2 $(cat {L2_SIZE_FILE} 2>/dev/null)"']
    return "\n".join(lines)


def _cache_size(text: str) -> int | None:
    from ..context import parse_cache_size

    try:
        return parse_cache_size(text) if text.strip() else None
    except ValueError:
        return None


def parse_facts(stdout: bytes) -> dict[str, Any]:
    """machine, host, l2_bytes and sha256 (None where the device did not say) from the output."""
    found: dict[str, str] = {}
    for line in stdout.decode("utf-8", "replace").splitlines():
        if line.startswith("__"):
            key, _, value = line[2:].partition(" ")
            found[key] = value.strip()
    sha = (found.get("sha256") or "").split()
    return {"machine": found.get("machine") or None, "host": found.get("host") or None,
            "l2_bytes": _cache_size(found.get("l2") or ""), "sha256": sha[0] if sha else None}


async def read_facts(link: SshConnection, profile: SshProfile, who: str, binary: str | None = None) -> dict[str, Any]:
    """The device's facts over `link`; with `binary`, a DeviceError when it is not executable there."""
    async def ask(conn: Any):
        return await run_command(conn, facts_command(profile.work_dir, binary), profile.call_timeout_s, who)

    result = await link.with_retries("reading what the device is", ask)
    if result.status == NOT_EXECUTABLE:
        raise DeviceError(f"{who}: benchmark_model {binary!r} is not an executable file on {profile.target} "
                          f"(relative paths start in work_dir {profile.work_dir!r}); fix benchmark_model in profile "
                          f"{profile.name} of {profile.source}")
    if result.status != 0:
        raise DeviceError(f"{who}: cannot enter work_dir {profile.work_dir!r} on {profile.target} (status "
                          f"{result.status}): {result.stderr.decode('utf-8', 'replace').strip()[-500:]}")
    return parse_facts(result.stdout)


async def _l2_of(profile: SshProfile) -> int | None:
    async def make_work_dir(conn: Any) -> None:
        await run_command(conn, f"mkdir -p {shlex.quote(profile.work_dir)}", profile.call_timeout_s, profile.name)

    link = SshConnection(profile, profile.name, make_work_dir)
    try:
        facts = await read_facts(link, profile, profile.name)
    finally:
        await link.drop()
    return facts["l2_bytes"] or profile.l2_bytes


def device_l2_bytes(spec: str, devices_file: str | Path | None = None, connect: bool = True) -> int | None:
    """The L2 cache size of the SSH devices of `--device spec`: each device's sysfs, else its
    profile's ``l2_bytes``. Raises ValueError when one cannot tell or two disagree. Without
    `connect`, the profiles' values only (None where one has none): no device is touched."""
    from .defaults import device_names
    from .profiles import expand_names, find_devices_file, load_profiles

    path = find_devices_file(devices_file)
    profiles = expand_names(device_names(spec), load_profiles(path), str(path))
    for p in profiles:  # before any connection: such a device cannot time in a network context at all
        if p.timer == "benchmark_model":
            raise ValueError(f"{p.name}: benchmark_model times models back to back only; a network timing context "
                             f"needs timer = \"runner\" (profile {p.name} in {path}), or build the table with "
                             "--context alone")

    if not connect:
        sizes = {p.l2_bytes for p in profiles}
        return sizes.pop() if len(sizes) == 1 else None

    async def all_of() -> list[int | None]:
        return list(await asyncio.gather(*(_l2_of(p) for p in profiles)))

    try:
        sizes = asyncio.run(all_of())
    except DeviceError as exc:
        raise ValueError(f"the network context needs each device's L2 cache size: {exc}") from None
    unknown = [p.name for p, size in zip(profiles, sizes) if not size]
    if unknown:
        raise ValueError(f"the network context needs the L2 cache size of {', '.join(unknown)}, and its sysfs does "
                         f"not say ({L2_SIZE_FILE}): set l2_bytes in its profile in {path} (a Raspberry Pi 3B: "
                         "l2_bytes = 524288), or time the table back to back (--context alone)")
    if len(set(sizes)) > 1:
        listed = ", ".join(f"{p.name} {size}" for p, size in zip(profiles, sizes))
        raise ValueError(f"the devices' L2 caches differ ({listed} bytes): a network-context table evicts one size; "
                         "build it on devices of one kind")
    return int(sizes[0])
