"""Check networks: the choice and the figures by hand, and build-tables then latency-report on a real
small table, the check networks timed by LiteRT and stored in the real table file."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from latency import cli_build, cli_report
from latency.metrics import TARGETS
from latency.network_check import BuildCheck, NetworkCheck, build_check_lines, check_networks, network_check
from latency.networks import widths_key
from models.families import get_arch

ARCH = "wrn-10-1"
BUILD = ["--device", "local", "--arch", ARCH, "--grid", "step:8", "--passes", "1", "--runs", "5",
         "--estimator", "median-fastest", "--quiet"]


def test_the_check_networks_are_the_full_network_then_half_width() -> None:
    arch = get_arch(ARCH)
    full, half = check_networks(arch)
    assert (full.label, half.label) == ("full", "uniform-0.50")
    assert full.widths == arch.validate(arch.full_widths())
    assert all(half.widths[g.name] == max(1, round(g.full / 2)) for g in arch.prunable_groups)
    assert [n.label for n in check_networks(arch, 1)] == ["full"] and check_networks(arch, 0) == []
    with pytest.raises(ValueError, match="between 0 and 2"):
        check_networks(arch, 3)


def test_the_build_says_how_the_table_predicts_them_and_warns_beyond_the_worst_target() -> None:
    close = BuildCheck("full", 0.00099, 0.001)
    assert close.error_pct == pytest.approx(-1.0)
    assert build_check_lines([close]) == ["check network full: predicted 0.990 ms, measured 1.000 ms (-1.0 %)"]
    off = BuildCheck("uniform-0.50", 0.0004, 0.0005)  # -20 %
    lines = build_check_lines([close, off])
    assert len(lines) == 3 and lines[2].startswith("warning")
    assert "uniform-0.50: -20.0 %, the network slower than the table says" in lines[2]
    over = BuildCheck("full", 0.0006, 0.0005)  # the table over-predicts by 20 %
    assert "full: +20.0 %, the network faster than the table says" in build_check_lines([over])[1]
    assert f"more than {TARGETS['max_ape']:g} %" in lines[2]
    assert build_check_lines([]) == []
    # timed only while the machine ran slow: said so, and no warning about the table
    slow = BuildCheck("full", 0.0003, 0.00045, all_slow=True)
    assert build_check_lines([close, slow]) == [close.line(), slow.line()]
    assert "(-33.3 %; every pass timed while this machine ran slow" in slow.line()


def test_the_network_move_is_the_median_and_the_full_network_comes_first() -> None:
    keys = {"a": "uniform-0.50", "b": "full"}
    check = network_check(keys, {"a": 1.0, "b": 2.0}, {"a": 1.01, "b": 2.2})
    assert check.labels == ("full", "uniform-0.50") and check.moves_pct == pytest.approx([10.0, 1.0])
    assert check.drift_pct == pytest.approx(5.5) and check.moved
    assert "full +10.0 %, uniform-0.50 +1.0 %" in check.sentence() and "slower" in check.sentence()
    steady = network_check(keys, {"a": 1.0, "b": 2.0}, {"a": 0.99, "b": 2.0})
    assert not steady.moved and "carry" not in steady.sentence()
    assert network_check(keys, {"a": 1.0}, {"b": 1.0}) is None  # no network with both
    doc = check.to_json()
    assert [n["label"] for n in doc["networks"]] == ["full", "uniform-0.50"] and doc["moved"] is True
    with pytest.raises(ValueError, match="positive"):
        NetworkCheck(("full",), (1.0,), (0.0,))


def _rows(path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


def _copy_small_table(small_table, path: Path) -> Path:
    """A copy of the session's small real table (the SQLite backup API copies a WAL file whole)."""
    with sqlite3.connect(small_table(ARCH)) as src, sqlite3.connect(path) as dst:
        src.backup(dst)
    return path


def _median_fastest(path: Path, table: str, key: str) -> float:
    """The median of the fastest invocations of the passes at full speed (all, where none was)."""
    rows = _rows(path, f"select fastest, slow from {table} where widths = '{key}' and device = 'local'")
    fast = [f for f, slow in rows if not slow] or [f for f, _ in rows]
    return float(np.median(fast))


