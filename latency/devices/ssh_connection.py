"""Talking to one SSH device: connect, retry, run remote commands with a deadline, upload files.

Connection: asyncssh, host key verified against the profile's known_hosts (never skipped: an
unknown or changed key is a DeviceError that shows the offered fingerprint and how to trust
it), key-file or ssh-agent authentication, keep-alives so that a device that vanished is noticed.
Transport failures (refused, dropped, timed out) are `Transient`: retried with exponential
backoff after a reconnect.

Remote commands: every command first echoes its shell's pid, so that on overrun or
cancellation its whole process group can be killed (sshd starts each command as a session
leader). stdout and stderr are read concurrently: SSH flow control is per channel, so a stream
left unread stalls the other once the window fills (a device writing megabytes of warnings to
stderr would hang every call). Only a bounded tail of stderr is kept (`STDERR_TAIL_BYTES`), and
stdout over `STDOUT_LIMIT_BYTES` fails the call: results are a few lines.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

from .base import DeviceError
from .profiles import SshProfile

T = TypeVar("T")

PID_TAG = b"__netadapt_pid__ "
STDERR_TAIL_BYTES = 64 * 1024  # enough for any traceback; older output is dropped
STDOUT_LIMIT_BYTES = 16 * 1024 * 1024  # a runner batch of 1,000 models prints ~200 KB
_CHUNK = 64 * 1024


class Transient(Exception):
    """A failed attempt worth retrying after a reconnect (refused, dropped, timed out)."""


@dataclass
class CallResult:
    status: int | None  # None: no exit status (killed by a signal, or the connection dropped)
    stdout: bytes
    stderr: bytes  # its last STDERR_TAIL_BYTES
    signal: str | None = None  # the signal that ended it, if one did


def tail(data: bytes, limit: int = 1500) -> str:
    """The end of some output, as text for an error message."""
    text = data.decode("utf-8", "replace").strip()
    return text if len(text) <= limit else "..." + text[-limit:]


class _Tail:
    """Keeps the last `limit` bytes written to it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._data = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        self._data += chunk
        if len(self._data) > 2 * self.limit:  # trim in bulk, not on every chunk
            cut = len(self._data) - self.limit
            del self._data[:cut]
            self.dropped += cut

    def value(self) -> bytes:
        cut = max(0, len(self._data) - self.limit)
        return bytes(self._data[cut:])


