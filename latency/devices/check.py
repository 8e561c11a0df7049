"""What an SSH device has and lacks for its profile's timer, and the commands that install it.

One POSIX shell script (`probe_script`) asks the device everything in one SSH call: it needs no
Python (each Python probe is a shell command whose failure is reported, not fatal), so it works
on a device with nothing but a shell. Its output, lines tagged `TAG key value`, is parsed by pure
functions (`parse_probe`, `parse_os_release`, `parse_df`, ...) into `DeviceFacts`;
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
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Callable

from .profiles import SshProfile

#: every line of the probe's answer starts with this (login-script chatter is ignored)
TAG = "@@netadapt"
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
#: Debian releases (VERSION_ID) whose Python and glibc the interpreter wheels need
MIN_DEBIAN = 12
OLD_CODENAMES = ("bullseye", "buster", "stretch", "jessie")
#: bits of `vcgencmd get_throttled`
THROTTLE_BITS = {0: "under-voltage now", 1: "ARM frequency capped now", 2: "throttled now",
                 3: "soft temperature limit now", 16: "under-voltage has occurred",
                 17: "frequency capping has occurred", 18: "throttling has occurred",
                 19: "soft temperature limit has occurred"}


# ------------------------------------------------------------------------------- parsing

@dataclass(frozen=True)
class OsRelease:
    id: str = ""
    name: str = ""
    version: str = ""  # "12 (bookworm)"
    version_id: str = ""  # "12"
    codename: str = ""  # "bookworm"
    pretty: str = ""
    id_like: str = ""

    @property
    def debian_like(self) -> bool:
        return self.id in ("debian", "raspbian") or "debian" in self.id_like.split()

    @property
    def too_old(self) -> bool:
        """Debian 11 (Bullseye) or older: Python 3.9 and glibc 2.31, older than the wheels need."""
        if self.codename in OLD_CODENAMES:
            return True
        if self.debian_like and self.version_id.isdigit():
            return int(self.version_id) < MIN_DEBIAN
        return False

    def describe(self) -> str:
        if not (self.name or self.pretty):
            return "unknown (no /etc/os-release)"
        text = self.name or self.pretty
        if self.version:
            text += f" {self.version}"
        elif self.version_id:
            text += f" {self.version_id}"
        if self.codename and self.codename not in text:
            text += f" ({self.codename})"
        return text


def parse_os_release(text: str) -> OsRelease:
    """`/etc/os-release` (KEY=value lines, values optionally quoted) -> OsRelease."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        try:
            words = shlex.split(raw)
        except ValueError:
            words = [raw.strip("\"'")]
        values[key.strip()] = " ".join(words)
    codename = values.get("VERSION_CODENAME", "")
    if not codename:  # older files: "VERSION=\"10 (buster)\""
        m = re.search(r"\(([a-z]+)\)", values.get("VERSION", ""))
        codename = m.group(1) if m else ""
    return OsRelease(id=values.get("ID", "").lower(), name=values.get("NAME", ""), version=values.get("VERSION", ""),
                     version_id=values.get("VERSION_ID", ""), codename=codename.lower(),
                     pretty=values.get("PRETTY_NAME", ""), id_like=values.get("ID_LIKE", "").lower())


def parse_version(text: str) -> tuple[int, ...] | None:
    """The leading dotted number of a version string: "3.11.2" -> (3, 11, 2); "Python 3.9.2" too."""
    m = re.search(r"(\d+(?:\.\d+)+)", text or "")
    return tuple(int(p) for p in m.group(1).split(".")) if m else None


