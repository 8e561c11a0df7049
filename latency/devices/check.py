"""What an SSH device has and lacks for its profile's timer, and the commands that install it.

One POSIX shell script (`probe_script`) asks the device everything in one SSH call: it needs no
Python (each Python probe is a shell command whose failure is reported, not fatal), so it works
on a device with nothing but a shell. Its output, lines tagged `TAG key value`, is parsed by pure
functions (`latency.devices.check_facts`) into `DeviceFacts`;
`missing_for_timer` says what the profile's timer lacks and `install_advice` the commands for
that OS and architecture. `probe_device` and `setup_device` are the SSH I/O.

What each timer needs (latency.devices.ssh):

- ``runner``: Python 3.7+, numpy and one TFLite interpreter: ``tflite-runtime`` on 32-bit
  (armv7l) Raspberry Pi OS / Debian Bookworm, whose only armv7l wheel (2.14.0) is built for
  Python 3.11 and glibc 2.34; ``ai-edge-litert`` on 64-bit (aarch64). Bullseye and older
  (Python 3.9, glibc 2.31) are too old for those wheels.
- ``benchmark_model``: the binary, executable and loading (its shared libraries present).
"""
from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass
from typing import Any, Callable

from .check_facts import TAG, DeviceFacts, describe_throttled, last_line, parse_probe, parse_version, pip_failure
from .profiles import SshProfile

#: the venv `--setup` creates, inside the profile's work directory
VENV_DIR = "venv"
TFLITE_RUNTIME_PIN = "tflite-runtime==2.14.0"
#: tflite-runtime 2.14.0 is built against NumPy 1.x: NumPy 2 cannot load it
NUMPY_FOR_TFLITE_RUNTIME = '"numpy<2"'
#: TensorFlow's nightly benchmark_model builds, by `uname -m`
BENCHMARK_MODEL_URLS = {
    "armv7l": "https://storage.googleapis.com/tensorflow-nightly-public/prod/tensorflow/release/lite/tools/"
              "nightly/latest/linux_arm_benchmark_model",
    "aarch64": "https://storage.googleapis.com/tensorflow-nightly-public/prod/tensorflow/release/lite/tools/"
               "nightly/latest/linux_aarch64_benchmark_model",
    "x86_64": "https://storage.googleapis.com/tensorflow-nightly-public/prod/tensorflow/release/lite/tools/"
              "nightly/latest/linux_x86-64_benchmark_model",
}
# --------------------------------------------------------------------------- the probe

_PY_VERSION = "import sys; print('%d.%d.%d' % sys.version_info[:3])"


def _py_package(module: str, dist: str) -> str:
    """Python that imports `module` (failing as the runner would) and prints the version of
    `dist`: from the package metadata where there is one (3.8+), else the module's own."""
    top = module.split(".")[0]
    return (f"import {module}\n"
            f"try:\n from importlib.metadata import version; v = version('{dist}')\n"
            f"except Exception:\n import {top}; v = getattr({top}, '__version__', '?')\n"
            "print(v)")


def _py_probe(key: str, python: str, code: str) -> str:
    """A shell line printing `TAG key ok VERSION` or `TAG key STATUS LAST-ERROR-LINE`; never fails."""
    return (f"out=$({python} -c {shlex.quote(code)} 2>&1); st=$?; "
            f"if [ $st -eq 0 ]; then echo \"{TAG} {key} ok $(printf '%s\\n' \"$out\" | tail -n 1)\"; "
            f"else echo \"{TAG} {key} $st $(printf '%s\\n' \"$out\" | tail -n 1)\"; fi")


def _remote_path(path: str) -> str:
    """A path for the remote shell: `~/x` and relative paths expand from the home directory."""
    if path.startswith("~/"):
        return "\"$HOME\"/" + shlex.quote(path[2:])
    return shlex.quote(path)


