"""SSH devices against a real OpenSSH server on 127.0.0.1 (see tests/sshd_fixture.py).

The "device" is this machine: sshd runs the project's runner with this Python. Tables are
built by the real builder into real SQLite files and compared with a local build. Profile
parsing tests need no server; the others skip (with the reason) where sshd is not installed.
"""
from __future__ import annotations

import asyncio
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from latency.build import BuildError, BuildOptions, build_table
from latency.devices.base import DeviceError, ModelJob, TimingSettings
from latency.devices.defaults import SSH_RECIPE, defaults_for
from latency.devices.profiles import (
    ProfileError,
    devices_from_profiles,
    load_profiles,
)
from latency.recipe import TableRecipe, resolve
from models.arch import INPUT, Arch, Layer, WidthGroup
from tests.sshd_fixture import (  # noqa: F401 - fixtures used by name
    SSH_KEYGEN,
    SshServer,
    processes_with,
    running_sshd,
    second_sshd_server,
    sshd_server,
    write_devices_file,
)

REPO = Path(__file__).resolve().parents[1]
RUNNER = REPO / "latency" / "devices" / "runner.py"

# Two layer types (a 3x3 conv whose two layers share one type, and the head), grid step 4:
# 12 cells, templates convert in a few seconds.
TINY = Arch(
    name="ssh-test-net",
    groups=(WidthGroup("image", 3, prunable=False), WidthGroup("classes", 10, prunable=False),
            WidthGroup("a", 16), WidthGroup("b", 16)),
    layers=(
        Layer("stem", "conv", (INPUT,), "image", "a", 16, 3, 1, bn=True, act="relu"),
        Layer("conv", "conv", ("stem",), "a", "b", 16, 3, 1, bn=True, act="relu"),
        Layer("head", "head", ("conv",), "b", "classes", 16),
    ),
)
GRID_STEP = 8
PASSES = 2
RUNS = 3


#: what the tests' tables measure; SSH devices time with it, the local comparison build likewise
RECIPE = TableRecipe(device_kind="ssh", grid_step=GRID_STEP, passes=PASSES, runs=RUNS, warmup=1, sigma=1.0)


def settings(**overrides: object) -> BuildOptions:
    values: dict = dict(models_per_call=4, max_failures=3)
    values.update(overrides)
    return BuildOptions(**values)


def ssh_devices(tmp_path: Path, profiles: dict[str, dict], names: list[str],
                groups: dict[str, list[str]] | None = None) -> list:
    devices_file = write_devices_file(tmp_path / "devices.toml", profiles, groups)
    return devices_from_profiles(names, RECIPE.timing(), devices_file)


def rows(table: Path, sql: str, params: tuple = ()) -> list[tuple]:
    db = sqlite3.connect(f"file:{table}?mode=ro", uri=True)  # read-only: never creates the file
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


def coverage(table: Path) -> list[tuple]:
    """(type, c_in, c_out, pass) of every measurement in the planned passes, sorted. (A local
    build on a busy machine times a cell in more passes when every planned one read slow:
    `latency/retime.py`; `extra_passes_are_retimes` checks those.)"""
    return sorted(rows(table, "select c.type_key, c.c_in, c.c_out, m.pass_index from measurements m "
                              "join cells c on c.id = m.cell_id where m.pass_index < ?", (PASSES,)))


def extra_passes_are_retimes(table: Path) -> bool:
    """Every measurement beyond the planned passes is of a cell whose planned passes all read slow."""
    retimed = rows(table, "select distinct cell_id from measurements where pass_index >= ?", (PASSES,))
    return all(rows(table, "select count(*) from measurements where cell_id = ? and pass_index < ? "
                           "and not slow", (cell, PASSES)) == [(0,)] for (cell,) in retimed)


def assert_complete(table: Path) -> None:
    """Every cell measured exactly once per pass."""
    (n_cells,) = rows(table, "select count(*) from cells")[0]
    per_pair = rows(table, "select cell_id, pass_index, count(*) from measurements group by cell_id, pass_index")
    assert len(per_pair) == n_cells * PASSES
    assert {count for _, _, count in per_pair} == {1}
    assert {p for _, p, _ in per_pair} == set(range(PASSES))
    assert rows(table, "select count(*) from measurements where not (seconds > 0)")[0][0] == 0


