"""Validation of a latency table against whole networks measured on the device.

A table predicts a network as the sum of its layers' single-layer timings. This module
measures whole networks (built with `to_tflite`, timed through the same `Device` interface
and method as the table's cells: warm-up, mean of `runs` invocations, `passes` passes each
in a freshly shuffled order), stores every pass in the table file (`whole_networks`, with
the run's provenance in `runs`), and compares.

It also measures the one bias the sum of single-layer times has by construction: every
single-layer model pays the interpreter's per-invoke overhead once, the whole network pays it
once in total. The overhead is the intercept of the latency of chains of n trivial ops
against n (the slope is the per-op dispatch cost, which the network pays per layer too); it
is stored in the table file (`invoke_probes` rows, `invoke_overhead` meta) and applied by
`overhead_corrected` / `corrected_prediction`.

Two more measurements separate the other candidate biases: every timed network's ops are
checked against the ops of the cells summed for it (`op_check`: ops missing from the table),
and, on request, every layer is timed as a single-layer model at its exact widths
(`exact_cells`): their sum against the network isolates the bias of summing from the table's
own interpolation, smoothing and cell noise.

Pure functions (metrics, sampling, the correction) take and return plain values.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from models.arch import Arch, WidthError
from models.thesis_names import load_widths_any
from .devices.base import Device, DeviceError, DeviceInfo, ModelJob, Timing
from .smoothing import ESTIMATOR_COLUMNS, estimate
from .store import TableStore

Report = Callable[[str], None] | None

#: meta key of the measured per-invoke overhead (a dict, see `OverheadEstimate.to_meta`)
OVERHEAD_META_KEY = "invoke_overhead"
#: op-chain lengths of the overhead probes (1-element MULs: compute is negligible)
PROBE_CHAIN = (1, 2, 4, 8, 16, 32)


class ValidationError(ValueError):
    """Bad input to a validation (widths of another architecture, no networks, ...)."""


# ================================================================================ metrics (pure)

def percent_errors(predicted: Sequence[float], measured: Sequence[float]) -> np.ndarray:
    """Signed error of each prediction in percent of the measurement: 100 (p - m) / m."""
    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    if p.shape != m.shape:
        raise ValueError(f"{p.size} predictions for {m.size} measurements")
    if (m <= 0).any() or not np.isfinite(m).all():
        raise ValueError("measurements must be positive and finite")
    return 100.0 * (p - m) / m


def validation_metrics(predicted: Sequence[float], measured: Sequence[float]) -> dict:
    """Agreement of predictions with measurements (seconds in, unitless/percent out).

    `mape`/`max_ape` in percent; `pearson`, `spearman` correlations; `slope`/`intercept_s` of
    the least-squares line measured = slope * predicted + intercept; `within_5`/`within_10` the
    fraction of networks predicted within 5 % / 10 %; `mean_error` the signed mean error in
    percent (> 0: the table over-predicts).
    """
    from scipy import stats

    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    if p.size == 0:
        raise ValueError("no networks to compute metrics of")
    err = percent_errors(p, m)
    ape = np.abs(err)
    out = {
        "n": int(p.size),
        "mape": float(ape.mean()),
        "max_ape": float(ape.max()),
        "mean_error": float(err.mean()),
        "within_5": float((ape <= 5.0).mean()),
        "within_10": float((ape <= 10.0).mean()),
        "pearson": float("nan"), "spearman": float("nan"), "slope": float("nan"), "intercept_s": float("nan"),
    }
    # correlations and the fitted line need at least two distinct predictions
    if p.size >= 2 and np.ptp(p) > 0 and np.ptp(m) > 0:
        out["pearson"] = float(stats.pearsonr(p, m)[0])
        out["spearman"] = float(stats.spearmanr(p, m)[0])
        fit = stats.linregress(p, m)
        out["slope"], out["intercept_s"] = float(fit.slope), float(fit.intercept)
    return out


def fit_line(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float]:
    """(intercept, slope, standard error of the intercept) of least-squares y = a + b x."""
    from scipy import stats

    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 3 or np.ptp(x) == 0:
        raise ValueError("a line needs at least three points at two or more x values")
    fit = stats.linregress(x, y)
    return float(fit.intercept), float(fit.slope), float(fit.intercept_stderr)


# ============================================================================ correction (pure)

def overhead_corrected(sum_of_layers_s: float, n_layers: int, overhead_s: float) -> float:
    """The network latency from the sum of `n_layers` single-layer timings: each of them
    includes one per-invoke overhead, the network pays it once, so n - 1 are removed."""
    if n_layers < 1:
        raise ValueError("a network has at least one layer")
    if overhead_s < 0:
        raise ValueError(f"a negative per-invoke overhead {overhead_s!r} makes no sense")
    return sum_of_layers_s - (n_layers - 1) * overhead_s


def corrected_prediction(layer_seconds: Sequence[float], overhead_s: float) -> float:
    """sum(layer - overhead) + overhead over the layers the table times."""
    return overhead_corrected(float(np.sum(layer_seconds)), len(layer_seconds), overhead_s)


# =============================================================================== networks

@dataclass(frozen=True)
class Network:
    """A width assignment to validate; `key` (canonical complete widths) identifies it in the
    store, so a network measured under one label is found again under any other."""

    label: str
    widths: dict[str, int]
    source: str  # "file", "uniform", "random"

    @property
    def key(self) -> str:
        return widths_key(self.widths)


def widths_key(widths: Mapping[str, int]) -> str:
    return json.dumps({k: int(v) for k, v in sorted(widths.items())}, separators=(",", ":"))


def load_networks(arch: Arch, paths: Iterable[str | Path]) -> list[Network]:
    """Width assignments from JSON files and/or directories of them (`*.json`, sorted)."""
    out: list[Network] = []
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(path.glob("*.json"))
            if not files:
                raise ValidationError(f"{path}: directory holds no width files (*.json)")
        elif path.exists():
            files = [path]
        else:
            raise ValidationError(f"{path}: no such widths file or directory")
        for f in files:
            try:
                widths = load_widths_any(arch, f)  # our format, or the thesis's per-layer names
            except WidthError as exc:
                raise ValidationError(f"{exc} (is it a width assignment for {arch.name}?)") from exc
            out.append(Network(f.stem, widths, "file"))
    return out


def network_params(arch: Arch, widths: Mapping[str, int]) -> int:
    """Number of weights the network's TFLite model holds (BN folded), a cache-pressure proxy."""
    n = 0
    for a in arch.active_layers(widths):
        l = a.layer
        if l.op == "conv":
            n += l.kernel * l.kernel * a.c_in * a.c_out + (a.c_out if l.bn else 0)
        elif l.op == "dwconv":
            n += l.kernel * l.kernel * a.c_in + (a.c_in if l.bn else 0)
        elif l.op == "bn_act":
            n += 2 * a.c_in
        elif l.op == "se":
            n += 2 * a.c_in * a.c_out + a.c_in + a.c_out
        elif l.op == "head":
            n += a.c_in * a.c_out + a.c_out
    return n


