"""tools.pass_count on a real table with real stored networks: the table of the first k passes
predicts as a k-pass table does, and the table asked about is left as it was."""
from __future__ import annotations

import hashlib
import json
import sqlite3

import pytest

from latency.finalize import finalize
from latency.metrics import validation_metrics
from latency.store import TableStore
from latency.store_networks import measured_networks
from latency.table import LatencyTable
from models.families import get_arch
from tests.test_report import ARCH, _copy_table, reported, widths_dir  # noqa: F401
from tools.pass_count import first_passes_table, main, pass_metrics


def _predictions(table, keys):
    predictor = LatencyTable.open(table).predictor(get_arch(ARCH))
    return [predictor.predict(json.loads(k)) for k in keys]


def _derive(table, passes):
    store = TableStore.open(table, write=True)
    recipe = store.recipe().replace(passes=passes)
    store.set_recipe(recipe)
    assert not finalize(store, recipe.sigma, recipe.estimator, recipe.edges)
    store.close()


@pytest.fixture(scope="module")
def two_passes(reported, tmp_path_factory):  # noqa: F811
    """(a one-pass table with stored networks, the same with a second pass): the reported table
    cut to its first pass (a cell timed again after a slow pass has a second), then each cell's
    first pass again at 0.8x (a faster pass, as a busy host's later pass can be), each derived
    by the table's own recipe."""
    src, _ = reported
    tmp = tmp_path_factory.mktemp("passes")
    one = _copy_table(src, tmp / "one.sqlite")
    with sqlite3.connect(one) as db:
        db.execute("delete from measurements where pass_index > 0")
    _derive(one, 1)
    two = _copy_table(one, tmp / "two.sqlite")
    with sqlite3.connect(two) as db:
        db.execute("insert into measurements (cell_id, pass_index, run_id, device, seconds, measured_at, "
                   "temperature_c, throttled, runs, fastest, slow) select cell_id, 1, run_id, device, seconds * 0.8, "
                   "measured_at, temperature_c, throttled, runs, fastest * 0.8, slow from measurements")
    _derive(two, 2)
    return one, two


def test_first_k_passes_predict_as_a_k_pass_table(two_passes, tmp_path) -> None:
    one_pass, table = two_passes
    digest = hashlib.sha256(table.read_bytes()).hexdigest()
    store = TableStore.open(table)
    networks = measured_networks(store, get_arch(ARCH), "local")
    estimator = store.recipe().estimator
    store.close()
    keys = sorted(networks)
    measured = [networks[k].value(estimator) for k in keys]
    assert len(keys) == 4

    rows = dict(pass_metrics(table, ARCH, "local", [1, 2]))
    # the first pass alone is the original one-pass table; both passes the table itself
    for k, reference in ((1, one_pass), (2, table)):
        expected = validation_metrics(_predictions(reference, keys), measured)
        assert rows[k]["mape"] == pytest.approx(expected["mape"], rel=1e-9)
        assert rows[k]["max_ape"] == pytest.approx(expected["max_ape"], rel=1e-9)
    assert rows[1]["mape"] != pytest.approx(rows[2]["mape"])  # the faster pass changed the cells
    assert hashlib.sha256(table.read_bytes()).hexdigest() == digest  # only read

    derived = tmp_path / "first.sqlite"
    first_passes_table(table, 1, derived)
    store = TableStore.open(derived)
    assert store.recipe().passes == 1
    assert store.db.execute("select max(pass_index) from measurements").fetchone()[0] == 0
    store.close()


def test_bad_questions_get_clear_errors(two_passes, small_table, tmp_path, capsys) -> None:
    _, table = two_passes
    assert main(["--table", str(table), "--arch", ARCH, "--passes", "1,3"]) == 2
    assert "has 2 passes; ask for at most that many" in capsys.readouterr().err
    bare = _copy_table(small_table(ARCH), tmp_path / "bare.sqlite")
    assert main(["--table", str(bare), "--arch", ARCH]) == 2
    assert "no wrn-10-1 network measured on 'local'" in capsys.readouterr().err
    assert main(["--table", str(tmp_path / "missing.sqlite"), "--arch", ARCH]) == 2
    assert "no table file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--table", str(table), "--arch", ARCH, "--passes", "0,2"])
    assert "pass counts >= 1" in capsys.readouterr().err


def test_prints_one_row_per_pass_count(two_passes, capsys) -> None:
    _, table = two_passes
    assert main(["--table", str(table), "--arch", ARCH]) == 0
    out = capsys.readouterr().out
    assert "4 stored networks predicted from the first k passes" in out
    assert [int(line.split()[0]) for line in out.splitlines()[2:]] == [1, 2]
