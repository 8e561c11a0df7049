"""check-device: its parsing (pure), its probe run by a real shell here, and the command against the
emulated Raspberry Pi over real SSH (armv7l Debian Bookworm with tflite-runtime, and the Python-less root)."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

from latency.devices.check import install_advice, missing_for_timer, probe_script
from latency.devices.check_facts import (DeviceFacts, describe_throttled, parse_benchmark_version, parse_df,
                                         parse_os_release, parse_probe, parse_throttled, parse_version, pip_failure)
from latency.devices.profiles import SshProfile
from tests.emulated_pi_fixture import EmulatedPi, emulated_bare_pi, emulated_pi  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parents[1]
BM_OUTPUT = ROOT / "tests" / "data"

BOOKWORM = """PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
"""
# Raspberry Pi OS (32-bit) Bullseye, as its /etc/os-release reads
RASPBIAN_BULLSEYE = """PRETTY_NAME="Raspbian GNU/Linux 11 (bullseye)"
NAME="Raspbian GNU/Linux"
VERSION_ID="11"
VERSION="11 (bullseye)"
VERSION_CODENAME=bullseye
ID=raspbian
ID_LIKE=debian
"""
# Buster's file has no VERSION_CODENAME line in some images: the codename is in VERSION
OLD_BUSTER = 'NAME="Raspbian GNU/Linux"\nVERSION_ID="10"\nVERSION="10 (buster)"\nID=raspbian\nID_LIKE=debian\n'


def profile(**kw) -> SshProfile:
    values = dict(name="pi", host="10.0.0.2", user="pi", work_dir="netadapt-lut", timer="runner")
    values.update(kw)
    return SshProfile(**values)


def cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "latency.cli_check", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=900)


# -- parsing ------------------------------------------------------------------------------------
def test_os_release():
    os_ = parse_os_release(BOOKWORM)
    assert (os_.name, os_.version, os_.version_id, os_.codename) == ("Debian GNU/Linux", "12 (bookworm)", "12", "bookworm")
    assert os_.describe() == "Debian GNU/Linux 12 (bookworm)" and not os_.too_old
    bullseye = parse_os_release(RASPBIAN_BULLSEYE)
    assert bullseye.debian_like and bullseye.too_old and bullseye.codename == "bullseye"
    buster = parse_os_release(OLD_BUSTER)
    assert buster.codename == "buster" and buster.too_old
    assert parse_os_release("").describe().startswith("unknown") and not parse_os_release("").too_old
    assert parse_os_release("# comment\nID='fedora'\nVERSION_ID=40\n").id == "fedora"


def test_versions_df_throttle():
    assert parse_version("3.11.2") == (3, 11, 2) and parse_version("Python 3.9.2") == (3, 9, 2)
    assert parse_version("") is None and parse_version("unknown") is None
    gnu = "Filesystem     1024-blocks    Used Available Capacity Mounted on\n/dev/root  29834876 4012345  24567890      15% /\n"
    assert parse_df(gnu) == (24567890 * 1024, "/")
    wrapped = "Filesystem 512-blocks Used Available Capacity Mounted on\n/dev/mapper/a-very-long-name\n 100 50 40 56% /home\n"
    assert parse_df(wrapped) == (40 * 512, "/home")
    assert parse_df("df: /nope: No such file or directory\n") is None
    assert parse_throttled("throttled=0x50005") == 0x50005 and parse_throttled("VCHI init failed") is None
    text = describe_throttled(0x50005)
    assert "under-voltage now" in text and "throttled now" in text and "throttling has occurred" in text
    assert describe_throttled(0).startswith("not throttled")


def test_benchmark_model_version():
    for name in ("tflite-1.13.1-armhf.txt", "tflite-nightly-2019-armhf.txt"):  # real outputs: they print none
        assert parse_benchmark_version((BM_OUTPUT / name).read_text()) is None
    assert parse_benchmark_version("INFO: STARTING!\nINFO: TF Lite version: 2.16.1\n") == "2.16.1"


def test_pip_failure_without_an_index(tmp_path):
    """pip's real output when no index answers is named as that (pip names the connection error in
    the warning of its retry; the device's pip retries by default)."""
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--retries", "1", "--timeout", "2",
                           "--index-url", "http://127.0.0.1:9/simple", "-d", str(tmp_path), "tflite-runtime==2.14.0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "could not reach a package index" in pip_failure(proc.stdout + proc.stderr)


# -- what is missing and how to install it (pure) -------------------------------------------------
def bookworm_facts(**kw) -> DeviceFacts:
    facts = DeviceFacts(arch="armv7l", os=parse_os_release(BOOKWORM))
    for k, v in kw.items():
        setattr(facts, k, v)
    return facts


def test_advice_bookworm_armv7l_without_python():
    facts = bookworm_facts(python_problem="not found")
    assert missing_for_timer(facts, profile()) == ["Python (python3: not found)",
                                                   "a TFLite interpreter (tflite-runtime or ai-edge-litert)"]
    advice = install_advice(facts, profile())
    assert advice.commands == (
        "sudo apt-get update && sudo apt-get install -y python3 python3-venv",
        'python3 -m venv ~/netadapt-lut/venv && ~/netadapt-lut/venv/bin/pip install "numpy<2" tflite-runtime==2.14.0')
    assert advice.profile_lines == ('python = "~/netadapt-lut/venv/bin/python"',)
    # the benchmark_model timer needs none of it
    bm = profile(timer="benchmark_model", benchmark_model="/usr/local/bin/benchmark_model")
    ready = bookworm_facts(python_problem="not found", bm_exists=True, bm_executable=True, bm_status=0,
                           bm_output="STARTING!\nusage: benchmark_model")
    assert install_advice(ready, bm).ready


