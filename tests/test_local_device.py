"""LocalDevice: real ai-edge-litert timings in spawned worker processes, driven through asyncio."""
from __future__ import annotations

import asyncio
import math
import socket
import time
from importlib import metadata

import pytest

from latency.devices.base import DeviceError, DeviceInfo, ModelJob, Timing, TimingSettings
from latency.devices.local import LocalDevice
from tests.test_tflite_runner import BROKEN, build_models


@pytest.fixture(scope="module")
def models() -> dict[str, bytes]:
    return build_models()


def test_measure_batch_in_order(models: dict[str, bytes]) -> None:
    batch = [
        ModelJob(cell_id=7, model=models["conv_small"]),
        ModelJob(cell_id=3, model=models["conv_big"]),
        ModelJob(cell_id=11, model=models["dense"]),
    ]

    async def scenario() -> tuple[DeviceInfo, list[Timing], list[Timing]]:
        device = LocalDevice()
        try:
            info = await device.start()
            first = await device.measure(batch)
            empty = await device.measure([])
        finally:
            await device.close()
        return info, first, empty

    info, timings, empty = asyncio.run(scenario())
    assert empty == []
    assert [t.cell_id for t in timings] == [7, 3, 11]
    for timing in timings:
        assert math.isfinite(timing.seconds) and timing.seconds > 0
        assert timing.temperature_c is None or -40 < timing.temperature_c < 150
    assert [t.measured_at for t in timings] == sorted(t.measured_at for t in timings)
    assert timings[1].seconds > timings[0].seconds  # 128-channel conv vs 1-channel conv

    assert info.name == "local" and info.kind == "local"
    assert info.runtime == "ai-edge-litert"
    assert info.runtime_version == metadata.version("ai-edge-litert")
    assert info.host == socket.gethostname()
    assert info.threads == 1
    assert info.settings["runs"] == 50 and info.settings["warmup"] == 2
    assert info.settings["workers"] == 1


def test_broken_model_names_the_cell_and_device_recovers(models: dict[str, bytes]) -> None:
    async def scenario() -> list[Timing]:
        device = LocalDevice(settings=TimingSettings(runs=10, warmup=1))
        await device.start()
        try:
            with pytest.raises(DeviceError, match=r"cell 42\b"):
                await device.measure(
                    [ModelJob(cell_id=41, model=models["dense"]), ModelJob(cell_id=42, model=BROKEN)]
                )
            return await device.measure([ModelJob(cell_id=43, model=models["dense"])])
        finally:
            await device.close()

    (timing,) = asyncio.run(scenario())
    assert timing.cell_id == 43 and timing.seconds > 0


def test_two_workers_and_custom_settings(models: dict[str, bytes]) -> None:
    settings = TimingSettings(runs=10, warmup=2, threads=2)

    async def scenario() -> tuple[DeviceInfo, list[list[Timing]]]:
        device = LocalDevice(workers=2, settings=settings)
        assert device.concurrency == 2  # one batch per worker: nothing is sent to it while it times
        info = await device.start()
        try:
            results = await asyncio.gather(
                device.measure([ModelJob(1, models["dense"]), ModelJob(2, models["conv_small"])]),
                device.measure([ModelJob(3, models["conv_small"])]),
            )
        finally:
            await device.close()
        return info, list(results)

    info, (first, second) = asyncio.run(scenario())
    assert [t.cell_id for t in first] == [1, 2] and [t.cell_id for t in second] == [3]
    assert all(t.seconds > 0 for t in first + second)
    assert info.threads == 2 and info.settings["runs"] == 10 and info.settings["workers"] == 2


