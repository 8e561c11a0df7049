"""Shared fixtures: small real latency tables, built once per test session on this CPU."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

# CI-sized settings: a real LiteRT measurement of every cell, few runs, one pass, one load per
# cell (tests of several placements build their own tables)
SMALL_TIMING = dict(runs=5, warmup=1, placements=1)


def build_small_table(arch_name: str, out: Path, grid: str = "step:4", passes: int = 1, sigma: float = 1.0) -> Path:
    from latency.build import BuildOptions, build_table
    from latency.devices.local import LocalDevice
    from latency.layer_types import parse_grid
    from latency.recipe import TableRecipe
    from models.families import get_arch

    recipe = TableRecipe(device_kind="local", passes=passes, grid_step=parse_grid(grid), sigma=sigma, **SMALL_TIMING)
    asyncio.run(build_table(get_arch(arch_name), out, [LocalDevice(settings=recipe.timing())], recipe,
                            BuildOptions(models_per_call=64)))
    return out


@pytest.fixture(scope="session")
def small_table(tmp_path_factory):
    """`small_table("wrn-10-1")` -> path of a real table for that network (cached per session)."""
    cache: dict[tuple, Path] = {}

    def get(arch_name: str, grid: str = "step:4") -> Path:
        key = (arch_name, grid)
        if key not in cache:
            out = tmp_path_factory.mktemp("tables") / f"local-{arch_name}.sqlite"
            cache[key] = build_small_table(arch_name, out, grid)
        return cache[key]

    return get
