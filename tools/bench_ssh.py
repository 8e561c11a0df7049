"""Benchmark of the SSH device against the local one, on this machine (loopback sshd).

    python -m tools.bench_ssh [--arch wrn-40-2] [--cells 192] [--runs 10] [--models-per-call 32] [--repeat 3]

Needs a checkout (it starts OpenSSH servers with tests/sshd_fixture.py) and /usr/sbin/sshd.
The same pre-rendered cells (a random sample of the architecture's full grid, so sizes are
those of a real table) are timed by

* the local device (LiteRT in a worker process),
* one SSH device on a loopback sshd, with transfer "pool" and with transfer "zlib",
* two SSH devices (two sshd servers) sharing one queue of batches,

and it prints cells per second for each, the bytes sent per cell, and the encode cost. Loopback
hides the network: the SSH figures are the protocol and process overhead, and two "devices" on
one machine share its cores, so they show the scheduling, not a farm's speed-up.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="wrn-40-2")
    p.add_argument("--cells", type=int, default=192, help="cells sampled from the full grid (192)")
    p.add_argument("--runs", type=int, default=10, help="timed invocations per model (10)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--models-per-call", type=int, default=32, help="models per device call (32, as build-tables)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=3, help="timed rounds per setup; the median is shown (3)")
    return p


def _rates(n: int, walls: list[float]) -> tuple[float, str]:
    rates = sorted(n / w for w in walls)
    return statistics.median(rates), f"[{rates[0]:.1f}-{rates[-1]:.1f}]"


async def _drain(devices: list, batches: list, seconds: dict[int, float]) -> tuple[float, dict[str, int]]:
    """Wall seconds for the devices to time every batch from one shared queue (like the builder);
    fills `seconds` with each cell's timing."""
    queue: asyncio.Queue = asyncio.Queue()
    for b in batches:
        queue.put_nowait(b)
    done = {d.name: 0 for d in devices}

    async def worker(device) -> None:
        while not queue.empty():
            batch = queue.get_nowait()
            timings = await device.measure(batch)
            assert [t.cell_id for t in timings] == [j.cell_id for j in batch]
            seconds.update((t.cell_id, t.seconds) for t in timings)
            done[device.name] += len(batch)

    started = time.perf_counter()
    await asyncio.gather(*(worker(d) for d in devices))
    return time.perf_counter() - started, done