def network_macs(arch: Arch, widths: Mapping[str, int]) -> int:
    """Multiply-accumulates of one inference (convolutions and dense layers)."""
    n = 0
    for a in arch.active_layers(widths):
        l = a.layer
        hw = l.out_size * l.out_size
        if l.op == "conv":
            n += hw * l.kernel * l.kernel * a.c_in * a.c_out
        elif l.op == "dwconv":
            n += hw * l.kernel * l.kernel * a.c_in
        elif l.op == "se":
            n += 2 * a.c_in * a.c_out
        elif l.op == "head":
            n += a.c_in * a.c_out
    return n


def sample_networks(arch: Arch, n: int, seed: int = 0, remove_p: float = 0.2) -> list[Network]:
    """`n` width assignments spanning the latency range, a function of (arch, n, seed) only, so
    the same networks (and their stored measurements) come back for any table.

    About a quarter are uniform scalings (factors evenly spaced up to 1.0, the full network);
    the rest draw every group around a scale stratified over [0.1, 1] (x U(0.5, 1.5)), and
    remove each removable block with probability `remove_p`.
    """
    if n < 1:
        raise ValidationError(f"--sample must be >= 1, got {n}")
    rng = random.Random(f"{arch.name}:{seed}")
    groups = arch.prunable_groups
    out: list[Network] = []
    seen: set[str] = set()

    def add(label: str, widths: dict[str, int], source: str) -> bool:
        try:
            widths = arch.validate(widths)
            arch.active_layers(widths)  # rejects assignments that remove the output
        except WidthError:
            return False
        key = widths_key(widths)
        if key in seen:
            return False
        seen.add(key)
        out.append(Network(label, widths, source))
        return True

    n_uniform = max(1, round(n / 4))
    for i in range(n_uniform):
        f = (i + 1) / n_uniform
        add("full" if i == n_uniform - 1 else f"uniform-{f:.2f}",
            {g.name: max(1, round(g.full * f)) for g in groups}, "uniform")
    tries = 0
    while len(out) < n:
        i = len(out) - n_uniform
        tries += 1
        if tries > 100 * n:
            break  # a tiny architecture has fewer distinct assignments than asked for
        scale = 0.1 + 0.9 * (i + rng.random()) / max(1, n - n_uniform)
        widths = {}
        for g in groups:
            if g.may_be_zero and rng.random() < remove_p:
                widths[g.name] = 0
            else:
                widths[g.name] = min(g.full, max(1, round(g.full * scale * rng.uniform(0.5, 1.5))))
        add(f"random-{max(i, 0):02d}", widths, "random")
    return out