def test_build_tables_times_them_and_a_report_times_them_again(tmp_path, capsys) -> None:
    table = tmp_path / "table.sqlite"
    assert cli_build.main([*BUILD, "--out", str(table)]) == 0
    printed = capsys.readouterr().out
    arch = get_arch(ARCH)
    full, half = check_networks(arch)
    stored = _rows(table, "select widths, label, count(distinct pass_index) from build_networks "
                          "where device = 'local' and pass_index < 10 group by widths order by label")
    # every pass of both, as a report on this device times networks (10 passes); more where all
    # 10 were kept slow (a busy host)
    assert stored == [(full.key, "full", 10), (half.key, "uniform-0.50", 10)]
    for net in (full, half):
        extra = _rows(table, f"select slow from build_networks where widths = '{net.key}' and pass_index >= 10")
        planned = _rows(table, f"select slow from build_networks where widths = '{net.key}' and pass_index < 10")
        assert not extra or all(slow for slow, in planned)
    stored_rows = _rows(table, "select count(*) from build_networks")
    lines = [line for line in printed.splitlines() if line.startswith("check network")]
    assert len(lines) == 2 and lines[0].startswith("check network full: predicted")
    for line, net in zip(lines, (full, half)):  # the printed timing is the stored passes combined
        assert f"measured {_median_fastest(table, 'build_networks', net.key) * 1e3:.3f} ms" in line

    # a rerun over the finished table measures nothing and says the same
    assert cli_build.main([*BUILD, "--out", str(table)]) == 0
    again = capsys.readouterr()
    assert [line for line in again.out.splitlines() if line.startswith("check network")] == lines
    assert _rows(table, "select count(*) from build_networks") == stored_rows

    # a report times them with its networks and sets them against the build
    out = tmp_path / "rep"
    assert cli_report.main(["--table", str(table), "--arch", ARCH, "--sample", "3", "--passes", "2", "--span", "0",
                            "--out", str(out), "--quiet"]) == 0
    report_out = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 3  # the check networks are timed, not validated
    check = metrics["network_check"]
    assert [n["label"] for n in check["networks"]] == ["full", "uniform-0.50"]
    for n, net in zip(check["networks"], (full, half)):
        assert n["then_s"] == pytest.approx(_median_fastest(table, "build_networks", net.key), rel=1e-12)
        assert n["now_s"] == pytest.approx(_median_fastest(table, "whole_networks", net.key), rel=1e-12)
        assert _rows(table, f"select count(*) from whole_networks where widths = '{net.key}' "
                            "and pass_index < 2") == [(2,)]
    assert check["drift_pct"] == pytest.approx(np.median([n["move_pct"] for n in check["networks"]]))
    assert "network check: the build's check networks timed again" in report_out
    assert "- network check:" in (out / "report.md").read_text()
    # the build printed the prediction the report makes of the same network
    row = next(r for r in metrics["networks"] if widths_key(r["widths"]) == full.key)  # the sample holds it
    slow = [bool(s) for s, in _rows(table, f"select slow from whole_networks where widths = '{full.key}' "
                                           "order by pass_index")]
    assert row["full_speed_passes"] == ([i for i, s in enumerate(slow) if not s] or list(range(len(slow))))
    assert f"predicted {row['predicted_s'] * 1e3:.3f} ms" in lines[0]

    # a check network kept slow in every pass (as on a busy host) is timed again by the next run
    from latency.retime import MAX_EXTRA_PASSES

    with sqlite3.connect(table) as db:
        db.execute("delete from build_networks where pass_index >= 10")
        db.execute("update build_networks set slow = 1 where widths = ?", [full.key])
    assert cli_build.main([*BUILD, "--out", str(table)]) == 0
    extra = _rows(table, f"select slow from build_networks where widths = '{full.key}' and pass_index >= 10 "
                         "order by pass_index")
    assert _extra_passes_end_well([bool(slow) for slow, in extra], MAX_EXTRA_PASSES)


