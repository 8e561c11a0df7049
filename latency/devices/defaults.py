"""Each device's default recipe: the built-in `local` profile and the SSH profiles' values.

The local CPU's defaults are the ones its measurements validated (`docs/measuring.md`): a step:4
grid with points on both sides of XNNPACK's channel blocks, cells timed in a network context in
6 passes of 20 invocations, each one load of the cell, the median of the passes' fastest
invocations, no smoothing. SSH devices start
from the thesis's method (back to back, mean of 50 runs, 3 passes, Gaussian sigma 3) and take
what their profile sets.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..recipe import RecipeError, TableRecipe

#: the thesis's method, where SSH profiles start
SSH_RECIPE = TableRecipe(device_kind="ssh")
#: the local CPU back to back (`--context alone`): tiny layers timed until 5 ms are timed, like
#: benchmark_model --min_secs (docs/measuring.md)
LOCAL_ALONE_MIN_TIME_S = 0.005
#: the local CPU in a network context: dense vector work before each timed invocation (30 us did
#: what 300 us did, docs/measuring.md §1)
LOCAL_VECTOR_S = 30e-6


@dataclass(frozen=True)
class DeviceDefaults:
    """What a device profile says about measuring on it."""

    recipe: TableRecipe
    alone_min_time_s: float = 0.0  # the minimum timed duration when a table is timed back to back
    report_passes: int = 3  # passes of each whole network in latency-report
    # latency-report spreads its passes over this long for a table whose cells were measured over at
    # least that long: a large network's fastest over 5 minutes of a shared host held within 1.5 %,
    # over 30 s or 1 minute it moved by up to 16 % (docs/measuring.md §1); a table measured in less
    # time met its host in the state the report finds right after it, and is reported back to back
    report_span_s: float = 300.0


def local_defaults() -> DeviceDefaults:
    from ..context import local_channel_block

    # 6 passes of 20 invocations rather than 3 of 50: what frees a cell from a disturbed stretch of
    # this shared CPU is a pass at another time, not more invocations in the same pass.
    # Each pass is one load of the model, wherever it lands in memory, and a cell is the median of
    # its passes' fastest invocations: a network runs each layer where it happens to lie, not at
    # its luckiest place; the fastest of 18 placements under-predicted narrow networks by 6 % on
    # one host (docs/measuring.md §7, "The typical place, not the luckiest").
    # Before each invocation, 30 us of dense vector arithmetic: inside a network the layer before
    # ran on the widest vector units, and a server core clocks down under them; a cell timed
    # after light partners only ran one layer type 14 % faster than the network did (docs/measuring.md §1)
    recipe = TableRecipe(device_kind="local", grid_step=4, grid_block=local_channel_block(), context="network",
                         vector_s=LOCAL_VECTOR_S, passes=6, runs=20, placements=1, estimator="median-fastest",
                         sigma=0.0)
    # a whole network is quick to time: 10 passes (10 loads), combined like the cells
    return DeviceDefaults(recipe, alone_min_time_s=LOCAL_ALONE_MIN_TIME_S, report_passes=10)


def device_names(spec: str) -> list[str]:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise ValueError("--device is empty: give 'local' or an SSH device profile")
    return names


def defaults_for(spec: str, devices_file: str | Path | None = None) -> DeviceDefaults:
    """The defaults of `--device spec`: `local`, a profile, a group or a list of profiles (whose
    recipes must agree: one table has one recipe)."""
    names = device_names(spec)
    if names == ["local"]:
        return local_defaults()
    if "local" in names:
        raise ValueError("'local' cannot be combined with SSH devices in one build (their timings differ)")
    from .profiles import expand_names, find_devices_file, load_profiles, profile_defaults

    path = find_devices_file(devices_file)
    chosen = expand_names(names, load_profiles(path), str(path))
    found = {p.name: profile_defaults(p) for p in chosen}
    distinct = set(found.values())
    if len(distinct) > 1:
        first, *_ = found.values()
        fields = sorted({f for d in distinct for f in first.recipe.to_json()
                         if getattr(d.recipe, f) != getattr(first.recipe, f)})
        raise RecipeError(f"the profiles of {', '.join(found)} ask for different recipes ({', '.join(fields)}); "
                          "one table has one recipe: align them in the devices file or give the flags")
    return distinct.pop()
