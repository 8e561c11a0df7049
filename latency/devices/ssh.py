"""A device reached over SSH (a Raspberry Pi, or any machine with Python and a TFLite runtime).

Connection: asyncssh, host key verified against the profile's known_hosts (never skipped: an
unknown or changed key is a DeviceError that shows the offered fingerprint and how to trust
it), key-file or ssh-agent authentication, keep-alives so that a device that vanished is noticed.

On start the device side is prepared in the profile's work directory over SFTP: the one-file
runner (``latency/devices/runner.py``, saved there as ``tflite_runner.py``), a small feeder script (``FEEDER_SOURCE`` below) and, for
``transfer = "pool"``, the weight pool (see *Transfer*); then ``tflite_runner.py --info``
reports the runtime for the table's provenance. On a reconnect the files are checked again (a
rebooted device may have lost /tmp).

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
batch only when all its timings came back.

Transfer
--------
A table's models are rendered from a template with weights sliced from one fixed random pool
(`latency.tflite_rewrite`), so they are big (WRN-40-2: ~75 KB mean, ~17 GB for a full 3-pass
table) and zlib saves only ~8 %. With ``transfer = "pool"`` the pool is uploaded to the device
once (8 MiB, cached there by its hash), and every model is sent as its few non-weight bytes plus
(offset, length) references into the pool, zlib-compressed (~140-170 bytes per WRN-40-2 cell):
the device rebuilds the exact same bytes (checked by CRC-32), so what is timed is unchanged.
``transfer = "zlib"`` sends whole models, compressed. `SshDevice.transfer_stats` counts what was
sent; ``python -m tools.bench_ssh`` measures it.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import math
import os
import shlex
import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

import numpy as np

from ..benchmark_output import BenchmarkParseError, parse_benchmark_output
from .base import Device, DeviceError, DeviceInfo, ModelJob, Timing, TimingSettings
from .profiles import SshProfile

__all__ = ["FEEDER_SOURCE", "SshDevice", "TransferStats", "decode_batch", "encode_batch"]

T = TypeVar("T")

RUNNER_PATH = Path(__file__).resolve().with_name("runner.py")  # travels with the package
RUNNER_NAME = "tflite_runner.py"  # its name on the device (the feeder imports it by that name)
FEEDER_NAME = "netadapt_feed.py"
_PID_TAG = b"__netadapt_pid__ "
_BATCH_FORMAT = "netadapt-batch/1"

# --------------------------------------------------------------------------------- transfer

_MIN_REF_BYTES = 64  # shorter pool matches stay literal (a reference costs ~20 bytes of JSON)
_PROBE_STRIDE = 16  # probe every 16th word: every pool slice of >= 17 floats is found


class _PoolIndex:
    """Finds slices of the weight pool inside a model: sorted 64-bit keys of every word pair."""

    def __init__(self, pool: bytes) -> None:
        self.pool = pool
        self.sha256 = hashlib.sha256(pool).hexdigest()
        self.words = np.frombuffer(pool, dtype="<u4")
        keys = self._pairs(self.words, np.arange(len(self.words) - 1))
        self.order = np.argsort(keys, kind="stable")  # ~0.4 s once per process
        self.sorted_keys = keys[self.order]

    @staticmethod
    def _pairs(words: np.ndarray, at: np.ndarray) -> np.ndarray:
        return words[at].astype(np.uint64) | (words[at + 1].astype(np.uint64) << np.uint64(32))

    def segments(self, model: bytes) -> list[tuple[int, int, int]]:
        """Non-overlapping (model offset, length, pool offset) byte ranges equal in both."""
        found: list[tuple[int, int, int]] = []
        pool_words = self.words
        for residue in range(4):  # slices sit at any 4-byte alignment of the model
            n = (len(model) - residue) // 4
            if n < 2:
                continue
            words = np.frombuffer(model, dtype="<u4", count=n, offset=residue)
            probes = np.arange(0, n - 1, _PROBE_STRIDE)
            keys = self._pairs(words, probes)
            by_key = np.argsort(keys)  # sorted needles make the search cache-friendly
            idx = np.empty_like(by_key)
            idx[by_key] = np.searchsorted(self.sorted_keys, keys[by_key])
            idx = np.minimum(idx, len(self.sorted_keys) - 1)
            hits = np.nonzero(self.sorted_keys[idx] == keys)[0]
            if not len(hits):
                continue
            at, pool_at = probes[hits], self.order[idx[hits]].astype(np.int64)
            # one run per slice: a hit continuing the previous one (same offset) adds nothing
            fresh = np.ones(len(hits), dtype=bool)
            fresh[1:] = (np.diff(hits) != 1) | (np.diff(pool_at - at) != 0)
            covered_to = -1
            for j, p in zip(at[fresh].tolist(), pool_at[fresh].tolist()):
                if j < covered_to:
                    continue  # inside the run found from an earlier probe
                # extend the match backwards and forwards word by word (vectorised)
                back = min(j, p)
                if back:
                    same = words[j - back:j][::-1] == pool_words[p - back:p][::-1]
                    back = back if same.all() else int(np.argmin(same))
                ahead = min(n - j, len(pool_words) - p)
                same = words[j:j + ahead] == pool_words[p:p + ahead]
                ahead = ahead if same.all() else int(np.argmin(same))
                start, end = j - back, j + ahead
                covered_to = end
                if (end - start) * 4 >= _MIN_REF_BYTES:
                    found.append((residue + 4 * start, 4 * (end - start), 4 * (p - back)))
        found.sort()
        merged: list[tuple[int, int, int]] = []
        last_end = 0
        for off, length, pool_off in found:
            if off < last_end:  # overlaps the previous match: keep only the new tail
                cut = last_end - off
                off, length, pool_off = off + cut, length - cut, pool_off + cut
            if length >= _MIN_REF_BYTES:
                merged.append((off, length, pool_off))
                last_end = off + length
        return merged


_pool_lock = threading.Lock()
_pool_cache: list[_PoolIndex | None] = []


def _pool_index() -> _PoolIndex | None:
    """The index of `tflite_rewrite`'s weight pool, or None where that module has none."""
    with _pool_lock:
        if not _pool_cache:
            from .. import tflite_rewrite

            make_pool = getattr(tflite_rewrite, "_random_pool", None)
            _pool_cache.append(_PoolIndex(bytes(make_pool())) if make_pool is not None else None)
        return _pool_cache[0]


