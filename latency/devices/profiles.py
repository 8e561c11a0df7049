"""SSH device profiles: `tables/devices.toml` -> `SshProfile` -> `SshDevice`.

File format (TOML; see the shipped ``tables/devices.toml`` for a commented example)::

    [devices.rpi3b]                 # one table per device; the name is what --device takes
    host = "raspberrypi.local"
    port = 22
    user = "pi"
    key = "~/.ssh/id_ed25519"       # private key file; or `agent = true` for ssh-agent;
                                    # neither: asyncssh's defaults (~/.ssh/id_* and the agent)
    known_hosts = "~/.ssh/known_hosts"
    work_dir = "netadapt-lut"       # on the device; relative to the remote home, or absolute
    python = "python3"              # remote interpreter
    timer = "runner"                # or "benchmark_model" (+ benchmark_model = "/path", benchmark_flags)
    threads = 1
    runs = 50
    warmup = 2
    passes = 3
    pause_above_c = 75.0            # the device waits before a model while hotter than this ...
    resume_below_c = 65.0           # ... until cooler than this; throttled timings are re-measured
    thermal_sensor = "/sys/class/thermal/thermal_zone0/temp"   # millidegrees; relative: in work_dir
    throttle_command = "vcgencmd get_throttled"
    l2_bytes = 524288               # when sysfs does not say (network timing context)
    call_timeout_s = 120.0          # no result for this long -> the call is killed
    retries = 2                     # re-connect/re-try a failed call this often (with backoff)

    [devices.rpi3b-b]
    extends = "rpi3b"               # every value of rpi3b, then these
    host = "10.0.0.12"

    [groups]
    pi-farm = ["rpi3b", "rpi3b-b"]  # --device pi-farm: one build measured by both

Relative ``key`` / ``known_hosts`` paths are relative to the devices file's directory; ``~`` is
expanded. Passwords are never read or stored: a ``password`` (or ``passphrase``) entry is an
error; use a key (``ssh-copy-id``) or ssh-agent.

Heat (`latency.devices.thermal`): ``pause_above_c`` / ``resume_below_c`` make the device pause
before a model while hot, ``max_pause_s`` (1800) bounds a pause, ``thermal_sensor`` and
``throttle_command`` say where temperature and throttle flags are read; ``cooldown_s`` is a fixed
sleep between models instead (or as well).

A profile's `grid`, `block`, `passes`, `runs`, `warmup`, `threads`, `cooldown_s`, `estimator`,
`sigma`, `edges` set its default table recipe (`latency.recipe`); a build-tables flag overrides
one field; a table being continued keeps its own recipe. `report_passes` is how often
latency-report times each whole network. `reference_table` (relative to the devices file) is a
table measured on such a device, from which `build-tables` estimates a build's time before it
starts (`latency.eta`).
"""
from __future__ import annotations

import dataclasses
import getpass
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from .base import Device, TimingSettings
from .thermal import DEFAULT_SENSOR, DEFAULT_THROTTLE_COMMAND, ThermalLimits

if TYPE_CHECKING:
    from .defaults import DeviceDefaults

__all__ = [
    "DEFAULT_DEVICES_FILE",
    "ProfileError",
    "ProfileGroup",
    "SshProfile",
    "devices_from_profiles",
    "expand_names",
    "find_devices_file",
    "load_profiles",
    "profile_defaults",
]

#: the default devices file, relative to the working directory (then to this checkout)
DEFAULT_DEVICES_FILE = Path("tables") / "devices.toml"
_CHECKOUT_DEVICES_FILE = Path(__file__).resolve().parents[2] / "tables" / "devices.toml"

_TIMERS = ("runner", "benchmark_model")
_TRANSFERS = ("pool", "zlib")
_SECRET_KEYS = ("password", "passphrase")
# recipe field -> profile key, for the recipe fields a profile may set
_RECIPE_KEYS = {"grid_step": "grid", "grid_block": "block", "passes": "passes", "runs": "runs", "warmup": "warmup",
                "threads": "threads", "cooldown_s": "cooldown_s", "estimator": "estimator", "sigma": "sigma",
                "edges": "edges"}