# ============================================================================ store access

def _ensure_schema(store: TableStore) -> None:
    """Adds what validation needs to a table file of any age (idempotent): provenance columns
    and a uniqueness constraint on whole_networks, and the invoke_probes table."""
    db = store.db
    with db.conn:
        if "whole_networks" not in db.table_names():
            db["whole_networks"].create(
                {"id": int, "arch": str, "widths": str, "label": str, "device": str, "run_id": int,
                 "pass_index": int, "seconds": float, "measured_at": float, "temperature_c": float}, pk="id")
        cols = db["whole_networks"].columns_dict
        for name, kind in (("throttled", int), ("model_sha256", str), ("runs", int), ("warmup", int),
                           ("ops", str)):
            if name not in cols:
                db["whole_networks"].add_column(name, kind)
        # one row per (network, device, pass): a resumed or repeated report cannot double-count
        db.execute("create unique index if not exists whole_networks_pass on whole_networks"
                   " (arch, widths, device, pass_index)")
        if "invoke_probes" not in db.table_names():
            db["invoke_probes"].create(
                {"id": int, "device": str, "run_id": int, "probe": str, "n_ops": int, "pass_index": int,
                 "seconds": float, "measured_at": float, "model_sha256": str}, pk="id")
            db.execute("create unique index invoke_probes_pass on invoke_probes (device, probe, pass_index)")
        if "exact_cells" not in db.table_names():
            # single-layer models at the exact widths of validated networks (no interpolation,
            # no smoothing): they separate the table's error from the bias of summing
            db["exact_cells"].create(
                {"id": int, "type_key": str, "c_in": int, "c_out": int, "device": str, "run_id": int,
                 "pass_index": int, "seconds": float, "measured_at": float}, pk="id")
            db.execute("create unique index exact_cells_pass on exact_cells (type_key, c_in, c_out, device, pass_index)")
        for table in ("whole_networks", "invoke_probes", "exact_cells"):
            if "fastest" not in db[table].columns_dict:  # the pass's fastest invocation (NULL: not recorded)
                db[table].add_column("fastest", float)


def stored_passes(store: TableStore, arch: Arch, device: str) -> dict[str, set[int]]:
    """network key -> passes stored for it on `device`."""
    out: dict[str, set[int]] = {}
    for widths, p in store.db.execute(
            "select widths, pass_index from whole_networks where arch = ? and device = ?", [arch.name, device]):
        out.setdefault(widths, set()).add(p)
    return out


@dataclass(frozen=True)
class Measured:
    """A network's stored passes on one device."""

    seconds: tuple[float, ...]  # per pass, in pass order: the mean invocation
    run_ids: tuple[int, ...]
    fastest: tuple[float | None, ...] = ()  # per pass: the fastest invocation (None: not recorded)

    @property
    def mean(self) -> float:
        return float(np.mean(self.seconds))

    def value(self, estimator: str = "mean") -> float:
        """The passes combined by `estimator` (`smoothing.ESTIMATORS`)."""
        values = self.fastest if ESTIMATOR_COLUMNS[estimator] == "fastest" else self.seconds
        return estimate(estimator, values or (None,), "a measured network")

    @property
    def std(self) -> float:
        return float(np.std(self.seconds, ddof=1)) if len(self.seconds) > 1 else 0.0


def measured_networks(store: TableStore, arch: Arch, device: str) -> dict[str, Measured]:
    _ensure_schema(store)
    rows: dict[str, list[tuple[int, float, int, float | None]]] = {}
    for widths, p, s, run, fastest in store.db.execute(
            "select widths, pass_index, seconds, run_id, fastest from whole_networks where arch = ? and device = ?",
            [arch.name, device]):
        rows.setdefault(widths, []).append((p, s, run, fastest))
    return {k: Measured(tuple(r[1] for r in sorted(v)), tuple(sorted({r[2] for r in v})),
                        tuple(r[3] for r in sorted(v)))
            for k, v in rows.items()}


