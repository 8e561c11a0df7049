"""An emulated Raspberry Pi reached over real SSH: a loopback sshd whose sessions are chrooted
into an armhf Debian root built by ``python -m tools.emulated_pi`` (ARM code run by qemu-user).

`EmulatedPi` is `tests.sshd_fixture.SshServer` (same generated host and user keys, known_hosts,
start/stop) with a ``ChrootDirectory`` config: ``uname -m`` there says ``armv7l`` and its
``python3`` is Debian's armhf Python with ``tflite-runtime``. Fixtures:

``emulated_pi``       the full root (``pi/``): Python 3.11, numpy, tflite-runtime 2.14.0 and the
                      TF-Lite 1.13.1 ``benchmark_model`` as ``/usr/local/bin/benchmark_model``;
``emulated_bare_pi``  the Python-less root (``bare/``): bash, busybox and ``benchmark_model``;
``second_emulated_bare_pi``  another server on that same root (a farm's second device).

sshd's ChrootDirectory needs sshd to run as root, and the session user is looked up on this
machine: sessions log in as root, whose account (home ``/root``, shell ``/bin/bash``) the roots
have too. Where the root is not built the tests skip, saying how to build it; with
``NETADAPT_REQUIRE_EMULATED_PI=1`` (CI) that is a failure instead.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.sshd_fixture import SSHD, SshServer, ensure_privsep_dir, sshd_missing_reason, write_devices_file
from tools import emulated_pi as pi_root

REQUIRE_ENV = "NETADAPT_REQUIRE_EMULATED_PI"
SSH = "/usr/bin/ssh"


def emulated_pi_missing_reason() -> str | None:
    """Why the emulated Pi cannot be used here (None when it can); registers binfmt as root."""
    reason = sshd_missing_reason()
    if reason:
        return reason
    if not os.path.exists(SSH):
        return f"OpenSSH client not installed ({SSH} missing): `apt-get install openssh-client`"
    if os.geteuid() != 0:
        return "the emulated Pi needs root: sshd's ChrootDirectory only works when sshd runs as root"
    problem = pi_root.root_problem()
    if problem:
        return (f"{problem}; build it with `sudo .venv/bin/python -m tools.emulated_pi` "
                "(a few minutes; needs debootstrap and qemu-user-static)")
    try:
        pi_root.ensure_binfmt()  # lost at every reboot of this machine
    except pi_root.EmulatedPiError as exc:
        return str(exc)
    return None


def skip_or_fail(reason: str) -> None:
    """Skip, or fail where CI demands the emulated Pi (NETADAPT_REQUIRE_EMULATED_PI=1)."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1: the emulated Pi is required here)", pytrace=False)
    pytest.skip(reason)


