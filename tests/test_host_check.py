"""The host check of a report: the choice of cells and the figures by hand, and latency-report on
a real small table, its check cells timed by LiteRT and stored in the real table file."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from latency import cli_report
from latency.host_check import MOVED_PCT, HostCheck, choose_check_cells, host_check
from latency.network_timing import table_cells
from latency.networks import network_cells, sample_networks
from latency.retime import MAX_EXTRA_PASSES
from models.families import get_arch

ARCH = "wrn-10-1"
FAST = ["--passes", "2", "--span", "0", "--quiet"]


def test_the_cells_the_networks_lean_on_most_one_per_type() -> None:
    table = {("conv", 4, 4): 1.0, ("conv", 8, 8): 4.0, ("conv", 4, 8): 2.0, ("add", 4, 0): 0.5, ("add", 8, 0): 0.6,
             ("head", 4, 0): 0.1}
    networks = [[("conv", 7, 7), ("conv", 7, 8), ("add", 5, 0), ("other", 3, 3)],  # 'other' is not in the table
                [("conv", 3, 4), ("add", 8, 0), ("head", 4, 0)]]
    # conv: (8, 8) counted twice (8.0), (4, 4) once (1.0); add: (4, 0) 0.5 and (8, 0) 0.6
    assert choose_check_cells(networks, table) == [("conv", 8, 8), ("add", 8, 0), ("head", 4, 0)]
    assert choose_check_cells(networks, table, k=2) == [("conv", 8, 8), ("add", 8, 0)]
    assert choose_check_cells(networks, table, k=0) == []
    assert choose_check_cells([], table) == []
    with pytest.raises(ValueError, match="must be >= 0"):
        choose_check_cells(networks, table, k=-1)


def test_every_layer_kind_has_a_check_cell_before_a_second_type_of_a_kind() -> None:
    table = {("conv-k3-s1-m8", 8, 8): 10.0, ("conv-k3-s1-m16", 8, 8): 6.0, ("conv-k1-s2-m8", 8, 8): 3.0,
             ("add-m8", 8, 0): 0.5, ("bn_act-m8-relu", 8, 0): 0.4}
    networks = [[(key, c_in, c_out) for key, c_in, c_out in table]]
    # by weight alone the three convs would come first; every kind gets its heaviest type first
    assert choose_check_cells(networks, table, k=3) == [("conv-k3-s1-m8", 8, 8), ("add-m8", 8, 0),
                                                        ("bn_act-m8-relu", 8, 0)]
    assert choose_check_cells(networks, table, k=4)[3] == ("conv-k3-s1-m16", 8, 8)
    assert len(choose_check_cells(networks, table, k=12)) == 5


def test_the_moves_are_given_per_layer_kind() -> None:
    cells = (("conv-k3-s1-m8", 8, 8), ("conv-k1-s2-m8", 8, 8), ("add-m8", 8, 0), ("add-m16", 4, 0))
    check = HostCheck(cells, (1.0, 1.0, 1.0, 1.0), (1.002, 0.998, 1.06, 1.08))
    assert check.to_json()["kinds"] == pytest.approx({"add": 7.0, "conv": 0.0})
    assert "by layer kind add +7.0 %, conv +0.0 %" in check.sentence()
    one_kind = HostCheck(cells[:2], (1.0, 1.0), (1.0, 1.0))
    assert "by layer kind" not in one_kind.sentence()


def test_the_drift_is_the_median_move_and_says_when_the_device_moved() -> None:
    cells = (("a", 1, 1), ("b", 2, 0), ("c", 3, 3))
    steady = HostCheck(cells, (1.0, 2.0, 4.0), (1.01, 1.98, 4.0))
    assert steady.moves_pct == pytest.approx([1.0, -1.0, 0.0])
    assert steady.drift_pct == pytest.approx(0.0) and not steady.moved
    assert "+0.0 % against the build" in steady.sentence() and "moved" not in steady.sentence()
    slower = HostCheck(cells, (1.0, 2.0, 4.0), (1.10, 2.1, 4.0))
    assert slower.drift_pct == pytest.approx(5.0) and slower.moved and MOVED_PCT < 5.0
    assert "+5.0 %" in slower.sentence() and "moved by more than" in slower.sentence()
    doc = slower.to_json()
    assert doc["drift_pct"] == pytest.approx(5.0) and [c["type_key"] for c in doc["cells"]] == ["a", "b", "c"]
    # only the cells with a value both then and now count
    partial = host_check(cells, {c: 1.0 for c in cells}, {cells[0]: 1.2})
    assert partial.cells == (cells[0],) and partial.drift_pct == pytest.approx(20.0)
    assert host_check(cells, {c: 1.0 for c in cells}, {}) is None
    with pytest.raises(ValueError, match="at least one cell"):
        HostCheck((), (), ())
    with pytest.raises(ValueError, match="positive"):
        HostCheck(cells[:1], (1.0,), (0.0,))


def test_the_table_cells_are_those_the_table_timed(small_table) -> None:
    table = small_table(ARCH)
    cells = table_cells(str(table))
    timed = _rows(table, "select type_key, c_in, c_out, value from aggregates where measured = 1")
    assert cells == {(k, i, o): v for k, i, o, v in timed} and len(cells) < len(_rows(table, "select * from aggregates"))


def _copy(src: Path, dst: Path) -> Path:
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    return dst


def _rows(path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


def test_a_report_times_the_table_cells_again_and_sets_them_against_the_build(small_table, tmp_path) -> None:
    table = _copy(small_table(ARCH), tmp_path / "table.sqlite")
    out = tmp_path / "rep"
    assert cli_report.main(["--table", str(table), "--arch", ARCH, "--sample", "3", "--check-cells", "4",
                            "--out", str(out), *FAST]) == 0
    check = json.loads((out / "metrics.json").read_text())["host_check"]
    assert len(check["cells"]) == 4
    # the cells: measured cells of the table, among the types of the networks, one per type
    arch = get_arch(ARCH)
    types = {c[0] for n in sample_networks(arch, 3, 0) for c in network_cells(arch, n.widths)}
    aggregates = {(k, i, o): v for k, i, o, v in _rows(table, "select type_key, c_in, c_out, value from aggregates "
                                                                "where measured = 1")}
    stored: dict[tuple, list[tuple[float, bool]]] = {}
    for k, i, o, sec, slow in _rows(table, "select type_key, c_in, c_out, seconds, slow from check_cells "
                                           "where device = 'local' order by pass_index"):
        stored.setdefault((k, i, o), []).append((sec, bool(slow)))
    keys = [(c["type_key"], c["c_in"], c["c_out"]) for c in check["cells"]]
    assert len({k[0] for k in keys}) == 4 and {k[0] for k in keys} <= types
    assert set(stored) == set(keys)
    for passes in stored.values():  # every pass, every cell; more where both were kept slow, up to 3 more
        assert len(passes) == 2 or (2 < len(passes) <= 2 + MAX_EXTRA_PASSES and all(s for _, s in passes[:-1]))
    for c, key in zip(check["cells"], keys):
        assert c["then_s"] == pytest.approx(aggregates[key], rel=1e-12)  # the table's own value (mean estimator)
        # the passes at full speed, as the table's cells count theirs, or all where none was
        fast = [sec for sec, slow in stored[key] if not slow] or [sec for sec, _ in stored[key]]
        assert c["now_s"] == pytest.approx(np.mean(fast), rel=1e-12)
        assert c["move_pct"] == pytest.approx(100 * (c["now_s"] / c["then_s"] - 1))
    assert check["drift_pct"] == pytest.approx(np.median([c["move_pct"] for c in check["cells"]]))
    # the check spans the networks' minutes: its first pass timed before them, its last after them
    (net_first, net_last), = _rows(table, "select min(measured_at), max(measured_at) from whole_networks")
    firsts = _rows(table, "select min(measured_at), max(measured_at) from check_cells where pass_index = 0")
    lasts = _rows(table, "select min(measured_at) from check_cells where pass_index = 1")
    assert firsts[0][1] < net_first and lasts[0][0] > net_last
    assert "host check: 4 of the table's cells" in (out / "report.md").read_text()

    # a second report reads what is stored: nothing is timed again, the check is the same
    before = _rows(table, "select count(*) from check_cells")
    assert cli_report.main(["--table", str(table), "--arch", ARCH, "--sample", "3", "--check-cells", "4",
                            "--out", str(tmp_path / "again"), *FAST]) == 0
    assert _rows(table, "select count(*) from check_cells") == before
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["host_check"] == check


def test_no_check_for_networks_measured_before_it_and_none_when_asked(small_table, tmp_path, capsys) -> None:
    table = _copy(small_table(ARCH), tmp_path / "table.sqlite")
    assert cli_report.main(["--table", str(table), "--arch", ARCH, "--sample", "2", "--check-cells", "0",
                            "--out", str(tmp_path / "none"), *FAST]) == 0
    metrics = json.loads((tmp_path / "none" / "metrics.json").read_text())
    assert metrics["host_check"] is None and "host check" not in (tmp_path / "none" / "report.md").read_text()
    capsys.readouterr()
    # the networks are stored now: a check timed now would not describe them, so none is timed
    assert cli_report.main(["--table", str(table), "--arch", ARCH, "--sample", "2", "--out",
                            str(tmp_path / "later"), *FAST]) == 0
    assert "host check: none, the networks were measured before this report" in capsys.readouterr().out
    assert _rows(table, "select count(*) from check_cells") == [(0,)]
    assert cli_report.main(["--table", str(table), "--arch", ARCH, "--sample", "2", "--check-cells", "-1",
                            "--out", str(tmp_path / "bad"), *FAST]) == 2
    assert "--check-cells must be >= 0" in capsys.readouterr().err