def copy_measurements(src: TableStore, dst: TableStore, arch: Arch, device: str, keys: Iterable[str]) -> int:
    """Copies the stored passes of networks `keys` on `device` from another table file (the
    one a rebuilt table replaces), with their runs' provenance and the device's overhead probes;
    returns the network rows copied."""
    _ensure_schema(src)
    _ensure_schema(dst)
    keys = set(keys)
    have = stored_passes(dst, arch, device)
    rows = [r for r in src.db["whole_networks"].rows_where("arch = ? and device = ?", [arch.name, device])
            if r["widths"] in keys and r["pass_index"] not in have.get(r["widths"], set())]
    # the device's overhead probes travel with them (they describe the device, not the table)
    have_probes = {(r[0], r[1]) for r in dst.db.execute(
        "select probe, pass_index from invoke_probes where device = ?", [device])}
    probes = [r for r in src.db["invoke_probes"].rows_where("device = ?", [device])
              if (r["probe"], r["pass_index"]) not in have_probes]
    new_run: dict[int, int] = {}
    with dst.db.conn:
        for run_id in sorted({r["run_id"] for r in rows + probes}):
            run = next(src.db["runs"].rows_where("id = ?", [run_id]), None)
            if run is None:
                raise ValidationError(f"{src.path.name}: run {run_id} of stored networks is missing")
            settings = json.loads(run.pop("settings") or "{}")
            settings["copied_from"] = {"table": src.path.name, "run_id": run.pop("id")}
            new_run[run_id] = dst.db["runs"].insert({**run, "settings": json.dumps(settings)}).last_pk
    for r in rows + probes:
        r.pop("id")
        r["run_id"] = new_run[r["run_id"]]
    if probes:
        _add_rows(dst, "invoke_probes", probes)
    return _add_rows(dst, "whole_networks", rows) if rows else 0


def _add_rows(store: TableStore, table: str, rows: list[dict]) -> int:
    for r in rows:
        if not (r["seconds"] > 0 and math.isfinite(r["seconds"])):
            raise ValueError(f"refusing to store a non-positive or non-finite timing {r['seconds']!r}")
    with store.db.conn:
        before = store.db.conn.total_changes
        store.db[table].insert_all(rows, ignore=True)  # a pass already stored is kept
        return store.db.conn.total_changes - before


def _sha(model: bytes) -> str:
    return hashlib.sha256(model).hexdigest()


def table_devices(store: TableStore) -> list[str]:
    """Devices whose timings make up the table's cells (a table is built on one device)."""
    names = [r[0] for r in store.db.execute("select distinct device from measurements")]
    if not names and store.meta().get("device"):
        names = [store.meta()["device"]]  # an imported table has no raw measurements
    return names


# ============================================================================== measuring

@dataclass
class MeasureResult:
    measured_now: int = 0  # passes stored by this call
    already: int = 0  # passes found in the store
    run_id: int | None = None
    info: DeviceInfo | None = None
    wall_s: float = 0.0


def plan_passes(keys: Sequence[str], done: Mapping[str, set[int]], passes: int, seed: int) -> list[tuple[int, list[str]]]:
    """(pass, network keys) to measure: every pass over the networks lacking it, each pass in
    its own shuffled order (a function of the seed and pass only, so a resumed run keeps it)."""
    out = []
    for p in range(passes):
        order = sorted(keys)
        random.Random(f"{seed}:{p}").shuffle(order)
        todo = [k for k in order if p not in done.get(k, set())]
        if todo:
            out.append((p, todo))
    return out


async def _measure_batches(device: Device, jobs: list[ModelJob], batch_size: int, cooldown_s: float,
                           commit: Callable[[list[Timing]], None]) -> None:
    for start in range(0, len(jobs), batch_size):
        if start and cooldown_s > 0:
            await asyncio.sleep(cooldown_s)  # cool-down between calls too, not only inside one
        batch = jobs[start:start + batch_size]
        timings = await device.measure(batch)
        if [t.cell_id for t in timings] != [j.cell_id for j in batch]:
            raise DeviceError(f"{device.name} returned timings for other models than it was given")
        commit(timings)


