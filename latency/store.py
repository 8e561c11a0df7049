"""The table file: one SQLite database (written with sqlite-utils) per device and network.

Tables:
- `meta`: schema version, architecture, what produced the file.
- `layer_types`: one row per layer type with its channel ranges and grid.
- `cells`: every (type, c_in, c_out) of the grid that is to be measured.
- `runs`: one row per build invocation and device (device, runtime and version, threads, host,
  start/end, settings).
- `measurements`: raw timings, one per (cell, pass); UNIQUE(cell_id, pass_index), so a resumed
  build can never count a cell twice. `runs` is set where a timing took more invocations than
  its run's settings say (a minimum timed duration); `fastest` is the pass's fastest single
  invocation (NULL where the device could not tell, e.g. `benchmark_model`); `slow` is 1 where
  the timing was kept although the machine never read fast around it (the speed gate's longest
  wait; NULL: not read), and such a pass counts only in a cell without a pass at full speed.
- `aggregates`: per cell mean/median/std/count of the passes, `value` (the estimator chosen
  for the table, interpolated where the grid is sparse) and `smoothed`, for every cell of each
  type's full range (interpolated cells are marked); derived, recomputable.
- `layer_map`: optional layer name -> type key overrides (imported tables keyed by layer).
- `whole_networks`: whole networks measured on the device (validation reports).
- `templates`: each layer type's converted single-layer model (its marker channel counts and
  the converter's version), which the cells were rendered from (`latency.generate`).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import sqlite3
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Iterator

import sqlite_utils

from .devices.base import DeviceInfo, Timing
from .layer_types import LayerType
from .recipe import RECIPE_META_KEY, TableRecipe, recipe_from_meta
from .schema import READABLE_VERSIONS, SCHEMA_VERSION, first_run_settings, migrations


class TableFileError(ValueError):
    """A file that is not a latency table, or one that does not fit the request."""


def _in_wal_mode(path: Path) -> bool:
    """The header's read/write versions are 2 in WAL mode (https://sqlite.org/fileformat.html)."""
    with open(path, "rb") as f:
        header = f.read(20)
    return len(header) == 20 and header.startswith(b"SQLite format 3") and header[18:20] == b"\x02\x02"