def recipe_for(devices: list) -> TableRecipe:
    local = all(getattr(d, "profile", None) is None for d in devices)
    return RECIPE.replace(device_kind="local") if local else RECIPE


def build(out: Path, devices: list, options: BuildOptions | None = None,
          report: Callable[[str], None] | None = None):
    return asyncio.run(build_table(TINY, out, devices, recipe_for(devices), options or settings(), report))


@pytest.fixture(scope="module")
def local_table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from latency.devices.local import LocalDevice

    out = tmp_path_factory.mktemp("local") / "local.sqlite"
    build(out, [LocalDevice(settings=RECIPE.timing())])
    return out


# ------------------------------------------------------------------------------- profiles


def test_shipped_rpi3b_profile_has_the_thesis_settings() -> None:
    profiles = load_profiles(REPO / "tables" / "devices.toml")
    pi = profiles["rpi3b"]
    assert (pi.host, pi.port, pi.user, pi.timer) == ("raspberrypi.local", 22, "pi", "runner")
    assert (pi.threads, pi.runs, pi.passes, pi.cooldown_s) == (1, 50, 3, None)
    # no fixed sleep before every model: the Pi pauses while hot and re-times what it timed throttled
    assert (pi.pause_above_c, pi.resume_below_c, pi.l2_bytes) == (75.0, 65.0, 512 * 1024)
    assert pi.thermal_sensor == "/sys/class/thermal/thermal_zone0/temp"
    assert pi.known_hosts.endswith("/.ssh/known_hosts") and "~" not in pi.known_hosts
    recipe = defaults_for("rpi3b", REPO / "tables" / "devices.toml").recipe
    # the thesis's method (mean of 50 runs, 3 passes) on a step:4 grid with the ARMv7 tiles' block
    # points (docs/pi-builds.md)
    assert recipe == SSH_RECIPE.replace(grid_step=4, grid_block=8)
    assert (recipe.passes, recipe.runs, recipe.warmup, recipe.threads, recipe.estimator, recipe.sigma) == (
        3, 50, 2, 1, "mean", 3.0)
    assert recipe.timing() == TimingSettings(runs=50, warmup=2, threads=1)


def test_cli_leaves_the_recipe_to_the_device() -> None:
    """build-tables leaves every recipe flag unset, so the device's defaults (or the continued
    table's recipe) apply; TimingSettings' defaults are the thesis's, as SSH profiles start."""
    from latency.cli_build import RECIPE_FLAGS, _parser

    p = _parser()
    assert all(p.get_default(dest) is None for dest in RECIPE_FLAGS)
    assert SSH_RECIPE.timing() == TimingSettings()


def test_recipe_precedence_flag_then_table_then_profile(tmp_path: Path) -> None:
    path = write_devices_file(tmp_path / "d.toml", {"pi": {"host": "h", "runs": 20, "cooldown_s": 2.5,
                                                          "grid": "step:4", "estimator": "median"}})
    profile = defaults_for("pi", path).recipe
    assert (profile.runs, profile.cooldown_s, profile.grid_step, profile.estimator, profile.warmup) == (
        20, 2.5, 4, "median", 2)
    assert profile.timing() == TimingSettings(runs=20, warmup=2, threads=1, cooldown_s=2.5)
    assert resolve(profile, None, {"runs": 7}).runs == 7  # a flag overrides its own field only
    assert resolve(profile, None, {"runs": 7}).replace(runs=20) == profile
    stored = profile.replace(runs=30)
    assert resolve(profile, stored, {}).runs == 30  # a continued table keeps its own recipe
    with pytest.raises(ValueError, match="ask for different recipes"):
        defaults_for("pi,pi-b", write_devices_file(tmp_path / "e.toml", {"pi": {"host": "h", "runs": 20},
                                                                          "pi-b": {"host": "h", "runs": 21}}))