async def measure_networks(store: TableStore, arch: Arch, networks: Sequence[Network], device: Device,
                           info: DeviceInfo, passes: int = 3, seed: int = 0, remeasure: bool = False, batch_size: int = 4,
                           cooldown_s: float = 0.0, report: Report = None,
                           convert: Callable[[Arch, Mapping[str, int]], bytes] | None = None) -> MeasureResult:
    """Measures every network on `device` for each pass it lacks in the store (all passes
    with `remeasure`, replacing the stored ones); commits after every device call.

    `device` is started by the caller (`info` is what its start returned) and stays open.
    Models are converted up front, so the converter never runs while the device times (on
    the local CPU it would disturb the timings).
    """
    if passes < 1 or batch_size < 1:
        raise ValueError("passes and batch size must be >= 1")
    started = time.time()
    _ensure_schema(store)
    by_key = {}
    for net in networks:
        by_key.setdefault(net.key, net)
    if remeasure:
        with store.db.conn:
            store.db.conn.executemany("delete from whole_networks where arch = ? and widths = ? and device = ?",
                                      [(arch.name, k, device.name) for k in by_key])
    done = stored_passes(store, arch, device.name)
    plan = plan_passes(list(by_key), done, passes, seed)
    result = MeasureResult(already=sum(len(done.get(k, set()) & set(range(passes))) for k in by_key))
    if not plan:
        result.wall_s = time.time() - started
        return result
    convert = convert or network_model
    needed = sorted({k for _, keys in plan for k in keys})
    models: dict[str, bytes] = {}
    for i, k in enumerate(needed):
        if report:
            report(f"converting network {i + 1}/{len(needed)}: {by_key[k].label}")
        models[k] = convert(arch, by_key[k].widths)
    ids = {k: i for i, k in enumerate(needed)}  # opaque ids for the device
    ops = {k: json.dumps(dict(sorted(model_op_counts(m).items()))) for k, m in models.items()}
    result.info, run_id = info, store.start_run(info)
    result.run_id = run_id
    status = "interrupted"
    try:
        for p, keys in plan:
            jobs = [ModelJob(ids[k], models[k]) for k in keys]
            by_id = {ids[k]: k for k in keys}

            def commit(timings: list[Timing], p: int = p) -> None:
                rows = [{
                    "arch": arch.name, "widths": by_id[t.cell_id], "label": by_key[by_id[t.cell_id]].label,
                    "device": device.name, "run_id": run_id, "pass_index": p, "seconds": t.seconds,
                    "fastest": t.fastest_s, "measured_at": t.measured_at, "temperature_c": t.temperature_c,
                    "throttled": None if t.throttled is None else int(t.throttled),
                    "model_sha256": _sha(models[by_id[t.cell_id]]),
                    "runs": result.info.settings.get("runs"), "warmup": result.info.settings.get("warmup"),
                    "ops": ops[by_id[t.cell_id]],
                } for t in timings]
                result.measured_now += _add_rows(store, "whole_networks", rows)
                if report:
                    report(f"pass {p + 1}/{passes}: {result.measured_now + result.already}/"
                           f"{passes * len(by_key)} network timings")

            await _measure_batches(device, jobs, batch_size, cooldown_s, commit)
        status = "finished"
    finally:
        store.end_run(run_id, status)
    result.wall_s = time.time() - started
    return result


def network_cells(arch: Arch, widths: Mapping[str, int]) -> list[tuple[str, int, int]]:
    """(type key, c_in, c_out) of every layer the device runs for `widths` (a batch-norm the
    converter folds into a conv makes one fused layer, `fusion.runtime_plan`), keyed as the
    table keys its cells (one-axis types have c_out = 0)."""
    from .fusion import fused_layer, runtime_plan
    from .layer_types import network_layer_types, type_key

    types = network_layer_types([arch])
    ch = arch.channels(arch.validate(widths))
    out = []
    for i, folded in runtime_plan(arch, frozenset(g for g, c in ch.items() if c == 0)):
        layer = arch.layers[i] if folded is None else fused_layer(arch.layers[i], arch.layers[folded])
        t = types[type_key(layer)]
        out.append((t.key, ch[layer.c_in], ch[layer.c_out] if t.two_axes else 0))
    return out


async def measure_exact_cells(store: TableStore, arch: Arch, networks: Sequence[Network], device: Device,
                              info: DeviceInfo, passes: int = 3, seed: int = 0, remeasure: bool = False,
                              batch_size: int = 32, cooldown_s: float = 0.0, report: Report = None) -> int:
    """Times the single-layer model of every layer of the networks at its exact widths
    (rendered exactly as the table builder renders cells), each cell once per pass, in
    shuffled order; returns the passes stored now. `device` is started by the caller."""
    from .generate import CellModels
    from .layer_types import network_layer_types

    _ensure_schema(store)
    cells = sorted({c for n in networks for c in network_cells(arch, n.widths)})
    keys = [json.dumps(c) for c in cells]
    if remeasure:
        with store.db.conn:
            store.db.conn.executemany("delete from exact_cells where type_key = ? and c_in = ? and c_out = ? "
                                      "and device = ?", [(*c, device.name) for c in cells])
    done: dict[str, set[int]] = {}
    for k, i, o, p in store.db.execute("select type_key, c_in, c_out, pass_index from exact_cells where device = ?",
                                       [device.name]):
        done.setdefault(json.dumps([k, i, o]), set()).add(p)
    plan = plan_passes(keys, done, passes, seed)
    if not plan:
        return 0
    renderer = CellModels(network_layer_types([arch]))
    needed = sorted({k for _, ks in plan for k in ks})
    if report:
        report(f"rendering {len(needed)} single-layer models at the networks' exact widths")
    models = {k: renderer.render(*json.loads(k)) for k in needed}
    ids = {k: i for i, k in enumerate(needed)}
    run_id = store.start_run(info)
    stored = 0
    status = "interrupted"
    try:
        for p, ks in plan:
            by_id = {ids[k]: json.loads(k) for k in ks}

            def commit(timings: list[Timing], p: int = p) -> None:
                nonlocal stored
                stored += _add_rows(store, "exact_cells", [{
                    "type_key": by_id[t.cell_id][0], "c_in": by_id[t.cell_id][1], "c_out": by_id[t.cell_id][2],
                    "device": device.name, "run_id": run_id, "pass_index": p, "seconds": t.seconds,
                    "fastest": t.fastest_s, "measured_at": t.measured_at} for t in timings])

            if report:
                report(f"exact single-layer models, pass {p + 1}/{passes}: {len(ks)} cells")
            await _measure_batches(device, [ModelJob(ids[k], models[k]) for k in ks], batch_size, cooldown_s, commit)
        status = "finished"
    finally:
        store.end_run(run_id, status)
    return stored


