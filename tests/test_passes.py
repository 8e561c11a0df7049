"""The pass engine: seeded pass orders, and real LiteRT timings committed batch by batch."""
from __future__ import annotations

import asyncio

import pytest

from latency.devices.base import ModelJob, TimingSettings
from latency.devices.local import LocalDevice
from latency.passes import DeviceRun, pass_offsets, pass_order, plan_passes, run_passes


def test_each_pass_has_its_own_order_a_function_of_seed_and_pass() -> None:
    keys = list(range(40))
    orders = [pass_order(keys, 0, p) for p in range(3)]
    assert all(sorted(o) == keys for o in orders)
    assert orders[0] != orders[1] != orders[2] and orders[0] != keys
    assert pass_order(reversed(keys), 0, 1) == orders[1]  # the keys' order given does not matter
    assert pass_order(keys, 1, 1) != orders[1]


def test_plan_skips_what_is_done_and_keeps_the_order() -> None:
    keys = [f"k{i}" for i in range(10)]
    full = plan_passes(keys, set(), 2, 4, seed=3)
    assert [(p, len(b)) for p, b in full] == [(0, 4), (0, 4), (0, 2), (1, 4), (1, 4), (1, 2)]
    assert [k for p, b in full if p == 1 for k in b] == pass_order(keys, 3, 1)
    done = {(k, 0) for k in keys} | {("k3", 1), ("k7", 1)}
    resumed = plan_passes(keys, done, 2, 4, seed=3)
    assert all(p == 1 for p, _ in resumed)
    assert [k for _, b in resumed for k in b] == [k for k in pass_order(keys, 3, 1) if k not in ("k3", "k7")]
    assert plan_passes(keys, {(k, p) for k in keys for p in range(2)}, 2, 4, seed=3) == []
    with pytest.raises(ValueError):
        plan_passes(keys, set(), 0, 4, seed=0)


def test_passes_left_start_evenly_over_the_span() -> None:
    assert pass_offsets(range(4), 4, 60.0) == {0: 0.0, 1: 15.0, 2: 30.0, 3: 45.0}
    # a resumed run keeps the gap between two passes: the passes left start one gap apart
    assert pass_offsets([3, 2, 3], 4, 60.0) == {2: 0.0, 3: 15.0}
    assert pass_offsets(range(4), 4, 0.0) == {}  # back to back
    with pytest.raises(ValueError):
        pass_offsets(range(2), 2, -1.0)


def test_batches_are_committed_one_by_one_until_stopped() -> None:
    from latency.overhead import probe_models

    models = {label: m for label, _, m in probe_models((1, 2, 4))}
    ids = {label: i for i, label in enumerate(models)}
    batches = plan_passes(models, set(), 3, 2, seed=0)

    async def run(stop_after: int | None):
        device = LocalDevice(settings=TimingSettings(runs=3, warmup=1))
        committed: list[tuple[int, list[str]]] = []
        stop = asyncio.Event()

        def commit(run: DeviceRun, p: int, keys: list[str], timings) -> int:
            assert [t.cell_id for t in timings] == [ids[k] for k in keys] and all(t.seconds > 0 for t in timings)
            committed.append((p, keys))
            if stop_after is not None and len(committed) >= stop_after:
                stop.set()
            return len(keys)

        await device.start()
        try:
            outcome = await run_passes([DeviceRun(device, 1)], batches,
                                       lambda keys: [ModelJob(ids[k], models[k]) for k in keys], commit, stop=stop)
        finally:
            await device.close()
        return committed, outcome

    committed, outcome = asyncio.run(run(None))
    assert sorted(committed) == sorted(batches) and outcome.stored == 9 and not outcome.left and not outcome.stopped
    committed, outcome = asyncio.run(run(1))  # the batches in flight finish, no new one is taken
    assert outcome.stopped and 1 <= len(committed) < len(batches) and outcome.left == len(batches) - len(committed)


def test_a_batch_put_back_after_the_others_finished_is_still_measured() -> None:
    """One device runs dry while another still holds a batch it will fail: the first must not
    end, or the batch is left unmeasured (a multi-device build missing cells)."""
    from latency.devices.base import Device, DeviceError, DeviceInfo, Timing

    class Scripted(Device):
        def __init__(self, name: str, fail_after: asyncio.Event | None = None) -> None:
            self.name, self.fail_after, self.calls = name, fail_after, 0
            self.done = asyncio.Event()

        async def start(self) -> DeviceInfo:
            return DeviceInfo(self.name, "test", "none", "0", "here", 1)

        async def measure(self, batch: list[ModelJob]) -> list[Timing]:
            self.calls += 1
            if self.fail_after is not None:  # fails once the other device has nothing left to take
                await self.fail_after.wait()
                raise DeviceError(f"{self.name}: lost")
            if self.calls == 2:
                self.done.set()
            return [Timing(j.cell_id, 0.001, 0.0, 50.0, False) for j in batch]

        async def close(self) -> None:
            pass

    async def run():
        good = Scripted("good")
        bad = Scripted("bad", fail_after=good.done)
        stored: list[tuple[str, int]] = []

        def commit(run: DeviceRun, p: int, keys: list[int], timings) -> int:
            stored.extend((run.device.name, k) for k in keys)
            return len(keys)

        # good takes batches 0 and 1 (one ahead), bad takes 2 and fails it after good's second call
        outcome = await run_passes([DeviceRun(good, 0), DeviceRun(bad, 1)], [(0, [0]), (0, [1]), (0, [2])],
                                   lambda keys: [ModelJob(k, b"") for k in keys], commit, max_failures=1)
        return outcome, stored

    outcome, stored = asyncio.run(run())
    assert sorted(stored) == [("good", 0), ("good", 1), ("good", 2)]
    assert outcome.left == 0 and len(outcome.retired) == 1 and "bad: lost" in outcome.retired[0]