@dataclass
class EmulatedPi(SshServer):
    """A loopback sshd whose sessions run inside `chroot` (an armhf root)."""

    chroot: Path = Path("/")
    variant: str = "pi"
    # this server's own directory in the device's home: the root outlives the tests, their
    # files do not
    scratch: str = ""

    @classmethod
    def create_chrooted(cls, workdir: Path, chroot: Path, variant: str) -> "EmulatedPi":
        base = SshServer.create(workdir)  # keys, authorized_keys, known_hosts
        server = cls(root=base.root, port=base.port, user=base.user, chroot=chroot, variant=variant,
                     scratch=f"netadapt-tests-{uuid.uuid4().hex[:12]}")
        (workdir / "sshd_config").write_text(
            f"Port {server.port}\n"
            f"ListenAddress {server.host}\n"
            f"HostKey {server.host_key}\n"
            f"PidFile {workdir / 'sshd.pid'}\n"
            # read before the chroot, by sshd's privileged side
            f"AuthorizedKeysFile {workdir / 'authorized_keys'}\n"
            "StrictModes no\n"
            "UsePAM no\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\n"
            "MaxSessions 64\n"
            "MaxStartups 64\n"
            "LogLevel ERROR\n"
            # after login the session (shell, commands, SFTP) sees only the root; its home is the
            # account's home inside it (/root)
            f"ChrootDirectory {chroot}\n"
            "Subsystem sftp internal-sftp\n"
        )
        return server

    def ssh(self, command: str, stdin: bytes | None = None, timeout_s: float = 300.0) -> subprocess.CompletedProcess:
        """Runs `command` on the device with the OpenSSH client (host key checked)."""
        return subprocess.run(
            [SSH, "-F", "/dev/null", "-p", str(self.port), "-i", str(self.client_key),
             "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
             "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
             f"{self.user}@{self.host}", command],
            input=stdin if stdin is not None else b"", capture_output=True, timeout=timeout_s)

    @property
    def home(self) -> Path:
        """The session's home (/root on the device) as a path on this machine."""
        return self.chroot / "root"

    def work_path(self, work_dir: str) -> Path:
        """A relative work_dir of this server's profiles as a path on this machine."""
        return self.home / self.scratch / work_dir

    def remove_scratch(self) -> None:
        shutil.rmtree(self.home / self.scratch, ignore_errors=True)

    def profile(self, work_dir: Path | str, **overrides: object) -> dict:
        """A devices.toml profile for this device: its python3 and the TF-Lite 1.13.1 binary in it.

        A relative `work_dir` lies in this server's scratch directory in the device's home.
        Emulation is slow: the call timeout is generous, runs and warm-up tiny."""
        work_dir = str(work_dir) if str(work_dir).startswith("/") else f"{self.scratch}/{work_dir}"
        values: dict[str, object] = dict(
            host=self.host, port=self.port, user=self.user, key=str(self.client_key),
            known_hosts=str(self.known_hosts), work_dir=work_dir,
            python="python3",
            timer="runner" if self.variant == "pi" else "benchmark_model",
            benchmark_model=pi_root.DEVICE_BENCHMARK_MODEL,
            # the thesis's flags: exactly num_runs invocations (1.13.1 knows both; it rejects unknown ones)
            benchmark_flags=["--min_secs=0", "--warmup_min_secs=0"],
            runtime_version=pi_root.BENCHMARK_MODEL_VERSION,
            threads=1, runs=2, warmup=1, cooldown_s=0.0, call_timeout_s=300.0, retries=0,
        )
        values.update(overrides)
        return values

    def write_devices_toml(self, path: Path, name: str = "emulated-pi", work_dir: str = "netadapt-lut",
                           **overrides: object) -> Path:
        """A devices.toml with one profile `name` for this device (see `profile`)."""
        return write_devices_file(path, {name: self.profile(work_dir, **overrides)})


def _running(tmp_path_factory: pytest.TempPathFactory, variant: str, name: str = "") -> Iterator[EmulatedPi]:
    reason = emulated_pi_missing_reason()
    if reason:
        skip_or_fail(reason)
    chroot = pi_root.default_root().absolute() / variant
    server = EmulatedPi.create_chrooted(tmp_path_factory.mktemp(name or f"emulated-{variant}"), chroot, variant)
    ensure_privsep_dir()
    check = subprocess.run([SSHD, "-t", "-f", str(server.root / "sshd_config")], capture_output=True, text=True)
    if check.returncode != 0:
        pytest.fail(f"sshd rejects the chroot config: {check.stderr.strip()}", pytrace=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        server.remove_scratch()


@pytest.fixture(scope="module")
def emulated_pi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedPi]:
    """The emulated Pi with Python, numpy and tflite-runtime (and benchmark_model)."""
    yield from _running(tmp_path_factory, "pi")


@pytest.fixture(scope="module")
def emulated_bare_pi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedPi]:
    """An emulated Pi with no Python at all: a shell, busybox and benchmark_model."""
    yield from _running(tmp_path_factory, "bare")


@pytest.fixture(scope="module")
def second_emulated_bare_pi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedPi]:
    """A second Python-less device: its own sshd (port, keys, scratch directory) on the same root."""
    yield from _running(tmp_path_factory, "bare", "emulated-bare-second")