def exact_sums(store: TableStore, arch: Arch, networks: Sequence[Network], device: str,
               estimator: str = "mean") -> dict[str, float]:
    """network key -> sum over the layers it runs of the exact cell's passes combined by
    `estimator` (networks with every cell measured only)."""
    _ensure_schema(store)
    column = ESTIMATOR_COLUMNS[estimator]
    passes: dict[tuple[str, int, int], list[float]] = {}
    for k, i, o, sec in store.db.execute(f"select type_key, c_in, c_out, {column} from exact_cells where device = ?",
                                         [device]):
        passes.setdefault((k, i, o), []).append(sec)
    means = {c: estimate(estimator, v, f"exact cell {c}") for c, v in passes.items()}
    out = {}
    for n in networks:
        cells = network_cells(arch, n.widths)
        if all(c in means for c in cells):
            out[n.key] = sum(means[c] for c in cells)
    return out


# ======================================================================== invoke overhead

def probe_models(chain: Sequence[int] = PROBE_CHAIN) -> list[tuple[str, int, bytes]]:
    """(label, n_ops, model) of chains of n MULs on one element: x <- x * x, n times.

    x * x on the input cannot be constant-folded (x + 1.0 chains can), so the model holds
    exactly n ops; their compute is a few ns, so the time is invoke overhead + n x dispatch.
    """
    import contextlib
    import io

    import tensorflow as tf

    from .tflite_rewrite import describe_model

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


def stored_overhead(store: TableStore, device: str, estimator: str = "median") -> OverheadEstimate | None:
    """The estimate from the probe rows stored for `device`, if every probe has a pass; probes
    combine their fastest invocations when `estimator` combines those, else the median of passes."""
    _ensure_schema(store)
    combined = estimator if ESTIMATOR_COLUMNS.get(estimator) == "fastest" else "median"
    column = ESTIMATOR_COLUMNS[combined]
    rows = list(store.db.execute(f"select probe, n_ops, {column}, run_id from invoke_probes where device = ?",
                                 [device]))
    if len({r[0] for r in rows}) < 3:
        return None
    runtime = ""
    run_ids = sorted({r[3] for r in rows})
    for (rt, ver) in store.db.execute(f"select runtime, runtime_version from runs where id in "
                                      f"({','.join('?' * len(run_ids))})", run_ids):
        runtime = f"{rt} {ver}"
    return estimate_overhead(device, [(r[0], r[1], r[2]) for r in rows], run_ids, runtime, combined)


async def measure_overhead(store: TableStore, device: Device, info: DeviceInfo, passes: int = 3, seed: int = 0,
                           remeasure: bool = False, cooldown_s: float = 0.0, report: Report = None,
                           probes: list[tuple[str, int, bytes]] | None = None,
                           estimator: str = "median") -> OverheadEstimate:
    """Times the probe chains on `device` (passes it lacks; all with `remeasure`), stores the
    rows, and returns the estimate. When `device` is the one the table was built on, the
    estimate goes into the table meta (`invoke_overhead`), where the prediction reads it."""
    _ensure_schema(store)
    if remeasure:
        with store.db.conn:
            store.db.execute("delete from invoke_probes where device = ?", [device.name])
    done: dict[str, set[int]] = {}
    for label, p in store.db.execute("select probe, pass_index from invoke_probes where device = ?", [device.name]):
        done.setdefault(label, set()).add(p)
    labels = [f"mul-chain-{n}" for n in PROBE_CHAIN]
    plan = plan_passes(labels, done, passes, seed)
    if plan:
        probes = probes if probes is not None else probe_models()
        by_label = {label: (n, m) for label, n, m in probes}
        ids = {label: i for i, label in enumerate(by_label)}
        run_id = store.start_run(info)
        status = "interrupted"
        try:
            for p, keys in plan:
                by_id = {ids[k]: k for k in keys}

                def commit(timings: list[Timing], p: int = p) -> None:
                    _add_rows(store, "invoke_probes", [{
                        "device": device.name, "run_id": run_id, "probe": by_id[t.cell_id],
                        "n_ops": by_label[by_id[t.cell_id]][0], "pass_index": p, "seconds": t.seconds,
                        "fastest": t.fastest_s, "measured_at": t.measured_at, "model_sha256": _sha(by_label[by_id[t.cell_id]][1]),
                    } for t in timings])

                if report:
                    report(f"overhead probes, pass {p + 1}/{passes}")
                await _measure_batches(device, [ModelJob(ids[k], by_label[k][1]) for k in keys], len(keys),
                                       cooldown_s, commit)
            status = "finished"
        finally:
            store.end_run(run_id, status)
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