def _connect(path: Path, write: bool) -> sqlite3.Connection:
    if not write:
        # read-only: no journal-mode switch, no file created, works on read-only storage. A file
        # left in WAL mode with no -wal beside it (its writer closed) is complete as it is: read
        # it as immutable, since a WAL reader would create -wal and -shm files next to it
        uri = f"{path.resolve().as_uri()}?mode=ro"
        if _in_wal_mode(path) and not Path(f"{path}-wal").exists():
            uri += "&immutable=1"
        return sqlite3.connect(uri, uri=True, timeout=30)
    conn = sqlite3.connect(str(path), timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")  # readers (predict) never block a running build
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def kill_point(name: str) -> None:
    """Dies right here when the environment names this point (tests kill a writer at chosen
    moments with it, then check that the file is whole)."""
    if os.environ.get("NETADAPT_KILL_AT") == name:
        os.kill(os.getpid(), 9)


def _take_writer_lock(path: Path) -> int:
    """An exclusive flock on the table file for this writer; the kernel drops it when the
    process dies, so a killed build's lock is taken over safely."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        who = "another process"
        with contextlib.suppress(Exception):
            db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
            try:
                row = db.execute("select value from meta where key = 'writer'").fetchone()
            finally:
                db.close()
            w = json.loads(row[0])
            who = f"pid {w['pid']}, host {w['host']}"
        raise TableFileError(f"another build ({who}) is writing {path}: wait for it to finish, or choose another "
                             "--out") from None
    return fd


class TableStore:
    """Access to a table file, read-only unless opened with `write`; every write commits
    before returning."""

    def __init__(self, db: sqlite_utils.Database, path: Path, writable: bool = False, lock_fd: int | None = None):
        self.db = db
        self.path = path
        self.writable = writable
        self._lock_fd = lock_fd  # held while writing: one writer per table file

    # -- opening ----------------------------------------------------------------------------
    @classmethod
    def create_or_open(cls, path: str | Path, arch_name: str, recipe: TableRecipe) -> "TableStore":
        """Opens an existing table of the same architecture for writing (to resume: comparing its
        recipe is the caller's) or creates a new one measured with `recipe`."""
        path = Path(path)
        if path.exists():
            reader = cls.open(path)  # a file that does not fit is refused before anything is written
            try:
                meta = reader.meta()
            finally:
                reader.close()
            existing = meta.get("arch")
            if existing != arch_name:
                raise TableFileError(
                    f"{path} is a table of {existing!r}, not {arch_name!r}: choose another --out file"
                )
            if meta.get("source") == "import":
                raise TableFileError(f"{path} is an imported table (its cells were not measured here): measure into "
                                     "another --out")
            return cls.open(path, write=True)
        if not path.parent.exists():
            raise TableFileError(f"cannot create {path}: directory {path.parent} does not exist")
        try:
            db = sqlite_utils.Database(_connect(path, write=True))
        except sqlite3.OperationalError as exc:
            raise TableFileError(f"cannot create {path}: {exc}") from exc
        store = cls(db, path, writable=True, lock_fd=_take_writer_lock(path))
        with store._write():
            migrations.apply(db)
        store.set_meta(schema_version=SCHEMA_VERSION, arch=arch_name, created_at=time.time(),
                       **{RECIPE_META_KEY: recipe.to_json()})
        store._claim()
        return store

    @classmethod
    def open(cls, path: str | Path, write: bool = False) -> "TableStore":
        """Opens a table file; for writing, an older file's schema is migrated first."""
        path = Path(path)
        if not path.is_file():
            raise TableFileError(f"{path}: no such table file")
        try:
            db = sqlite_utils.Database(_connect(path, write))
            names = set(db.table_names())
        except sqlite3.DatabaseError as exc:
            raise TableFileError(f"{path} is not a latency table (not an SQLite database: {exc})") from exc
        if "meta" not in names or "layer_types" not in names:
            db.conn.close()
            raise TableFileError(f"{path} is an SQLite file but not a latency table (no meta/layer_types tables)")
        store = cls(db, path, writable=write)
        version = store.meta().get("schema_version")
        if version not in READABLE_VERSIONS:
            db.conn.close()
            raise TableFileError(f"{path} has table schema version {version}; this version reads "
                                 f"{', '.join(map(str, READABLE_VERSIONS))}")
        if write:
            try:
                store._lock_fd = _take_writer_lock(path)
            except TableFileError:
                db.conn.close()
                raise
            with store._write():
                migrations.apply(db)
            store._claim()
        return store

    def _claim(self) -> None:
        """Records this writer (named when another is refused) and closes the runs a killed
        writer left 'running': holding the lock, no other process can be measuring."""
        with self._write():
            self.db["meta"].upsert({"key": "writer", "value": json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})}, pk="key")
            self.db.execute("update runs set status = 'interrupted', ended_at = coalesce(ended_at, ?) "
                            "where status = 'running'", [time.time()])

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        """One transaction: all of it is in the file, or none of it. A full disk becomes an
        error naming the file and the space left; everything committed before stays."""
        try:
            with self.db.atomic():
                yield
        except sqlite3.OperationalError as exc:
            if "full" not in str(exc):
                raise
            free = shutil.disk_usage(self.path.resolve().parent).free
            raise TableFileError(
                f"{self.path}: the disk is full ({free / 1e6:.1f} MB free there): free some space and run the same "
                "command again; everything committed so far is kept") from exc

    # -- recipe -------------------------------------------------------------------------------
    def recipe(self) -> TableRecipe:
        """How the table's cells were measured and combined (`latency.recipe`)."""
        return recipe_from_meta(self.meta(), first_run_settings(self.db))

    def set_recipe(self, recipe: TableRecipe) -> None:
        self.set_meta(**{RECIPE_META_KEY: recipe.to_json()})

    # -- meta ---------------------------------------------------------------------------------
    def meta(self) -> dict:
        return {r["key"]: json.loads(r["value"]) for r in self.db["meta"].rows}

    def set_meta(self, **values) -> None:
        with self._write():
            self.db["meta"].upsert_all([{"key": k, "value": json.dumps(v)} for k, v in values.items()], pk="key")

    # -- layer types and cells ------------------------------------------------------------------
    def layer_types(self) -> dict[str, LayerType]:
        out = {}
        for r in self.db["layer_types"].rows:
            out[r["key"]] = LayerType(r["key"], r["op"], r["kernel"], r["stride"], r["in_size"], bool(r["bn"]),
                                      r["act"] or None, r["in_lo"], r["in_hi"], r["out_lo"], r["out_hi"])
        return out

    def add_layer_type(self, t: LayerType, grid_step: int, cells: Iterable[tuple[int, int]],
                       ops: list[str] | None = None) -> None:
        """Registers a type and its cells; a type already there must have the same grid."""
        existing = self.db["layer_types"].rows_where("key = ?", [t.key])
        row = next(iter(existing), None)
        if row is not None:
            if (row["in_lo"], row["in_hi"], row["out_lo"], row["out_hi"], row["grid_step"]) != (
                t.in_lo, t.in_hi, t.out_lo, t.out_hi, grid_step):
                raise TableFileError(
                    f"{self.path}: layer type {t.key} is already there with another grid; build into a new file"
                )
            if self.db["cells"].count_where("type_key = ?", [t.key]) == 0:
                # an older version committed a type and its cells apart: a kill between them left
                # a type without cells, which this repairs
                with self._write():
                    self.db["cells"].insert_all(({"type_key": t.key, "c_in": i, "c_out": o} for i, o in cells),
                                                batch_size=5000)
            return
        rec = asdict(t)
        rec.update(bn=int(t.bn), act=t.act or "", grid_step=grid_step, ops=json.dumps(ops or []))
        with self._write():
            self.db["layer_types"].insert(rec)
            kill_point("after-type-row")
            self.db["cells"].insert_all(({"type_key": t.key, "c_in": i, "c_out": o} for i, o in cells), batch_size=5000)

    def templates(self) -> dict[str, tuple[dict[str, int], bytes]]:
        """Type key -> (marker channel counts, converted model) of each stored template; {} for a
        file from before templates were stored."""
        if "templates" not in self.db.table_names():
            return {}
        return {r["type_key"]: (json.loads(r["markers"]), bytes(r["model"])) for r in self.db["templates"].rows}

    def add_templates(self, templates: dict[str, tuple[dict[str, int], bytes]], converter: str) -> None:
        """Stores the templates of types that have none yet; a stored one is never replaced (the
        cells already timed were rendered from it)."""
        with self._write():
            self.db["templates"].insert_all(
                ({"type_key": k, "markers": json.dumps(m), "model": model, "converter": converter}
                 for k, (m, model) in templates.items()), pk="type_key", ignore=True)

    def cells(self) -> dict[int, tuple[str, int, int]]:
        return {r[0]: (r[1], r[2], r[3]) for r in self.db.execute("select id, type_key, c_in, c_out from cells")}

    def measured_passes(self) -> set[tuple[int, int]]:
        return {(r[0], r[1]) for r in self.db.execute("select cell_id, pass_index from measurements")}

    # -- runs and measurements --------------------------------------------------------------------
    def start_run(self, info: DeviceInfo) -> int:
        with self._write():
            row = self.db["runs"].insert({
                "device": info.name, "kind": info.kind, "runtime": info.runtime,
                "runtime_version": info.runtime_version, "threads": info.threads, "host": info.host,
                "started_at": time.time(), "ended_at": None, "settings": json.dumps(info.settings),
                "status": "running",
            })
        return row.last_pk

    def end_run(self, run_id: int, status: str) -> None:
        with self._write():
            self.db["runs"].update(run_id, {"ended_at": time.time(), "status": status})

    def add_measurements(self, run_id: int, device: str, pass_index: int, timings: Iterable[Timing]) -> int:
        """Commits one finished batch; a (cell, pass) already stored is kept, not duplicated."""
        rows = [(t.cell_id, pass_index, run_id, device, t.seconds, t.measured_at, t.temperature_c,
                 None if t.throttled is None else int(t.throttled), t.runs, t.fastest_s,
                 None if t.slow is None else int(t.slow)) for t in timings]
        for r in rows:
            for value in (r[4], r[9]) if r[9] is not None else (r[4],):
                if not (value > 0 and value < float("inf")):
                    raise ValueError(f"refusing to store a non-positive or non-finite timing {value!r} for cell {r[0]}")
        with self._write():
            cur = self.db.conn.executemany(
                "insert or ignore into measurements (cell_id, pass_index, run_id, device, seconds, measured_at,"
                " temperature_c, throttled, runs, fastest, slow) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        kill_point("after-measurements")
        return cur.rowcount

    def measured_span_s(self) -> float:
        """Seconds from the first stored cell timing to the last (0 without any): how far apart
        in time the cells' passes met the device."""
        lo, hi = next(iter(self.db.execute("select min(measured_at), max(measured_at) from measurements")))
        return float(hi - lo) if lo is not None and hi is not None else 0.0

    def drop_passes_from(self, pass_index: int) -> int:
        """Deletes every measurement of pass `pass_index` and later (a cell timed again after
        slow passes included): the table its first passes made. For analysis of a copy; returns
        the rows deleted."""
        with self._write():
            return self.db.execute("delete from measurements where pass_index >= ?", [pass_index]).rowcount

    def raw_by_cell(self, column: str = "seconds", full_speed_only: bool = True) -> dict[int, list[float]]:
        """cell id -> its passes' `column` ("seconds": the mean invocation of each pass,
        "fastest": the fastest invocation of each pass) in pass order; a pass that did not
        record `column` gives None. With `full_speed_only`, passes timed while the machine read
        slow are left out of a cell that has a pass at full speed."""
        if column not in ("seconds", "fastest"):
            raise ValueError(f"no such measurement column {column!r}")
        have = self.db["measurements"].columns_dict
        if column not in have:
            return {cell_id: [None] * len(v) for cell_id, v in self.raw_by_cell(full_speed_only=full_speed_only).items()}
        slow = "slow" if "slow" in have else "null"
        passes: dict[int, list[tuple[float, bool]]] = {}
        for cell_id, value, was_slow in self.db.execute(
                f"select cell_id, {column}, {slow} from measurements order by cell_id, pass_index"):
            passes.setdefault(cell_id, []).append((value, bool(was_slow)))
        out: dict[int, list[float]] = {}
        for cell_id, rows in passes.items():
            fast = [v for v, was_slow in rows if not was_slow] if full_speed_only else []
            out[cell_id] = fast if fast else [v for v, _ in rows]
        return out

    def slow_cells(self) -> dict[int, int]:
        """cell id -> its last pass index, for the cells whose every pass was timed while the
        machine read slow (`Timing.slow`): what the build times again."""
        if "slow" not in self.db["measurements"].columns_dict:
            return {}
        return {r[0]: r[1] for r in self.db.execute(
            "select cell_id, max(pass_index) from measurements group by cell_id having min(coalesce(slow, 0)) = 1")}

    def write_aggregates(self, rows: list[dict]) -> None:
        with self._write():
            self.db["aggregates"].delete_where()
            kill_point("after-aggregates-delete")
            self.db["aggregates"].insert_all(rows, batch_size=5000)

    def cell_values(self, smoothed: bool = True) -> Iterable[tuple[str, int, int, float, int]]:
        """(type key, c_in, c_out, value, measured) of every derived cell: the smoothed value, or
        the unsmoothed one (`value`; the mean in files from before per-cell estimators)."""
        column = "smoothed" if smoothed else (
            "value" if "value" in self.db["aggregates"].columns_dict else "mean")
        return self.db.execute(f"select type_key, c_in, c_out, {column}, measured from aggregates")

    def layer_map(self) -> dict[str, str]:
        return {r["layer"]: r["type_key"] for r in self.db["layer_map"].rows}

    def set_layer_map(self, mapping: dict[str, str]) -> None:
        with self._write():
            self.db["layer_map"].upsert_all([{"layer": k, "type_key": v} for k, v in mapping.items()], pk="layer")

    def close(self) -> None:
        if self.writable:
            try:
                # the .sqlite file alone is then complete, and in rollback mode readers on
                # read-only storage need no -wal/-shm files
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self.db.execute("PRAGMA journal_mode=DELETE")
            except sqlite3.Error:
                pass  # another connection holds the WAL: the last one to close checkpoints it
        self.db.conn.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # after SQLite's connection: closing a descriptor drops POSIX locks
            self._lock_fd = None
