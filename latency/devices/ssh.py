"""A device reached over SSH (a Raspberry Pi, or any machine with a shell).

The connection (host key checks, retries, remote calls with a deadline) is `ssh_connection`;
the format runner batches travel in is `ssh_transfer`; the benchmark_model timer's upload and
shell loop are `ssh_benchmark`; heat is `thermal`.

Timers
------
``runner``: on start the work directory is prepared over SFTP: the one-file runner
(`latency.devices.runner`, saved there as ``tflite_runner.py``), the feeder
(`latency.devices.remote_feeder`, saved as ``netadapt_feed.py``), for ``transfer = "pool"`` the
weight pool, and in a network timing context the partner models; then ``tflite_runner.py
--info`` reports the runtime for the table's provenance. One remote process per batch: the
encoded batch goes to its stdin, and it prints one JSON line per model as soon as that model is
timed (in a network context after invoking the partners, `runner.time_in_context`).

``benchmark_model``: the device needs a POSIX shell and the binary, no Python: on start the
shell says what the device is (`ssh_facts`: machine, host, the binary's sha256); the runtime
version is the profile's ``runtime_version`` (the binaries seen print none). Models go up as
plain files and one shell loop times them (`ssh_benchmark`). It times back to back only: a
network context is refused when the device is made.

Both pause before a model while the device is hot and record the temperature and throttle
flags with every timing (`latency.devices.thermal`); ``cooldown_s`` is a fixed sleep between
models. On a reconnect the work directory is checked again (a rebooted device may have lost
/tmp).

Failures
--------
Every remote call has a deadline: ``call_timeout_s`` without a line of output (a paused device
prints one every second) kills the remote process group and counts as a failed attempt.
Transport failures (refused, dropped, timed out) are retried ``retries`` times with exponential
backoff, reconnecting each time; then the batch fails with a DeviceError and the builder
re-queues it (and retires the device after repeated failures). A model the runtime rejects
fails at once (retrying would not help). Nothing is half-stored: the builder commits a batch
only when all its timings came back. `SshDevice.transfer_stats` counts what was sent;
``python -m tools.bench_ssh`` measures it.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import math
import shlex
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from . import remote_feeder
from .base import Device, DeviceError, DeviceInfo, ModelJob, Timing, TimingSettings
from .profiles import SshProfile
from .ssh_benchmark import read_timings, timing_script, upload_models
from .ssh_connection import (CallResult, RemoteCall, SshConnection, Transient, killed_on_failure, run_command, tail,
                             upload)
from .ssh_facts import read_facts
from .ssh_transfer import PoolIndex, TransferStats, decode_batch, encode_batch, pool_index
from .thermal import PauseWatch, timed_hot

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
        if s.runs < 1 or s.warmup < 0 or s.threads < 1 or s.cooldown_s < 0 or s.placements < 1:
            raise ValueError(f"{self.name}: invalid timing settings {s}")
        if s.min_time_s:
            raise ValueError(f"{self.name}: a minimum timed duration (min_time_s) is a local-device setting; "
                             "SSH devices time exactly `runs` invocations")
        if (s.partners or s.evict_bytes or s.vector_s or s.placements > 1) and profile.timer == "benchmark_model":
            raise ValueError(f"{self.name}: benchmark_model times models back to back only, one load each; a network "
                             f"timing context or --placements above 1 needs timer = \"runner\" (profile {profile.name} "
                             f"in {profile.source}), or build the table with --context alone --placements 1")
        self.transfer_stats = TransferStats()
        self._link = SshConnection(profile, self.name, self._prepare)
        self._info: DeviceInfo | None = None
        self._pool: PoolIndex | None = None
        self._files_uploaded = False
        self._last_call_end = -math.inf  # monotonic time the last timed call ended
        # content-addressed: a work dir shared with an earlier build never times stale partners
        self._partners = {f"partner-{hashlib.sha256(m).hexdigest()[:16]}.tflite": m for m in s.partners}
        #: progress notes (a pause for heat); set by the pass engine
        self.report: Callable[[str], None] | None = None
        self.pause_watch = PauseWatch(self.name, profile.thermal, self._note)

    def _note(self, text: str) -> None:
        if self.report is not None:
            self.report(text)

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
        """The work dir; for the runner also runner, feeder, pool and partner models (re-checked
        after every reconnect). A benchmark_model device gets its directory from its shell."""
        wd = self.profile.work_dir
        if self.profile.timer == "benchmark_model":
            made = await self._exec(conn, f"mkdir -p {shlex.quote(wd)}", self.profile.call_timeout_s)
            if made.status != 0:
                raise DeviceError(f"{self.name}: cannot create work dir {wd!r} on {self.profile.target}: "
                                  f"{tail(made.stderr)} (set work_dir in profile {self.profile.name})")
            return
        files = {RUNNER_NAME: RUNNER_PATH.read_bytes(), FEEDER_NAME: FEEDER_PATH.read_bytes()}
        try:
            async with conn.start_sftp_client() as sftp:
                await sftp.makedirs(wd, exist_ok=True)
                for name, data in files.items():
                    # always fresh on start (the project may have changed); on reconnect only if gone
                    if not self._files_uploaded or not await sftp.exists(f"{wd}/{name}"):
                        await self._upload(sftp, name, data)
                for name, data in self._partners.items():
                    if not await sftp.exists(f"{wd}/{name}"):
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
        if p.timer == "benchmark_model":
            facts = await read_facts(self._link, p, self.name, p.benchmark_model)
            runtime = {"runtime": "benchmark_model", "runtime_version": p.runtime_version or "unknown",
                       "python": None, "numpy": None, **facts}
        else:
            runtime = await self._runner_info()
        s = self.settings
        settings = dataclasses.asdict(s)
        settings.update(
            timer=p.timer, transfer=p.transfer if p.timer == "runner" else "plain files (cat)", ssh=p.target,
            work_dir=p.work_dir, profile_file=p.source, call_timeout_s=p.call_timeout_s, retries=p.retries,
            python=runtime.get("python"), numpy=runtime.get("numpy"), machine=runtime.get("machine"),
            interpreter=f"{runtime.get('runtime')} {runtime.get('runtime_version')}",
            l2_bytes=runtime.get("l2_bytes") or p.l2_bytes, partners=len(s.partners), **p.thermal.describe(),
        )
        if p.timer == "benchmark_model":
            settings.update(benchmark_model=p.benchmark_model, benchmark_flags=list(p.benchmark_flags),
                            benchmark_model_sha256=runtime.get("sha256"),
                            method="benchmark_model per model; its 'Inference (avg)' (or last avg) in us")
        elif s.partners:
            settings["method"] = ("in a network context: before each timed invocation, the partners (other layers' "
                                  "models) invoked, vector_s of float32 matrix products and evict_bytes written over the "
                                  "caches first when > 0, and the input "
                                  "set again; exactly runs invocations")
        else:
            settings["method"] = "random input set once; warm-up; perf_counter around runs invocations / runs"
        self._info = DeviceInfo(name=self.name, kind="ssh", runtime=runtime["runtime"],
                                runtime_version=runtime["runtime_version"], host=str(runtime.get("host") or p.host),
                                threads=s.threads, settings=settings)
        return self._info

    async def _runner_info(self) -> dict:
        """The runner's --info (after uploading the device-side files)."""
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

        return await self._link.with_retries("start", info)

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
        if self.profile.timer == "benchmark_model":
            op = lambda conn: self._benchmark_batch(conn, batch)  # noqa: E731
        else:
            payload = await asyncio.to_thread(encode_batch, batch, self._pool)
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

    def _runner_command(self) -> str:
        p, s, limits = self.profile, self.settings, self.profile.thermal
        parts = [f"{self._cd()} && exec {p.python} {FEEDER_NAME} batch --num_runs={s.runs}",
                 f"--warmup_runs={s.warmup} --num_threads={s.threads} --cooldown={s.cooldown_s:g}",
                 f"--thermal-sensor={shlex.quote(limits.sensor)}",
                 f"--throttle-command={shlex.quote(limits.throttle_command)}"]
        if limits.paces:
            parts.append(f"--pause-above={limits.pause_above_c:g} --resume-below={limits.resume_c:g}")
        parts += [f"--partner={name}" for name in self._partners]
        if s.evict_bytes:
            parts.append(f"--evict-bytes={s.evict_bytes}")
        if s.vector_s:
            parts.append(f"--vector-us={s.vector_s * 1e6:g}")
        if s.placements > 1:
            parts.append(f"--placements={s.placements}")
        return " ".join(parts)

    async def _runner_batch(self, conn: Any, payload: bytes, batch: list[ModelJob]) -> list[Timing]:
        p, s = self.profile, self.settings
        await self._cool_down()
        call = await RemoteCall.start(conn, self._runner_command(), self.name, stdin=payload)
        self.transfer_stats.sent_bytes += len(payload)
        per_model_s = p.call_timeout_s + s.cooldown_s
        timings: list[Timing] = []

        def overrun() -> str:
            return (f"no result within call_timeout_s={p.call_timeout_s:g} s (+ cool-down) after {len(timings)} "
                    f"of {len(batch)} models")

        try:
            async with killed_on_failure(call, overrun):
                await asyncio.wait_for(call.read_pid(), p.call_timeout_s)
                for job in batch:
                    while True:
                        line = await asyncio.wait_for(call.readline(), per_model_s)
                        if not line:
                            return await self._runner_stopped(call, len(timings), len(batch))
                        if not line.startswith(b"{"):
                            continue  # chatter (e.g. from a login script)
                        try:
                            record = json.loads(line)
                        except ValueError:
                            raise DeviceError(f"{self.name}: unreadable runner output {tail(line)!r}") from None
                        event = record.get("event")
                        if event is None:
                            break
                        if event == "paused":  # the runner waits for the device to cool down
                            self.pause_watch.paused(record.get("temperature_c"))
                        elif event == "resumed":
                            self.pause_watch.resumed(record.get("temperature_c"))
                    timings.append(self._runner_timing(job, record, line))
                return timings
        finally:
            self._last_call_end = time.monotonic()
            self.pause_watch.ended()

    def _runner_timing(self, job: ModelJob, record: dict, line: bytes) -> Timing:
        if record.get("cell_id") != job.cell_id:
            raise DeviceError(f"{self.name}: expected cell {job.cell_id}, the runner reported {record!r}")
        if "error" in record:
            raise DeviceError(f"{self.name}: cell {job.cell_id}: {record['error']}")
        raw = line.decode("utf-8", "replace")
        fastest = record.get("fastest")  # absent from an older runner left on the device
        temperature = record.get("temperature_c")
        return Timing(
            cell_id=job.cell_id,
            seconds=self._check_seconds(job, record.get("seconds"), raw),
            measured_at=float(record.get("measured_at") or time.time()),
            temperature_c=temperature,
            throttled=timed_hot(self.profile.thermal, temperature, record.get("throttled")),
            fastest_s=None if fastest is None else self._check_seconds(job, fastest, raw),
        )

    async def _runner_stopped(self, call: RemoteCall, done: int, total: int) -> list[Timing]:
        try:
            completed = await asyncio.wait_for(call.finish(), 10)
        except asyncio.TimeoutError:
            raise Transient(f"the device's output ended after {done} of {total} models") from None
        if completed.status is None and completed.signal is None:
            raise Transient(f"the connection dropped after {done} of {total} models")
        status = completed.status if completed.status is not None else f"signal {completed.signal}"
        what = "the runner" if self.profile.timer == "runner" else "the timing loop"
        raise self._exit_problem(completed, f"{what} (stopped after {done} of {total} models, status {status})")

    async def _benchmark_batch(self, conn: Any, batch: list[ModelJob]) -> list[Timing]:
        p, s = self.profile, self.settings
        tag = f"batch-{uuid.uuid4().hex[:12]}"
        try:
            self.transfer_stats.sent_bytes += await upload_models(conn, self.name, p.work_dir, tag, batch,
                                                                  p.call_timeout_s)
            await self._cool_down()
            script = timing_script(p.work_dir, tag, [job.cell_id for job in batch], p.benchmark_model,
                                   p.benchmark_flags, s.runs, s.warmup, s.threads, p.thermal, s.cooldown_s)
            call = await RemoteCall.start(conn, script, self.name)
            try:
                async with killed_on_failure(
                        call, f"benchmark_model gave no result within call_timeout_s={p.call_timeout_s:g} s"):
                    await asyncio.wait_for(call.read_pid(), p.call_timeout_s)
                    return await read_timings(call, self.name, batch, p.call_timeout_s + s.cooldown_s, p.thermal,
                                              self.pause_watch, lambda done: self._runner_stopped(call, done, len(batch)))
            finally:
                self._last_call_end = time.monotonic()
                self.pause_watch.ended()
        finally:
            if not conn.is_closed():
                try:
                    await asyncio.wait_for(conn.run(f"{self._cd()} && rm -rf {tag}"), 10)
                except Exception:  # noqa: BLE001 - leftovers in the work dir are harmless
                    pass

    async def close(self) -> None:
        await self._link.drop()
        self._info = None