def encode_batch(jobs: list[ModelJob], pool: _PoolIndex | None = None, level: int = 6) -> bytes:
    """The compressed batch a device's feeder decodes (see `decode_batch`).

    Layout before zlib: a JSON header line, then per model a JSON line
    ``{"cell_id", "size", "crc", "parts": [[literal bytes, pool offset, pool bytes], ...]}``
    followed by the literal bytes of its parts.
    """
    out = [json.dumps({"format": _BATCH_FORMAT, "pool": pool.sha256 if pool else None,
                       "models": len(jobs)}, separators=(",", ":")).encode() + b"\n"]
    for job in jobs:
        model = bytes(job.model)
        parts, literals, pos = [], [], 0
        for off, length, pool_off in (pool.segments(model) if pool else []):
            parts.append([off - pos, pool_off, length])
            literals.append(model[pos:off])
            pos = off + length
        parts.append([len(model) - pos, 0, 0])
        literals.append(model[pos:])
        header = {"cell_id": job.cell_id, "size": len(model), "crc": zlib.crc32(model), "parts": parts}
        out.append(json.dumps(header, separators=(",", ":")).encode() + b"\n")
        out.extend(literals)
    return zlib.compress(b"".join(out), level)


# Runs on the device (Python 3.7+, stdlib only; imports the runner next to it). Kept here, not in
# a file of its own, so the decoder and the encoder above change together.
FEEDER_SOURCE = r'''#!/usr/bin/env python3
"""netadapt-lut feeder (uploaded by latency/devices/ssh.py): decodes a compressed batch.

  feed.py batch [runner args]       batch on stdin -> tflite_runner --batch - [runner args]
  feed.py unpack BATCH_FILE DIR     batch file -> DIR/<cell_id>.tflite (prints the count)
"""
import io
import json
import os
import sys
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def decode_batch(data, pool_dir=HERE):
    data = zlib.decompress(data)
    view = memoryview(data)
    end = data.index(b"\n")
    head = json.loads(data[:end].decode("utf-8"))
    if head.get("format") != "netadapt-batch/1":
        raise ValueError("unknown batch format %r" % (head.get("format"),))
    pos = end + 1
    pool = None
    if head.get("pool"):
        name = os.path.join(pool_dir, "pool-%s.bin" % head["pool"][:16])
        with open(name, "rb") as f:
            pool = memoryview(f.read())
    items = []
    for _ in range(head["models"]):
        end = data.index(b"\n", pos)
        meta = json.loads(data[pos:end].decode("utf-8"))
        pos = end + 1
        chunks = []
        for literal, pool_off, length in meta["parts"]:
            chunks.append(view[pos:pos + literal])
            pos += literal
            if length:
                chunks.append(pool[pool_off:pool_off + length])
        model = b"".join(chunks)
        if len(model) != meta["size"] or (zlib.crc32(model) & 0xFFFFFFFF) != meta["crc"]:
            raise ValueError("model %r does not rebuild (size/CRC mismatch): stale pool file?" % (meta["cell_id"],))
        items.append((meta["cell_id"], model))
    return items


def main(argv):
    try:
        if argv[:1] == ["batch"]:
            items = decode_batch(sys.stdin.buffer.read())
        elif argv[:1] == ["unpack"] and len(argv) == 3:
            with open(argv[1], "rb") as f:
                items = decode_batch(f.read())
            if not os.path.isdir(argv[2]):
                os.makedirs(argv[2])
            for cell_id, model in items:
                with open(os.path.join(argv[2], "%s.tflite" % cell_id), "wb") as f:
                    f.write(model)
            print(len(items))
            return 0
        else:
            sys.stderr.write(__doc__)
            return 2
    except (OSError, ValueError, KeyError, zlib.error) as exc:
        sys.stderr.write("netadapt feeder: cannot decode the batch: %s: %s\n" % (type(exc).__name__, exc))
        return 2
    sys.path.insert(0, HERE)
    import tflite_runner

    sys.stdin = io.TextIOWrapper(io.BytesIO(tflite_runner.encode_batch_stream(items)))
    return tflite_runner.main(["--batch", "-"] + argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
'''


