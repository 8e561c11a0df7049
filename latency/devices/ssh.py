"""A device reached over SSH (a Raspberry Pi, or any machine with Python and a TFLite runtime).

The connection (host key checks, retries, remote calls with a deadline) is `ssh_connection`;
the format batches travel in is `ssh_transfer`.

On start the device side is prepared in the profile's work directory over SFTP: the one-file
runner (`latency.devices.runner`, saved there as ``tflite_runner.py``), the feeder
(`latency.devices.remote_feeder`, saved as ``netadapt_feed.py``) and, for ``transfer = "pool"``,
the weight pool; then ``tflite_runner.py --info`` reports the runtime for the table's
provenance. On a reconnect the files are checked again (a rebooted device may have lost /tmp).

Timers
------
``runner``: one remote process per batch; the encoded batch goes to its stdin, and it prints one
JSON line per model as soon as that model is timed. ``cooldown_s`` is passed to it (pause
between models) and also kept between batches.

``benchmark_model``: the encoded batch is uploaded into the work directory over SFTP, unpacked
to ``<cell_id>.tflite`` files there, and the binary runs once per model with
``--graph=... --num_runs=N --warmup_runs=W --num_threads=T`` plus the profile's
``benchmark_flags``; its output is parsed by `parse_benchmark_output` (no timing found -> a
DeviceError quoting the raw output, never a made-up value). ``cooldown_s`` is the pause
between two calls.

Failures
--------
Every remote call has a deadline: ``call_timeout_s`` without a result (for the runner: between
two result lines, plus the cool-down) kills the remote process group and counts as a failed
attempt. Transport failures (refused, dropped, timed out) are retried ``retries`` times with
exponential backoff, reconnecting each time; then the batch fails with a DeviceError and the
builder re-queues it (and retires the device after repeated failures). A model the runtime
rejects fails at once (retrying would not help). Nothing is half-stored: the builder commits a
batch only when all its timings came back. `SshDevice.transfer_stats` counts what was sent;
``python -m tools.bench_ssh`` measures it.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import shlex
import time
import uuid
from pathlib import Path
from typing import Any

from ..benchmark_output import BenchmarkParseError, parse_benchmark_output
from . import remote_feeder
from .base import Device, DeviceError, DeviceInfo, ModelJob, Timing, TimingSettings
from .profiles import SshProfile
from .ssh_connection import CallResult, RemoteCall, SshConnection, Transient, run_command, tail, upload
from .ssh_transfer import PoolIndex, TransferStats, decode_batch, encode_batch, pool_index

__all__ = ["SshDevice", "TransferStats", "decode_batch", "encode_batch"]

# the device-side files travel with the package and run there on their own
RUNNER_PATH = Path(__file__).resolve().with_name("runner.py")
FEEDER_PATH = Path(__file__).resolve().with_name("remote_feeder.py")
RUNNER_NAME = f"{remote_feeder.RUNNER_MODULE}.py"  # the feeder imports the runner by this name
FEEDER_NAME = "netadapt_feed.py"


class SshDevice(Device):
    """Times batches on an SSH device described by an `SshProfile` (see the module docstring)."""

    def __init__(self, profile: SshProfile, settings: TimingSettings | None = None, name: str | None = None) -> None:
        self.profile = profile
        self.name = name or profile.name
        self.concurrency = 1  # one timing at a time: concurrent timings disturb each other
        self.settings = settings if settings is not None else TimingSettings(
            runs=profile.runs or 50, warmup=profile.warmup if profile.warmup is not None else 2,
            threads=profile.threads or 1, cooldown_s=profile.cooldown_s or 0.0)
        s = self.settings
        if s.runs < 1 or s.warmup < 0 or s.threads < 1 or s.cooldown_s < 0:
            raise ValueError(f"{self.name}: invalid timing settings {s}")
        if s.min_time_s:
            raise ValueError(f"{self.name}: a minimum timed duration (min_time_s) is a local-device setting; "
                             "SSH devices time exactly `runs` invocations")
        if s.partners or s.evict_bytes:
            raise ValueError(f"{self.name}: timing models in a network context is a local-device setting; "
                             "SSH devices time them back to back (build-tables --context alone)")
        self.transfer_stats = TransferStats()
        self._link = SshConnection(profile, self.name, self._prepare)
        self._info: DeviceInfo | None = None
        self._pool: PoolIndex | None = None
        self._files_uploaded = False
        self._last_call_end = -math.inf  # monotonic time the last timed call ended

    # -- remote commands ------------------------------------------------------------------------
    def _cd(self) -> str:
        return f"cd {shlex.quote(self.profile.work_dir)}"

    async def _exec(self, conn: Any, command: str, timeout_s: float) -> CallResult:
        return await run_command(conn, command, timeout_s, self.name)

    def _exit_problem(self, result: CallResult, what: str) -> DeviceError:
        p = self.profile
        hint = ""
        if result.status == 127:
            hint = (f" (command not found: set python = \"...\" (now {p.python!r}) or benchmark_model = \"...\" "
                    f"in profile {p.name} of {p.source})")
        elif result.status == 3:
            hint = " (no TFLite interpreter on the device: `pip install tflite-runtime` or `ai-edge-litert` there)"
        return DeviceError(f"{self.name}: {what} exited with status {result.status}{hint}: {tail(result.stderr)}")

    # -- setup ----------------------------------------------------------------------------------
    async def _upload(self, sftp: Any, name: str, data: bytes) -> None:
        await upload(sftp, f"{self.profile.work_dir}/{name}", data)
        self.transfer_stats.setup_bytes += len(data)

    async def _prepare(self, conn: Any) -> None:
        """Work dir, runner, feeder and pool on the device (re-checked after every reconnect)."""
        wd = self.profile.work_dir
        files = {RUNNER_NAME: RUNNER_PATH.read_bytes(), FEEDER_NAME: FEEDER_PATH.read_bytes()}
        try:
            async with conn.start_sftp_client() as sftp:
                await sftp.makedirs(wd, exist_ok=True)
                for name, data in files.items():
                    # always fresh on start (the project may have changed); on reconnect only if gone
                    if not self._files_uploaded or not await sftp.exists(f"{wd}/{name}"):
                        await self._upload(sftp, name, data)
                if self._pool is not None:
                    name = remote_feeder.pool_file_name(self._pool.sha256)
                    path = f"{wd}/{name}"
                    if not (await sftp.exists(path) and (await sftp.stat(path)).size == len(self._pool.pool)):
                        await self._upload(sftp, name, self._pool.pool)
        except Exception as exc:
            import asyncssh

            if isinstance(exc, (asyncssh.SFTPConnectionLost, asyncssh.SFTPNoConnection)):
                raise Transient(f"connection lost while preparing {wd!r}: {exc}") from exc
            if isinstance(exc, asyncssh.SFTPError):
                raise DeviceError(f"{self.name}: cannot prepare work dir {wd!r} on {self.profile.target} "
                                  f"over SFTP: {exc} (set work_dir in profile {self.profile.name})") from exc
            raise
        self._files_uploaded = True

    async def start(self) -> DeviceInfo:
        if self._info is not None:
            return self._info
        p = self.profile
        for path in (RUNNER_PATH, FEEDER_PATH):
            if not path.is_file():
                raise DeviceError(f"{self.name}: the device-side file {path.name} is missing from this installation "
                                  "(reinstall netadapt-lut)")
        if p.transfer == "pool":
            self._pool = await asyncio.to_thread(pool_index)

        async def info(conn: Any) -> dict:
            result = await self._exec(conn, f"{self._cd()} && exec {p.python} {RUNNER_NAME} --info", p.call_timeout_s)
            if result.status != 0:
                raise self._exit_problem(result, f"`{p.python} {RUNNER_NAME} --info`")
            lines = [ln for ln in result.stdout.splitlines() if ln.startswith(b"{")]
            try:
                return json.loads(lines[-1])
            except (IndexError, ValueError):
                raise DeviceError(f"{self.name}: --info printed no JSON: {tail(result.stdout + result.stderr)}") from None

        runtime = await self._link.with_retries("start", info)
        binary_hash = None
        if p.timer == "benchmark_model":
            async def check(conn: Any) -> CallResult:
                return await self._exec(
                    conn, f"{self._cd()} && test -x {shlex.quote(p.benchmark_model)} && "
                          f"(sha256sum {shlex.quote(p.benchmark_model)} 2>/dev/null || true)", p.call_timeout_s)

            found = await self._link.with_retries("start", check)
            if found.status != 0:
                raise DeviceError(f"{self.name}: benchmark_model {p.benchmark_model!r} is not an executable file on "
                                  f"{p.target} (relative paths start in work_dir {p.work_dir!r}); fix "
                                  f"benchmark_model in profile {p.name} of {p.source}")
            binary_hash = (found.stdout.split() or [b""])[0].decode() or None
        settings = dataclasses.asdict(self.settings)
        settings.update(
            timer=p.timer, transfer=p.transfer, ssh=p.target, work_dir=p.work_dir, profile_file=p.source,
            call_timeout_s=p.call_timeout_s, retries=p.retries,
            python=runtime.get("python"), numpy=runtime.get("numpy"), machine=runtime.get("machine"),
            interpreter=f"{runtime.get('runtime')} {runtime.get('runtime_version')}",
        )
        if p.timer == "benchmark_model":
            settings.update(benchmark_model=p.benchmark_model, benchmark_flags=list(p.benchmark_flags),
                            benchmark_model_sha256=binary_hash,
                            method="benchmark_model per model; its 'Inference (avg)' (or last avg) in us")
            runtime_name, version = "benchmark_model", p.runtime_version or "unknown"
        else:
            settings["method"] = "random input set once; warm-up; perf_counter around runs invocations / runs"
            runtime_name, version = runtime["runtime"], runtime["runtime_version"]
        self._info = DeviceInfo(name=self.name, kind="ssh", runtime=runtime_name, runtime_version=version,
                                host=str(runtime.get("host") or p.host), threads=self.settings.threads,
                                settings=settings)
        return self._info

    # -- measuring ------------------------------------------------------------------------------
    async def _cool_down(self) -> None:
        """The configured pause since the previous call ended (also across batches)."""
        wait = self.settings.cooldown_s - (time.monotonic() - self._last_call_end)
        if wait > 0:
            await asyncio.sleep(wait)

    async def measure(self, batch: list[ModelJob]) -> list[Timing]:
        if self._info is None:
            raise DeviceError(f"{self.name}: measure() before start()")
        if not batch:
            return []
        payload = await asyncio.to_thread(encode_batch, batch, self._pool)
        if self.profile.timer == "benchmark_model":
            op = lambda conn: self._benchmark_batch(conn, payload, batch)  # noqa: E731
        else:
            op = lambda conn: self._runner_batch(conn, payload, batch)  # noqa: E731
        cells = ", ".join(str(job.cell_id) for job in batch[:8]) + (" ..." if len(batch) > 8 else "")
        timings = await self._link.with_retries(f"timing cells [{cells}]", op)
        self.transfer_stats.batches += 1
        self.transfer_stats.models += len(batch)
        self.transfer_stats.model_bytes += sum(len(job.model) for job in batch)
        return timings

    def _check_seconds(self, job: ModelJob, value: Any, raw: str) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            seconds = float("nan")
        if not (seconds > 0 and math.isfinite(seconds)):
            raise DeviceError(f"{self.name}: cell {job.cell_id}: implausible timing {value!r}: {raw[:500]}")
        return seconds

    async def _runner_batch(self, conn: Any, payload: bytes, batch: list[ModelJob]) -> list[Timing]:
        p, s = self.profile, self.settings
        command = (f"{self._cd()} && exec {p.python} {FEEDER_NAME} batch --num_runs={s.runs} "
                   f"--warmup_runs={s.warmup} --num_threads={s.threads} --cooldown={s.cooldown_s:g}")
        await self._cool_down()
        call = await RemoteCall.start(conn, command, self.name, stdin=payload)
        self.transfer_stats.sent_bytes += len(payload)
        per_model_s = p.call_timeout_s + s.cooldown_s
        timings: list[Timing] = []
        try:
            await asyncio.wait_for(call.read_pid(), p.call_timeout_s)
            for job in batch:
                while True:
                    line = await asyncio.wait_for(call.readline(), per_model_s)
                    if not line or line.startswith(b"{"):
                        break  # anything else is chatter (e.g. from a login script)
                if not line:
                    return await self._runner_stopped(call, len(timings), len(batch))
                try:
                    record = json.loads(line)
                except ValueError:
                    raise DeviceError(f"{self.name}: unreadable runner output {tail(line)!r}") from None
                if record.get("cell_id") != job.cell_id:
                    raise DeviceError(f"{self.name}: expected cell {job.cell_id}, the runner reported {record!r}")
                if "error" in record:
                    raise DeviceError(f"{self.name}: cell {job.cell_id}: {record['error']}")
                raw = line.decode("utf-8", "replace")
                fastest = record.get("fastest")  # absent from an older runner left on the device
                timings.append(Timing(
                    cell_id=job.cell_id,
                    seconds=self._check_seconds(job, record.get("seconds"), raw),
                    measured_at=float(record.get("measured_at") or time.time()),
                    temperature_c=record.get("temperature_c"),
                    throttled=record.get("throttled"),
                    fastest_s=None if fastest is None else self._check_seconds(job, fastest, raw),
                ))
            return timings
        except asyncio.TimeoutError:
            await call.kill()
            where = f"after {len(timings)} of {len(batch)} models"
            raise Transient(f"no result within call_timeout_s={p.call_timeout_s:g} s (+ cool-down) {where}; "
                             "the remote runner was killed") from None
        except (asyncio.CancelledError, DeviceError):
            await call.kill_quietly()
            raise
        finally:
            self._last_call_end = time.monotonic()
            call.close()

    async def _runner_stopped(self, call: RemoteCall, done: int, total: int) -> list[Timing]:
        try:
            completed = await asyncio.wait_for(call.finish(), 10)
        except asyncio.TimeoutError:
            raise Transient(f"the runner's output ended after {done} of {total} models") from None
        if completed.status is None and completed.signal is None:
            raise Transient(f"the connection dropped after {done} of {total} models")
        status = completed.status if completed.status is not None else f"signal {completed.signal}"
        raise self._exit_problem(completed, f"the runner (stopped after {done} of {total} models, status {status})")

    async def _benchmark_batch(self, conn: Any, payload: bytes, batch: list[ModelJob]) -> list[Timing]:
        p, s = self.profile, self.settings
        tag = f"batch-{uuid.uuid4().hex[:12]}"
        async with conn.start_sftp_client() as sftp:  # models travel encoded; unpacked next to the binary
            async with sftp.open(f"{p.work_dir}/{tag}.bin", "wb") as f:
                await f.write(payload)
        self.transfer_stats.sent_bytes += len(payload)
        try:
            unpacked = await self._exec(conn, f"{self._cd()} && exec {p.python} {FEEDER_NAME} unpack {tag}.bin {tag}",
                                        p.call_timeout_s)
            if unpacked.status != 0:
                raise self._exit_problem(unpacked, "unpacking the batch")
            flags = " ".join(shlex.quote(f) for f in p.benchmark_flags)
            timings = []
            for job in batch:
                await self._cool_down()
                # sensors read in the same call, after the timing (vcgencmd exists on a Pi only)
                command = (f"{self._cd()} && {shlex.quote(p.benchmark_model)} --graph={tag}/{job.cell_id}.tflite "
                           f"--num_runs={s.runs} --warmup_runs={s.warmup} --num_threads={s.threads} {flags}; "
                           "st=$?; echo; echo \"__temp $(cat /sys/class/thermal/thermal_zone0/temp 2>/dev/null)\"; "
                           "echo \"__throttled $(vcgencmd get_throttled 2>/dev/null)\"; exit $st")
                try:
                    result = await self._exec(conn, command, p.call_timeout_s)
                finally:
                    self._last_call_end = time.monotonic()
                timings.append(self._benchmark_timing(job, result))
            return timings
        finally:
            if not conn.is_closed():
                try:
                    await asyncio.wait_for(conn.run(f"{self._cd()} && rm -rf {tag} {tag}.bin"), 10)
                except Exception:  # noqa: BLE001 - leftovers in the work dir are harmless
                    pass

    def _benchmark_timing(self, job: ModelJob, result: CallResult) -> Timing:
        stdout = result.stdout.decode("utf-8", "replace")
        sensors = {}
        kept = []
        for line in stdout.splitlines():
            if line.startswith("__temp ") or line.startswith("__throttled "):
                key, _, value = line.partition(" ")
                sensors[key] = value.strip()
            else:
                kept.append(line)
        # benchmark_model logs to stdout or stderr depending on its version: parse both
        raw = "\n".join(kept) + "\n" + result.stderr.decode("utf-8", "replace")
        if result.status != 0:
            raise DeviceError(f"{self.name}: cell {job.cell_id}: benchmark_model exited with status {result.status}; "
                              f"raw output:\n{raw.strip()[-2000:]}")
        try:
            parsed = parse_benchmark_output(raw)
        except BenchmarkParseError as exc:
            raise DeviceError(f"{self.name}: cell {job.cell_id}: {exc}") from None
        temperature = None
        try:
            temperature = int(sensors.get("__temp", "")) / 1000.0
        except ValueError:
            pass
        throttled = None
        value = sensors.get("__throttled", "")
        if "=" in value:
            try:
                throttled = bool(int(value.split("=", 1)[1], 16) & 0xF)  # bits 0-3: the current state
            except ValueError:
                pass
        return Timing(cell_id=job.cell_id, seconds=self._check_seconds(job, parsed.seconds, raw),
                      measured_at=time.time(), temperature_c=temperature, throttled=throttled)

    async def close(self) -> None:
        await self._link.drop()
        self._info = None
