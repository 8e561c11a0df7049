"""Reading what an SSH device said about itself (pure parsing, no I/O): `/etc/os-release`, version
strings, `df -P`, `vcgencmd get_throttled`, benchmark_model's output, pip's failures, and the answer of
`latency.devices.check`'s probe script (lines tagged `TAG key value`) into `DeviceFacts`.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

#: every line of the probe's answer starts with this (login-script chatter is ignored)
TAG = "@@netadapt"
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
            pass  # a sensor that reads no number: the temperature is reported as unknown
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


def last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


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
