"""Time and bytes before work: what a table build will cost, from its grid and recipe (pure maths).

A build times every cell of its grid `passes` times, each time `warmup + runs` invocations. The
*pure timed compute* is the sum of those invocations' latencies. A build takes longer by its
overheads (loading each model, starting the device's runner once per call, sending batches),
counted as an efficiency factor (wall / pure timed compute, the ratio `build-tables` prints at
its end), and shorter by the devices that share its queue.

Where a cell's latency comes from before anything is measured:

- a **reference table** of the same device (a profile's `reference_table`, e.g. the shipped Pi 3B
  table): the cell's value in the reference type of the same op, kernel, stride and input map;
  types the reference lacks (residual additions, unfoldable batch-norms) from a cost model fitted
  to the reference (`CostModel`), and the plan says how much of the estimate that is;
- else a **calibration batch** timed on the device: its wall time per cell, overheads included.

Bytes: a rendered model is its float32 weights plus a small flatbuffer skeleton; over SSH with the
weight-pool transfer only the skeleton and (offset, length) references travel, zlib-compressed per
batch (`latency.devices.ssh_transfer`). The constants below were measured on the project's own
renders and `encode_batch`; `tests/test_eta.py` checks the estimates against real renders.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from .layer_types import LayerType

#: wall / pure timed compute assumed for a device with a reference table (docs/pi-builds.md):
#: what this project's builds reach on the local CPU back to back (1.20-1.24), and the share of
#: per-cell overhead the rpi3b defaults leave room for (about 30 ms beside ~100 ms timed)
REFERENCE_EFFICIENCY = 1.3

#: bytes of a rendered model besides its float32 weights, per op (the median over renders of
#: wrn-10-1 and mbv2-se-tiny cells; conv cells spread 1112-1264)
STRUCTURE_BYTES = {"conv": 1230, "dwconv": 1415, "head": 1430, "add": 960, "bn_act": 1300, "se": 2355}
#: weight-pool transfer: encoded bytes per model = POOL_BYTES_FIXED + POOL_BYTES_PER_CALL / models
#: per call (the batch's header and zlib's start are spread over its models). Fitted to encode_batch
#: on shuffled WRN and MobileNetV2 batches: 780, 224, 139, 114 bytes at 1, 8, 32, 128 per call
POOL_BYTES_FIXED = 115.0
POOL_BYTES_PER_CALL = 700.0
#: zlib transfer: random float32 weights compress to this share (the skeleton as in the pool case)
ZLIB_WEIGHT_RATIO = 0.935


class EtaError(ValueError):
    """A plan that cannot be made (no cells, a reference that fits no layer type)."""


# ------------------------------------------------------------------------------------ cells

def out_size(t: LayerType) -> int:
    return -(-t.in_size // t.stride)


def cell_weights(t: LayerType, c_in: int, c_out: int) -> int:
    """Float32 values a cell's model holds (batch-norm folded into a bias, as converted)."""
    k2 = t.kernel * t.kernel
    if t.op == "conv":
        return k2 * c_in * c_out + c_out
    if t.op == "dwconv":
        return k2 * c_in + c_in
    if t.op == "bn_act":
        return 2 * c_in
    if t.op == "se":
        return 2 * c_in * c_out + c_in + c_out
    if t.op == "head":
        return c_in * c_out + c_out
    return 0  # add: no weights


def cell_work(t: LayerType, c_in: int, c_out: int) -> tuple[float, float]:
    """(multiply-accumulates, elements read and written) of one invocation of a cell."""
    hw_in, hw_out = t.in_size * t.in_size, out_size(t) * out_size(t)
    k2 = t.kernel * t.kernel
    if t.op == "conv":
        return hw_out * k2 * c_in * c_out, hw_in * c_in + hw_out * c_out
    if t.op == "dwconv":
        return hw_out * k2 * c_in, hw_in * c_in + hw_out * c_in
    if t.op == "add":
        return 0.0, 3 * hw_in * c_in
    if t.op == "bn_act":
        return 0.0, 2 * hw_in * c_in
    if t.op == "se":
        return hw_in * c_in + 2 * c_in * c_out, 3 * hw_in * c_in
    if t.op == "head":
        return hw_in * c_in + c_in * c_out, hw_in * c_in + c_out
    raise EtaError(f"no work model for op {t.op!r}")