class ProfileError(ValueError):
    """A devices file or profile that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class SshProfile:
    """One SSH device. Timing fields are None where the profile does not set them."""

    name: str
    host: str
    port: int = 22
    user: str | None = None  # None: the local user name
    key: str | None = None  # private key file (expanded, absolute)
    agent: bool = False  # authenticate with ssh-agent (SSH_AUTH_SOCK)
    known_hosts: str = "~/.ssh/known_hosts"
    work_dir: str = "netadapt-lut"
    python: str = "python3"
    timer: str = "runner"
    benchmark_model: str | None = None  # path of the binary on the device (timer benchmark_model)
    benchmark_flags: tuple[str, ...] = ("--min_secs=0", "--warmup_min_secs=0")
    runtime_version: str | None = None  # recorded for benchmark_model (it cannot report its own)
    thermal_sensor: str = DEFAULT_SENSOR
    pause_above_c: float | None = None  # pause before a model while hotter (None: no pacing)
    resume_below_c: float | None = None  # until cooler than this (default: pause_above_c - 10)
    throttle_command: str = DEFAULT_THROTTLE_COMMAND
    max_pause_s: float = 1800.0
    l2_bytes: int | None = None  # the L2 cache, where the device's sysfs does not say
    threads: int | None = None
    runs: int | None = None
    warmup: int | None = None
    cooldown_s: float | None = None
    passes: int | None = None
    grid: str | None = None  # "full" or "step:K"
    block: int | None = None
    estimator: str | None = None
    sigma: float | None = None
    edges: str | None = None
    report_passes: int | None = None
    reference_table: str | None = None  # a table of this kind of device: build-tables' ETA (absolute)
    call_timeout_s: float = 120.0
    retries: int = 2
    transfer: str = "pool"  # "pool": weights sent as references into a pool cached on the device
    source: str = ""  # the devices file it came from (for messages)

    @property
    def target(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def thermal(self) -> ThermalLimits:
        return ThermalLimits(self.thermal_sensor, self.pause_above_c, self.resume_below_c, self.throttle_command,
                             self.max_pause_s)


@dataclass(frozen=True)
class ProfileGroup:
    """A named set of devices (a farm) measured together in one build."""

    name: str
    members: tuple[str, ...]
    source: str = ""


_FIELDS = {f.name: f for f in dataclasses.fields(SshProfile)}
_ALLOWED_KEYS = (set(_FIELDS) - {"name", "source"}) | {"extends"}


def _toml_load(path: Path) -> dict:
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ProfileError(f"reading {path} needs Python 3.11+ or `pip install tomli`") from None
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path} is not valid TOML: {exc}") from exc


def find_devices_file(devices_file: str | Path | None) -> Path:
    if devices_file is not None:
        path = Path(devices_file).expanduser()
        if not path.is_file():
            raise ProfileError(
                f"devices file {path} not found: pass an existing file to --devices-file "
                f"(tables/devices.toml in this project shows the format)"
            )
        return path
    for candidate in (DEFAULT_DEVICES_FILE, _CHECKOUT_DEVICES_FILE):
        if candidate.is_file():
            return candidate
    raise ProfileError(
        f"no devices file: {DEFAULT_DEVICES_FILE} does not exist here; create one (the project's "
        "tables/devices.toml shows the format) or pass --devices-file"
    )


def _check_type(name: str, key: str, value: Any, path: Path) -> Any:
    where = f"{path}: device {name!r}: {key}"
    expected = _FIELDS[key].type
    if key == "benchmark_flags":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ProfileError(f"{where} must be a list of strings, e.g. [\"--min_secs=0\"]")
        return tuple(value)
    if "bool" in expected:
        if not isinstance(value, bool):
            raise ProfileError(f"{where} must be true or false, got {value!r}")
        return value
    if "int" in expected:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProfileError(f"{where} must be an integer, got {value!r}")
        return value
    if "float" in expected:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ProfileError(f"{where} must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str) or not value:
        raise ProfileError(f"{where} must be a non-empty string, got {value!r}")
    return value


def _local_path(value: str, base: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path))


def _validate(p: SshProfile, path: Path) -> None:
    where = f"{path}: device {p.name!r}"
    if not 1 <= p.port <= 65535:
        raise ProfileError(f"{where}: port {p.port} is not a TCP port")
    if p.timer not in _TIMERS:
        raise ProfileError(f"{where}: timer must be one of {', '.join(_TIMERS)}, got {p.timer!r}")
    if p.timer == "benchmark_model" and not p.benchmark_model:
        raise ProfileError(f"{where}: timer = \"benchmark_model\" needs benchmark_model = \"<path on the device>\"")
    if p.transfer not in _TRANSFERS:
        raise ProfileError(f"{where}: transfer must be one of {', '.join(_TRANSFERS)}, got {p.transfer!r}")
    for key, low in (("threads", 1), ("runs", 1), ("warmup", 0), ("passes", 1), ("retries", 0), ("block", 0),
                     ("report_passes", 1)):
        value = getattr(p, key)
        if value is not None and value < low:
            raise ProfileError(f"{where}: {key} must be >= {low}, got {value}")
    if p.cooldown_s is not None and p.cooldown_s < 0:
        raise ProfileError(f"{where}: cooldown_s must be >= 0, got {p.cooldown_s}")
    if p.l2_bytes is not None and p.l2_bytes < 1:
        raise ProfileError(f"{where}: l2_bytes must be >= 1 (bytes of the L2 cache), got {p.l2_bytes}")
    try:
        p.thermal.check()
    except ValueError as exc:
        raise ProfileError(f"{where}: {exc}") from None
    if not p.call_timeout_s > 0:
        raise ProfileError(f"{where}: call_timeout_s must be > 0, got {p.call_timeout_s}")
    if p.key and p.agent:
        raise ProfileError(f"{where}: give either key or agent = true, not both")
    try:
        profile_defaults(p)
    except ValueError as exc:
        raise ProfileError(f"{where}: {exc}") from None


def _resolve_extends(name: str, raw: dict[str, dict], path: Path, chain: tuple[str, ...] = ()) -> dict:
    if name in chain:
        raise ProfileError(f"{path}: device {name!r}: 'extends' loops: {' -> '.join(chain + (name,))}")
    entry = raw[name]
    parent = entry.get("extends")
    if parent is None:
        return dict(entry)
    if not isinstance(parent, str) or parent not in raw:
        raise ProfileError(f"{path}: device {name!r} extends unknown device {parent!r}; "
                           f"devices there: {', '.join(sorted(raw))}")
    merged = _resolve_extends(parent, raw, path, chain + (name,))
    merged.update({k: v for k, v in entry.items() if k != "extends"})
    return merged


def load_profiles(devices_file: str | Path | None = None) -> dict[str, SshProfile | ProfileGroup]:
    """Every device profile and group of the devices file, by name.

    Raises ProfileError (a ValueError) for a missing or invalid file, naming the file.
    """
    path = find_devices_file(devices_file)
    data = _toml_load(path)
    unknown_top = set(data) - {"devices", "groups"}
    if unknown_top:
        raise ProfileError(f"{path}: unknown top-level entries {sorted(unknown_top)}; "
                           "expected [devices.NAME] tables and a [groups] table")
    raw_devices = data.get("devices", {})
    raw_groups = data.get("groups", {})
    if not isinstance(raw_devices, dict) or not isinstance(raw_groups, dict):
        raise ProfileError(f"{path}: [devices] and [groups] must be tables")
    base = path.resolve().parent
    out: dict[str, SshProfile | ProfileGroup] = {}
    for name, entry in raw_devices.items():
        if not isinstance(entry, dict):
            raise ProfileError(f"{path}: devices.{name} must be a table ([devices.{name}])")
        secrets = [k for k in entry if k.lower() in _SECRET_KEYS]
        if secrets:
            raise ProfileError(
                f"{path}: device {name!r} has a {secrets[0]!r} entry: passwords are never read or stored. "
                f"Remove it and log in with a key: `ssh-copy-id -p PORT USER@HOST` (then key = \"~/.ssh/id_...\"), "
                "or load the key into ssh-agent and set agent = true"
            )
        unknown = set(entry) - _ALLOWED_KEYS
        if unknown:
            raise ProfileError(f"{path}: device {name!r}: unknown keys {sorted(unknown)}; "
                               f"known keys: {', '.join(sorted(_ALLOWED_KEYS))}")
    for name in raw_devices:
        if name == "local":
            raise ProfileError(f"{path}: 'local' is reserved for this machine's CPU; rename that device")
        merged = _resolve_extends(name, raw_devices, path)
        if "host" not in merged:
            raise ProfileError(f"{path}: device {name!r} has no host")
        values: dict[str, Any] = {k: _check_type(name, k, v, path) for k, v in merged.items() if k != "extends"}
        for key in ("key", "known_hosts", "reference_table"):
            if key in values:
                values[key] = _local_path(values[key], base)
        values.setdefault("known_hosts", _local_path(SshProfile.known_hosts, base))
        values.setdefault("user", getpass.getuser())
        profile = SshProfile(name=name, source=str(path), **values)
        _validate(profile, path)
        out[name] = profile
    for name, members in raw_groups.items():
        if name in out or name == "local":
            raise ProfileError(f"{path}: group {name!r} has the name of a device; rename one of them")
        if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
            raise ProfileError(f"{path}: group {name!r} must be a non-empty list of device names")
        out[name] = ProfileGroup(name, tuple(members), str(path))
    for group in [g for g in out.values() if isinstance(g, ProfileGroup)]:
        for member in group.members:
            if member not in out:
                raise ProfileError(f"{path}: group {group.name!r} names unknown device {member!r}; "
                                   f"devices: {', '.join(sorted(n for n, p in out.items() if isinstance(p, SshProfile)))}")
    return out


def expand_names(names: Iterable[str], profiles: dict[str, SshProfile | ProfileGroup],
                 source: str = "") -> list[SshProfile]:
    """Profiles for device and group names, groups expanded, each device once, in order."""
    chosen: list[SshProfile] = []

    def add(name: str, chain: tuple[str, ...]) -> None:
        entry = profiles.get(name)
        if entry is None:
            where = f" in {source}" if source else ""
            raise ProfileError(f"unknown device {name!r}{where}; known devices: "
                               f"{', '.join(['local', *sorted(profiles)])}")
        if isinstance(entry, ProfileGroup):
            if name in chain:
                raise ProfileError(f"group {name!r} contains itself ({' -> '.join(chain + (name,))})")
            for member in entry.members:
                add(member, chain + (name,))
        elif entry not in chosen:
            chosen.append(entry)

    for name in names:
        add(name, ())
    return chosen


def profile_defaults(profile: SshProfile) -> "DeviceDefaults":
    """The default recipe of a device: the thesis's method with what its profile sets."""
    from ..layer_types import parse_grid
    from ..recipe import RecipeError
    from .defaults import SSH_RECIPE, DeviceDefaults

    values = {field: getattr(profile, key) for field, key in _RECIPE_KEYS.items() if getattr(profile, key) is not None}
    if "grid_step" in values:
        values["grid_step"] = parse_grid(values["grid_step"])
    if "estimator" in values and "sigma" not in values:
        from ..recipe import default_sigma

        values["sigma"] = default_sigma(values["estimator"])
    try:
        recipe = SSH_RECIPE.replace(**values)
    except RecipeError as exc:
        raise ProfileError(f"device {profile.name!r}: {exc}") from None
    return DeviceDefaults(recipe, report_passes=profile.report_passes or 3)


def devices_from_profiles(names: Iterable[str], timing: TimingSettings,
                          devices_file: str | Path | None = None) -> list[Device]:
    """SshDevices for profile and group names (a farm expands to its members).

    Raises ProfileError (a ValueError) for an unknown name (listing the known ones and the file
    read), a missing or invalid devices file.
    """
    names = list(names)
    path = find_devices_file(devices_file)
    profiles = load_profiles(path)
    chosen = expand_names(names, profiles, str(path))
    from .ssh import SshDevice  # asyncssh only when SSH devices are used

    return [SshDevice(p, timing) for p in chosen]


if __name__ == "__main__":  # `python -m latency.devices.profiles [FILE]`: list what a file defines
    for entry_name, entry in load_profiles(sys.argv[1] if len(sys.argv) > 1 else None).items():
        if isinstance(entry, ProfileGroup):
            print(f"{entry_name}: group of {', '.join(entry.members)}")
        else:
            print(f"{entry_name}: {entry.target} timer={entry.timer} work_dir={entry.work_dir}")