def test_profile_errors(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match=r"passwords are never read or stored.*ssh-copy-id"):
        load_profiles(write_devices_file(tmp_path / "p.toml", {"pi": {"host": "h", "password": "x"}}))

    path = write_devices_file(tmp_path / "d.toml", {"pi-a": {"host": "a"}, "pi-b": {"host": "b", "extends": "pi-a"}},
                              groups={"farm": ["pi-a", "pi-b"]})
    with pytest.raises(ValueError, match=r"unknown device 'nope' in .*d\.toml; known devices: local, farm, pi-a, pi-b"):
        devices_from_profiles(["nope"], SSH_RECIPE.timing(), path)
    with pytest.raises(ValueError, match=r"devices file .*missing\.toml not found.*--devices-file"):
        devices_from_profiles(["pi-a"], SSH_RECIPE.timing(), tmp_path / "missing.toml")
    with pytest.raises(ProfileError, match=r"unknown keys \['hots'\]"):
        load_profiles(write_devices_file(tmp_path / "t.toml", {"pi": {"host": "h", "hots": "x"}}))
    with pytest.raises(ProfileError, match=r"needs benchmark_model"):
        load_profiles(write_devices_file(tmp_path / "b.toml", {"pi": {"host": "h", "timer": "benchmark_model"}}))
    with pytest.raises(ProfileError, match=r"group 'farm' names unknown device 'pi-c'"):
        load_profiles(write_devices_file(tmp_path / "g.toml", {"pi-a": {"host": "a"}}, groups={"farm": ["pi-a", "pi-c"]}))

    # a group expands to its members, each device once; names are the profile names
    devices = devices_from_profiles(["farm", "pi-a"], SSH_RECIPE.timing(), path)
    assert [d.name for d in devices] == ["pi-a", "pi-b"]
    assert devices[1].profile.host == "b"


# ------------------------------------------------------------------------------- transfer


def test_pool_transfer_rebuilds_identical_models_and_is_small() -> None:
    from latency import tflite_rewrite
    from latency.devices.ssh_transfer import decode_batch, encode_batch, pool_index
    from latency.generate import CellModels
    from latency.layer_types import network_layer_types

    types = network_layer_types([TINY])
    key = next(k for k in types if k.startswith("conv"))
    models = CellModels(types)
    jobs = [ModelJob(cell, models.render(key, c_in, c_out, seed=cell))
            for cell, (c_in, c_out) in enumerate([(16, 16), (1, 16), (16, 1), (7, 9), (3, 3)])]
    pool = pool_index()
    assert pool is not None
    encoded = encode_batch(jobs, pool)
    plain = encode_batch(jobs, None)
    assert decode_batch(encoded, tflite_rewrite._random_pool()) == [(j.cell_id, j.model) for j in jobs]
    assert decode_batch(plain) == [(j.cell_id, j.model) for j in jobs]
    raw = sum(len(j.model) for j in jobs)
    assert len(encoded) < 0.3 * raw < len(plain)  # random weights: zlib alone saves little
    with pytest.raises(ValueError, match="stale pool"):
        decode_batch(encoded, bytes(len(tflite_rewrite._random_pool())))


def test_feeder_is_self_contained_python37() -> None:
    """The feeder goes to the device as one file, beside the runner: Python 3.7, stdlib only."""
    import ast

    source = (REPO / "latency" / "devices" / "remote_feeder.py").read_text()
    tree = ast.parse(source, feature_version=(3, 7))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in the feeder"
            imported.add(node.module.split(".")[0])
    assert imported and imported <= set(sys.stdlib_module_names)


# ------------------------------------------------------------------------------- builds over SSH


def test_build_over_ssh_covers_the_same_cells_as_a_local_build(
        running_sshd: SshServer, local_table: Path, tmp_path: Path) -> None:
    devices = ssh_devices(tmp_path, {"pi": running_sshd.profile(tmp_path / "work")}, ["pi"])
    out = tmp_path / "ssh.sqlite"
    result = build(out, devices)
    assert result.retired == []
    assert coverage(out) == coverage(local_table)
    assert extra_passes_are_retimes(local_table)
    assert_complete(out)
    assert rows(out, "select distinct device from measurements") == [("pi",)]
    # the device-side runner reports each model's fastest invocation beside its mean
    assert rows(out, "select count(*) from measurements "
                     "where fastest is null or not (0 < fastest and fastest <= seconds)") == [(0,)]
    (kind, runtime, status), = rows(out, "select kind, runtime, status from runs")
    assert (kind, runtime, status) == ("ssh", "ai-edge-litert", "finished")
    # models travel as pool references: far fewer bytes than the models themselves
    stats = devices[0].transfer_stats
    assert stats.models == len(coverage(out)) and stats.sent_bytes < 0.5 * stats.model_bytes


def _count(table: Path) -> int:
    try:
        return rows(table, "select count(*) from measurements")[0][0]
    except sqlite3.OperationalError:  # not created yet (or no table yet)
        return 0


