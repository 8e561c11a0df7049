"""The table file's schema, as named migrations (sqlite-utils `Migrations`).

A new file runs them all; a file of an older version runs those it lacks on its next write
(a file from before migrations were recorded runs every one, so each checks what is there).
Readers never migrate: they read an older file as it is (`latency.store`).
"""
from __future__ import annotations

import json

import sqlite_utils
from sqlite_utils import Migrations

#: written into meta by the last migration; a version that reads an older number refuses the file
SCHEMA_VERSION = 3
#: the versions this code opens (1: before migrations were recorded)
READABLE_VERSIONS = (1, 2, 3)

migrations = Migrations("netadapt-lut-table")


def _add_columns(db: sqlite_utils.Database, table: str, columns: dict) -> None:
    have = db[table].columns_dict
    for name, kind in columns.items():
        if name not in have:
            db[table].add_column(name, kind)


@migrations(name="0001_tables")
def _tables(db: sqlite_utils.Database) -> None:
    names = set(db.table_names())
    if "meta" not in names:
        db["meta"].create({"key": str, "value": str}, pk="key")
    if "layer_types" not in names:
        db["layer_types"].create(
            {"key": str, "op": str, "kernel": int, "stride": int, "in_size": int, "bn": int, "act": str,
             "in_lo": int, "in_hi": int, "out_lo": int, "out_hi": int, "grid_step": int, "ops": str}, pk="key")
    if "cells" not in names:
        db["cells"].create({"id": int, "type_key": str, "c_in": int, "c_out": int}, pk="id",
                           foreign_keys=[("type_key", "layer_types", "key")])
        db["cells"].create_index(["type_key", "c_in", "c_out"], unique=True)
    if "runs" not in names:
        db["runs"].create(
            {"id": int, "device": str, "kind": str, "runtime": str, "runtime_version": str, "threads": int,
             "host": str, "started_at": float, "ended_at": float, "settings": str, "status": str}, pk="id")
    if "measurements" not in names:
        db["measurements"].create(
            {"id": int, "cell_id": int, "pass_index": int, "run_id": int, "device": str, "seconds": float,
             "measured_at": float, "temperature_c": float, "throttled": int},
            pk="id", foreign_keys=[("cell_id", "cells", "id"), ("run_id", "runs", "id")])
        # one row per (cell, pass): a resumed build can never count a cell twice
        db["measurements"].create_index(["cell_id", "pass_index"], unique=True)
    if "aggregates" not in names:
        db["aggregates"].create(
            {"type_key": str, "c_in": int, "c_out": int, "mean": float, "median": float, "std": float,
             "count": int, "smoothed": float, "measured": int}, pk=("type_key", "c_in", "c_out"))
    if "layer_map" not in names:
        db["layer_map"].create({"layer": str, "type_key": str}, pk="layer")
    if "whole_networks" not in names:
        db["whole_networks"].create(
            {"id": int, "arch": str, "widths": str, "label": str, "device": str, "run_id": int,
             "pass_index": int, "seconds": float, "measured_at": float, "temperature_c": float}, pk="id")


@migrations(name="0002_measurement_invocations")
def _measurement_invocations(db: sqlite_utils.Database) -> None:
    # runs: invocations timed when more than the run's settings say (a minimum timed duration);
    # fastest: the pass's fastest single invocation (NULL where the device cannot tell)
    _add_columns(db, "measurements", {"runs": int, "fastest": float})


@migrations(name="0003_aggregate_value")
def _aggregate_value(db: sqlite_utils.Database) -> None:
    # the cell's value by the table's estimator; files from before it had the mean there
    if "value" not in db["aggregates"].columns_dict:
        db["aggregates"].add_column("value", float)
        db.execute("update aggregates set value = mean")


@migrations(name="0004_validation_tables")
def _validation_tables(db: sqlite_utils.Database) -> None:
    _add_columns(db, "whole_networks", {"throttled": int, "model_sha256": str, "runs": int, "warmup": int,
                                        "ops": str})
    # one row per (network, device, pass): a resumed or repeated report cannot double-count
    db.execute("create unique index if not exists whole_networks_pass on whole_networks"
               " (arch, widths, device, pass_index)")
    names = set(db.table_names())
    if "invoke_probes" not in names:
        db["invoke_probes"].create(
            {"id": int, "device": str, "run_id": int, "probe": str, "n_ops": int, "pass_index": int,
             "seconds": float, "measured_at": float, "model_sha256": str}, pk="id")
        db.execute("create unique index invoke_probes_pass on invoke_probes (device, probe, pass_index)")
    if "exact_cells" not in names:
        # single-layer models at the exact widths of validated networks (no interpolation, no
        # smoothing): they separate the table's error from the bias of summing
        db["exact_cells"].create(
            {"id": int, "type_key": str, "c_in": int, "c_out": int, "device": str, "run_id": int,
             "pass_index": int, "seconds": float, "measured_at": float}, pk="id")
        db.execute("create unique index exact_cells_pass on exact_cells (type_key, c_in, c_out, device, pass_index)")
    for table in ("whole_networks", "invoke_probes", "exact_cells"):
        _add_columns(db, table, {"fastest": float})