def model_bytes(t: LayerType, c_in: int, c_out: int) -> int:
    """Estimated size of a cell's rendered .tflite model."""
    return 4 * cell_weights(t, c_in, c_out) + STRUCTURE_BYTES.get(t.op, max(STRUCTURE_BYTES.values()))


def sent_bytes_per_model(transfer: str, models_per_call: int, weight_bytes: float = 0.0) -> float:
    """Bytes one model costs over SSH: `pool` sends references into the device's weight pool,
    `zlib` the weights themselves (`weight_bytes`, compressed) besides the same skeleton."""
    if models_per_call < 1:
        raise EtaError("models per call must be >= 1")
    fixed = POOL_BYTES_FIXED + POOL_BYTES_PER_CALL / models_per_call
    if transfer == "pool":
        return fixed
    if transfer == "zlib":
        return fixed + ZLIB_WEIGHT_RATIO * weight_bytes
    raise EtaError(f"unknown transfer {transfer!r}")


# ------------------------------------------------------------------------------ reference

@dataclass(frozen=True)
class CostModel:
    """latency = fixed + per_mac * MACs + per_element * elements, fitted to a reference table by
    least relative squares: only for layer types the reference lacks (a rough estimate)."""

    fixed_s: float
    per_mac_s: float
    per_element_s: float

    def __call__(self, t: LayerType, c_in: int, c_out: int) -> float:
        macs, elements = cell_work(t, c_in, c_out)
        return self.fixed_s + self.per_mac_s * macs + self.per_element_s * elements


def fit_cost_model(samples: Iterable[tuple[LayerType, int, int, float]]) -> CostModel:
    """The `CostModel` of (layer type, c_in, c_out, seconds) samples; coefficients kept >= 0."""
    rows, ys = [], []
    for t, c_in, c_out, seconds in samples:
        if seconds > 0 and math.isfinite(seconds):
            rows.append((1.0, *cell_work(t, c_in, c_out)))
            ys.append(seconds)
    if len(rows) < 3:
        raise EtaError("a cost model needs at least 3 timed cells")
    x, y = np.asarray(rows, float), np.asarray(ys, float)
    scale = x.max(axis=0)
    scale[scale == 0] = 1.0
    # relative errors: small cells weigh as much as large ones
    coef, *_ = np.linalg.lstsq(x / scale / y[:, None], np.ones_like(y), rcond=None)
    coef = np.maximum(coef / scale, 0.0)
    return CostModel(float(coef[0]), float(coef[1]), float(coef[2]))


def _reference_for(t: LayerType, reference: Mapping[str, LayerType]) -> list[LayerType]:
    """Reference types timing the same op on the same map, largest first."""
    same = [r for r in reference.values()
            if (r.op, r.kernel, r.stride, r.in_size) == (t.op, t.kernel, t.stride, t.in_size)]
    return sorted(same, key=lambda r: (-r.n_cells, r.key))


@dataclass(frozen=True)
class CellLatencies:
    """Per-pass latency sums of a grid, one invocation of every cell."""

    seconds: float  # every cell once
    estimated_seconds: float  # of which from the cost model (types or cells the reference lacks)
    cells: int
    estimated_cells: int


def reference_latencies(grid: Mapping[str, Sequence[tuple[int, int]]], types: Mapping[str, LayerType],
                        reference: Mapping[str, LayerType], values: Mapping[str, np.ndarray],
                        model: CostModel | None = None) -> CellLatencies:
    """The latency sum of every cell of `grid` ({type key: [(c_in, c_out), ...]}) read from a
    reference table (`reference` types and their `values` arrays, seconds): the largest
    reference type of the same op, kernel, stride and map that holds the cell; else `model`."""
    model = model or fit_cost_model(
        (r, r.in_lo + i, (r.out_lo + j) if r.two_axes else 0, float(v))
        for key, r in reference.items() for (i, j), v in np.ndenumerate(values[key]))
    total = estimated = 0.0
    n = n_estimated = 0
    for key, cells in grid.items():
        t = types[key]
        candidates = _reference_for(t, reference)
        for c_in, c_out in cells:
            n += 1
            for r in candidates:
                probe_out = c_out if r.two_axes else r.out_lo
                if r.contains(c_in, probe_out):
                    total += float(values[r.key][c_in - r.in_lo, (probe_out - r.out_lo) if r.two_axes else 0])
                    break
            else:
                seconds = model(t, c_in, c_out)
                total += seconds
                estimated += seconds
                n_estimated += 1
    return CellLatencies(total, estimated, n, n_estimated)