def probe_script(profile: SshProfile) -> str:
    """One POSIX sh script asking the device everything `DeviceFacts` holds. It works without
    Python: a missing interpreter is a status the parser reads, not an error."""
    py = profile.python
    wd = _remote_path(profile.work_dir)
    lines = [
        f'echo "{TAG} arch $(uname -m 2>/dev/null)"',
        f'echo "{TAG} host $(uname -n 2>/dev/null)"',
        f"for f in /etc/os-release /usr/lib/os-release; do if [ -r \"$f\" ]; then "
        f"while IFS= read -r l || [ -n \"$l\" ]; do echo \"{TAG} os $l\"; done < \"$f\"; break; fi; done",
        _py_probe("python", py, _PY_VERSION),
        _py_probe("numpy", py, _py_package("numpy", "numpy")),
        _py_probe("tflite_runtime", py, _py_package("tflite_runtime.interpreter", "tflite-runtime")),
        _py_probe("ai_edge_litert", py, _py_package("ai_edge_litert.interpreter", "ai-edge-litert")),
        f"{py} -c 'import importlib.util as u, sys; sys.exit(0 if u.find_spec(\"tensorflow\") else 1)' >/dev/null 2>&1 "
        f"&& echo \"{TAG} tensorflow yes\"",
        f'echo "{TAG} python3 $(command -v python3 2>/dev/null)"',
        f"if command -v python3 >/dev/null 2>&1; then python3 -c 'import venv, ensurepip' >/dev/null 2>&1 "
        f"&& echo \"{TAG} venv yes\" || echo \"{TAG} venv no\"; fi",
        f"if [ -d {wd} ]; then echo \"{TAG} workdir yes\"; fi",
        # relative benchmark_model paths start in the work directory, as in SshDevice
        f"d={wd}; while [ ! -d \"$d\" ]; do d=$(dirname \"$d\"); done; "
        f"df -P -k \"$d\" 2>/dev/null | while IFS= read -r l; do echo \"{TAG} df $l\"; done",
        f"t=$(cat /sys/class/thermal/thermal_zone0/temp 2>/dev/null) && echo \"{TAG} temp $t\"",
        f"if command -v vcgencmd >/dev/null 2>&1; then echo \"{TAG} throttled $(vcgencmd get_throttled 2>&1)\"; fi",
    ]
    if profile.benchmark_model:
        bm = _remote_path(profile.benchmark_model)
        lines += [
            f'echo "{TAG} bm {profile.benchmark_model}"',
            f"( cd {wd} 2>/dev/null; "
            f"if [ -e {bm} ]; then echo \"{TAG} bm-exists\"; fi; "
            f"if [ -f {bm} ] && [ -x {bm} ]; then echo \"{TAG} bm-executable\"; "
            f"out=$({bm} --help 2>&1 </dev/null); echo \"{TAG} bm-status $?\"; "
            f"printf '%s\\n' \"$out\" | head -n 40 | while IFS= read -r l; do echo \"{TAG} bm-out $l\"; done; fi )",
        ]
    return "\n".join(lines) + "\ntrue\n"


# --------------------------------------------------------------------------- judgement

@dataclass(frozen=True)
class Advice:
    """What to install, as commands for the device's OS and architecture."""

    missing: tuple[str, ...]
    commands: tuple[str, ...] = ()  # run on the device
    profile_lines: tuple[str, ...] = ()  # set in the profile afterwards
    notes: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()  # what --setup pip-installs into the venv
    python: str | None = None  # the profile's python once they are installed

    @property
    def ready(self) -> bool:
        return not self.missing


def display_path(path: str) -> str:
    """A work-dir path as a user types it on the device: relative ones start at ~."""
    return path if path.startswith(("/", "~")) else f"~/{path}"


def runner_packages(arch: str | None) -> tuple[str, ...]:
    """pip packages for the runner: tflite-runtime on 32-bit ARM, ai-edge-litert on 64-bit."""
    if arch in ("armv7l", "armv8l"):
        return NUMPY_FOR_TFLITE_RUNTIME, TFLITE_RUNTIME_PIN
    return "numpy", "ai-edge-litert"


def missing_for_timer(facts: DeviceFacts, profile: SshProfile) -> list[str]:
    """What the profile's timer lacks on this device (empty: it can time)."""
    missing = []
    if profile.timer == "benchmark_model":
        if not facts.bm_exists:
            missing.append(f"benchmark_model ({profile.benchmark_model} does not exist)")
        elif not facts.bm_executable:
            missing.append(f"benchmark_model ({profile.benchmark_model} is not an executable file)")
        elif not facts.bm_runs:
            missing.append(f"benchmark_model ({profile.benchmark_model} does not run here: "
                           f"{last_line(facts.bm_output) or f'exit status {facts.bm_status}'})")
        return missing
    version = parse_version(facts.python or "")
    if facts.python is None:
        missing.append(f"Python ({profile.python}: {facts.python_problem or 'no answer'})")
    elif version is None or version < (3, 7):
        missing.append(f"Python 3.7 or newer ({profile.python} is {facts.python})")
    if facts.python is not None and facts.numpy is None:
        missing.append("numpy")
    if facts.interpreter is None:
        missing.append("a TFLite interpreter (tflite-runtime or ai-edge-litert)")
    return missing