def decode_batch(data: bytes, pool: bytes | None = None) -> list[tuple[int, bytes]]:
    """This side's run of the device's decoder (tests, tools): (cell_id, model) pairs of an
    `encode_batch` blob, with `pool` standing in for the pool file the batch names."""
    namespace: dict[str, Any] = {"__name__": "netadapt_feed", "__file__": FEEDER_NAME}
    exec(compile(FEEDER_SOURCE, FEEDER_NAME, "exec"), namespace)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        head = json.loads(zlib.decompressobj().decompress(data, 4096).split(b"\n", 1)[0])
        if pool is not None and head.get("pool"):
            Path(tmp, f"pool-{head['pool'][:16]}.bin").write_bytes(pool)
        return namespace["decode_batch"](data, pool_dir=tmp)


@dataclass
class TransferStats:
    """Bytes this device sent for models (the setup upload of runner and pool counted apart)."""

    batches: int = 0
    models: int = 0
    model_bytes: int = 0  # the models as rendered
    sent_bytes: int = 0  # the encoded batches that went over SSH
    setup_bytes: int = 0  # runner, feeder and pool uploads

    @property
    def bytes_per_model(self) -> float:
        return self.sent_bytes / self.models if self.models else float("nan")


# --------------------------------------------------------------------------------- the device


