"""The interpreter's per-invoke overhead, the one bias a sum of single-layer timings has by
construction: every single-layer model pays it once, the whole network once in total.

It is the intercept of the latency of chains of n trivial ops against n (the slope is the
per-op dispatch cost, which the network pays per layer too). The probe chains are timed like
the table's cells, stored in the table file (`invoke_probes` rows), and the estimate is kept
in the table's meta (`OVERHEAD_META_KEY`), where the predictor reads it for a table timed in a
network context (`latency.context.overhead_per_extra_layer_s`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

from .context import OVERHEAD_META_KEY
from .devices.base import Device, DeviceInfo, ModelJob, Timing
from .metrics import fit_line
from .passes import DeviceRun, plan_passes, run_recorded
from .smoothing import ESTIMATOR_COLUMNS, estimate
from .store import TableStore
from .store_networks import add_probe_passes, forget_probes, probe_passes, probe_values, run_rows, table_devices

Report = Callable[[str], None] | None

#: op-chain lengths of the overhead probes (1-element MULs: compute is negligible)
PROBE_CHAIN = (1, 2, 4, 8, 16, 32)
PROBE_LABELS = tuple(f"mul-chain-{n}" for n in PROBE_CHAIN)
#: rounds of the probes per pass of a network-context build, spread evenly over its batches. A
#: probe round lasts a millisecond; a shared machine has seconds-long phases in which everything
#: runs ~1.5x slower, and rounds timed back to back can all land in one (docs/measuring.md §10)
PROBE_ROUNDS_PER_PASS = 8

#: a probe in a build's plan: (probe label, round)
ProbeKey = tuple[str, int]


def probe_models(chain: Sequence[int] = PROBE_CHAIN) -> list[tuple[str, int, bytes]]:
    """(label, n_ops, model) of chains of n MULs on one element: x <- x * x, n times.

    x * x on the input cannot be constant-folded (x + 1.0 chains can), so the model holds
    exactly n ops; their compute is a few ns, so the time is invoke overhead + n x dispatch.
    """
    import contextlib
    import io

    import tensorflow as tf

    from .tflite_schema import describe_model

    out = []
    for n in chain:
        def f(x, n=n):
            for _ in range(n):
                x = x * x
            return x

        fn = tf.function(f).get_concrete_function(tf.TensorSpec((1, 1, 1, 1), tf.float32))
        with contextlib.redirect_stdout(io.StringIO()):
            model = bytes(tf.lite.TFLiteConverter.from_concrete_functions([fn], trackable_obj=None).convert())
        ops = describe_model(model)
        if len(ops) != n or any(name != "MUL" for name, _ in ops):
            raise RuntimeError(f"probe chain of {n} MULs converted to {[o for o, _ in ops]}")
        out.append((f"mul-chain-{n}", n, model))
    return out


@dataclass(frozen=True)
class OverheadEstimate:
    device: str
    seconds: float  # per-invoke overhead: intercept of probe latency on n ops
    per_op_s: float  # slope: dispatch cost per op, paid in the network too
    stderr_s: float  # standard error of the intercept
    probes: dict[str, float]  # probe label -> its passes combined (seconds)
    run_ids: tuple[int, ...]
    runtime: str = ""
    measured_at: float = 0.0
    combined: str = "median"  # the estimator (smoothing.ESTIMATORS) each probe's passes were combined by

    def to_meta(self) -> dict:
        per_pass = "fastest invocation" if ESTIMATOR_COLUMNS[self.combined] == "fastest" else "mean invocation"
        what = f"{self.combined} of the passes' {per_pass}"
        return {"device": self.device, "seconds": self.seconds, "per_op_s": self.per_op_s,
                "stderr_s": self.stderr_s, "probes": self.probes, "run_ids": list(self.run_ids),
                "runtime": self.runtime, "measured_at": self.measured_at, "combined": self.combined,
                "method": f"intercept of the least-squares line of probe latency ({what}) on n for chains "
                          f"of n 1-element MULs, n in {list(PROBE_CHAIN)}, timed like the table's cells"}

    @classmethod
    def from_meta(cls, d: Mapping) -> "OverheadEstimate":
        return cls(d["device"], float(d["seconds"]), float(d["per_op_s"]), float(d["stderr_s"]),
                   dict(d.get("probes", {})), tuple(d.get("run_ids", ())), d.get("runtime", ""),
                   float(d.get("measured_at", 0.0)), d.get("combined", "median"))


def estimate_overhead(device: str, rows: Iterable[tuple[str, int, float]], run_ids: Sequence[int] = (),
                      runtime: str = "", combined: str = "median") -> OverheadEstimate:
    """The overhead from probe rows (label, n_ops, seconds): each probe's passes combined by the
    estimator `combined` (by default the median, robust to a pass disturbed by another process;
    rows hold that estimator's per-pass figure), then the line through them."""
    by_probe: dict[str, list[float]] = {}
    n_of: dict[str, int] = {}
    for label, n, s in rows:
        by_probe.setdefault(label, []).append(s)
        n_of[label] = n
    if len(by_probe) < 3:
        raise ValueError(f"{device}: the overhead needs at least 3 probe chains, found {len(by_probe)}")
    if combined not in ESTIMATOR_COLUMNS:
        raise ValueError(f"probe passes combine by one of {tuple(ESTIMATOR_COLUMNS)}, not {combined!r}")
    medians = {k: estimate(combined, v, f"probe {k}") for k, v in by_probe.items()}
    a, b, se = fit_line([n_of[k] for k in medians], list(medians.values()))
    return OverheadEstimate(device, max(a, 0.0), b, se, medians, tuple(run_ids), runtime, time.time(), combined)


def stored_overhead(store: TableStore, device: str | Sequence[str],
                    estimator: str = "median") -> OverheadEstimate | None:
    """The estimate from the probe rows stored for `device` (or several devices together, like
    the cells of a farm), if every probe has a pass; probes combine their fastest invocations
    when `estimator` combines those, else the median of passes."""
    combined = estimator if ESTIMATOR_COLUMNS.get(estimator) == "fastest" else "median"
    names = [device] if isinstance(device, str) else list(device)
    rows = [r for name in names for r in probe_values(store, name, combined)]
    if len({r[0] for r in rows}) < 3:
        return None
    run_ids = sorted({r[3] for r in rows})
    runtime = ""
    for run in run_rows(store, run_ids).values():
        runtime = f"{run['runtime']} {run['runtime_version']}"
    return estimate_overhead(",".join(names), [(r[0], r[1], r[2]) for r in rows], run_ids, runtime, combined)


def probe_rounds_todo(store: TableStore, devices: Sequence[str], passes: int) -> list[int]:
    """Probe rounds a network-context build of `passes` passes still lacks: of its
    `PROBE_ROUNDS_PER_PASS x passes`, those some probe has no row of on any of `devices`."""
    done: dict[int, set[str]] = {}
    for name in devices:
        for label, r in probe_passes(store, name):
            done.setdefault(r, set()).add(label)
    return [r for r in range(PROBE_ROUNDS_PER_PASS * passes) if not done.get(r, set()) >= set(PROBE_LABELS)]


def with_probe_rounds(batches: Sequence[tuple[int, list]], rounds: Sequence[int]) -> list[tuple[int, list]]:
    """`batches` with one batch of every probe, `(pass, [(label, round), ...])`, per round,
    placed at evenly spaced points among them (each under the pass of the batch it follows)."""
    out: list[tuple[int, list]] = []
    n, k = len(batches), len(rounds)
    at = [round((i + 0.5) * n / k) for i in range(k)]
    todo = list(rounds)
    for i in range(n + 1):
        while todo and at[k - len(todo)] <= i:
            r = todo.pop(0)
            out.append((out[-1][0] if out else 0, [(label, r) for label in PROBE_LABELS]))
        if i < n:
            out.append(batches[i])
    return out


def is_probe_batch(keys: Sequence) -> bool:
    return bool(keys) and isinstance(keys[0], tuple) and len(keys[0]) == 2 and keys[0][0] in PROBE_LABELS


def probe_jobs(keys: Sequence[ProbeKey], models: Mapping[str, bytes]) -> list[ModelJob]:
    """The jobs of a probe batch; ids are the probe's position in `PROBE_LABELS`, as
    `measure_overhead` numbers them (the id seeds the partners a runner draws)."""
    return [ModelJob(PROBE_LABELS.index(label), models[label]) for label, _ in keys]


def store_probe_batch(store: TableStore, device: str, run_id: int, keys: Sequence[ProbeKey],
                      timings: Sequence[Timing], models: Mapping[str, bytes]) -> int:
    """Stores a probe batch's timings, each under its round; returns the rows stored."""
    n_ops = dict(zip(PROBE_LABELS, PROBE_CHAIN))
    stored = 0
    for r in sorted({r for _, r in keys}):
        stored += add_probe_passes(store, device, run_id, r, [(label, n_ops[label], models[label], t)
                                                               for (label, rr), t in zip(keys, timings) if rr == r])
    return stored


async def measure_overhead(store: TableStore, device: Device, info: DeviceInfo, passes: int = 3, seed: int = 0,
                           remeasure: bool = False, cooldown_s: float = 0.0, report: Report = None,
                           probes: list[tuple[str, int, bytes]] | None = None,
                           estimator: str = "median") -> OverheadEstimate:
    """Times the probe chains on `device` (passes it lacks; all with `remeasure`), stores the
    rows, and returns the estimate. When `device` is the one the table was built on, the
    estimate goes into the table meta (`invoke_overhead`), where the prediction reads it.
    `device` is started by the caller (`info` is what its start returned) and stays open."""
    if remeasure:
        forget_probes(store, device.name)
    labels = list(PROBE_LABELS)
    done = probe_passes(store, device.name)
    plan = plan_passes(labels, done, passes, len(labels), seed)
    if plan:
        probes = probes if probes is not None else probe_models()
        by_label = {label: (n, m) for label, n, m in probes}
        ids = {label: i for i, label in enumerate(by_label)}

        def render(keys: list[str]) -> list[ModelJob]:
            return [ModelJob(ids[k], by_label[k][1]) for k in keys]

        def commit(run: DeviceRun, p: int, keys: list[str], timings: list[Timing]) -> int:
            return add_probe_passes(store, device.name, run.run_id, p,
                                    [(k, by_label[k][0], by_label[k][1], t) for k, t in zip(keys, timings)])

        already = sum(1 for label, p in done if label in labels and p < passes)
        await run_recorded(store, device, info, plan, render, commit, "overhead probe", passes * len(labels), already,
                           cooldown_s, report)
    overhead = stored_overhead(store, device.name, estimator)
    assert overhead is not None  # every probe has just been measured
    if device.name in table_devices(store):
        store.set_meta(**{OVERHEAD_META_KEY: overhead.to_meta()})
    return overhead


def table_overhead(meta: Mapping, device: str | None = None) -> OverheadEstimate | None:
    """The overhead stored in a table's meta (optionally only if measured on `device`)."""
    d = meta.get(OVERHEAD_META_KEY)
    if not d:
        return None
    est = OverheadEstimate.from_meta(d)
    return est if device is None or est.device == device else None