@migrations(name="0005_recipe")
def _recipe(db: sqlite_utils.Database) -> None:
    """The loose measurement settings of the meta become one recipe row."""
    from .recipe import LEGACY_META_KEYS, RECIPE_META_KEY, legacy_recipe, recipe_json

    meta = {r["key"]: json.loads(r["value"]) for r in db["meta"].rows}
    if RECIPE_META_KEY not in meta and meta.get("arch") is not None:
        recipe = legacy_recipe(meta, first_run_settings(db))
        db["meta"].upsert({"key": RECIPE_META_KEY, "value": recipe_json(recipe)}, pk="key")
    for key in LEGACY_META_KEYS:
        db["meta"].delete_where("key = ?", [key])
    db["meta"].upsert({"key": "schema_version", "value": json.dumps(2)}, pk="key")


@migrations(name="0006_measurement_speed")
def _measurement_speed(db: sqlite_utils.Database) -> None:
    # slow: the timing was kept although the machine never read fast around it (1), or not (0), or
    # the speed was not read (NULL); a version before it would count such passes like the others,
    # so it must refuse the file
    _add_columns(db, "measurements", {"slow": int})
    db["meta"].upsert({"key": "schema_version", "value": json.dumps(SCHEMA_VERSION)}, pk="key")


@migrations(name="0007_check_cells")
def _check_cells(db: sqlite_utils.Database) -> None:
    # a few of the table's own cells timed again with a report's networks (latency.host_check);
    # an older version ignores the table, so the schema version stays
    if "check_cells" not in db.table_names():
        db["check_cells"].create(
            {"id": int, "type_key": str, "c_in": int, "c_out": int, "device": str, "run_id": int,
             "pass_index": int, "seconds": float, "fastest": float, "slow": int, "measured_at": float}, pk="id")
        db.execute("create unique index check_cells_pass on check_cells (type_key, c_in, c_out, device, pass_index)")


@migrations(name="0008_build_networks")
def _build_networks(db: sqlite_utils.Database) -> None:
    # the check networks build-tables times after the cells (latency.network_check), with the
    # columns of whole_networks; an older version ignores the table, so the schema version stays
    if "build_networks" not in db.table_names():
        db["build_networks"].create(
            {"id": int, "arch": str, "widths": str, "label": str, "device": str, "run_id": int,
             "pass_index": int, "seconds": float, "fastest": float, "measured_at": float, "temperature_c": float,
             "throttled": int, "model_sha256": str, "runs": int, "warmup": int, "ops": str}, pk="id")
        db.execute("create unique index build_networks_pass on build_networks (arch, widths, device, pass_index)")


@migrations(name="0009_network_speed")
def _network_speed(db: sqlite_utils.Database) -> None:
    # slow: the network's pass was kept although the machine never read fast around it (1), or
    # not (0), or the speed was not read (NULL); a report counts a network's passes at full speed
    # as a table counts its cells'. An older version counts every pass, so the version stays.
    for table in ("whole_networks", "build_networks"):
        if table in db.table_names():
            _add_columns(db, table, {"slow": int})


@migrations(name="0010_templates")
def _templates(db: sqlite_utils.Database) -> None:
    # each layer type's converted template, which the table's cells were rendered from
    # (`latency.generate`): a resumed build and a report's check cells render the models the table
    # timed, whatever converter they run with; an older version ignores the table, so the version stays
    if "templates" not in db.table_names():
        db["templates"].create({"type_key": str, "markers": str, "model": bytes, "converter": str}, pk="type_key")


def first_run_settings(db: sqlite_utils.Database) -> dict:
    """The first measuring run's kind and settings (what a table before recipes recorded of its
    timing), or {} for a table with no run."""
    if "runs" not in db.table_names():
        return {}
    row = next(iter(db.execute("select kind, settings, threads from runs order by id limit 1")), None)
    if row is None:
        return {}
    settings = json.loads(row[1] or "{}")
    settings.setdefault("threads", row[2])
    return {"kind": row[0], **settings}
