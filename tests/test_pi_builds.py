"""Tables built and validated on the emulated Raspberry Pi: real ARM code, real sshd, real SQLite.

Each test builds a tiny table (one 3x3 conv type and the head on an 8x8 map, grid step 4: 20
cells) with the product's builder on a device of `tests/emulated_pi_fixture.py`: the runner on
the full root, benchmark_model on the root without Python. Timings under emulation say nothing
about a Pi: the tests check function (every cell once per pass, the device paused while hot,
the throttled cells timed again), never a value. `-rP` shows each build's cells per second.
"""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Callable

import pytest

from latency import context as cx
from latency.build import BuildOptions, build_table
from latency.devices.base import TimingSettings
from latency.devices.defaults import defaults_for
from latency.devices.profiles import devices_from_profiles, load_profiles
from latency.devices.ssh import SshDevice
from latency.recipe import TableRecipe
from models.arch import INPUT, Arch, Layer, WidthGroup
from tests.emulated_pi_fixture import (  # noqa: F401 - fixtures
    EmulatedPi,
    emulated_bare_pi,
    emulated_pi,
    second_emulated_bare_pi,
)
from tests.sshd_fixture import write_devices_file
from tests.test_ssh_devices import _wait_for, rows

# one conv layer type (the stem and the conv share it) and the head, at 8x8: 20 cells at step 4
PI_TINY = Arch(
    name="pi-test-net",
    groups=(WidthGroup("image", 3, prunable=False), WidthGroup("classes", 10, prunable=False),
            WidthGroup("a", 8), WidthGroup("b", 8)),
    layers=(
        Layer("stem", "conv", (INPUT,), "image", "a", 8, 3, 1, bn=True, act="relu"),
        Layer("conv", "conv", ("stem",), "a", "b", 8, 3, 1, bn=True, act="relu"),
        Layer("head", "head", ("conv",), "b", "classes", 8),
    ),
    input_size=8,
)
PASSES = 2
# the profile's recipe: emulation is slow, so few runs and passes on a coarse grid
RECIPE_FIELDS = dict(grid="step:4", passes=PASSES, runs=2, warmup=1, sigma=1.0)


def profiles_file(tmp_path: Path, devices: dict[str, tuple[EmulatedPi, dict]],
                  groups: dict[str, list[str]] | None = None) -> Path:
    """A devices.toml with one profile per (device, overrides); the timer follows the root."""
    return write_devices_file(tmp_path / "devices.toml",
                              {name: pi.profile(overrides.pop("work_dir", f"work-{name}"), **RECIPE_FIELDS, **overrides)
                               for name, (pi, overrides) in devices.items()}, groups)


def build(devices_file: Path, spec: str, out: Path, recipe: TableRecipe | None = None, per_call: int = 4,
          lines: list[str] | None = None, during: Callable[[list], object] | None = None):
    """Builds PI_TINY on the devices of `spec` with their profile's recipe (or `recipe`); `during`
    runs beside the build (a scenario), given the devices."""
    recipe = recipe or defaults_for(spec, devices_file).recipe
    partners = cx.partner_models(PI_TINY) if recipe.in_network else ()
    devices = devices_from_profiles([spec], recipe.timing(partners), devices_file)
    report = lines.append if lines is not None else None

    async def run():
        task = asyncio.create_task(build_table(PI_TINY, out, devices, recipe,
                                               BuildOptions(models_per_call=per_call, max_failures=5), report))
        if during is not None:
            try:
                await during(devices, task)
            except BaseException:
                task.cancel()
                raise
        return await task

    return asyncio.run(run()), devices


def assert_one_row_per_cell_and_pass(table: Path) -> None:
    (n_cells,) = rows(table, "select count(*) from cells")[0]
    per_pair = rows(table, "select cell_id, pass_index, count(*) from measurements group by cell_id, pass_index")
    assert len(per_pair) == n_cells * PASSES and {count for _, _, count in per_pair} == {1}
    assert rows(table, "select count(*) from measurements where not (seconds > 0)") == [(0,)]


def _count(table: Path) -> int:
    try:
        return rows(table, "select count(*) from measurements")[0][0]
    except Exception:  # noqa: BLE001 - not created yet
        return 0