class RemoteCall:
    """One remote command: stdout read by the caller (lines or all of it), stderr drained all
    the while into a bounded tail, the pid known for a kill."""

    def __init__(self, conn: Any, process: Any, command: str, who: str) -> None:
        self.conn, self.process, self.command, self.who = conn, process, command, who
        self.pid: int | None = None
        self._stdout = bytearray()  # read but not yet handed out
        self._stdout_total = 0
        self._stdout_eof = False
        self._stderr = _Tail(STDERR_TAIL_BYTES)
        self._drain = asyncio.ensure_future(self._drain_stderr())

    @classmethod
    async def start(cls, conn: Any, command: str, who: str, stdin: bytes = b"") -> "RemoteCall":
        process = await conn.create_process(f'echo "{PID_TAG.decode()}$$"; {command}', encoding=None)
        call = cls(conn, process, command, who)
        if stdin:
            process.stdin.write(stdin)
        process.stdin.write_eof()
        return call

    async def _drain_stderr(self) -> None:
        try:
            while chunk := await self.process.stderr.read(_CHUNK):
                self._stderr.add(chunk)
        except Exception:  # noqa: BLE001 - a dropped channel shows on stdout, where it is handled
            pass

    async def _more(self) -> bool:
        """Reads the next chunk of stdout; False at its end."""
        if self._stdout_eof:
            return False
        chunk = await self.process.stdout.read(_CHUNK)
        if not chunk:
            self._stdout_eof = True
            return False
        self._stdout_total += len(chunk)
        if self._stdout_total > STDOUT_LIMIT_BYTES:
            raise DeviceError(
                f"{self.who}: `{self.command[:120]}` wrote more than {STDOUT_LIMIT_BYTES // 2**20} MiB to stdout, "
                f"where a few lines of results were expected (ending: {tail(bytes(self._stdout[-300:]), 300)!r}); "
                "the call was killed. Run the command by hand over ssh to see what prints so much")
        self._stdout += chunk
        return True

    async def readline(self) -> bytes:
        """The next stdout line (with its newline; the rest at the end; b"" once all is read)."""
        while True:
            end = self._stdout.find(b"\n")
            if end >= 0:
                line = bytes(self._stdout[:end + 1])
                del self._stdout[:end + 1]
                return line
            if not await self._more():
                line = bytes(self._stdout)
                self._stdout.clear()
                return line

    async def read_pid(self) -> int:
        """Waits for the pid line every command starts with (skipping login-shell chatter)."""
        while True:
            line = await self.readline()
            if not line:
                raise Transient("the remote shell closed before starting the command")
            if line.startswith(PID_TAG):
                self.pid = int(line[len(PID_TAG):])
                return self.pid

    async def finish(self) -> CallResult:
        """The rest of stdout, then the exit status and the tail of stderr."""
        while await self._more():
            pass
        await self.process.wait_closed()
        await self._drain
        out = bytes(self._stdout)
        self._stdout.clear()
        signal = self.process.exit_signal  # (name, core dumped, message, language) or None
        return CallResult(self.process.exit_status, out, self._stderr.value(), signal[0] if signal else None)

    def stderr_tail(self) -> bytes:
        return self._stderr.value()

    async def kill(self) -> None:
        """Best effort: the remote process group of a call that overran (or was cancelled)."""
        try:
            self.process.send_signal("KILL")  # honoured by OpenSSH >= 7.9; the kill below covers older ones
        except Exception:  # noqa: BLE001
            pass
        if self.pid is not None and not self.conn.is_closed():
            # sshd starts every command as a session leader, so -pid is the whole group
            cmd = f"kill -s KILL -- -{self.pid} 2>/dev/null || kill -s KILL {self.pid} 2>/dev/null; true"
            try:
                await asyncio.wait_for(self.conn.run(cmd), 10)
            except Exception:  # noqa: BLE001 - a dead connection takes the process down anyway
                pass
        self.close()

    async def kill_quietly(self) -> None:
        try:
            await asyncio.wait_for(self.kill(), 5)
        except Exception:  # noqa: BLE001 - already failing or cancelled; do not mask that
            pass

    def close(self) -> None:
        self._drain.cancel()
        self.process.close()


@contextlib.asynccontextmanager
async def killed_on_failure(call: RemoteCall, overrun: str | Callable[[], str]) -> AsyncIterator[RemoteCall]:
    """A remote call that does not end well leaves nothing running on the device: a deadline
    passed kills its process group and becomes a Transient (retried) saying `overrun`; a
    device error or a cancellation kills it too; the channel is closed in every case."""
    try:
        yield call
    except asyncio.TimeoutError:
        await call.kill()
        what = overrun() if callable(overrun) else overrun
        raise Transient(f"{what}; the remote process was killed") from None
    except (asyncio.CancelledError, DeviceError):
        await call.kill_quietly()
        raise
    finally:
        call.close()


async def run_command(conn: Any, command: str, timeout_s: float, who: str) -> CallResult:
    """One remote command with a deadline; on overrun its process group is killed (Transient)."""
    call = await RemoteCall.start(conn, command, who)
    async with killed_on_failure(call, f"`{command[:120]}` gave no result within call_timeout_s={timeout_s:g} s"):
        async def body() -> CallResult:
            await call.read_pid()
            return await call.finish()

        return await asyncio.wait_for(body(), timeout_s)


async def upload(sftp: Any, path: str, data: bytes) -> None:
    """Writes a file over SFTP: to a temporary name, then renamed, so a dropped connection never
    leaves a half file under the real name."""
    tmp = f"{path}.part-{uuid.uuid4().hex[:8]}"
    async with sftp.open(tmp, "wb") as f:
        await f.write(data)
    try:
        await sftp.posix_rename(tmp, path)
    except Exception:  # noqa: BLE001 - servers without the posix-rename extension
        if await sftp.exists(path):
            await sftp.remove(path)
        await sftp.rename(tmp, path)