def test_workers_never_time_two_models_at_once(models: dict[str, bytes]) -> None:
    """Two workers take batches concurrently, but the timed runs (end: measured_at, length:
    runs x seconds) of one never overlap those of the other: they share the timing token."""
    runs = 40

    async def scenario() -> list[Timing]:
        device = LocalDevice(workers=2, settings=TimingSettings(runs=runs, warmup=1))
        await device.start()
        try:
            batches = [[ModelJob(10 * b + i, models["conv_big"]) for i in range(6)] for b in range(4)]
            return [t for r in await asyncio.gather(*(device.measure(b) for b in batches)) for t in r]
        finally:
            await device.close()

    timings = sorted(asyncio.run(scenario()), key=lambda t: t.measured_at)
    assert len(timings) == 24
    spans = [(t.measured_at - runs * t.seconds, t.measured_at) for t in timings]
    overlap = sum(max(0.0, prev_end - start) for (_, prev_end), (start, _) in zip(spans, spans[1:]))
    # clocks differ by microseconds between the timer and time.time(); concurrent timing would
    # overlap by about half of all the timed time
    assert overlap < 0.02 * sum(end - start for start, end in spans)


def test_min_time_times_tiny_models_longer_and_says_so(models: dict[str, bytes]) -> None:
    async def scenario(min_time_s: float) -> list[Timing]:
        device = LocalDevice(settings=TimingSettings(runs=5, warmup=1, min_time_s=min_time_s))
        await device.start()
        try:
            return await device.measure([ModelJob(1, models["dense"]), ModelJob(2, models["dense"])])
        finally:
            await device.close()

    exact = asyncio.run(scenario(0.0))
    assert [t.runs for t in exact] == [None, None]  # the settings' runs
    longer = asyncio.run(scenario(0.02))
    for t in longer:
        assert t.runs > 5 and t.runs * t.seconds >= 0.02 * 0.999  # timed at least min_time_s in all


def test_builder_work_guard_holds_timing_off(models: dict[str, bytes]) -> None:
    """While the builder holds the device's work guard (as it does to render models), no model
    is loaded or timed: every timing of a batch handed over meanwhile ends after the release."""
    async def scenario() -> tuple[float, list[Timing]]:
        device = LocalDevice(workers=2, settings=TimingSettings(runs=5, warmup=1))
        await device.start()
        try:
            guard = device.host_work_guard()
            await asyncio.to_thread(guard.__enter__)
            measuring = asyncio.ensure_future(device.measure([ModelJob(i, models["dense"]) for i in range(4)]))
            # give the batch time to reach a worker, which must then wait for the guard (the
            # assertion holds however long this is)
            await asyncio.sleep(0.5)
            released = time.time()
            guard.__exit__(None, None, None)
            return released, await measuring
        finally:
            await device.close()

    released, timings = asyncio.run(scenario())
    assert len(timings) == 4 and all(t.measured_at > released for t in timings)


def test_measure_before_start_and_bad_arguments(models: dict[str, bytes]) -> None:
    with pytest.raises(DeviceError, match="before start"):
        asyncio.run(LocalDevice().measure([ModelJob(1, models["dense"])]))
    with pytest.raises(ValueError):
        LocalDevice(workers=0)
    with pytest.raises(ValueError):
        LocalDevice(settings=TimingSettings(min_time_s=-1))
    with pytest.raises(ValueError):
        LocalDevice(settings=TimingSettings(runs=0))


def test_placements_time_every_model_at_several_places(models: dict[str, bytes]) -> None:
    async def scenario() -> tuple[DeviceInfo, list[Timing]]:
        device = LocalDevice(settings=TimingSettings(runs=5, warmup=1, partners=(models["dense"],), placements=3))
        info = await device.start()
        try:
            return info, await device.measure([ModelJob(1, models["conv_small"]), ModelJob(2, models["dense"])])
        finally:
            await device.close()

    info, timings = asyncio.run(scenario())
    assert [t.runs for t in timings] == [None, None]  # 3 loads of 5 runs each, as the settings say
    assert all(0 < t.fastest_s <= t.seconds for t in timings)
    assert info.settings["placements"] == 3 and "loaded 3 times, each elsewhere in memory" in info.settings["method"]