# ------------------------------------------------------------------------------------ time

def timed_compute_s(latency_per_pass_s: float, warmup: int, runs: int, passes: float) -> float:
    """Pure timed compute: every cell's latency x (warmup + runs) invocations x passes."""
    if warmup < 0 or runs < 1 or passes < 0 or latency_per_pass_s < 0:
        raise EtaError("warmup >= 0, runs >= 1, passes >= 0 and a latency sum >= 0 are needed")
    return latency_per_pass_s * (warmup + runs) * passes


def eta_s(timed_s: float, efficiency: float, devices: int) -> float:
    """Wall time of a build: its pure timed compute times the efficiency factor, shared by
    `devices` working through one queue."""
    if devices < 1 or efficiency < 1.0:
        raise EtaError("devices >= 1 and an efficiency factor >= 1 (wall / timed) are needed")
    return timed_s * efficiency / devices


def calibrated_eta_s(calibration_wall_s: float, calibration_cells: int, measurements_left: int,
                     devices: int) -> float:
    """Wall time from a calibration batch timed on one device: its wall time per cell (overheads
    included) for every measurement left, shared by `devices`."""
    if calibration_cells < 1 or calibration_wall_s <= 0 or devices < 1:
        raise EtaError("a calibration needs >= 1 cell timed in a positive time, and >= 1 device")
    return calibration_wall_s / calibration_cells * measurements_left / devices


# ----------------------------------------------------------------------------------- plan

@dataclass(frozen=True)
class Plan:
    """What a build will do before it does it."""

    cells: int  # per pass
    passes: int
    measurements_left: int  # (cell, pass) pairs not yet in the table
    devices: int
    model_bytes_per_pass: int
    sent_bytes_per_pass: float | None = None  # over SSH (None: a local device sends nothing)
    setup_bytes_per_device: int = 0  # runner, feeder and weight pool, once per device
    transfer: str | None = None
    timed_s: float | None = None  # pure timed compute of what is left
    efficiency: float | None = None
    eta_s: float | None = None
    eta_source: str = ""  # where the ETA comes from, or why there is none
    estimated_share: float = 0.0  # of the timed compute from the cost model


def format_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def format_duration(seconds: float) -> str:
    s = int(round(max(seconds, 0.0)))
    d, rem = divmod(s, 86400)
    h, rem = divmod(rem, 3600)
    m, sec = divmod(rem, 60)
    if d:
        return f"{d} d {h} h {m:02d} min"
    if h:
        return f"{h} h {m:02d} min"
    return f"{m} min {sec:02d} s" if m else f"{sec} s"


def plan_lines(plan: Plan) -> list[str]:
    """The plan as the lines build-tables prints before measuring (and --dry-run alone)."""
    total = plan.cells * plan.passes
    left = "" if plan.measurements_left == total else f", left to measure: {plan.measurements_left:,}"
    lines = [f"cells: {plan.cells:,} per pass x {plan.passes} passes = {total:,} measurements{left}"]
    model = f"bytes: {format_bytes(plan.model_bytes_per_pass)} of models per pass"
    if plan.sent_bytes_per_pass is not None:
        per_model = plan.sent_bytes_per_pass / plan.cells if plan.cells else 0.0
        model += (f"; sent over SSH ({plan.transfer} transfer): {format_bytes(plan.sent_bytes_per_pass)} per pass "
                  f"({per_model:,.0f} B per model) + {format_bytes(plan.setup_bytes_per_device)} set-up per device")
    lines.append(model)
    if plan.measurements_left == 0:
        lines.append("ETA: nothing left to measure")
    elif plan.eta_s is None:
        lines.append(f"ETA: {plan.eta_source}")
    else:
        share = (f"; {plan.estimated_share:.1%} of it from a cost model for cells the reference lacks"
                 if plan.estimated_share >= 0.0005 else "")
        lines.append(f"pure timed compute: {format_duration(plan.timed_s or 0.0)} ({plan.eta_source}{share})")
        on = f"on {plan.devices} devices" if plan.devices > 1 else "on 1 device"
        factor = f" x efficiency {plan.efficiency:.2f}" if plan.efficiency else ""
        lines.append(f"ETA: {format_duration(plan.eta_s)} {on}{factor}")
    return lines