def install_advice(facts: DeviceFacts, profile: SshProfile) -> Advice:
    """The commands that give the profile's timer what it lacks, for the device's OS and arch."""
    missing = tuple(missing_for_timer(facts, profile))
    if not missing:
        return Advice(missing)
    arch = facts.arch or "unknown"
    if profile.timer == "benchmark_model":
        url = BENCHMARK_MODEL_URLS.get(arch)
        dest = profile.benchmark_model or "benchmark_model"
        get = (f"wget -O {dest} {url}" if url else
               f"build benchmark_model for {arch} (TensorFlow Lite's tools/benchmark) and copy it to {dest}")
        return Advice(missing, commands=(get, f"chmod +x {dest}"), notes=(
            "the benchmark_model timer needs only the binary (no Python); without internet on the device, "
            f"download it here and copy it: scp -P {profile.port} <file> {profile.user}@{profile.host}:{dest}",
            "TF 1.x binaries reject unknown flags: set benchmark_flags = [] and runtime_version in the profile"))
    if arch == "armv6l" or (arch not in ("armv7l", "armv8l", "aarch64", "x86_64")):
        return Advice(missing, notes=(
            f"no TFLite interpreter wheel exists for {arch}: use timer = \"benchmark_model\" with a binary built "
            "for this CPU",))
    if facts.os.too_old or (facts.python and (parse_version(facts.python) or (0,)) < (3, 9)):
        return Advice(missing, notes=(
            f"{facts.os.describe()} is too old for the interpreter wheels: their Python (3.9 on Bullseye) and "
            "glibc (2.31) are older than tflite-runtime 2.14.0's only armv7l wheel (Python 3.11, glibc 2.34) and "
            "ai-edge-litert need",
            "upgrade the device to Raspberry Pi OS / Debian Bookworm (a fresh image; Bookworm brings Python 3.11), "
            "or use timer = \"benchmark_model\" with a benchmark_model binary, which needs no Python"))
    wd = display_path(profile.work_dir).rstrip("/")
    venv = f"{wd}/{VENV_DIR}"
    packages = runner_packages(arch)
    commands = []
    if facts.system_python3 is None or facts.venv_available is False:
        commands.append("sudo apt-get update && sudo apt-get install -y python3 python3-venv")
    commands.append(f"python3 -m venv {venv} && {venv}/bin/pip install {' '.join(packages)}")
    notes = []
    if facts.os.codename and facts.os.codename != "bookworm" and not facts.os.too_old:
        notes.append(f"these are the commands for Raspberry Pi OS / Debian Bookworm; this is {facts.os.describe()}")
    elif not facts.os.name:
        notes.append("the device has no /etc/os-release: these are the commands for Raspberry Pi OS / Debian Bookworm")
    if packages[1] == TFLITE_RUNTIME_PIN:
        notes.append("Raspberry Pi OS fetches numpy's armv7l wheel from piwheels; numpy < 2 because "
                     "tflite-runtime 2.14.0 was built against NumPy 1.x")
    return Advice(missing, commands=tuple(commands), profile_lines=(f'python = "{venv}/bin/python"',),
                  notes=tuple(notes), packages=packages, python=f"{venv}/bin/python")