# =========================================================================== op coverage

def network_model(arch: Arch, widths: Mapping[str, int]) -> bytes:
    """The whole network as .tflite (`to_tflite`), without the converter's stdout chatter."""
    import contextlib
    import io

    from models.keras_builder import to_tflite

    with contextlib.redirect_stdout(io.StringIO()):
        return to_tflite(arch, widths)


def model_op_counts(model: bytes) -> Counter:
    """Ops of a .tflite model by name (from the flatbuffer: no delegate hides any)."""
    from .tflite_rewrite import describe_model

    return Counter(name for name, _ in describe_model(model))


def stored_ops(store: TableStore, arch: Arch, device: str) -> dict[str, Counter]:
    """network key -> op counts of the model that was timed (stored with its passes)."""
    _ensure_schema(store)
    return {k: Counter(json.loads(o)) for k, o in store.db.execute(
        "select widths, ops from whole_networks where arch = ? and device = ? and ops is not null",
        [arch.name, device])}


def op_check(arch: Arch, widths: Mapping[str, int], network_ops: Counter, generator) -> dict:
    """The ops of the timed network model against the ops of the cells the table sums for it
    (`op_map.expected_ops`, fused batch-norms included): `extra_in_network` are ops no cell
    times, `extra_in_layers` ops cells time that the network does not run. `generator` is a
    `CellModels` of the architecture's types (one converter call per type, cached)."""
    from .fusion import fused_layer, runtime_plan
    from .op_map import expected_ops

    expected = expected_ops(arch, generator, widths)
    zero = frozenset(g for g, c in arch.channels(arch.validate(widths)).items() if c == 0)
    fused = [fused_layer(arch.layers[i], arch.layers[f]).name for i, f in runtime_plan(arch, zero) if f is not None]
    return {"network": dict(network_ops), "expected": dict(expected), "fused": fused,
            "extra_in_network": dict(network_ops - expected), "extra_in_layers": dict(expected - network_ops),
            "matches": network_ops == expected}


# ============================================================================= comparison

@dataclass(frozen=True)
class Comparison:
    """One network: the table's predictions and the device's measurement."""

    network: Network
    sum_of_layers_s: float  # the plain sum of the table's cells
    overhead_corrected_s: float | None  # the sum with the per-invoke overhead counted once
    predicted_s: float  # the adopted prediction: one of the two above
    n_layers: int  # layers the table timed for this network
    measured: Measured
    params: int
    macs: int
    exact_sum_s: float | None = None  # sum of the exact single-layer models it runs, when measured
    estimator: str = "mean"  # how the passes combine

    @property
    def measured_s(self) -> float:
        return self.measured.value(self.estimator)

    @property
    def error_pct(self) -> float:
        return float(percent_errors([self.predicted_s], [self.measured_s])[0])

    @property
    def raw_error_pct(self) -> float:
        return float(percent_errors([self.sum_of_layers_s], [self.measured_s])[0])


def compare(table, arch: Arch, networks: Sequence[Network], measured: Mapping[str, Measured],
            overhead: OverheadEstimate | None, apply_overhead: bool = False, allow_missing: bool = False,
            exact: Mapping[str, float] | None = None, estimator: str = "mean") -> list[Comparison]:
    """Predictions of every network next to its stored measurement, all from the table's
    per-layer breakdown (the layers the device runs, fused batch-norms included): the plain
    sum (what `LatencyTable.predict` returns), the sum with the per-invoke overhead counted
    once (`corrected_prediction`, when an overhead is known), and the adopted one of the two."""
    if apply_overhead and overhead is None:
        raise ValidationError("the overhead correction needs an overhead measured on the table's device")
    out = []
    predictor = table.predictor(arch, allow_missing=allow_missing)
    for net in networks:
        if net.key not in measured:
            raise ValidationError(f"network {net.label} has no stored measurement")
        cells = [l.seconds for l in predictor.breakdown(net.widths) if l.seconds is not None]
        total = float(np.sum(cells))
        corrected = corrected_prediction(cells, overhead.seconds) if overhead else None
        out.append(Comparison(net, total, corrected, corrected if apply_overhead else total, len(cells),
                              measured[net.key], network_params(arch, net.widths), network_macs(arch, net.widths),
                              (exact or {}).get(net.key), estimator))
    return out


