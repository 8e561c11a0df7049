"""The product against an emulated Raspberry Pi: real ARM code under qemu-user, over real SSH.

The device is an armhf Debian root (``python -m tools.emulated_pi``) that a loopback sshd chroots
its sessions into (``tests/emulated_pi_fixture.py``). These tests check function only: timings
under emulation say nothing about a Pi, so no value is compared with anything but zero.
"""
from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from latency.benchmark_output import parse_benchmark_output
from latency.devices.base import ModelJob, Timing, TimingSettings
from latency.devices.profiles import devices_from_profiles
from latency.generate import CellModels
from latency.layer_types import LayerType
from tests.emulated_pi_fixture import EmulatedPi, emulated_bare_pi, emulated_pi  # noqa: F401 - fixtures
from tools.emulated_pi import BENCHMARK_MODEL_SHA256, DEVICE_BENCHMARK_MODEL, TFLITE_RUNTIME_VERSION

# small enough that emulated timing stays quick: a 3x3 conv (+BN+ReLU) on an 8x8 map
CONV = LayerType(key="conv-k3-s1-8", op="conv", kernel=3, stride=1, in_size=8, bn=True, act="relu",
                 in_lo=1, in_hi=16, out_lo=1, out_hi=16)
CELLS = ((4, 8), (8, 8), (16, 4))
TIMING = TimingSettings(runs=2, warmup=1, threads=1)  # emulation is slow; function, not accuracy


@pytest.fixture(scope="module")
def models() -> list[bytes]:
    """Single-layer models rendered by the project's generator (one converter call, then rewrites)."""
    generator = CellModels({CONV.key: CONV})
    return [generator.render(CONV.key, c_in, c_out) for c_in, c_out in CELLS]


def ok(result, what: str) -> str:
    assert result.returncode == 0, f"{what} failed ({result.returncode}): {result.stderr.decode(errors='replace')}"
    return result.stdout.decode()


def test_uname_says_armv7l(emulated_pi: EmulatedPi) -> None:
    assert ok(emulated_pi.ssh("uname -m"), "uname -m").strip() == "armv7l"


def test_python_is_arm_with_tflite_runtime(emulated_pi: EmulatedPi) -> None:
    out = ok(emulated_pi.ssh("python3 -c 'import platform; print(platform.machine())'"), "platform.machine()")
    assert out.strip() == "armv7l"
    out = ok(emulated_pi.ssh('python3 -c "import tflite_runtime, numpy; print(tflite_runtime.__version__)"'),
             "import tflite_runtime")
    assert out.strip() == TFLITE_RUNTIME_VERSION
    # the interpreter itself is an ARM executable (ELF e_machine 0x28), not this machine's Python
    header = ok(emulated_pi.ssh('od -An -tx1 -j18 -N2 "$(readlink -f "$(command -v python3)")"'), "od")
    assert header.split() == ["28", "00"]


def test_bare_device_has_no_python(emulated_bare_pi: EmulatedPi) -> None:
    assert ok(emulated_bare_pi.ssh("uname -m"), "uname -m").strip() == "armv7l"
    found = emulated_bare_pi.ssh("command -v python3 python python2; ls /usr/lib | grep -i python; true")
    assert ok(found, "looking for Python").strip() == ""


@pytest.mark.parametrize("device", ["emulated_pi", "emulated_bare_pi"])
def test_benchmark_model_times_a_generated_model(device: str, request: pytest.FixtureRequest) -> None:
    pi: EmulatedPi = request.getfixturevalue(device)
    models: list[bytes] = request.getfixturevalue("models")  # after the device: no conversion when it skips
    ok(pi.ssh(f"mkdir -p {pi.scratch}/bm && cat > {pi.scratch}/bm/cell.tflite", stdin=models[0]), "uploading")
    digest = ok(pi.ssh(f"sha256sum {DEVICE_BENCHMARK_MODEL}"), "sha256sum").split()[0]
    assert digest == BENCHMARK_MODEL_SHA256
    result = pi.ssh(f"{DEVICE_BENCHMARK_MODEL} --graph={pi.scratch}/bm/cell.tflite --num_runs=3 --warmup_runs=1 "
                    "--num_threads=1 --min_secs=0 --warmup_min_secs=0")
    out = ok(result, "benchmark_model") + result.stderr.decode(errors="replace")
    parsed = parse_benchmark_output(out)  # raises, quoting the output, when no timing is in it
    assert parsed.avg_us > 0 and math.isfinite(parsed.avg_us)


def _measure(devices_file: Path, name: str, batch: list[ModelJob]) -> tuple[object, list[Timing]]:
    (device,) = devices_from_profiles([name], TIMING, devices_file)

    async def run() -> tuple[object, list[Timing]]:
        try:
            info = await device.start()
            return info, await device.measure(batch)
        finally:
            await device.close()

    return asyncio.run(run())


def _check_timings(timings: list[Timing], batch: list[ModelJob]) -> None:
    assert [t.cell_id for t in timings] == [job.cell_id for job in batch]
    for t in timings:
        assert t.seconds > 0 and math.isfinite(t.seconds), t


def test_ssh_device_runner_measures_on_the_emulated_pi(emulated_pi: EmulatedPi, models: list[bytes],
                                                       tmp_path: Path) -> None:
    devices_file = emulated_pi.write_devices_toml(tmp_path / "devices.toml", "emulated-pi", timer="runner",
                                                  work_dir="netadapt-lut-runner")
    batch = [ModelJob(cell_id=10 + i, model=m) for i, m in enumerate(models)]
    info, timings = _measure(devices_file, "emulated-pi", batch)
    assert (info.runtime, info.runtime_version) == ("tflite-runtime", TFLITE_RUNTIME_VERSION)
    assert info.settings["machine"] == "armv7l"
    _check_timings(timings, batch)


def test_ssh_device_benchmark_model_timer_on_the_emulated_pi(emulated_pi: EmulatedPi, models: list[bytes],
                                                             tmp_path: Path) -> None:
    devices_file = emulated_pi.write_devices_toml(tmp_path / "devices.toml", "emulated-pi-bm",
                                                  timer="benchmark_model", work_dir="netadapt-lut-bm")
    batch = [ModelJob(cell_id=20 + i, model=m) for i, m in enumerate(models[:2])]
    info, timings = _measure(devices_file, "emulated-pi-bm", batch)
    assert (info.runtime, info.runtime_version) == ("benchmark_model", "1.13.1")
    assert info.settings["benchmark_model_sha256"] == BENCHMARK_MODEL_SHA256
    _check_timings(timings, batch)


def test_ssh_device_benchmark_model_timer_without_python(emulated_bare_pi: EmulatedPi, models: list[bytes],
                                                         tmp_path: Path) -> None:
    devices_file = emulated_bare_pi.write_devices_toml(tmp_path / "devices.toml", "bare-pi",
                                                       timer="benchmark_model", work_dir="netadapt-lut-bm")
    batch = [ModelJob(cell_id=30 + i, model=m) for i, m in enumerate(models[:2])]
    info, timings = _measure(devices_file, "bare-pi", batch)
    assert (info.runtime, info.runtime_version) == ("benchmark_model", "1.13.1")
    _check_timings(timings, batch)