def fmt_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def report_lines(facts: DeviceFacts, profile: SshProfile) -> list[str]:
    """What the device has, one line per fact."""
    bits = {"armv7l": " (32-bit ARM)", "armv8l": " (32-bit ARM)", "aarch64": " (64-bit ARM)", "armv6l": " (ARMv6)"}
    rows = [("architecture", f"{facts.arch or 'unknown'}{bits.get(facts.arch or '', '')}"),
            ("OS", facts.os.describe())]
    rows.append(("python", f"{profile.python}: Python {facts.python}" if facts.python else
                 f"{profile.python}: {facts.python_problem or 'absent'}"))
    if facts.python:
        rows.append(("numpy", facts.numpy or "absent"))
        found = [f"{n} {v}" for n, v in (("tflite-runtime", facts.tflite_runtime), ("ai-edge-litert", facts.ai_edge_litert))
                 if v]
        if facts.tensorflow:
            found.append("tensorflow")
        rows.append(("interpreter", ", ".join(found) if found else
                     f"none (tflite-runtime: {facts.tflite_runtime_problem or 'absent'}; "
                     f"ai-edge-litert: {facts.ai_edge_litert_problem or 'absent'})"))
    if profile.benchmark_model:
        if not facts.bm_exists:
            state = "does not exist"
        elif not facts.bm_executable:
            state = "exists, not executable"
        elif not facts.bm_runs:
            state = f"does not run: {last_line(facts.bm_output) or f'exit status {facts.bm_status}'}"
        else:
            version = facts.bm_version
            state = "runs, " + (f"version {version}" if version else "prints no version") + (
                f" (profile: runtime_version = {profile.runtime_version!r})" if profile.runtime_version else "")
        rows.append(("benchmark_model", f"{profile.benchmark_model}: {state}"))
    rows.append(("temperature", f"{facts.temperature_c:.1f} °C" if facts.temperature_c is not None else
                 "no sensor at /sys/class/thermal/thermal_zone0/temp"))
    rows.append(("throttling", describe_throttled(facts.throttled) if facts.throttled is not None else
                 ("vcgencmd printed no flags" if facts.vcgencmd else "unknown (no vcgencmd: not a Raspberry Pi OS)")))
    wd = display_path(profile.work_dir)
    if facts.free_bytes is not None:
        where = wd if facts.work_dir_exists else f"{wd} (not created yet; on {facts.free_where})"
        rows.append(("free space", f"{fmt_bytes(facts.free_bytes)} in {where}"))
    else:
        rows.append(("free space", f"unknown (df -P gave nothing for {wd})"))
    width = max(len(k) for k, _ in rows)
    return [f"  {k.ljust(width)}  {v}" for k, v in rows]


# ------------------------------------------------------------------------------- SSH I/O

def _quick(profile: SshProfile) -> SshProfile:
    """The profile for one-off calls: no retries (a check reports a failure at once)."""
    return dataclasses.replace(profile, retries=0)


async def run_on_device(profile: SshProfile, command: str, timeout_s: float) -> Any:
    """One command on the device (host key checked); a DeviceError when it cannot be reached."""
    from .ssh_connection import SshConnection, run_command

    async def nothing(conn: Any) -> None:
        return None

    link = SshConnection(_quick(profile), profile.name, nothing)
    try:
        return await link.with_retries("check", lambda conn: run_command(conn, command, timeout_s, profile.name))
    finally:
        await link.drop()


async def probe_device(profile: SshProfile) -> DeviceFacts:
    result = await run_on_device(profile, probe_script(profile), profile.call_timeout_s)
    return parse_probe(result.stdout.decode("utf-8", "replace"))


async def setup_device(profile: SshProfile, facts: DeviceFacts, emit: Callable[[str], None],
                       timeout_s: float = 1800.0) -> bool:
    """Creates the venv in the work directory and pip-installs the runner's packages there.
    Returns whether it worked; every failure is printed with its reason."""
    advice = install_advice(facts, profile)
    if not advice.packages:
        emit("--setup cannot install anything here: " + "; ".join(advice.notes or advice.missing))
        return False
    if facts.system_python3 is None:
        emit("--setup needs python3 on the device to create a venv; install it first: "
             "sudo apt-get update && sudo apt-get install -y python3 python3-venv")
        return False
    venv = f"{profile.work_dir.rstrip('/')}/{VENV_DIR}"
    steps = [
        (f"mkdir -p {_remote_path(profile.work_dir)} && python3 -m venv {_remote_path(venv)}", "creating the venv"),
        (f"{_remote_path(venv)}/bin/pip install --disable-pip-version-check "
         f"{' '.join(advice.packages)}", "installing " + " ".join(p.strip('"') for p in advice.packages)),
    ]
    for command, what in steps:
        emit(f"{what} on {profile.name}: {command}")
        result = await run_on_device(profile, f"{command} 2>&1", timeout_s)
        output = result.stdout.decode("utf-8", "replace")
        if result.status != 0:
            tail = "\n".join(output.strip().splitlines()[-8:])
            reason = pip_failure(output) if "pip" in command else (
                "python3's venv module cannot create one (on Debian: sudo apt-get install -y python3-venv)"
                if "ensurepip" in output or "venv" in output else "it failed")
            emit(f"{what} failed (exit status {result.status}): {reason}\n{tail}")
            return False
    return True