def test_advice_python_without_interpreter_and_aarch64():
    facts = bookworm_facts(python="3.11.2", numpy="1.24.2", system_python3="/usr/bin/python3", venv_available=True)
    advice = install_advice(facts, profile(work_dir="/opt/lut"))
    assert advice.missing == ("a TFLite interpreter (tflite-runtime or ai-edge-litert)",)
    assert advice.commands == ('python3 -m venv /opt/lut/venv && /opt/lut/venv/bin/pip install "numpy<2" '
                               "tflite-runtime==2.14.0",)  # python3 and venv there: no apt line
    facts.arch = "aarch64"
    assert install_advice(facts, profile()).commands[-1].endswith("/venv/bin/pip install numpy ai-edge-litert")
    facts.arch, facts.tflite_runtime = "armv7l", "2.14.0"
    assert install_advice(facts, profile()).ready


def test_advice_bullseye_is_too_old():
    facts = DeviceFacts(arch="armv7l", os=parse_os_release(RASPBIAN_BULLSEYE), python="3.9.2", numpy="1.19.5")
    advice = install_advice(facts, profile())
    assert not advice.ready and not advice.commands and not advice.packages
    assert "too old" in advice.notes[0] and "Bookworm" in advice.notes[1]


def test_advice_benchmark_model_missing():
    bm = profile(timer="benchmark_model", benchmark_model="/home/pi/benchmark_model")
    advice = install_advice(bookworm_facts(), bm)
    assert advice.missing == ("benchmark_model (/home/pi/benchmark_model does not exist)",)
    assert advice.commands[0].startswith("wget -O /home/pi/benchmark_model https://") and "linux_arm_" in advice.commands[0]
    broken = bookworm_facts(bm_exists=True, bm_executable=True, bm_status=127,
                            bm_output="benchmark_model: error while loading shared libraries: libstdc++.so.6")
    assert "does not run here" in missing_for_timer(broken, bm)[0]


# -- the probe, run by a real shell on this machine ------------------------------------------------
def run_probe_here(p: SshProfile) -> DeviceFacts:
    out = subprocess.run(["/bin/sh", "-c", probe_script(p)], capture_output=True, text=True, timeout=300,
                         cwd=Path.home())
    assert out.returncode == 0, out.stderr
    return parse_probe(out.stdout)


def test_probe_script_here():
    import numpy

    facts = run_probe_here(profile(python=sys.executable))
    assert facts.arch == platform.machine()
    assert facts.python == "%d.%d.%d" % sys.version_info[:3] and facts.numpy == numpy.__version__
    assert facts.interpreter is not None and facts.interpreter[0] == "ai-edge-litert"
    assert facts.free_bytes and facts.free_bytes > 0
    absent = run_probe_here(profile(python="/nonexistent/python3"))
    assert absent.python is None and absent.python_problem == "not found" and absent.interpreter is None
    assert absent.arch == platform.machine()  # everything else still answered


# -- against the emulated Pi over real SSH --------------------------------------------------------
def test_emulated_pi_is_ready_for_the_runner(emulated_pi: EmulatedPi, tmp_path):
    devices = emulated_pi.write_devices_toml(tmp_path / "devices.toml", "emu")
    p = cli("emu", "--devices-file", str(devices))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "armv7l (32-bit ARM)" in p.stdout
    assert "Debian GNU/Linux 12 (bookworm)" in p.stdout
    assert "Python 3.11" in p.stdout and "tflite-runtime 2.14.0" in p.stdout
    assert "/usr/local/bin/benchmark_model: runs, prints no version (profile: runtime_version = '1.13.1')" in p.stdout
    assert "free space" in p.stdout and "ready: emu" in p.stdout


def test_emulated_pi_setup_fails_clearly(emulated_pi: EmulatedPi, tmp_path):
    """--setup where the venv cannot be made (this root has no ensurepip, like Debian without
    python3-venv): the reason and the fix, exit 1."""
    devices = emulated_pi.write_devices_toml(tmp_path / "devices.toml", "emu", python="/nonexistent/python3")
    p = cli("emu", "--devices-file", str(devices), "--setup")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "creating the venv failed" in p.stdout and "python3-venv" in p.stdout


def test_bare_pi_lacks_python_for_the_runner(emulated_bare_pi: EmulatedPi, tmp_path):
    devices = emulated_bare_pi.write_devices_toml(tmp_path / "devices.toml", "bare", timer="runner")
    p = cli("bare", "--devices-file", str(devices))
    assert p.returncode == 1, p.stdout + p.stderr
    assert "armv7l" in p.stdout and "python3: not found" in p.stdout
    assert "sudo apt-get update && sudo apt-get install -y python3 python3-venv" in p.stdout
    assert 'venv/bin/pip install "numpy<2" tflite-runtime==2.14.0' in p.stdout
    assert 'python = "~/' in p.stdout and "/venv/bin/python\"" in p.stdout


def test_bare_pi_is_ready_for_benchmark_model(emulated_bare_pi: EmulatedPi, tmp_path):
    devices = emulated_bare_pi.write_devices_toml(tmp_path / "devices.toml", "bare")  # timer benchmark_model
    p = cli("bare", "--devices-file", str(devices))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "benchmark_model: runs" in p.stdout and "ready: bare" in p.stdout


def test_untrusted_host_and_unknown_device(emulated_bare_pi: EmulatedPi, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    devices = emulated_bare_pi.write_devices_toml(tmp_path / "devices.toml", "bare", known_hosts=str(empty))
    p = cli("bare", "--devices-file", str(devices))
    assert p.returncode == 2 and "not a trusted host" in p.stderr and "ssh-keyscan" in p.stderr
    p = cli("toaster", "--devices-file", str(devices))
    assert p.returncode == 2 and "unknown device 'toaster'" in p.stderr
