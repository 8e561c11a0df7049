"""What validation stores in a table file, and reads back: every SQL statement it runs.

- `whole_networks`: one row per (network, device, pass), with the timed model's hash and ops;
- `build_networks`: the same for the check networks build-tables times after the cells;
- `invoke_probes`: the per-invoke overhead probes, one row per (probe, device, pass);
- `exact_cells`: single-layer models at the exact widths of validated networks, one row per
  (cell, device, pass);
- `runs`: the provenance of each measuring call (shared with the table's cells).

Writers need a store opened for writing (`TableStore.open(path, write=True)` migrates an
older file); readers work on any file, read-only included: a table or column an older file
lacks reads as nothing measured.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from typing import Iterable, Mapping, Sequence

from models.arch import Arch
from .devices.base import Timing
from .networks import Measured, Network, ValidationError
from .smoothing import ESTIMATOR_COLUMNS
from .store import TableStore

#: a cell of a network at its exact widths: (type key, c_in, c_out)
Cell = tuple[str, int, int]


def model_sha256(model: bytes) -> str:
    return hashlib.sha256(model).hexdigest()


def _has(store: TableStore, table: str, column: str | None = None) -> bool:
    if table not in store.db.table_names():
        return False
    return column is None or column in store.db[table].columns_dict


def _add_rows(store: TableStore, table: str, rows: list[dict]) -> int:
    """Inserts rows, keeping a pass already stored (the unique index of each table); returns
    the rows stored."""
    for r in rows:
        if not (r["seconds"] > 0 and math.isfinite(r["seconds"])):
            raise ValueError(f"refusing to store a non-positive or non-finite timing {r['seconds']!r}")
    with store.db.conn:
        before = store.db.conn.total_changes
        store.db[table].insert_all(rows, ignore=True)
        return store.db.conn.total_changes - before


def _column(store: TableStore, table: str, estimator: str) -> str:
    """The column holding what `estimator` combines, or NULL where an older file lacks it."""
    column = ESTIMATOR_COLUMNS[estimator]
    return column if _has(store, table, column) else "null"


# ================================================================================ whole networks
# whole networks: those a report validates; build networks: the check networks of a build
# (latency.network_check), timed alike
NETWORK_TABLES = ("whole_networks", "build_networks")


def _network_table(table: str) -> str:
    if table not in NETWORK_TABLES:
        raise ValueError(f"no such table of whole-network timings {table!r}")
    return table


def stored_passes(store: TableStore, arch: Arch, device: str, table: str = "whole_networks") -> set[tuple[str, int]]:
    """(network key, pass) of every pass stored for `device` in `table` (`NETWORK_TABLES`)."""
    if not _has(store, _network_table(table)):
        return set()
    return {(w, p) for w, p in store.db.execute(
        f"select widths, pass_index from {table} where arch = ? and device = ?", [arch.name, device])}


def forget_networks(store: TableStore, arch: Arch, keys: Iterable[str], device: str,
                    table: str = "whole_networks") -> None:
    """Deletes the stored passes of networks `keys` on `device` (to measure them again)."""
    if not _has(store, _network_table(table)):
        return
    with store.db.conn:
        store.db.conn.executemany(f"delete from {table} where arch = ? and widths = ? and device = ?",
                                  [(arch.name, k, device) for k in keys])


def add_network_passes(store: TableStore, arch: Arch, device: str, run_id: int, pass_index: int,
                       timed: Sequence[tuple[Network, bytes, Counter, Timing]], settings: Mapping,
                       table: str = "whole_networks") -> int:
    """Stores one pass of each (network, its model, the model's ops, timing); `settings` are
    the device's (their `runs` and `warmup` are recorded with every row). Returns rows stored."""
    return _add_rows(store, _network_table(table), [{
        "arch": arch.name, "widths": net.key, "label": net.label, "device": device, "run_id": run_id,
        "pass_index": pass_index, "seconds": t.seconds, "fastest": t.fastest_s, "measured_at": t.measured_at,
        "temperature_c": t.temperature_c, "throttled": None if t.throttled is None else int(t.throttled),
        "model_sha256": model_sha256(model), "runs": settings.get("runs"), "warmup": settings.get("warmup"),
        "ops": json.dumps(dict(sorted(ops.items()))), "slow": None if t.slow is None else int(t.slow),
    } for net, model, ops, t in timed])


def measured_networks(store: TableStore, arch: Arch, device: str,
                      table: str = "whole_networks") -> dict[str, Measured]:
    """network key -> its stored passes on `device` in `table`, in pass order."""
    if not _has(store, _network_table(table)):
        return {}
    fastest = "fastest" if _has(store, table, "fastest") else "null"
    slow = "slow" if _has(store, table, "slow") else "null"
    rows: dict[str, list[tuple[int, float, int, float | None, int | None]]] = {}
    for widths, p, s, run, f, was_slow in store.db.execute(
            f"select widths, pass_index, seconds, run_id, {fastest}, {slow} from {table} where arch = ? and device = ?",
            [arch.name, device]):
        rows.setdefault(widths, []).append((p, s, run, f, was_slow))
    return {k: Measured(tuple(r[1] for r in sorted(v)), tuple(sorted({r[2] for r in v})),
                        tuple(r[3] for r in sorted(v)), tuple(None if r[4] is None else bool(r[4]) for r in sorted(v)))
            for k, v in rows.items()}


def slow_networks(store: TableStore, arch: Arch, device: str, table: str = "whole_networks") -> dict[str, int]:
    """network key -> its last pass index, of the networks on `device` in `table` whose every
    stored pass was kept slow (`retime.plan_retimes` times them again)."""
    if not _has(store, _network_table(table), "slow"):
        return {}
    return dict(store.db.execute(f"select widths, max(pass_index) from {table} where arch = ? and device = ? "
                                 "group by widths having count(*) = sum(slow = 1)", [arch.name, device]))


def networks_span_s(store: TableStore, arch: Arch, device: str, keys: Iterable[str]) -> float:
    """Seconds from the first stored pass of the networks `keys` on `device` to the last."""
    if not _has(store, "whole_networks"):
        return 0.0
    keys = set(keys)
    times = [t for k, t in store.db.execute("select widths, measured_at from whole_networks where arch = ? and "
                                            "device = ? and measured_at is not null", [arch.name, device])
             if k in keys]
    return max(times) - min(times) if times else 0.0


def network_labels(store: TableStore, arch: Arch, device: str, table: str = "build_networks") -> dict[str, str]:
    """network key -> the label it was stored under, of the networks in `table` on `device`."""
    if not _has(store, _network_table(table)):
        return {}
    return dict(store.db.execute(f"select widths, min(label) from {table} where arch = ? and device = ? "
                                 "group by widths", [arch.name, device]))


def stored_ops(store: TableStore, arch: Arch, device: str) -> dict[str, Counter]:
    """network key -> op counts of the model that was timed (stored with its passes)."""
    if not _has(store, "whole_networks", "ops"):
        return {}
    return {k: Counter(json.loads(o)) for k, o in store.db.execute(
        "select widths, ops from whole_networks where arch = ? and device = ? and ops is not null",
        [arch.name, device])}


# ================================================================================ overhead probes

def probe_passes(store: TableStore, device: str) -> set[tuple[str, int]]:
    """(probe label, pass) of every probe pass stored for `device`."""
    if not _has(store, "invoke_probes"):
        return set()
    return {(label, p) for label, p in store.db.execute(
        "select probe, pass_index from invoke_probes where device = ?", [device])}


def forget_probes(store: TableStore, device: str) -> None:
    with store.db.conn:
        store.db.execute("delete from invoke_probes where device = ?", [device])


def add_probe_passes(store: TableStore, device: str, run_id: int, pass_index: int,
                     timed: Sequence[tuple[str, int, bytes, Timing]]) -> int:
    """Stores one pass of each (probe label, its ops, its model, timing); returns rows stored."""
    return _add_rows(store, "invoke_probes", [{
        "device": device, "run_id": run_id, "probe": label, "n_ops": n_ops, "pass_index": pass_index,
        "seconds": t.seconds, "fastest": t.fastest_s, "measured_at": t.measured_at, "model_sha256": model_sha256(model),
    } for label, n_ops, model, t in timed])


def probe_values(store: TableStore, device: str, estimator: str) -> list[tuple[str, int, float | None, int]]:
    """(probe, n_ops, the pass's figure `estimator` combines, run id) of every stored probe pass."""
    if not _has(store, "invoke_probes"):
        return []
    column = _column(store, "invoke_probes", estimator)
    return list(store.db.execute(f"select probe, n_ops, {column}, run_id from invoke_probes where device = ?",
                                 [device]))


# ====================================================================== exact cells, check cells
# exact cells: single-layer models at the exact widths of validated networks; check cells: a few
# of the table's own cells timed again with the networks (latency.host_check)
CELL_TABLES = ("exact_cells", "check_cells")


def _cell_table(table: str) -> str:
    if table not in CELL_TABLES:
        raise ValueError(f"no such table of single-layer timings {table!r}")
    return table


def exact_cell_passes(store: TableStore, device: str, table: str = "exact_cells") -> set[tuple[Cell, int]]:
    """(cell, pass) of every pass stored for `device` in `table` (`CELL_TABLES`)."""
    if not _has(store, _cell_table(table)):
        return set()
    return {((k, i, o), p) for k, i, o, p in store.db.execute(
        f"select type_key, c_in, c_out, pass_index from {table} where device = ?", [device])}


def forget_exact_cells(store: TableStore, cells: Iterable[Cell], device: str, table: str = "exact_cells") -> None:
    if not _has(store, _cell_table(table)):
        return
    with store.db.conn:
        store.db.conn.executemany(f"delete from {table} where type_key = ? and c_in = ? and c_out = ? "
                                  "and device = ?", [(*c, device) for c in cells])


def add_exact_cell_passes(store: TableStore, device: str, run_id: int, pass_index: int,
                          timed: Sequence[tuple[Cell, Timing]], table: str = "exact_cells") -> int:
    rows = [{"type_key": c[0], "c_in": c[1], "c_out": c[2], "device": device, "run_id": run_id,
             "pass_index": pass_index, "seconds": t.seconds, "fastest": t.fastest_s, "measured_at": t.measured_at}
            for c, t in timed]
    if table == "check_cells":  # they count their passes at full speed, as the table's cells do
        for row, (_, t) in zip(rows, timed):
            row["slow"] = None if t.slow is None else int(t.slow)
    return _add_rows(store, _cell_table(table), rows)


def slow_cells(store: TableStore, device: str, table: str = "check_cells") -> dict[Cell, int]:
    """cell -> its last pass index, of the cells on `device` in `table` whose every stored pass
    was kept slow (`retime.plan_retimes` times them again); none in a table that keeps no flag
    (exact cells keep every pass as timed)."""
    if not _has(store, _cell_table(table), "slow"):
        return {}
    return {(k, i, o): p for k, i, o, p in store.db.execute(
        f"select type_key, c_in, c_out, max(pass_index) from {table} where device = ? "
        "group by type_key, c_in, c_out having count(*) = sum(slow = 1)", [device])}


def exact_cell_values(store: TableStore, device: str, estimator: str, table: str = "exact_cells",
                      full_speed_only: bool = False) -> dict[Cell, list[float | None]]:
    """cell -> the figure `estimator` combines of each of its stored passes in `table`; with
    `full_speed_only` (check cells), those timed at full speed when a cell has any, as
    `TableStore.raw_by_cell` gives the table's own."""
    if not _has(store, _cell_table(table)):
        return {}
    column = _column(store, table, estimator)
    slow = "slow" if _has(store, table, "slow") else "null"
    rows: dict[Cell, list[tuple[float | None, bool]]] = {}
    for k, i, o, value, was_slow in store.db.execute(
            f"select type_key, c_in, c_out, {column}, {slow} from {table} where device = ? order by pass_index",
            [device]):
        rows.setdefault((k, i, o), []).append((value, bool(was_slow)))
    out: dict[Cell, list[float | None]] = {}
    for cell, passes in rows.items():
        fast = [v for v, was_slow in passes if not was_slow] if full_speed_only else []
        out[cell] = fast or [v for v, _ in passes]
    return out


# ========================================================================================= runs

def table_devices(store: TableStore) -> list[str]:
    """Devices whose timings make up the table's cells (a table is built on one device)."""
    names = [r[0] for r in store.db.execute("select distinct device from measurements")]
    if not names and store.meta().get("device"):
        names = [store.meta()["device"]]  # an imported table has no raw measurements
    return names


def run_rows(store: TableStore, run_ids: Sequence[int]) -> dict[int, dict]:
    """run id -> its `runs` row."""
    run_ids = list(run_ids)
    if not run_ids:
        return {}
    return {r["id"]: r for r in store.db["runs"].rows_where(f"id in ({','.join('?' * len(run_ids))})", run_ids)}


def copy_measurements(src: TableStore, dst: TableStore, arch: Arch, device: str, keys: Iterable[str]) -> int:
    """Copies the stored passes of networks `keys` on `device` from another table file (the
    one a rebuilt table replaces), with their runs' provenance and the device's overhead probes;
    returns the network rows copied."""
    keys = set(keys)
    have = stored_passes(dst, arch, device)
    rows = [r for r in src.db["whole_networks"].rows_where("arch = ? and device = ?", [arch.name, device])
            if r["widths"] in keys and (r["widths"], r["pass_index"]) not in have] \
        if _has(src, "whole_networks") else []
    # the device's overhead probes travel with them (they describe the device, not the table)
    have_probes = probe_passes(dst, device)
    probes = [r for r in src.db["invoke_probes"].rows_where("device = ?", [device])
              if (r["probe"], r["pass_index"]) not in have_probes] if _has(src, "invoke_probes") else []
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