# ------------------------------------------------------------------------------- a table and a report per timer


@pytest.mark.parametrize("root", ["emulated_pi", "emulated_bare_pi"])
def test_table_and_report_with_each_timer(root: str, request: pytest.FixtureRequest, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from latency import cli_report
    from models import families

    pi: EmulatedPi = request.getfixturevalue(root)
    timer = "runner" if root == "emulated_pi" else "benchmark_model"
    devices_file = profiles_file(tmp_path, {"pi": (pi, {})})
    out = tmp_path / "pi.sqlite"
    started = time.monotonic()
    result, (device,) = build(devices_file, "pi", out, per_call=10)
    assert_one_row_per_cell_and_pass(out)
    assert result.retired == [] and result.incomplete_types == {}
    (kind, runtime, status, settings), = rows(out, "select kind, runtime, status, settings from runs")
    assert (kind, runtime, status) == ("ssh", "tflite-runtime" if timer == "runner" else "benchmark_model", "finished")
    assert json.loads(settings)["machine"] == "armv7l"
    speed = (f"{timer}: {result.measured_now} cell timings in {result.measure_s:.1f} s of measuring "
             f"({result.measured_now / result.measure_s:.2f} cells/s; build {time.monotonic() - started:.1f} s)")

    # latency-report over SSH: two sampled networks, timed as the table's recipe says
    monkeypatch.setitem(families._NAMED, PI_TINY.name, lambda: PI_TINY)
    report_dir = tmp_path / "report"
    capsys.readouterr()
    rc = cli_report.main(["--table", str(out), "--device", "pi", "--devices-file", str(devices_file),
                          "--arch", PI_TINY.name, "--sample", "2", "--passes", "1", "--out", str(report_dir),
                          "--quiet"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "MAPE" in printed.out and (report_dir / "report.md").is_file()
    metrics = json.loads((report_dir / "metrics.json").read_text())
    assert metrics["n"] == 2
    # a few of the table's cells were timed again on the device with the networks (the host check)
    check = metrics["host_check"]
    assert check and rows(out, "select count(*) from check_cells where device = 'pi'") == [(len(check["cells"]),)]
    # every network pass and overhead probe was timed on the device and stored in the table
    assert rows(out, "select count(*) from whole_networks where device = 'pi'") == [(2,)]
    assert rows(out, "select count(distinct probe) from invoke_probes where device = 'pi'") == [(6,)]
    print(speed)  # -rP shows it


@pytest.fixture(scope="module")
def wrn_call() -> tuple[list, int]:
    """32 cells of WRN-10-1's step:8 grid, every layer type among them (strided convs, shortcuts,
    additions, the head), and the grid's size."""
    import random

    from latency.devices.base import ModelJob
    from latency.generate import CellModels
    from latency.layer_types import grid_cells, network_layer_types
    from models.families import get_arch

    types = network_layer_types([get_arch("wrn-10-1")])
    rng = random.Random(0)
    cells = {k: [(k, *c) for c in grid_cells(t, 8, 0)] for k, t in sorted(types.items())}
    chosen = [rng.choice(v) for v in cells.values()]  # every type once ...
    rest = [c for v in cells.values() for c in v if c not in chosen]
    chosen += rng.sample(rest, 32 - len(chosen))  # ... and random cells up to a call of 32
    renderer = CellModels(types)
    return [ModelJob(i, renderer.render(*c)) for i, c in enumerate(chosen)], sum(map(len, cells.values()))


@pytest.mark.parametrize("root", ["emulated_pi", "emulated_bare_pi"])
def test_every_wrn_layer_type_times_in_one_call(root: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """One call of what a real table sends, on each timer (WRN-10-1 itself is too slow to build
    here: its cells per second are printed, -rP)."""
    pi: EmulatedPi = request.getfixturevalue(root)
    jobs, grid_size = request.getfixturevalue("wrn_call")  # after the device: no conversion when it skips
    devices_file = profiles_file(tmp_path, {"pi": (pi, {})})
    (device,) = devices_from_profiles(["pi"], TimingSettings(runs=2, warmup=1), devices_file)

    async def measure() -> tuple[list, float]:
        await device.start()
        try:
            started = time.monotonic()
            return await device.measure(jobs), time.monotonic() - started
        finally:
            await device.close()

    timings, wall_s = asyncio.run(measure())
    assert [t.cell_id for t in timings] == [j.cell_id for j in jobs] and all(t.seconds > 0 for t in timings)
    print(f"{device.profile.timer}: 32 cells of wrn-10-1 (of {grid_size} at step:8) in one call: "
          f"{wall_s:.1f} s, {32 / wall_s:.2f} cells/s")


def test_benchmark_model_device_refuses_a_network_context(tmp_path: Path) -> None:
    devices_file = write_devices_file(tmp_path / "d.toml", {"bm": {
        "host": "pi.invalid", "timer": "benchmark_model", "benchmark_model": "/usr/local/bin/benchmark_model"}})
    recipe = TableRecipe(device_kind="ssh", context="network")
    with pytest.raises(ValueError, match=r"benchmark_model times models back to back only.*timer = \"runner\""):
        SshDevice(load_profiles(devices_file)["bm"], recipe.timing((b"partner",)))
    # several placements need the runner too; the runner is told how many
    alone = TableRecipe(device_kind="ssh", placements=3)
    with pytest.raises(ValueError, match=r"--placements above 1 needs timer = \"runner\""):
        SshDevice(load_profiles(devices_file)["bm"], alone.timing())
    runner_file = write_devices_file(tmp_path / "r.toml", {"pi": {"host": "pi.invalid", "timer": "runner"}})
    pi = load_profiles(runner_file)["pi"]
    assert "--placements=3" in SshDevice(pi, alone.timing())._runner_command()
    assert "--placements" not in SshDevice(pi, TableRecipe(device_kind="ssh").timing())._runner_command()
    in_network = TableRecipe(device_kind="ssh", context="network", vector_s=20e-6).timing((b"m",))
    assert "--vector-us=20" in SshDevice(pi, in_network)._runner_command()
    assert "--vector-us" not in SshDevice(pi, TableRecipe(device_kind="ssh").timing())._runner_command()


def test_network_context_on_the_runner(emulated_pi: EmulatedPi, tmp_path: Path) -> None:
    """Cells timed after the architecture's other layer types, caches evicted as the device's L2
    (here its profile's: the emulated root has no sysfs) says; the table's overhead measured there."""
    from latency.cli_build import _parser, resolve_recipe

    l2 = 2048  # below the net's 3.5 KB of weights, so that the eviction is on
    devices_file = profiles_file(tmp_path, {"pi": (emulated_pi, {"l2_bytes": l2})})
    args = _parser().parse_args(["--device", "pi", "--devices-file", str(devices_file), "--context", "network",
                                 "--vector-us", "20"])
    out = tmp_path / "net.sqlite"
    recipe = resolve_recipe(args, PI_TINY, out)
    assert recipe.in_network and recipe.evict_bytes == 2 * l2 == cx.evict_bytes_for(PI_TINY, l2)
    assert recipe.vector_s == pytest.approx(20e-6)
    result, _ = build(devices_file, "pi", out, recipe, per_call=8)
    assert_one_row_per_cell_and_pass(out)
    settings = [json.loads(s) for (s,) in rows(out, "select settings from runs")]
    assert {(s["partners"], s["evict_bytes"], s["l2_bytes"], s["vector_s"]) for s in settings} == {
        (2, 2 * l2, l2, recipe.vector_s)}  # the armhf runner did the matrix products before each invocation
    assert all("network context" in s["method"] for s in settings)
    meta = dict(rows(out, "select key, value from meta"))
    assert json.loads(meta["invoke_overhead"])["device"] == "pi"  # the overhead in that context


# ------------------------------------------------------------------------------- failures and heat


def test_sshd_killed_mid_build_resumes_with_one_row_per_cell_and_pass(emulated_bare_pi: EmulatedPi,
                                                                      tmp_path: Path) -> None:
    devices_file = profiles_file(tmp_path, {"pi": (emulated_bare_pi, {"retries": 0})})
    out = tmp_path / "t.sqlite"
    lines: list[str] = []

    async def kill_and_restart(devices: list, task: asyncio.Task) -> None:
        await _wait_for(lambda: _count(out) > 0 or task.done(), "a first committed batch", 600)
        emulated_bare_pi.stop()  # the device vanishes mid-batch: its shell loop and benchmark_model die with it
        await _wait_for(lambda: any("failure 1/5" in ln for ln in lines) or task.done(), "the failure report", 600)
        emulated_bare_pi.start()

    result, _ = build(devices_file, "pi", out, per_call=4, lines=lines, during=kill_and_restart)
    assert any("failure 1/5" in ln for ln in lines), lines
    assert result.retired == []
    assert_one_row_per_cell_and_pass(out)


@pytest.mark.parametrize("root", ["emulated_pi", "emulated_bare_pi"])
def test_hot_device_pauses_and_throttled_cells_are_timed_again(root: str, request: pytest.FixtureRequest,
                                                               tmp_path: Path) -> None:
    """The test plays the Pi's firmware: it writes the sensor file and the throttle flags the
    profile points at (files in the device's work dir)."""
    pi: EmulatedPi = request.getfixturevalue(root)
    work = pi.work_path("work-hot")
    work.mkdir(parents=True, exist_ok=True)
    sensor, flags = work / "sensor", work / "throttle"
    sensor.write_text("50000\n")
    flags.write_text("throttled=0x0\n")
    devices_file = profiles_file(tmp_path, {"pi": (pi, {
        "work_dir": "work-hot", "thermal_sensor": "sensor", "throttle_command": "cat throttle",
        "pause_above_c": 75.0, "resume_below_c": 65.0})})
    out = tmp_path / "hot.sqlite"
    lines: list[str] = []

    async def heat(devices: list, task: asyncio.Task) -> None:
        (device,) = devices
        await _wait_for(lambda: _count(out) > 0 or task.done(), "a first committed batch", 600)
        flags.write_text("throttled=0x4\n")  # throttled now: what is timed from here on goes back
        await _wait_for(lambda: any("timed while" in ln for ln in lines) or task.done(), "a throttled timing", 600)
        sensor.write_text("90000\n")  # hot: the device stops before its next model
        await _wait_for(lambda: device.pause_watch.temperature_c == 90.0 or task.done(), "the pause", 600)
        flags.write_text("throttled=0x0\n")
        measured = _count(out)
        sensor.write_text("70000\n")  # cooler, not cool enough: still paused
        await _wait_for(lambda: device.pause_watch.temperature_c == 70.0 or task.done(), "a reading at 70", 600)
        assert not task.done() and _count(out) == measured  # nothing timed while paused
        sensor.write_text("50000\n")  # below resume_below_c: it goes on

    result, (device,) = build(devices_file, "pi", out, per_call=4, lines=lines, during=heat)
    assert result.retired == []
    assert_one_row_per_cell_and_pass(out)
    # the cells timed while throttled were timed again: no stored row is throttled or hot
    assert rows(out, "select count(*) from measurements where throttled = 1 or temperature_c != 50.0") == [(0,)]
    assert any("timed again" in ln for ln in lines), lines
    assert device.pause_watch.pauses == 1 and device.pause_watch.temperature_c is None
    assert any("pausing until below 65" in ln for ln in lines) and any("resumed at 50.0" in ln for ln in lines)


def test_a_farm_of_two_emulated_pis_shares_one_build(emulated_bare_pi: EmulatedPi,
                                                     second_emulated_bare_pi: EmulatedPi, tmp_path: Path) -> None:
    devices_file = profiles_file(tmp_path, {"pi-a": (emulated_bare_pi, {}), "pi-b": (second_emulated_bare_pi, {})},
                                 groups={"farm": ["pi-a", "pi-b"]})
    out = tmp_path / "farm.sqlite"
    result, _ = build(devices_file, "farm", out, per_call=2)
    assert result.retired == []
    assert_one_row_per_cell_and_pass(out)
    assert sorted(rows(out, "select distinct device from measurements")) == [("pi-a",), ("pi-b",)]
    assert sorted(rows(out, "select device, status from runs")) == [("pi-a", "finished"), ("pi-b", "finished")]