class SshConnection:
    """The connection to one device, opened on demand and dropped after a failure; `prepare`
    runs on every fresh connection (a rebooted device may have lost its files)."""

    def __init__(self, profile: SshProfile, who: str, prepare: Callable[[Any], Awaitable[None]]) -> None:
        self.profile, self.who, self.prepare = profile, who, prepare
        self._conn: Any = None  # asyncssh.SSHClientConnection
        self._lock = asyncio.Lock()

    def options(self) -> dict[str, Any]:
        """asyncssh.connect's arguments; a DeviceError for a missing key file or agent."""
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
                raise DeviceError(f"{self.who}: key file {p.key} not found (profile {p.name} in {p.source}); "
                                  "create one with `ssh-keygen -t ed25519` and install it with "
                                  f"`ssh-copy-id -i {p.key}.pub -p {p.port} {p.user}@{p.host}`")
            options.update(client_keys=[p.key], agent_path=None)
        elif p.agent and not os.environ.get("SSH_AUTH_SOCK"):
            raise DeviceError(f"{self.who}: agent = true but SSH_AUTH_SOCK is not set: start ssh-agent and "
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
                f"{self.who}: the host key of {p.host}:{p.port} DOES NOT MATCH the one recorded in {p.known_hosts} "
                f"({exc}). {offered}If the device was re-installed, {check}, then remove the old entry with "
                f"`ssh-keygen -R '{bracket}' -f {p.known_hosts}` and trust the new key with `{keyscan}`. "
                "Otherwise someone may be intercepting the connection: do not connect."
            )
        return DeviceError(
            f"{self.who}: {p.host}:{p.port} is not a trusted host: its key is not in {p.known_hosts} ({exc}). "
            f"{offered}To trust the device, {check}, then run `{keyscan}` (or connect once with "
            f"`ssh -p {p.port} {p.user}@{p.host}` and accept the key)."
        )

    async def get(self) -> Any:
        """The live connection, (re)connecting and preparing the device as needed."""
        import asyncssh

        async with self._lock:
            if self._conn is not None and not self._conn.is_closed():
                return self._conn
            self._conn = None
            p = self.profile
            options = self.options()
            try:
                conn = await asyncio.wait_for(asyncssh.connect(**options), p.call_timeout_s + 5)
            except asyncssh.HostKeyNotVerifiable as exc:
                raise await self._host_key_error(exc) from None
            except asyncssh.PermissionDenied as exc:
                how = (f"install the key with `ssh-copy-id -i {p.key}.pub -p {p.port} {p.user}@{p.host}`" if p.key else
                       "set key = \"<private key file>\" (installed with ssh-copy-id) or load it into ssh-agent")
                raise DeviceError(f"{self.who}: {p.user}@{p.host}:{p.port} refused the login ({exc}): {how}; "
                                  "passwords are not supported") from None
            except asyncssh.KeyImportError as exc:
                raise DeviceError(f"{self.who}: cannot read key {p.key} ({exc}); an encrypted key must be loaded "
                                  "into ssh-agent (`ssh-add KEY`) and used with agent = true") from None
            except (OSError, asyncio.TimeoutError, asyncssh.Error) as exc:
                raise Transient(f"cannot connect to {p.target}: {type(exc).__name__}: {exc}") from exc
            try:
                await self.prepare(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            return conn

    async def drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            try:
                await asyncio.wait_for(conn.wait_closed(), 5)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - it is being thrown away
                pass

    async def with_retries(self, what: str, op: Callable[[Any], Awaitable[T]]) -> T:
        """op(connection), retried on transport failures with backoff (1, 2, 4 ... s) and a reconnect."""
        attempts = self.profile.retries + 1
        last: Exception | None = None
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(min(2.0 ** (attempt - 1), 30.0))
            try:
                return await op(await self.get())
            except Transient as exc:
                last = exc
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
                last = Transient(f"{type(exc).__name__}: {exc}")
            except Exception as exc:
                import asyncssh

                if not isinstance(exc, asyncssh.Error):
                    raise
                last = Transient(f"connection to {self.profile.target} failed: {type(exc).__name__}: {exc}")
            await self.drop()
        raise DeviceError(f"{self.who}: {what} failed {attempts} time(s); last: {last}")