#: passes of one network further apart than this (max - min, % of the mean) were disturbed
SPREAD_LIMIT_PCT = 5.0


def pass_spread_pct(seconds: Sequence[float]) -> float:
    a = np.asarray(seconds, float)
    return float(100 * (a.max() - a.min()) / a.mean())


def comparison_metrics(rows: Sequence[Comparison]) -> dict:
    m = validation_metrics([r.predicted_s for r in rows], [r.measured_s for r in rows])
    # another process on the device shows as passes of one network that disagree
    m["disturbed"] = [r.network.label for r in rows if pass_spread_pct(r.measured.seconds) > SPREAD_LIMIT_PCT]
    meas = [r.measured_s for r in rows]
    alt = {"sum_of_layers": validation_metrics([r.sum_of_layers_s for r in rows], meas)}
    if rows and all(r.overhead_corrected_s is not None for r in rows):
        alt["overhead_corrected"] = validation_metrics([r.overhead_corrected_s for r in rows], meas)
    if rows and all(r.exact_sum_s is not None for r in rows):
        alt["exact_cells"] = validation_metrics([r.exact_sum_s for r in rows], meas)
        if "overhead_corrected" in alt:
            oh = [(r.sum_of_layers_s - r.overhead_corrected_s) for r in rows]  # (n - 1) o
            alt["exact_cells_overhead_corrected"] = validation_metrics(
                [r.exact_sum_s - d for r, d in zip(rows, oh)], meas)
    m["alternatives"] = alt
    return m


def bias_analysis(rows: Sequence[Comparison], overhead: OverheadEstimate | None) -> dict:
    """The numbers that say where sum-of-layers minus measured comes from (seconds, percent).

    - the overhead hypothesis: the plain sum over-predicts by (n - 1) o, `overhead_pct_mean`
      percent of the measurement on average;
    - the table's plain sum against the measurement (`sum_error_pct_mean`): table error and
      composition bias together;
    - with exact single-layer timings (every layer at its own widths, no interpolation or
      smoothing): the composition bias alone, per network as (exact sum - measured) / (n - 1)
      per extra layer (a per-invoke overhead would make it equal o) and in percent; its trend
      with the network's weight footprint (MB of float32 weights: cache pressure); and the
      table's own error against the exact sums.
    """
    n = np.array([r.n_layers for r in rows], float)
    meas = np.array([r.measured_s for r in rows])
    plain = np.array([r.sum_of_layers_s for r in rows])
    weights_mb = np.array([r.params for r in rows], float) * 4 / 1e6
    extra = np.maximum(n - 1, 1)
    out: dict = {"overhead_s": overhead.seconds if overhead else None,
                 "per_op_s": overhead.per_op_s if overhead else None,
                 "overhead_pct_mean": float((100 * (n - 1) * overhead.seconds / meas).mean()) if overhead else None,
                 "sum_error_pct_mean": float((100 * (plain - meas) / meas).mean()),
                 "sum_excess_per_extra_layer_s_median": float(np.median((plain - meas) / extra))}
    if rows and all(r.exact_sum_s is not None for r in rows):
        exact = np.array([r.exact_sum_s for r in rows])
        per_layer = (exact - meas) / extra
        composition = 100 * (exact - meas) / meas
        out.update({
            "composition_per_extra_layer_s_median": float(np.median(per_layer)),
            "composition_per_extra_layer_s": [float(x) for x in per_layer],
            "composition_error_pct_mean": float(composition.mean()),
            "composition_ape_mean": float(np.abs(composition).mean()),
            "table_vs_exact_pct_mean": float((100 * (plain - exact) / exact).mean()),
            "table_vs_exact_ape_mean": float(np.abs(100 * (plain - exact) / exact).mean()),
        })
        if len(rows) >= 3 and np.ptp(weights_mb) > 0:
            slope, _ = np.polyfit(weights_mb, composition, 1)
            out["composition_pct_per_weight_mb"] = float(slope)
            out["composition_vs_weights_pearson"] = float(np.corrcoef(weights_mb, composition)[0, 1])
    return out
