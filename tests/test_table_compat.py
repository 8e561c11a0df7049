"""Tables written by the version before recipes and migrations: they open, predict what they
predicted then, and continue building.

`tests/data/table-v0-wrn-10-1.sqlite` was built by that version with
`build-tables --device local --arch wrn-10-1 --grid step:8 --passes 1`; the JSON beside it holds
its predictions of eight sampled networks, made by that version."""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from latency import context as cx
from latency.recipe import TableRecipe
from latency.store import TableStore
from latency.table import LatencyTable
from models.families import get_arch
from tests.test_tables import cli

DATA = Path(__file__).parent / "data"
V0 = DATA / "table-v0-wrn-10-1.sqlite"
PI_TABLE = Path(__file__).parents[1] / "tables" / "rpi3b-wrn-40-2.sqlite"


def _predictions() -> list[dict]:
    return json.loads((DATA / "table-v0-wrn-10-1.predictions.json").read_text())["predictions"]


def test_an_older_table_is_read_as_it_is_and_predicts_as_before(tmp_path: Path) -> None:
    table = tmp_path / "t.sqlite"
    shutil.copy(V0, table)
    with sqlite3.connect(table) as db:  # that version left its files in WAL mode
        db.execute("pragma journal_mode=wal")
    before = table.read_bytes()
    arch = get_arch("wrn-10-1")
    smoothed, raw = LatencyTable.open(table), LatencyTable.open(table, smoothed=False)
    for p in _predictions():
        assert smoothed.predict(arch, p["widths"]) == pytest.approx(p["seconds"], rel=1e-12)
        assert raw.predict(arch, p["widths"]) == pytest.approx(p["raw_seconds"], rel=1e-12)
    # its recipe, gathered from the loose meta keys and the first run of that version
    assert smoothed.recipe == TableRecipe(device_kind="local", grid_step=8, grid_block=8, context="network",
                                          evict_bytes=0, passes=1, runs=50, warmup=2, threads=1, min_time_s=0.0,
                                          estimator="fastest", sigma=0.0, edges="linear")
    assert table.read_bytes() == before and not Path(f"{table}-wal").exists()  # a reader changes nothing


def test_an_older_table_continues_building(tmp_path: Path) -> None:
    table = tmp_path / "t.sqlite"
    shutil.copy(V0, table)
    arch = get_arch("wrn-10-1")
    args = ["-m", "latency.cli_build", "--device", "local", "--arch", "wrn-10-1", "--grid", "step:8", "--passes", "2",
            "--quiet", "--out", str(table)]
    if cx.evict_bytes_for(arch, cx.local_l2_bytes()) != 0:
        # this CPU's L2 is smaller than the one the table was timed on: it refuses, naming why
        p = cli(*args, check=False)
        assert p.returncode == 2 and "evict_bytes: 0 in the table" in p.stderr
        return
    assert not LatencyTable.open(table).predictor(arch).pair_adds  # it sums an addition and its batch-norm
    p = cli(*args)
    n_cells = sqlite3.connect(V0).execute("select count(*) from cells").fetchone()[0]
    store = TableStore.open(table)
    # it gains the types of an addition timed with the batch-norm that alone reads it (latency.fusion)
    new = store.db.execute("select count(*) from cells").fetchone()[0] - n_cells
    pair_types = [r[0] for r in store.db.execute("select key from layer_types where key like 'add-%-bn-relu'")]
    assert new > 0 and len(pair_types) == 3
    assert f"measured now: {n_cells + 2 * new:,}, already there: {n_cells:,}" in p.stdout
    meta = store.meta()
    assert meta["schema_version"] == 3 and "grid_step" not in meta and "cell_context" not in meta
    assert store.recipe().passes == 2 and store.recipe().in_network
    rows = store.db.execute("select cell_id, pass_index from measurements where pass_index < 2").fetchall()
    assert len(rows) == len(set(rows)) == 2 * (n_cells + new)
    applied = [r[0] for r in store.db.execute("select name from _sqlite_migrations order by id")]
    assert applied[0] == "0001_tables" and applied[-1] == "0010_templates"
    assert {"check_cells", "build_networks", "templates"} <= set(store.db.table_names())  # the newest migrations ran too
    store.close()
    assert LatencyTable.open(table).predictor(arch).pair_adds
    # the table's estimator keeps each cell's fastest pass: a second pass can only lower a cell
    # (by how much depends on this CPU against the one of the first pass)
    query = "select type_key, c_in, c_out, smoothed from aggregates where measured = 1"
    old = {r[:3]: r[3] for r in sqlite3.connect(V0).execute(query)}
    new_values = {r[:3]: r[3] for r in sqlite3.connect(table).execute(query)}
    assert old.keys() <= new_values.keys() and all(0 < new_values[k] <= v for k, v in old.items())
    for p in _predictions():
        assert 0 < LatencyTable.open(table).predict(arch, p["widths"]) < 1


def test_the_shipped_pi_table_predicts_as_before_and_stays_unchanged() -> None:
    before = PI_TABLE.read_bytes()
    table = LatencyTable.open(PI_TABLE)
    assert table.predict(get_arch("wrn-40-2")) == pytest.approx(0.3530, abs=5e-4)  # the README's 353.0 ms
    assert table.recipe.device_kind == "ssh" and table.recipe.estimator == "mean" and table.recipe.sigma == 3
    assert PI_TABLE.read_bytes() == before and not Path(f"{PI_TABLE}-wal").exists()