def test_a_bad_count_is_refused_before_any_device_time(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_build.main([*BUILD, "--out", str(tmp_path / "t.sqlite"), "--check-networks", "3"])
    assert exc.value.code == 2 and "--check-networks must be between 0 and 2, got 3" in capsys.readouterr().err
    assert not (tmp_path / "t.sqlite").exists()


def test_a_network_counts_its_passes_at_full_speed_as_a_cell_does(small_table, tmp_path) -> None:
    from collections import Counter

    from latency.devices.base import Timing
    from latency.store import TableStore
    from latency.store_networks import add_network_passes, measured_networks

    arch = get_arch(ARCH)
    full, half = check_networks(arch)
    path = _copy_small_table(small_table, tmp_path / "t.sqlite")
    store = TableStore.open(path, write=True)
    try:
        # full: two passes at full speed and one kept slow; half: every pass kept slow
        for p, (f_fast, f_slow, h) in enumerate([(1.0, False, 3.0), (1.2, False, 3.2), (2.0, True, 3.4)]):
            add_network_passes(store, arch, "local", 1, p, [
                (full, b"m", Counter(), Timing(0, f_fast * 1.1, 0.0, fastest_s=f_fast, slow=f_slow)),
                (half, b"m", Counter(), Timing(0, h * 1.1, 0.0, fastest_s=h, slow=True))], {})
        stored = measured_networks(store, arch, "local")
    finally:
        store.close()
    assert stored[full.key].slow == (False, False, True) and stored[full.key].full_speed == [0, 1]
    assert stored[full.key].value("median-fastest") == pytest.approx(1.1)  # the slow 2.0 left out
    assert stored[full.key].value("mean") == pytest.approx(1.1 * 1.1)
    assert stored[full.key].value("fastest") == pytest.approx(1.0)
    assert stored[half.key].value("median-fastest") == pytest.approx(3.2)  # none at full speed: every pass
    # passes stored before the speed was recorded count alike
    from latency.networks import Measured

    assert Measured((1.0, 2.0, 9.0), (1,), (1.0, 2.0, 9.0)).value("median-fastest") == pytest.approx(2.0)


def _extra_passes_end_well(slow_flags: list[bool], max_extra: int) -> bool:
    """Extra passes go on while each reads slow, and stop at the first at full speed or at the most."""
    return (1 <= len(slow_flags) <= max_extra and all(slow_flags[:-1])
            and (not slow_flags[-1] or len(slow_flags) == max_extra))


def test_check_networks_and_check_cells_whose_every_pass_ran_slow_are_timed_again(small_table, tmp_path) -> None:
    import asyncio
    from collections import Counter

    from latency.devices.base import Timing, TimingSettings
    from latency.devices.local import LocalDevice
    from latency.network_timing import measure_cells, measure_networks, table_cells
    from latency.retime import MAX_EXTRA_PASSES
    from latency.store import TableStore
    from latency.store_networks import add_exact_cell_passes, add_network_passes, slow_cells, slow_networks

    arch = get_arch(ARCH)
    full, half = check_networks(arch)
    path = _copy_small_table(small_table, tmp_path / "t.sqlite")
    cell = sorted(table_cells(str(path)))[0]
    passes, kept = 2, Timing(0, 1.0, 0.0, fastest_s=1.0, slow=True)
    store = TableStore.open(path, write=True)
    try:
        # full: every pass kept slow; half: one pass at full speed; the check cell: every pass slow
        for p in range(passes):
            add_network_passes(store, arch, "local", 1, p, [
                (full, b"m", Counter(), kept),
                (half, b"m", Counter(), Timing(0, 1.0, 0.0, fastest_s=1.0, slow=p == 0))], {}, "build_networks")
            add_exact_cell_passes(store, "local", 1, p, [(cell, kept)], "check_cells")
        assert slow_networks(store, arch, "local", "build_networks") == {full.key: passes - 1}
        assert slow_cells(store, "local") == {cell: passes - 1}
        device = LocalDevice(settings=TimingSettings(runs=5, warmup=1))

        async def time_again() -> tuple[int, int]:
            info = await device.start()
            try:
                nets = await measure_networks(store, arch, [full, half], device, info, passes, table="build_networks")
                cells = await measure_cells(store, arch, [cell], device, info, passes, table="check_cells")
                return nets.measured_now, cells
            finally:
                await device.close()

        nets_now, cells_now = asyncio.run(time_again())
    finally:
        store.close()
    net_rows = _rows(path, "select widths, pass_index, seconds, slow from build_networks order by pass_index")
    assert [p for w, p, _, _ in net_rows if w == half.key] == [0, 1]  # one pass at full speed: left alone
    extra = [(p, s, bool(slow)) for w, p, s, slow in net_rows if w == full.key and p >= passes]
    assert [p for p, _, _ in extra] == list(range(passes, passes + len(extra))) and nets_now == len(extra)
    assert _extra_passes_end_well([slow for _, _, slow in extra], MAX_EXTRA_PASSES)
    assert all(0 < s < 1.0 for _, s, _ in extra)  # timed by LiteRT, not the stored stand-in
    cell_rows = _rows(path, "select pass_index, seconds, slow from check_cells order by pass_index")
    assert [p for p, _, _ in cell_rows][:passes] == [0, 1] and cells_now == len(cell_rows) - passes
    assert _extra_passes_end_well([bool(slow) for p, _, slow in cell_rows if p >= passes], MAX_EXTRA_PASSES)