async def _bench(args: argparse.Namespace) -> None:
    from latency.devices.base import ModelJob, TimingSettings
    from latency.devices.local import LocalDevice
    from latency.devices.profiles import load_profiles
    from latency.devices.ssh_transfer import encode_batch, pool_index
    from latency.generate import CellModels
    from latency.layer_types import grid_cells, network_layer_types
    from models.families import get_arch
    from tests.sshd_fixture import SshServer, sshd_missing_reason, write_devices_file

    reason = sshd_missing_reason()
    if reason:
        sys.exit(f"bench_ssh: {reason}")
    types = network_layer_types([get_arch(args.arch)])
    cells = [(k, i, o) for k, t in types.items() for i, o in grid_cells(t, 1)]
    sample = random.Random(args.seed).sample(cells, min(args.cells, len(cells)))
    generator = CellModels(types)
    print(f"{args.arch}: {len(cells):,} cells in the full grid; timing {len(sample)} of them, runs={args.runs}, "
          f"warmup={args.warmup}, batches of {args.models_per_call}", flush=True)
    t0 = time.perf_counter()
    for key in sorted({c[0] for c in sample}):
        generator.template(key)
    jobs = [ModelJob(n, generator.render(*c, seed=n)) for n, c in enumerate(sample)]
    print(f"templates + render: {time.perf_counter() - t0:.1f} s", flush=True)
    batches = [jobs[i:i + args.models_per_call] for i in range(0, len(jobs), args.models_per_call)]
    raw = sum(len(j.model) for j in jobs)

    # -- transfer size and encode cost (no network)
    pool = pool_index()
    t0 = time.perf_counter()
    pool_bytes = sum(len(encode_batch(b, pool)) for b in batches)
    encode_s = time.perf_counter() - t0
    zlib_bytes = sum(len(encode_batch(b, None)) for b in batches)
    plain_zlib = sum(len(zlib.compress(j.model, 6)) for j in jobs)
    n = len(jobs)
    print("\nbytes per cell (models as rendered, mean):")
    print(f"  raw                     {raw / n:10,.0f}")
    print(f"  zlib per model          {plain_zlib / n:10,.0f}  ({plain_zlib / raw:.1%})")
    print(f"  transfer='zlib' batch   {zlib_bytes / n:10,.0f}  ({zlib_bytes / raw:.1%})")
    print(f"  transfer='pool' batch   {pool_bytes / n:10,.0f}  ({pool_bytes / raw:.2%}); encode "
          f"{encode_s / n * 1e3:.2f} ms/cell; + {len(pool.pool) / 2**20:.0f} MiB pool once per device")
    full = len(cells) * 3
    print(f"  full {args.arch} table, 3 passes ({full:,} models): raw {raw / n * full / 1e9:.1f} GB, "
          f"zlib {zlib_bytes / n * full / 1e9:.1f} GB, pool {pool_bytes / n * full / 1e6:.0f} MB")

    timing = TimingSettings(runs=args.runs, warmup=args.warmup, threads=1)
    figures: list[tuple[str, float, str]] = []

    local = LocalDevice(settings=timing)
    await local.start()
    await local.measure(batches[0][:1])  # warm the worker like the SSH runs' start()
    local_seconds: dict[int, float] = {}
    walls = [(await _drain([local], batches, local_seconds))[0] for _ in range(args.repeat)]
    await local.close()
    rate, spread = _rates(n, walls)
    figures.append(("local (LiteRT worker process)", rate, spread))

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        servers = [SshServer.create(tmp / f"sshd-{i}").start() for i in range(2)]
        try:
            profiles = {f"loop-{i}": s.profile(tmp / f"work-{i}", runs=args.runs, warmup=args.warmup,
                                               call_timeout_s=300.0) for i, s in enumerate(servers)}
            profiles["loop-0-zlib"] = dict(profiles["loop-0"], transfer="zlib")
            loaded = load_profiles(write_devices_file(tmp / "devices.toml", profiles))
            from latency.devices.ssh import SshDevice

            for label, names in (("ssh x1, transfer=pool", ["loop-0"]), ("ssh x1, transfer=zlib", ["loop-0-zlib"]),
                                 ("ssh x2 (two sshd), transfer=pool", ["loop-0", "loop-1"])):
                devices = [SshDevice(loaded[name], timing) for name in names]
                t0 = time.perf_counter()
                for d in devices:
                    await d.start()
                start_s = time.perf_counter() - t0
                seconds: dict[int, float] = {}
                walls = []
                try:
                    for _ in range(args.repeat):
                        wall, split = await _drain(devices, batches, seconds)
                        walls.append(wall)
                finally:
                    for d in devices:
                        await d.close()
                sent = sum(d.transfer_stats.sent_bytes for d in devices)
                setup = sum(d.transfer_stats.setup_bytes for d in devices)
                # same runtime on the same CPU: the per-cell timings should agree with the local ones
                ratio = statistics.median(seconds[c] / local_seconds[c] for c in seconds)
                rate, spread = _rates(n, walls)
                detail = (f"{spread}; {sent / n / args.repeat:,.0f} B/cell sent; timing/local median {ratio:.2f}; "
                          f"start {start_s:.1f} s, setup upload {setup / 2**20:.1f} MiB"
                          + (f"; cells per device {split}" if len(devices) > 1 else ""))
                figures.append((label, rate, detail))
        finally:
            for s in servers:
                s.stop()

    print(f"\nthroughput, median of {args.repeat} rounds [min-max] (same cells and settings; device start "
          "not included):")
    for label, rate, detail in figures:
        print(f"  {label:34s} {rate:7.1f} cells/s  {detail}")
    local_rate = figures[0][1]
    print(f"  ssh x1 / local: {figures[1][1] / local_rate:.2f}; ssh x2 / ssh x1: {figures[3][1] / figures[1][1]:.2f}")
    # what one device call costs beyond the timing itself (remote exec, interpreter start-up)
    per_batch = (n / figures[1][1] - n / local_rate) / len(batches)
    print(f"  fixed cost per SSH batch (transfer=pool) beyond local: {per_batch:.2f} s = "
          f"{per_batch / args.models_per_call * 1e3:.0f} ms/cell at {args.models_per_call} cells per batch")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    asyncio.run(_bench(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
