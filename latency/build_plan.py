"""The plan `build-tables` prints before measuring, and alone with `--dry-run`: cells, passes,
bytes to send and an ETA (the maths are `latency.eta`).

Making a plan reads only what it needs: the grid of the architecture under the recipe, the table
being continued (read-only: what it holds already), the device profiles (their timer, transfer
and `reference_table`) and that reference table. It touches no device and writes no file. A
device without a reference table gets its ETA from `calibrate`: one batch of the build's own
size timed on the device, run by a real build before it starts (never by --dry-run).
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from models.arch import Arch
from . import eta
from .layer_types import LayerType, grid_cells, network_layer_types
from .recipe import TableRecipe

Report = Callable[[str], None]


@dataclass(frozen=True)
class PlanInputs:
    """What the devices say about a plan."""

    devices: int
    kind: str  # "local" or "ssh"
    timer: str | None = None  # SSH devices: "runner" or "benchmark_model"
    transfer: str | None = None
    reference: Path | None = None  # a table of this device whose cells estimate the build
    why_no_reference: str = ""


def device_inputs(spec: str, devices_file: str | Path | None) -> PlanInputs:
    """The devices of `--device spec`: how many, how batches travel, their reference table."""
    from .devices.defaults import device_names

    names = device_names(spec)
    if names == ["local"]:
        return PlanInputs(1, "local", why_no_reference="the local device has no reference table")
    from .devices.profiles import expand_names, find_devices_file, load_profiles

    path = find_devices_file(devices_file)
    chosen = expand_names(names, load_profiles(path), str(path))
    first = chosen[0]
    references = {p.reference_table for p in chosen}
    reference, why = None, ""
    if len(references) > 1:
        why = f"the devices name different reference tables ({', '.join(sorted(str(r) for r in references))})"
    elif first.reference_table is None:
        why = f"profile {first.name} names no reference_table"
    else:
        reference = Path(first.reference_table)
        if not reference.is_file():
            reference, why = None, f"reference table {first.reference_table} of profile {first.name} does not exist"
    return PlanInputs(len(chosen), "ssh", first.timer, first.transfer, reference, why)


def grid_of(arch: Arch, recipe: TableRecipe) -> tuple[dict[str, LayerType], dict[str, list[tuple[int, int]]]]:
    types = network_layer_types([arch])
    return types, {k: grid_cells(t, recipe.grid_step, recipe.grid_block) for k, t in types.items()}


def imported_table(path: Path, arch: Arch) -> bool:
    """Whether `path` is an imported table of `arch` (the shipped thesis table): measuring into it
    would mix its cells with new ones (read-only)."""
    if not path.is_file():
        return False
    from .store import TableStore

    store = TableStore.open(path)
    try:
        meta = store.meta()
    finally:
        store.close()
    return meta.get("source") == "import" and meta.get("arch") == arch.name


def measured_already(out: Path, arch: Arch, passes: int) -> int:
    """Measurements of the table being continued in `out` that count towards `passes` (read-only)."""
    if not out.is_file():
        return 0
    from .store import TableStore

    store = TableStore.open(out)
    try:
        if store.meta().get("arch") != arch.name:
            return 0  # build_table refuses it; the plan counts a fresh build
        return sum(1 for _, p in store.measured_passes() if p < passes)
    finally:
        store.close()


def _setup_bytes(inputs: PlanInputs) -> int:
    """What an SSH device uploads once: the runner, the feeder and (pool transfer) the weight pool."""
    if inputs.timer != "runner":
        return 0
    from .devices.ssh import FEEDER_PATH, RUNNER_PATH

    size = RUNNER_PATH.stat().st_size + FEEDER_PATH.stat().st_size
    if inputs.transfer == "pool":
        from . import tflite_rewrite

        size += 4 * int(getattr(tflite_rewrite, "_POOL_FLOATS", 0))
    return size


def make_plan(arch: Arch, recipe: TableRecipe, device_spec: str, devices_file: str | Path | None, out: Path,
              models_per_call: int) -> eta.Plan:
    """The plan of `build-tables` with these settings, the ETA from the devices' reference table
    when they name one (else `eta_source` says that a calibration is needed)."""
    if imported_table(out, arch):
        raise ValueError(f"{out} is an imported table: measuring into it would mix its cells with new ones; "
                         "pass another --out")
    inputs = device_inputs(device_spec, devices_file)
    types, grid = grid_of(arch, recipe)
    n_cells = sum(len(c) for c in grid.values())
    left = n_cells * recipe.passes - measured_already(out, arch, recipe.passes)
    model_bytes = sum(eta.model_bytes(types[k], i, o) for k, cells in grid.items() for i, o in cells)
    sent = None
    if inputs.kind == "ssh":
        if inputs.timer == "benchmark_model":  # plain model files, one SSH channel each
            sent = float(model_bytes)
        else:
            weights = sum(4 * eta.cell_weights(types[k], i, o) for k, cells in grid.items() for i, o in cells)
            per_model = eta.sent_bytes_per_model(inputs.transfer or "pool", models_per_call)
            sent = per_model * n_cells + (eta.ZLIB_WEIGHT_RATIO * weights if inputs.transfer == "zlib" else 0.0)
    plan = eta.Plan(cells=n_cells, passes=recipe.passes, measurements_left=left, devices=inputs.devices,
                    model_bytes_per_pass=model_bytes, sent_bytes_per_pass=sent,
                    setup_bytes_per_device=_setup_bytes(inputs) if inputs.kind == "ssh" else 0,
                    transfer=("files" if inputs.timer == "benchmark_model" else inputs.transfer),
                    eta_source=f"needs a reference table or a calibration batch on the device ({inputs.why_no_reference}"
                               + ("; the progress lines give it once measuring starts)" if inputs.kind == "local" else
                                  "; a build without --dry-run times one batch there first)"))
    if inputs.reference is None:
        return plan
    from .table import LatencyTable

    ref = LatencyTable.open(inputs.reference)
    sums = eta.reference_latencies(grid, types, ref.types, ref.values)
    passes_left = left / n_cells if n_cells else 0.0
    timed = eta.timed_compute_s(sums.seconds, recipe.warmup, recipe.runs, passes_left)
    source = f"from reference table {inputs.reference.name}"
    if ref.recipe.threads != recipe.threads:
        source += f", timed with {ref.recipe.threads} thread(s), not {recipe.threads}"
    return replace(plan, timed_s=timed, efficiency=eta.REFERENCE_EFFICIENCY,
                   eta_s=eta.eta_s(timed, eta.REFERENCE_EFFICIENCY, inputs.devices), eta_source=source,
                   estimated_share=sums.estimated_seconds / sums.seconds if sums.seconds else 0.0)


def print_plan(args, arch: Arch, recipe: TableRecipe, out: Path, emit: Report = print) -> eta.Plan:
    """Makes the plan of a build-tables command line and prints it (before measuring)."""
    plan = make_plan(arch, recipe, args.device, args.devices_file, out, args.models_per_call)
    emit(f"plan for {arch.name} on {args.device} ({recipe.grid}, block {recipe.grid_block}, "
         f"{recipe.warmup} + {recipe.runs} runs" + (f" at {recipe.placements} placements" if recipe.placements > 1 else "")
         + "):")
    for line in eta.plan_lines(plan):
        emit(f"  {line}")
    return plan


async def calibrate(plan: eta.Plan, arch: Arch, recipe: TableRecipe, devices: list, models_per_call: int,
                    seed: int, emit: Report) -> float:
    """Times one batch of the build's cells (a random sample of its grid, the build's batch size)
    on the first device and prints the ETA it gives; the timings are not stored. Returns it."""
    from .devices.base import DeviceError, ModelJob
    from .generate import CellModels

    if plan.measurements_left == 0:
        return 0.0

    types, grid = grid_of(arch, recipe)
    cells = [(k, i, o) for k, cs in grid.items() for i, o in cs]
    sample = random.Random(seed).sample(cells, min(models_per_call, len(cells)))
    generator = CellModels({k: types[k] for k in {c[0] for c in sample}})
    jobs = [ModelJob(n, generator.render(k, i, o, seed=n)) for n, (k, i, o) in enumerate(sample)]
    device = devices[0]
    try:
        await device.start()
        try:
            started = time.monotonic()
            await device.measure(jobs)
            wall = time.monotonic() - started
        finally:
            await device.close()
    except DeviceError as exc:  # the build itself retires a device that fails, or stops
        emit(f"  ETA: the calibration batch failed ({exc}); the progress lines give it as the build measures")
        return float("nan")
    seconds = eta.calibrated_eta_s(wall, len(jobs), plan.measurements_left, len(devices))
    on = f"on {len(devices)} devices" if len(devices) > 1 else "on 1 device"
    emit(f"  ETA: {eta.format_duration(seconds)} {on} (calibration: {len(jobs)} cells in {wall:.1f} s on "
         f"{getattr(device, 'name', 'the device')})")
    return seconds
