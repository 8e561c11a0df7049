"""Cells timed although the machine never read fast: kept flagged, left out of a cell with a pass
at full speed, and timed again in extra passes where a cell has none.

When this machine is slow cannot be arranged, so the build test tells a real local device's
timings which of them ran slow (as its speed gate would); everything else runs for real."""
from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from latency.build import BuildOptions, build_table
from latency.devices.base import DeviceInfo, ModelJob, Timing
from latency.devices.local import LocalDevice
from latency.finalize import finalize
from latency.layer_types import LayerType, grid_cells, parse_grid
from latency.recipe import TableRecipe
from latency.retime import MAX_EXTRA_PASSES, plan_retimes
from latency.store import TableStore
from models.families import get_arch


def test_plan_retimes_puts_each_cell_after_its_last_pass_and_stops_after_the_extra_ones() -> None:
    batches, left = plan_retimes({1: 1, 2: 1, 3: 2, 4: 4}, passes=2, per_call=1, seed=0, max_extra=3)
    assert sorted((p, k[0]) for p, k in batches) == [(2, 1), (2, 2), (3, 3)]
    assert left == [4]  # passes 2, 3 and 4 were its three extra ones
    assert [p for p, _ in batches] == sorted(p for p, _ in batches)
    assert plan_retimes({}, 6, 32, 0) == ([], [])
    assert plan_retimes({1: 5}, 6, 32, 0, max_extra=0) == ([], [1])
    with pytest.raises(ValueError):
        plan_retimes({1: 1}, 2, 0, 0)


def _store_with_passes(path: Path, passes: list[list[tuple[float, bool | None]]]) -> tuple[TableStore, list[int]]:
    """A table of one type with 2 cells; passes[p][i] = (seconds of cell i, slow)."""
    store = TableStore.create_or_open(path, "test", TableRecipe(device_kind="local"))
    t = LayerType("add-m8", "add", 1, 1, 8, False, None, 1, 2, 0, 0)
    store.add_layer_type(t, 1, grid_cells(t, 1))
    run = store.start_run(DeviceInfo("local", "local", "ai-edge-litert", "x", "h", 1))
    ids = sorted(store.cells())
    for p, row in enumerate(passes):
        store.add_measurements(run, "local", p, [Timing(c, s, 0.0, fastest_s=0.9 * s, slow=slow)
                                                 for c, (s, slow) in zip(ids, row)])
    return store, ids


def test_a_cell_counts_its_passes_at_full_speed_and_the_fastest_counts_every_pass(tmp_path: Path) -> None:
    store, (a, b) = _store_with_passes(tmp_path / "t.sqlite", [
        [(1.5e-6, True), (3.0e-6, True)],   # a slow phase: both cells 1.5x
        [(1.0e-6, False), (3.1e-6, True)],
        [(1.1e-6, None), (2.9e-6, True)],   # not read (another device): counts as full speed
    ])
    assert store.raw_by_cell() == {a: [1.0e-6, 1.1e-6], b: [3.0e-6, 3.1e-6, 2.9e-6]}
    assert store.raw_by_cell(full_speed_only=False)[a] == [1.5e-6, 1.0e-6, 1.1e-6]
    assert store.slow_cells() == {b: 2}
    finalize(store, 0, "mean")
    values = dict(store.db.execute("select c_in, value from aggregates").fetchall())
    assert values[1] == pytest.approx(1.05e-6)  # the slow pass left out of the mean
    assert values[2] == pytest.approx(3.0e-6)  # no pass at full speed: all of them
    finalize(store, 0, "fastest")
    values = dict(store.db.execute("select c_in, value from aggregates").fetchall())
    assert values[1] == pytest.approx(0.9e-6) and values[2] == pytest.approx(0.9 * 2.9e-6)
    store.close()
    reader = TableStore.open(tmp_path / "t.sqlite")  # a reader sees the same
    assert reader.slow_cells() == {b: 2}
    reader.close()


class ReadsSlowFor(LocalDevice):
    """A real local device whose speed gate is told which timings ran slow: `slow(cell, n)` for
    the n-th timing of a cell (from 1)."""

    def __init__(self, slow, **kw) -> None:
        super().__init__(**kw)
        self.slow, self.seen = slow, {}

    async def measure(self, batch: list[ModelJob]) -> list[Timing]:
        out = []
        for t in await super().measure(batch):
            n = self.seen[t.cell_id] = self.seen.get(t.cell_id, 0) + 1
            out.append(dataclasses.replace(t, slow=self.slow(t.cell_id, n)))
        return out


def test_the_build_times_again_the_cells_whose_every_pass_read_slow(tmp_path: Path) -> None:
    recipe = TableRecipe(device_kind="local", passes=2, grid_step=parse_grid("step:16"), runs=3, warmup=1,
                         sigma=0.0)
    arch = get_arch("wrn-10-1")
    # cells divisible by 3: slow in both passes and fast in the first extra one; by 7 (and not
    # 3): slow always; the rest: slow in their first pass only (the second one counts)
    device = ReadsSlowFor(lambda c, n: (c % 3 == 0 and n <= 2) or (c % 7 == 0 and c % 3 != 0) or n == 1,
                          settings=recipe.timing())
    out = tmp_path / "t.sqlite"
    result = asyncio.run(build_table(arch, out, [device], recipe, BuildOptions(models_per_call=64,
                                                                               verify_ops=False)))
    store = TableStore.open(out)
    cells = sorted(store.cells())
    passes = {}
    for c, p in store.db.execute("select cell_id, pass_index from measurements"):
        passes.setdefault(c, []).append(p)
    always = [c for c in cells if c % 7 == 0 and c % 3 != 0]
    for c in cells:
        want = (list(range(2 + MAX_EXTRA_PASSES)) if c in always else [0, 1, 2] if c % 3 == 0 else [0, 1])
        assert sorted(passes[c]) == want, c
    assert result.retimed == sum(len(p) - 2 for p in passes.values())
    assert result.kept_slow == len(always) and store.slow_cells().keys() == set(always)
    assert not result.incomplete_types
    store.close()