def parse_df(text: str) -> tuple[int, str] | None:
    """`df -P -k DIR` -> (free bytes, mount point); None when it printed no data line."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2:
        return None
    header = lines[0].split()
    block = 1024
    m = re.match(r"(\d+)-blocks", header[1]) if len(header) > 1 else None
    if m:
        block = int(m.group(1))
    fields = " ".join(lines[1:]).split()  # a long device name wraps onto its own line
    if len(fields) < 6 or not fields[3].isdigit():
        return None
    return int(fields[3]) * block, fields[5]


def parse_throttled(text: str) -> int | None:
    """`vcgencmd get_throttled` ("throttled=0x50005") -> its flag bits; None if not that."""
    m = re.search(r"throttled=(0x[0-9a-fA-F]+|\d+)", text or "")
    return int(m.group(1), 0) if m else None


def describe_throttled(bits: int) -> str:
    if bits == 0:
        return "not throttled, no under-voltage (0x0)"
    named = [THROTTLE_BITS[b] for b in sorted(THROTTLE_BITS) if bits & (1 << b)]
    return f"{', '.join(named) or 'unknown flags'} ({bits:#x})"


def parse_benchmark_version(output: str) -> str | None:
    """A version benchmark_model printed (recent builds log their TF Lite version); 1.13.1 prints none."""
    for pattern in (r"(?:TF ?Lite|TensorFlow Lite|tflite)[^\n]*?version[:\s]+v?(\d+\.\d+(?:\.\d+)?\S*)",
                    r"^\s*(?:INFO:\s*)?[Vv]ersion[:\s]+v?(\d+\.\d+(?:\.\d+)?\S*)"):
        m = re.search(pattern, output, re.IGNORECASE | re.MULTILINE)
        if m:
            return m.group(1)
    return None


@dataclass
class DeviceFacts:
    """What the probe found (None: not found / not asked)."""

    arch: str | None = None
    hostname: str | None = None
    os: OsRelease = field(default_factory=OsRelease)
    python: str | None = None  # version of the profile's python
    python_problem: str | None = None  # why it did not answer
    system_python3: str | None = None  # `command -v python3`
    venv_available: bool | None = None  # python3 -m venv works (ensurepip present)
    numpy: str | None = None
    tflite_runtime: str | None = None
    tflite_runtime_problem: str | None = None
    ai_edge_litert: str | None = None
    ai_edge_litert_problem: str | None = None
    tensorflow: bool = False
    benchmark_model: str | None = None  # the path asked about
    bm_exists: bool = False
    bm_executable: bool = False
    bm_status: int | None = None
    bm_output: str = ""
    temperature_c: float | None = None
    throttled: int | None = None
    vcgencmd: bool = False
    work_dir_exists: bool = False
    free_bytes: int | None = None
    free_where: str | None = None

    @property
    def interpreter(self) -> tuple[str, str] | None:
        """The TFLite interpreter the runner would use (it tries ai-edge-litert first)."""
        if self.ai_edge_litert:
            return "ai-edge-litert", self.ai_edge_litert
        if self.tflite_runtime:
            return "tflite-runtime", self.tflite_runtime
        if self.tensorflow:
            return "tensorflow", "?"
        return None

    @property
    def bm_runs(self) -> bool:
        """benchmark_model started (its usage or banner printed), not a loader or format error."""
        if not self.bm_executable or self.bm_status in (None, 126, 127):
            return False
        return "error while loading shared libraries" not in self.bm_output and (
            self.bm_status == 0 or "STARTING!" in self.bm_output or "usage" in self.bm_output.lower())

    @property
    def bm_version(self) -> str | None:
        return parse_benchmark_version(self.bm_output) if self.bm_runs else None


def _probe_value(facts: DeviceFacts, key: str, value: str) -> None:
    if key == "arch":
        facts.arch = value or None
    elif key == "host":
        facts.hostname = value or None
    elif key in ("python", "numpy", "tflite_runtime", "ai_edge_litert"):
        status, _, rest = value.partition(" ")
        if status == "ok":
            setattr(facts, key, rest.strip() or "?")
        elif key in ("python", "tflite_runtime", "ai_edge_litert"):
            rest = rest.strip()
            if status == "127":
                why = "not found"
            elif "No module named" in rest:
                why = "not installed"
            else:
                why = rest or f"exit status {status}"
            setattr(facts, f"{key}_problem", why)
    elif key == "tensorflow":
        facts.tensorflow = value == "yes"
    elif key == "python3":
        facts.system_python3 = value or None
    elif key == "venv":
        facts.venv_available = value == "yes"
    elif key == "bm":
        facts.benchmark_model = value
    elif key == "bm-exists":
        facts.bm_exists = True
    elif key == "bm-executable":
        facts.bm_executable = True
    elif key == "bm-status":
        facts.bm_status = int(value) if value.lstrip("-").isdigit() else None
    elif key == "temp":
        try:
            facts.temperature_c = int(value) / 1000.0
        except ValueError:
            pass
    elif key == "throttled":
        facts.vcgencmd = True
        facts.throttled = parse_throttled(value)
    elif key == "workdir":
        facts.work_dir_exists = value == "yes"


def parse_probe(text: str) -> DeviceFacts:
    """The probe script's output -> DeviceFacts (lines without the tag are ignored)."""
    facts = DeviceFacts()
    os_lines, bm_lines, df_lines = [], [], []
    for line in text.splitlines():
        if not line.startswith(TAG + " "):
            continue
        key, _, value = line[len(TAG) + 1:].partition(" ")
        if key == "os":
            os_lines.append(value)
        elif key == "bm-out":
            bm_lines.append(value)
        elif key == "df":
            df_lines.append(value)
        else:
            _probe_value(facts, key, value.strip())
    facts.os = parse_os_release("\n".join(os_lines))
    facts.bm_output = "\n".join(bm_lines)
    free = parse_df("\n".join(df_lines))
    if free:
        facts.free_bytes, facts.free_where = free
    return facts


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
                           f"{_last_line(facts.bm_output) or f'exit status {facts.bm_status}'})")
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


def _last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


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
            state = f"does not run: {_last_line(facts.bm_output) or f'exit status {facts.bm_status}'}"
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


#: pip's words for an index it could not reach (its retry warnings name the connection error)
_OFFLINE = ("Failed to establish a new connection", "Temporary failure in name resolution", "Network is unreachable",
            "No route to host", "Name or service not known", "ProxyError", "connection broken by", "timed out")


def pip_failure(output: str) -> str:
    """Why a pip install failed, in a sentence (pure)."""
    if any(word.lower() in output.lower() for word in _OFFLINE):
        return ("the device could not reach a package index (no network, DNS or proxy): connect it to the internet "
                "(or set PIP_INDEX_URL on it to a reachable mirror) and run --setup again")
    if "(from versions: none)" in output:
        return ("no package index offered it: either none is reachable from the device or none has a wheel for its "
                "Python and architecture (tflite-runtime 2.14.0's armv7l wheel needs Bookworm's Python 3.11)")
    if "No matching distribution" in output or "Could not find a version" in output:
        return "the package index has no version of it for this Python and architecture"
    return "pip failed"


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
