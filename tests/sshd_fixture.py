"""A real OpenSSH server on 127.0.0.1 for the SSH device tests (and `tools/bench_ssh.py`).

`SshServer` runs Debian's ``/usr/sbin/sshd -D -e -f <generated config>`` on a free loopback port
with a generated host key and a generated user key in ``authorized_keys`` for the current user.
The "device" side is this machine: the profile's ``python`` is this interpreter, its work
directory a temporary one.

`stop()` kills the listening sshd *and* every connection it forked (each sshd connection child
runs in its own session, so killing only the listener would leave open connections alive); to
the client this looks like a device that dropped off the network or rebooted.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"


def sshd_missing_reason() -> str | None:
    """Why the SSH tests cannot run here, or None."""
    if not os.path.exists(SSHD):
        return (f"OpenSSH server not installed ({SSHD} missing): `apt-get install openssh-server` "
                "(CI's .ci/run installs it)")
    if not os.path.exists(SSH_KEYGEN):
        return "ssh-keygen not installed: `apt-get install openssh-client`"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path, comment: str) -> None:
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, stdout=subprocess.DEVNULL)


def _descendants(root_pid: int) -> list[int]:
    """Every live process below root_pid (via /proc parent links)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the comm field may contain spaces
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root_pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def processes_with(marker: str) -> list[int]:
    """Pids whose command line contains `marker` (to check that remote calls were killed)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def ensure_privsep_dir() -> None:
    """sshd running as root, even `sshd -t`, insists on its privilege-separation chroot (the
    Debian service creates it at boot, a fresh container has none); an empty directory."""
    if os.geteuid() == 0 and not os.path.isdir("/run/sshd"):
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)


@dataclass
class SshServer:
    root: Path
    port: int
    user: str
    proc: subprocess.Popen | None = None

    host = "127.0.0.1"

    @property
    def host_key(self) -> Path:
        return self.root / "host_ed25519"

    @property
    def client_key(self) -> Path:
        return self.root / "client_ed25519"

    @property
    def known_hosts(self) -> Path:
        """A known_hosts file that trusts this server (as `ssh-keyscan -p PORT 127.0.0.1` writes it)."""
        return self.root / "known_hosts"

    @property
    def log(self) -> Path:
        return self.root / "sshd.log"

    def fingerprint(self) -> str:
        out = subprocess.run([SSH_KEYGEN, "-l", "-E", "sha256", "-f", str(self.host_key) + ".pub"],
                             check=True, capture_output=True, text=True).stdout
        return out.split()[1]  # "256 SHA256:... comment (ED25519)"

    @classmethod
    def create(cls, root: Path) -> "SshServer":
        root.mkdir(parents=True, exist_ok=True)
        server = cls(root=root, port=free_port(), user=_current_user())
        _keygen(server.host_key, "test-host")
        _keygen(server.client_key, "test-client")
        shutil.copy(str(server.client_key) + ".pub", root / "authorized_keys")
        host_pub = (Path(str(server.host_key) + ".pub")).read_text().split()
        server.known_hosts.write_text(f"[{server.host}]:{server.port} {host_pub[0]} {host_pub[1]}\n")
        # sessions get a home of their own, like a fresh device account: the shell start-up files
        # of the user running the tests are not the device's, and a session the tests kill while
        # those run can leave a lock behind that stalls every later login for a minute
        (root / "home").mkdir(exist_ok=True)
        (root / "sshd_config").write_text(
            f"Port {server.port}\n"
            f"ListenAddress {server.host}\n"
            f"HostKey {server.host_key}\n"
            f"PidFile {root / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {root / 'authorized_keys'}\n"
            "StrictModes no\n"  # the temp dir's permissions are not sshd's business here
            "UsePAM no\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\n"
            "MaxSessions 64\n"
            "MaxStartups 64\n"
            "LogLevel ERROR\n"
            "Subsystem sftp internal-sftp\n"
            f"SetEnv HOME={root / 'home'}\n"
        )
        return server

    def start(self) -> "SshServer":
        if self.proc is not None and self.proc.poll() is None:
            return self
        ensure_privsep_dir()
        config = self.root / "sshd_config"
        check = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"sshd rejects the generated config {config}: {check.stderr.strip()}")
        log = open(self.log, "ab")
        try:
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log)
        finally:
            log.close()
        self._wait_listening()
        return self

    def _wait_listening(self, limit_s: float = 20.0) -> None:
        deadline = time.monotonic() + limit_s
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited with status {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sshd did not listen on port {self.port}: {self.log.read_text()[-2000:]}")
                time.sleep(0.05)

    def stop(self) -> None:
        """Kill sshd and every connection and command it started (a dropped/rebooted device)."""
        if self.proc is None:
            return
        victims = _descendants(self.proc.pid)
        for pid in [self.proc.pid, *victims]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self.proc = None

    def restart(self) -> "SshServer":
        self.stop()
        return self.start()

    def profile(self, work_dir: Path | str, **overrides: object) -> dict:
        """A devices.toml profile table (as a dict) for this server; the device runs this Python."""
        values: dict[str, object] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "key": str(self.client_key),
            "known_hosts": str(self.known_hosts),
            "work_dir": str(work_dir),
            "python": sys.executable,
            "threads": 1,
            "runs": 3,
            "warmup": 1,
            "cooldown_s": 0.0,
            "call_timeout_s": 60.0,
            "retries": 1,
        }
        values.update(overrides)
        return values


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def write_devices_file(path: Path, devices: dict[str, dict], groups: dict[str, list[str]] | None = None) -> Path:
    """Writes a devices.toml with [devices.NAME] tables and a [groups] table."""
    lines = []
    for name, values in devices.items():
        lines.append(f'[devices."{name}"]')
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        lines.append("")
    if groups:
        lines.append("[groups]")
        lines += [f'"{k}" = {_toml_value(v)}' for k, v in groups.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _running_server(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[SshServer]:
    reason = sshd_missing_reason()
    if reason:
        pytest.skip(reason)
    server = SshServer.create(tmp_path_factory.mktemp(name)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def sshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """One running loopback sshd for a test module (restarted if a test stopped it)."""
    yield from _running_server(tmp_path_factory, "sshd-a")


@pytest.fixture(scope="module")
def second_sshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """Another, independent server (a second device of a farm)."""
    yield from _running_server(tmp_path_factory, "sshd-b")


@pytest.fixture
def running_sshd(sshd_server: SshServer) -> SshServer:
    """The module's server, guaranteed up at the start of the test."""
    return sshd_server.start()