class _Transient(Exception):
    """A failed attempt worth retrying after a reconnect (refused, dropped, timed out)."""


@dataclass
class _Result:
    status: int | None
    stdout: bytes
    stderr: bytes


def _tail(data: bytes, limit: int = 1500) -> str:
    text = data.decode("utf-8", "replace").strip()
    return text if len(text) <= limit else "..." + text[-limit:]


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
        self._conn: Any = None  # asyncssh.SSHClientConnection
        self._conn_lock = asyncio.Lock()
        self._info: DeviceInfo | None = None
        self._pool: _PoolIndex | None = None
        self._files_uploaded = False
        self._last_call_end = -math.inf  # monotonic time the last timed call ended

    # -- connection ---------------------------------------------------------------------------
    def _connect_options(self) -> dict[str, Any]:
        p = self.profile
        options: dict[str, Any] = dict(
            host=p.host, port=p.port, username=p.user,
            connect_timeout=p.call_timeout_s,
            keepalive_interval=min(15.0, p.call_timeout_s), keepalive_count_max=3,  # notice a vanished device
            compression_algs=["none"],  # batches are compressed already; spare the device's CPU
        )
        if os.path.isfile(p.known_hosts):
            options["known_hosts"] = p.known_hosts
        else:
            options["known_hosts"] = ([], [], [])  # trust nothing; the error says how to add the key
        if p.key:
            if not os.path.isfile(p.key):
                raise DeviceError(f"{self.name}: key file {p.key} not found (profile {p.name} in {p.source}); "
                                  "create one with `ssh-keygen -t ed25519` and install it with "
                                  f"`ssh-copy-id -i {p.key}.pub -p {p.port} {p.user}@{p.host}`")
            options.update(client_keys=[p.key], agent_path=None)
        elif p.agent and not os.environ.get("SSH_AUTH_SOCK"):
            raise DeviceError(f"{self.name}: agent = true but SSH_AUTH_SOCK is not set: start ssh-agent and "
                              "`ssh-add` your key, or set key = \"<private key file>\" in the profile")
        return options

    async def _host_key_error(self, exc: Exception) -> DeviceError:
        import asyncssh

        p = self.profile
        offered = ""
        key_type = ""
        try:
            key = await asyncio.wait_for(asyncssh.get_server_host_key(p.host, p.port), p.call_timeout_s)
            if key is not None:
                key_type = key.get_algorithm()
                offered = f"The device offers the {key_type} host key {key.get_fingerprint('sha256')}. "
        except Exception:  # noqa: BLE001 - the fingerprint is a courtesy; the refusal stands
            pass
        known = False
        if os.path.isfile(p.known_hosts):
            try:
                known = bool(asyncssh.match_known_hosts(p.known_hosts, p.host, p.host, p.port)[0])
            except Exception:  # noqa: BLE001 - unreadable file: treat as "not known"
                known = False
        bracket = p.host if p.port == 22 else f"[{p.host}]:{p.port}"
        # ssh-keyscan -t takes short type names; restricting it to the offered type means the
        # line it writes is the key whose fingerprint is shown
        short = next((t for t in ("ed25519", "ecdsa", "rsa", "dsa") if t in key_type.replace("dss", "dsa")), "")
        keyscan = f"ssh-keyscan -p {p.port}{' -t ' + short if short else ''} {p.host} >> {p.known_hosts}"
        check = ("compare it with the key on the device itself (`ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub` "
                 "there, e.g. on its console)")
        if known:
            return DeviceError(
                f"{self.name}: the host key of {p.host}:{p.port} DOES NOT MATCH the one recorded in {p.known_hosts} "
                f"({exc}). {offered}If the device was re-installed, {check}, then remove the old entry with "
                f"`ssh-keygen -R '{bracket}' -f {p.known_hosts}` and trust the new key with `{keyscan}`. "
                "Otherwise someone may be intercepting the connection: do not connect."
            )
        return DeviceError(
            f"{self.name}: {p.host}:{p.port} is not a trusted host: its key is not in {p.known_hosts} ({exc}). "
            f"{offered}To trust the device, {check}, then run `{keyscan}` (or connect once with "
            f"`ssh -p {p.port} {p.user}@{p.host}` and accept the key)."
        )

    async def _connection(self) -> Any:
        """The live connection, (re)connecting and preparing the work dir as needed."""
        import asyncssh

        async with self._conn_lock:
            if self._conn is not None and not self._conn.is_closed():
                return self._conn
            self._conn = None
            p = self.profile
            options = self._connect_options()
            try:
                conn = await asyncio.wait_for(asyncssh.connect(**options), p.call_timeout_s + 5)
            except asyncssh.HostKeyNotVerifiable as exc:
                raise await self._host_key_error(exc) from None
            except asyncssh.PermissionDenied as exc:
                how = (f"install the key with `ssh-copy-id -i {p.key}.pub -p {p.port} {p.user}@{p.host}`" if p.key else
                       "set key = \"<private key file>\" (installed with ssh-copy-id) or load it into ssh-agent")
                raise DeviceError(f"{self.name}: {p.user}@{p.host}:{p.port} refused the login ({exc}): {how}; "
                                  "passwords are not supported") from None
            except asyncssh.KeyImportError as exc:
                raise DeviceError(f"{self.name}: cannot read key {p.key} ({exc}); an encrypted key must be loaded "
                                  "into ssh-agent (`ssh-add KEY`) and used with agent = true") from None
            except (OSError, asyncio.TimeoutError, asyncssh.Error) as exc:
                raise _Transient(f"cannot connect to {p.target}: {type(exc).__name__}: {exc}") from exc
            try:
                await self._prepare(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            return conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            try:
                await asyncio.wait_for(conn.wait_closed(), 5)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - it is being thrown away
                pass

    async def _with_retries(self, what: str, op: Callable[[Any], Awaitable[T]]) -> T:
        """op(connection), retried on transport failures with backoff (1, 2, 4 ... s) and a reconnect."""
        attempts = self.profile.retries + 1
        last: Exception | None = None
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(min(2.0 ** (attempt - 1), 30.0))
            try:
                return await op(await self._connection())
            except _Transient as exc:
                last = exc
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
                last = _Transient(f"{type(exc).__name__}: {exc}")
            except Exception as exc:
                import asyncssh

                if not isinstance(exc, asyncssh.Error):
                    raise
                last = _Transient(f"connection to {self.profile.target} failed: {type(exc).__name__}: {exc}")
            await self._drop_connection()
        raise DeviceError(f"{self.name}: {what} failed {attempts} time(s); last: {last}")

    # -- remote commands ------------------------------------------------------------------------
    def _cd(self) -> str:
        return f"cd {shlex.quote(self.profile.work_dir)}"

    async def _kill(self, conn: Any, process: Any, pid: int | None) -> None:
        """Best effort: the remote process group of a call that overran (or was cancelled)."""
        try:
            process.send_signal("KILL")  # honoured by OpenSSH >= 7.9; the kill below covers older ones
        except Exception:  # noqa: BLE001
            pass
        if pid is not None and not conn.is_closed():
            # sshd starts every command as a session leader, so -pid is the whole group
            cmd = f"kill -s KILL -- -{pid} 2>/dev/null || kill -s KILL {pid} 2>/dev/null; true"
            try:
                await asyncio.wait_for(conn.run(cmd), 10)
            except Exception:  # noqa: BLE001 - a dead connection takes the process down anyway
                pass
        process.close()

    async def _read_pid(self, process: Any, deadline_s: float) -> int:
        """Waits for the `echo $$` line every command starts with (skipping login-shell chatter)."""
        while True:
            line = await asyncio.wait_for(process.stdout.readline(), deadline_s)
            if not line:
                raise _Transient("the remote shell closed before starting the command")
            if line.startswith(_PID_TAG):
                return int(line[len(_PID_TAG):])

    async def _exec(self, conn: Any, command: str, timeout_s: float) -> _Result:
        """One remote command with a deadline; on overrun its process group is killed (_Transient)."""
        process = await conn.create_process(f'echo "{_PID_TAG.decode()}$$"; {command}', encoding=None)
        pid = None
        try:
            process.stdin.write_eof()

            async def body() -> _Result:
                nonlocal pid
                pid = await self._read_pid(process, timeout_s)
                out, err = await asyncio.gather(process.stdout.read(), process.stderr.read())
                completed = await process.wait()
                return _Result(completed.exit_status, out, err)

            return await asyncio.wait_for(body(), timeout_s)
        except asyncio.TimeoutError:
            await self._kill(conn, process, pid)
            raise _Transient(f"`{command[:120]}` gave no result within call_timeout_s={timeout_s:g} s; "
                             "the remote call was killed") from None
        except asyncio.CancelledError:
            await self._kill_quietly(conn, process, pid)
            raise
        finally:
            process.close()

    async def _kill_quietly(self, conn: Any, process: Any, pid: int | None) -> None:
        try:
            await asyncio.wait_for(self._kill(conn, process, pid), 5)
        except Exception:  # noqa: BLE001 - already failing or cancelled; do not mask that
            pass

    def _exit_problem(self, result: _Result, what: str) -> DeviceError:
        p = self.profile
        hint = ""
        if result.status == 127:
            hint = (f" (command not found: set python = \"...\" (now {p.python!r}) or benchmark_model = \"...\" "
                    f"in profile {p.name} of {p.source})")
        elif result.status == 3:
            hint = " (no TFLite interpreter on the device: `pip install tflite-runtime` or `ai-edge-litert` there)"
        return DeviceError(f"{self.name}: {what} exited with status {result.status}{hint}: {_tail(result.stderr)}")

    # -- setup ----------------------------------------------------------------------------------
    async def _upload(self, sftp: Any, name: str, data: bytes) -> None:
        # write then rename, so a dropped connection never leaves a half file under the real name
        path = f"{self.profile.work_dir}/{name}"
        tmp = f"{path}.part-{uuid.uuid4().hex[:8]}"
        async with sftp.open(tmp, "wb") as f:
            await f.write(data)
        try:
            await sftp.posix_rename(tmp, path)
        except Exception:  # noqa: BLE001 - servers without the posix-rename extension
            if await sftp.exists(path):
                await sftp.remove(path)
            await sftp.rename(tmp, path)
        self.transfer_stats.setup_bytes += len(data)

    async def _prepare(self, conn: Any) -> None:
        """Work dir, runner, feeder and pool on the device (re-checked after every reconnect)."""
        wd = self.profile.work_dir
        files = {RUNNER_NAME: RUNNER_PATH.read_bytes(), FEEDER_NAME: FEEDER_SOURCE.encode()}
        try:
            async with conn.start_sftp_client() as sftp:
                await sftp.makedirs(wd, exist_ok=True)
                for name, data in files.items():
                    # always fresh on start (the project may have changed); on reconnect only if gone
                    if not self._files_uploaded or not await sftp.exists(f"{wd}/{name}"):
                        await self._upload(sftp, name, data)
                if self._pool is not None:
                    name = f"pool-{self._pool.sha256[:16]}.bin"
                    path = f"{wd}/{name}"
                    if not (await sftp.exists(path) and (await sftp.stat(path)).size == len(self._pool.pool)):
                        await self._upload(sftp, name, self._pool.pool)
        except Exception as exc:
            import asyncssh

            if isinstance(exc, (asyncssh.SFTPConnectionLost, asyncssh.SFTPNoConnection)):
                raise _Transient(f"connection lost while preparing {wd!r}: {exc}") from exc
            if isinstance(exc, asyncssh.SFTPError):
                raise DeviceError(f"{self.name}: cannot prepare work dir {wd!r} on {self.profile.target} "
                                  f"over SFTP: {exc} (set work_dir in profile {self.profile.name})") from exc
            raise
        self._files_uploaded = True

    async def start(self) -> DeviceInfo:
        if self._info is not None:
            return self._info
        p = self.profile
        if not RUNNER_PATH.is_file():
            raise DeviceError(f"{self.name}: the device runner {RUNNER_PATH.name} is missing from this installation")
        if p.transfer == "pool":
            self._pool = await asyncio.to_thread(_pool_index)

        async def info(conn: Any) -> dict:
            result = await self._exec(conn, f"{self._cd()} && exec {p.python} {RUNNER_NAME} --info", p.call_timeout_s)
            if result.status != 0:
                raise self._exit_problem(result, f"`{p.python} {RUNNER_NAME} --info`")
            lines = [ln for ln in result.stdout.splitlines() if ln.startswith(b"{")]
            try:
                return json.loads(lines[-1])
            except (IndexError, ValueError):
                raise DeviceError(f"{self.name}: --info printed no JSON: {_tail(result.stdout + result.stderr)}") from None

        runtime = await self._with_retries("start", info)
        binary_hash = None
        if p.timer == "benchmark_model":
            async def check(conn: Any) -> _Result:
                return await self._exec(
                    conn, f"{self._cd()} && test -x {shlex.quote(p.benchmark_model)} && "
                          f"(sha256sum {shlex.quote(p.benchmark_model)} 2>/dev/null || true)", p.call_timeout_s)

            found = await self._with_retries("start", check)
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
        timings = await self._with_retries(f"timing cells [{cells}]", op)
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
        process = await conn.create_process(f'echo "{_PID_TAG.decode()}$$"; {command}', encoding=None)
        self.transfer_stats.sent_bytes += len(payload)
        pid = None
        per_model_s = p.call_timeout_s + s.cooldown_s
        timings: list[Timing] = []
        try:
            process.stdin.write(payload)
            process.stdin.write_eof()
            pid = await self._read_pid(process, p.call_timeout_s)
            for job in batch:
                while True:
                    line = await asyncio.wait_for(process.stdout.readline(), per_model_s)
                    if not line or line.startswith(b"{"):
                        break  # anything else is chatter (e.g. from a login script)
                if not line:
                    return await self._runner_stopped(process, len(timings), len(batch))
                try:
                    record = json.loads(line)
                except ValueError:
                    raise DeviceError(f"{self.name}: unreadable runner output {_tail(line)!r}") from None
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
            await self._kill(conn, process, pid)
            where = f"after {len(timings)} of {len(batch)} models"
            raise _Transient(f"no result within call_timeout_s={p.call_timeout_s:g} s (+ cool-down) {where}; "
                             "the remote runner was killed") from None
        except (asyncio.CancelledError, DeviceError):
            await self._kill_quietly(conn, process, pid)
            raise
        finally:
            self._last_call_end = time.monotonic()
            process.close()

    async def _runner_stopped(self, process: Any, done: int, total: int) -> list[Timing]:
        try:
            completed = await asyncio.wait_for(process.wait(), 10)
        except asyncio.TimeoutError:
            raise _Transient(f"the runner's output ended after {done} of {total} models") from None
        if completed.exit_status is None and completed.exit_signal is None:
            raise _Transient(f"the connection dropped after {done} of {total} models")
        err = await process.stderr.read()
        status = completed.exit_status if completed.exit_status is not None else f"signal {completed.exit_signal}"
        raise self._exit_problem(_Result(completed.exit_status, b"", err),
                                 f"the runner (stopped after {done} of {total} models, status {status})")

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

    def _benchmark_timing(self, job: ModelJob, result: _Result) -> Timing:
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
        await self._drop_connection()
        self._info = None