async def _wait_for(condition: Callable[[], bool], what: str, limit_s: float = 120.0) -> None:
    """Polls a condition (a bounded wait, not a timing assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


def test_sshd_killed_mid_build_reconnects_and_nothing_is_lost(running_sshd: SshServer, tmp_path: Path) -> None:
    # retries=0: the first dropped call is a builder failure; the builder backs off and the device
    # reconnects on its next batch, once the server is back
    devices = ssh_devices(tmp_path, {"pi": running_sshd.profile(tmp_path / "work", retries=0)}, ["pi"])
    out = tmp_path / "t.sqlite"
    lines: list[str] = []

    async def scenario() -> object:
        task = asyncio.create_task(build_table(TINY, out, devices, recipe_for(devices), settings(max_failures=5), lines.append))
        await _wait_for(lambda: _count(out) > 0 or task.done(), "a first committed batch")
        running_sshd.stop()  # the device "reboots": its connection and runner die ...
        shutil.rmtree(tmp_path / "work")  # ... and its /tmp is wiped: runner and pool must come back
        await _wait_for(lambda: any("failure 1/5" in ln for ln in lines) or task.done(), "the failure report")
        running_sshd.start()
        return await task

    result = asyncio.run(scenario())
    assert any("failure 1/5" in ln for ln in lines), lines
    assert result.retired == []
    assert_complete(out)
    assert {p.name for p in (tmp_path / "work").iterdir()} >= {"tflite_runner.py", "netadapt_feed.py"}


def test_interrupted_build_resumes_without_losing_or_duplicating(running_sshd: SshServer, tmp_path: Path) -> None:
    profiles = {"pi": running_sshd.profile(tmp_path / "work", retries=0)}
    out = tmp_path / "t.sqlite"

    async def first_build() -> None:
        task = asyncio.create_task(build_table(TINY, out, ssh_devices(tmp_path, profiles, ["pi"]), RECIPE,
                                               settings(max_failures=1)))
        await _wait_for(lambda: _count(out) > 0 or task.done(), "a first committed batch")
        running_sshd.stop()
        await task

    with pytest.raises(BuildError, match=r"every device failed.*run the same command again"):
        asyncio.run(first_build())
    kept = set(rows(out, "select cell_id, pass_index, seconds from measurements"))
    assert 0 < len(kept) < rows(out, "select count(*) from cells")[0][0] * PASSES
    assert rows(out, "select status from runs") == [("interrupted",)]

    running_sshd.start()
    result = build(out, ssh_devices(tmp_path, profiles, ["pi"]))
    assert result.already_measured == len(kept)
    assert kept <= set(rows(out, "select cell_id, pass_index, seconds from measurements"))  # nothing re-measured
    assert_complete(out)


def test_hanging_timer_is_killed_retried_and_the_device_retired(running_sshd: SshServer, tmp_path: Path) -> None:
    marker = "1000437"  # unique sleep length: lets the test find leftover remote processes
    hang = tmp_path / "hanging-python"
    hang.write_text(
        "#!/bin/sh\n"
        "# --info works (the device starts); every timing call hangs\n"
        f'for a in "$@"; do [ "$a" = "--info" ] && exec {sys.executable} "$@"; done\n'
        f"exec sleep {marker}\n"
    )
    hang.chmod(hang.stat().st_mode | stat.S_IXUSR)
    profile = running_sshd.profile(tmp_path / "work", python=str(hang), call_timeout_s=1.5, retries=1)
    devices = ssh_devices(tmp_path, {"hang-pi": profile}, ["hang-pi"])

    # the device tries twice (retries=1), then its DeviceError retires it (max_failures=1)
    with pytest.raises(BuildError) as raised:
        build(tmp_path / "t.sqlite", devices, settings(max_failures=1))
    message = str(raised.value)
    assert "every device failed" in message and "hang-pi: timing cells [" in message
    assert "failed 2 time(s)" in message and "call_timeout_s=1.5" in message and "killed" in message
    assert rows(tmp_path / "t.sqlite", "select count(*) from measurements") == [(0,)]
    # the overrunning remote calls were killed, not left sleeping on the device
    asyncio.run(_wait_for(lambda: not processes_with(f"sleep {marker}"), "the killed calls to exit", 10))


def test_unknown_or_changed_host_key_is_refused_with_how_to_trust(running_sshd: SshServer, tmp_path: Path) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    work = tmp_path / "work"
    (device,) = ssh_devices(tmp_path, {"pi": running_sshd.profile(work, known_hosts=str(empty))}, ["pi"])
    with pytest.raises(DeviceError) as raised:
        asyncio.run(device.start())
    message = str(raised.value)
    assert "not a trusted host" in message
    keyscan = f"ssh-keyscan -p {running_sshd.port} -t ed25519 127.0.0.1 >> {empty}"
    assert keyscan in message
    assert running_sshd.fingerprint() in message
    assert not work.exists()  # nothing was uploaded to an untrusted host
    # following the advice makes the device trusted
    subprocess.run(keyscan, shell=True, check=True, capture_output=True)
    (device,) = ssh_devices(tmp_path, {"pi": running_sshd.profile(work, known_hosts=str(empty))}, ["pi"])

    async def start_and_close() -> str:
        try:
            return (await device.start()).kind
        finally:
            await device.close()

    assert asyncio.run(start_and_close()) == "ssh"

    other = tmp_path / "other"
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    changed = tmp_path / "changed_known_hosts"
    changed.write_text(f"[127.0.0.1]:{running_sshd.port} " + " ".join(Path(f"{other}.pub").read_text().split()[:2]) + "\n")
    (device,) = ssh_devices(tmp_path, {"pi": running_sshd.profile(work, known_hosts=str(changed))}, ["pi"])
    with pytest.raises(DeviceError, match=r"DOES NOT MATCH.*ssh-keygen -R '\[127\.0\.0\.1\]:\d+'"):
        asyncio.run(device.start())


def test_two_devices_share_one_build(running_sshd: SshServer, second_sshd_server: SshServer, tmp_path: Path,
                                     local_table: Path) -> None:
    second_sshd_server.start()
    profiles = {"pi-a": running_sshd.profile(tmp_path / "work-a"),
                "pi-b": second_sshd_server.profile(tmp_path / "work-b")}
    devices = ssh_devices(tmp_path, profiles, ["farm"], groups={"farm": ["pi-a", "pi-b"]})
    out = tmp_path / "farm.sqlite"
    build(out, devices, settings(models_per_call=4))
    assert_complete(out)
    assert coverage(out) == coverage(local_table)
    assert sorted(rows(out, "select distinct device from measurements")) == [("pi-a",), ("pi-b",)]
    assert sorted(rows(out, "select device, kind, status from runs")) == [
        ("pi-a", "ssh", "finished"), ("pi-b", "ssh", "finished")]


def _fake_benchmark_model(path: Path, body: str) -> Path:
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)
    return path


def test_benchmark_model_timer(running_sshd: SshServer, tmp_path: Path) -> None:
    from tests.test_tflite_runner import build_models

    # benchmark_model stand-in: the runner in --graph mode, dropping the flags it does not know
    fake = _fake_benchmark_model(tmp_path / "benchmark_model", (
        'args=(); for a in "$@"; do case "$a" in --min_secs=*|--warmup_min_secs=*) ;; *) args+=("$a");; esac; done\n'
        f'exec {sys.executable} {RUNNER} "${{args[@]}}"\n'))
    garbage = _fake_benchmark_model(tmp_path / "broken_benchmark_model", "echo 'STARTING!'; echo 'no timings here'\n")
    profiles = {
        "bm": running_sshd.profile(tmp_path / "work", timer="benchmark_model", benchmark_model=str(fake),
                                   runtime_version="fake-1"),
        "bm-broken": running_sshd.profile(tmp_path / "work", timer="benchmark_model", benchmark_model=str(garbage)),
    }
    models = build_models()
    jobs = [ModelJob(5, models["conv_small"]), ModelJob(6, models["conv_big"])]

    async def measure(name: str) -> tuple:
        (device,) = ssh_devices(tmp_path, profiles, [name])
        info = await device.start()
        try:
            return info, await device.measure(jobs)
        finally:
            await device.close()

    info, timings = asyncio.run(measure("bm"))
    assert (info.runtime, info.runtime_version, info.kind) == ("benchmark_model", "fake-1", "ssh")
    assert info.settings["benchmark_model"] == str(fake)
    assert [t.cell_id for t in timings] == [5, 6]
    assert 0 < timings[0].seconds < timings[1].seconds  # 1-channel vs 128-channel conv
    assert not list((tmp_path / "work").glob("batch-*"))  # unpacked models cleaned up

    with pytest.raises(DeviceError, match=r"(?s)bm-broken: cell 5: no inference timing found; raw benchmark output:\n"
                                          r".*no timings here"):
        asyncio.run(measure("bm-broken"))


def _noisy(path: Path, then: str) -> Path:
    """A stand-in that writes 4 MiB to stderr (a device full of warnings), then runs `then`."""
    return _fake_benchmark_model(path, (
        "yes 'W noisy-device: a warning nobody reads' | head -c 4194304 >&2\n"
        "echo 'last words on stderr' >&2\n"
        f"{then}\n"))


def test_megabytes_on_stderr_neither_stall_nor_fill_memory(running_sshd: SshServer, tmp_path: Path) -> None:
    """stderr is read while stdout is: SSH flow control is per channel, so an unread stderr that
    fills the window stalls stdout too, until call_timeout_s retires the device."""
    from latency.devices.ssh_connection import STDERR_TAIL_BYTES
    from tests.test_tflite_runner import build_models

    python = _noisy(tmp_path / "noisy-python", f'exec {sys.executable} "$@"')
    bm = _noisy(tmp_path / "noisy-benchmark_model", (
        'args=(); for a in "$@"; do case "$a" in --min_secs=*|--warmup_min_secs=*) ;; *) args+=("$a");; esac; done\n'
        f'exec {sys.executable} {RUNNER} "${{args[@]}}"'))
    broken = _noisy(tmp_path / "noisy-broken-python", "exit 3")
    # one try, and a deadline far above what the calls need: a stall fails the test, not its speed
    common = dict(call_timeout_s=30.0, retries=0)
    profiles = {
        "noisy": running_sshd.profile(tmp_path / "work", python=str(python), **common),
        "noisy-bm": running_sshd.profile(tmp_path / "work", timer="benchmark_model", benchmark_model=str(bm),
                                         **common),
        "noisy-broken": running_sshd.profile(tmp_path / "work", python=str(broken), **common),
    }
    models = build_models()
    jobs = [ModelJob(5, models["conv_small"]), ModelJob(6, models["conv_big"])]

    async def measure(name: str) -> list:
        (device,) = ssh_devices(tmp_path, profiles, [name])
        await device.start()
        try:
            return await device.measure(jobs)
        finally:
            await device.close()

    for name in ("noisy", "noisy-bm"):
        timings = asyncio.run(measure(name))
        assert [t.cell_id for t in timings] == [5, 6], name
        assert 0 < timings[0].seconds < timings[1].seconds, name  # 1-channel vs 128-channel conv

    # a failing call reports the end of its stderr
    with pytest.raises(DeviceError, match=r"(?s)exited with status 3 .*no TFLite interpreter.*last words on stderr"):
        asyncio.run(measure("noisy-broken"))


def test_remote_calls_keep_a_tail_of_stderr_and_cap_stdout(running_sshd: SshServer, tmp_path: Path) -> None:
    from latency.devices.profiles import load_profiles
    from latency.devices.ssh_connection import STDERR_TAIL_BYTES, STDOUT_LIMIT_BYTES, SshConnection, run_command

    profile = load_profiles(write_devices_file(tmp_path / "d.toml", {"pi": running_sshd.profile(tmp_path)}))["pi"]
    marker = "endless-chatter-1000439"

    async def scenario() -> tuple:
        async def nothing_to_prepare(conn: object) -> None:
            return None

        link = SshConnection(profile, "pi", nothing_to_prepare)
        conn = await link.get()
        try:
            noisy = await run_command(conn, "yes 'W warning' | head -c 4194300 >&2; echo 'the end' >&2; echo result",
                                      30, "pi")
            with pytest.raises(DeviceError) as raised:
                await run_command(conn, f"yes {marker}", 30, "pi")  # never ends, floods stdout
            return noisy, str(raised.value)
        finally:
            await link.drop()

    noisy, message = asyncio.run(scenario())
    assert (noisy.status, noisy.stdout) == (0, b"result\n")
    assert len(noisy.stderr) == STDERR_TAIL_BYTES and noisy.stderr.endswith(b"W warning\nthe end\n")
    assert f"wrote more than {STDOUT_LIMIT_BYTES // 2**20} MiB to stdout" in message and "killed" in message
    asyncio.run(_wait_for(lambda: not processes_with(marker), "the flooding call to be killed", 10))
