"""latency-report end to end on this CPU: a real small table, real LiteRT timings of whole
networks, a real SQLite store; every metric is recomputed here from the stored rows. The
report's diagnostic options run through tools.report_diagnostics."""
from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from latency import cli_report, report_measure
from latency.devices.defaults import defaults_for
from latency.finalize import finalize
from latency.generate import CellModels
from latency.layer_types import network_layer_types
from latency.metrics import corrected_prediction, overhead_corrected, validation_metrics
from latency.networks import network_model, sample_networks, widths_key
from latency.op_coverage import model_op_counts, op_check
from latency.store import TableStore
from latency.table import LatencyTable
from models.arch import widths_to_json
from models.counts import network_macs
from models.families import get_arch
from tools import report_diagnostics

ARCH = "wrn-10-1"
# runs, warm-up and the rest come from the table's recipe (conftest's small tables: 5 runs, 1 warm-up)
# back to back: the spread of the passes over minutes has tests of its own
FAST = ["--passes", "2", "--span", "0", "--quiet"]


def _copy_table(src: Path, dst: Path) -> Path:
    # the SQLite backup API copies a WAL-mode database consistently
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    return dst


def _rows(path: Path, sql: str, args: tuple = ()) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, args).fetchall()


def _planned(table: Path, passes: int = 2) -> int:
    """Network passes stored within the planned `passes`."""
    return _rows(table, "select count(*) from whole_networks where pass_index < ?", (passes,))[0][0]


def _extra_passes_are_retimes(table: Path, passes: int = 2) -> bool:
    """Every network pass beyond the planned ones is of a network whose planned passes were all
    kept slow (a busy host: `network_timing.retime_slow`), in consecutive pass indices."""
    for (widths,) in _rows(table, "select distinct widths from whole_networks where pass_index >= ?", (passes,)):
        rows = _rows(table, "select pass_index, slow from whole_networks where widths = ? order by pass_index",
                     (widths,))
        if [p for p, _ in rows] != list(range(len(rows))) or not all(slow for _, slow in rows[:passes]):
            return False
    return True


def _counted(rows: list[tuple]) -> list[tuple]:
    """The passes a network's value combines (its last column: kept slow): those at full speed, all
    where none was."""
    return [r for r in rows if not r[-1]] or rows


@pytest.fixture(scope="module")
def widths_dir(tmp_path_factory) -> Path:
    arch = get_arch(ARCH)
    d = tmp_path_factory.mktemp("widths")
    (d / "full.json").write_text(widths_to_json(arch.full_widths()))
    half = {g.name: max(1, g.full // 2) for g in arch.prunable_groups}
    half["s1b0"] = 0  # the first block removed: an identity
    (d / "half-noblock.json").write_text(widths_to_json(half))
    return d


@pytest.fixture(scope="module")
def reported(small_table, tmp_path_factory, widths_dir):
    """A table copy with a report of 2 given + 3 sampled networks (sampled 'full' duplicates
    the given full.json, so 4 distinct networks)."""
    tmp = tmp_path_factory.mktemp("report")
    table = _copy_table(small_table(ARCH), tmp / "table.sqlite")
    out = tmp / "rep"
    rc = report_diagnostics.main(["--table", str(table), "--arch", ARCH, "--widths", str(widths_dir), "--sample", "3",
                                  "--exact-layers", "--out", str(out), *FAST])
    assert rc == 0
    return table, out


def test_report_files_and_metrics_match_the_stored_rows(reported, widths_dir) -> None:
    table, out = reported
    arch = get_arch(ARCH)
    metrics = json.loads((out / "metrics.json").read_text())
    nets = metrics["networks"]
    given = {p.stem: json.loads(p.read_text()) for p in widths_dir.glob("*.json")}
    sampled = sample_networks(arch, 3, 0)
    expected = {k: arch.validate(w) for k, w in given.items()}
    for n in sampled:
        if widths_key(n.widths) not in {widths_key(w) for w in expected.values()}:
            expected[n.label] = n.widths
    assert {n["label"]: n["widths"] for n in nets} == expected
    assert metrics["n"] == len(expected) == 4

    # measured: mean of the stored passes, one row per (network, pass), timed with the table's recipe
    recipe = LatencyTable.open(table).recipe
    assert (recipe.runs, recipe.warmup, recipe.estimator) == (5, 1, "mean")
    assert metrics["recipe"] == recipe.to_json()
    assert (metrics["measurement"]["runs"], metrics["measurement"]["warmup"]) == (recipe.runs, recipe.warmup)
    for n in nets:
        rows = _rows(table, "select seconds, runs, warmup, slow from whole_networks where arch = ? and widths = ? "
                            "and device = 'local' order by pass_index", (ARCH, widths_key(n["widths"])))
        secs = [r[0] for r in _counted(rows)]
        assert len(rows) >= 2 and all(r[0] > 0 for r in rows)
        assert {r[1:3] for r in rows} == {(recipe.runs, recipe.warmup)}
        assert n["measured_s"] == pytest.approx(np.mean(secs), rel=1e-12)
    assert _extra_passes_are_retimes(table)

    # the overhead: intercept of the probe medians on n, recomputed from invoke_probes
    probes: dict[int, list[float]] = {}
    for n_ops, s in _rows(table, "select n_ops, seconds from invoke_probes where device = 'local'"):
        probes.setdefault(n_ops, []).append(s)
    assert sorted(probes) == [1, 2, 4, 8, 16, 32] and all(len(v) == 2 for v in probes.values())
    xs = sorted(probes)
    slope, intercept = np.polyfit(xs, [np.median(probes[x]) for x in xs], 1)
    overhead = max(intercept, 0.0)
    meta = dict(_rows(table, "select key, value from meta"))
    stored = json.loads(meta["invoke_overhead"])
    assert stored["device"] == "local" and stored["seconds"] == pytest.approx(overhead, rel=1e-6, abs=1e-12)
    assert 0 <= overhead < 50e-6 and metrics["measured_overhead"]["seconds"] == pytest.approx(overhead, rel=1e-6,
                                                                                               abs=1e-12)
    assert metrics["correction"] is None and metrics["prediction"] == "sum_of_layers"  # the default

    # predicted: the table's cells of the layers the network runs (as LatencyTable.predict);
    # the alternative: minus (n - 1) overheads
    lut = LatencyTable.open(table)
    pred, meas, corrected = [], [], []
    for n in nets:
        cells = [l.seconds for l in lut.breakdown(arch, n["widths"])]
        assert n["sum_of_layers_s"] == pytest.approx(sum(cells), rel=1e-9)
        assert n["predicted_s"] == pytest.approx(lut.predict(arch, n["widths"]), rel=1e-9) == n["sum_of_layers_s"]
        assert n["overhead_corrected_s"] == pytest.approx(sum(cells) - (len(cells) - 1) * overhead, rel=1e-9)
        corrected.append(n["overhead_corrected_s"])
        pred.append(n["predicted_s"])
        meas.append(n["measured_s"])
    pred, meas = np.array(pred), np.array(meas)
    ape = np.abs(pred - meas) / meas * 100
    assert metrics["mape"] == pytest.approx(ape.mean())
    assert metrics["max_ape"] == pytest.approx(ape.max())
    assert metrics["within_5"] == pytest.approx(np.mean(ape <= 5))
    assert metrics["within_10"] == pytest.approx(np.mean(ape <= 10))
    assert metrics["pearson"] == pytest.approx(np.corrcoef(pred, meas)[0, 1])
    rank = lambda a: np.argsort(np.argsort(a))  # noqa: E731 - no ties among 4 timings
    assert metrics["spearman"] == pytest.approx(np.corrcoef(rank(pred), rank(meas))[0, 1])
    assert metrics["slope"] == pytest.approx(np.polyfit(pred, meas, 1)[0])
    for error, n in zip(100 * (pred - meas) / meas, nets):
        assert n["error_pct"] == pytest.approx(error)
    alt = metrics["alternatives"]["overhead_corrected"]
    assert alt["mape"] == pytest.approx(np.mean(np.abs(np.array(corrected) - meas) / meas * 100))

    # exact single-layer models: one row per (cell, pass); the network's sum of cell means
    exact: dict[tuple, list[float]] = {}
    for k, i, o, sec in _rows(table, "select type_key, c_in, c_out, seconds from exact_cells where device = 'local'"):
        exact.setdefault((k, i, o), []).append(sec)
    assert exact and all(len(v) == 2 for v in exact.values())
    for n in nets:
        cells = [(l.type_key, l.c_in, l.c_out if lut.types[l.type_key].two_axes else 0)
                 for l in lut.breakdown(arch, n["widths"])]
        assert n["exact_sum_s"] == pytest.approx(sum(np.mean(exact[c]) for c in cells), rel=1e-9)
    assert metrics["alternatives"]["exact_cells"]["mape"] == pytest.approx(
        np.mean([abs(n["exact_sum_s"] - n["measured_s"]) / n["measured_s"] * 100 for n in nets]))

    # scatter.png is a real PNG of the figure
    png = (out / "scatter.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(out / "scatter.png").shape[:2] == (660, 660)
    # breakdown.png: the worst network's per-layer prediction, one bar per layer
    assert (out / "breakdown.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(out / "breakdown.png").shape[0] > 300

    # report.md: one row per network with its numbers, and the worst network's breakdown
    md = (out / "report.md").read_text()
    section = md.split("## Networks")[1].split("\n## ")[0]
    table_rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
                  if re.match(r"\|\s*\d+\s*\|", line)]
    assert len(table_rows) == len(nets)
    by_label = {n["label"]: n for n in nets}
    for cells in table_rows:
        n = by_label[cells[1]]
        assert float(cells[5]) == pytest.approx(n["predicted_s"] * 1e3, abs=1e-3)
        assert float(cells[7]) == pytest.approx(n["measured_s"] * 1e3, abs=1e-3)
        assert float(cells[9]) == pytest.approx(n["error_pct"], abs=0.01)
    worst = max(nets, key=lambda n: abs(n["error_pct"]))
    assert f"## Worst network: {worst['label']}" in md
    breakdown = md.split("## Worst network")[1]
    layer_rows = [l for l in breakdown.splitlines() if l.startswith("| ") and not l.startswith("| layer")]
    assert len(layer_rows) == len(lut.breakdown(arch, worst["widths"]))
    # every timed model's ops are those of the cells summed for it
    assert metrics["op_check"]["checked"] == 4 and metrics["op_check"]["match"] == 4
    assert "table.sqlite" in md and str(table.parent) not in md  # no machine paths


def test_rerun_does_not_measure_again(reported, widths_dir, tmp_path) -> None:
    table, _ = reported
    counts = lambda: [_rows(table, f"select count(*) from {t}")[0][0]  # noqa: E731
                      for t in ("whole_networks", "invoke_probes", "exact_cells", "runs")]
    before = counts()
    assert _planned(table) == 4 * 2 and _extra_passes_are_retimes(table)  # 4 networks x 2 passes
    out = tmp_path / "again"
    assert report_diagnostics.main(["--table", str(table), "--arch", ARCH, "--widths", str(widths_dir), "--sample",
                                    "3", "--exact-layers", "--out", str(out), "--no-op-check", *FAST]) == 0
    assert counts() == before
    again = json.loads((out / "metrics.json").read_text())
    assert again["measurement"]["measured_now"] == 0 and again["measurement"]["already_stored"] == 8


def test_fastest_estimator_reads_the_fastest_invocations(reported, widths_dir, tmp_path) -> None:
    """A table whose recipe combines the fastest invocations: every network, exact cell and
    overhead probe combines the fastest invocation recorded by each of its passes (no new
    measurement); older rows without it are refused with the way out."""
    table = _copy_table(reported[0], tmp_path / "t.sqlite")
    store = TableStore.open(table, write=True)  # the table re-derived with another estimator
    recipe = store.recipe().replace(estimator="fastest")
    store.set_recipe(recipe)
    assert not finalize(store, recipe.sigma, recipe.estimator, recipe.edges)
    store.close()
    out = tmp_path / "fastest"
    assert report_diagnostics.main(["--table", str(table), "--arch", ARCH, "--widths", str(widths_dir), "--sample",
                                    "3", "--exact-layers", "--out", str(out), "--no-op-check", *FAST]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["measurement"]["measured_now"] == 0 and m["estimator"] == "fastest"
    for n in m["networks"]:
        rows = _rows(table, "select seconds, fastest from whole_networks where arch = ? and widths = ? and "
                            "device = 'local'", (ARCH, widths_key(n["widths"])))
        assert len(rows) >= 2 and all(0 < f <= s for s, f in rows)  # `fastest` takes every pass
        assert n["measured_s"] == min(f for _, f in rows) < min(s for s, _ in rows)
    probes: dict[int, list[float]] = {}
    for n_ops, f in _rows(table, "select n_ops, fastest from invoke_probes where device = 'local'"):
        probes.setdefault(n_ops, []).append(f)
    xs = sorted(probes)
    intercept = np.polyfit(xs, [min(probes[x]) for x in xs], 1)[1]
    stored = json.loads(dict(_rows(table, "select key, value from meta"))["invoke_overhead"])
    assert stored["combined"] == "fastest"
    assert stored["seconds"] == pytest.approx(max(intercept, 0.0), rel=1e-6, abs=1e-12)

    with sqlite3.connect(table) as conn:  # as if the networks had been timed by an older version
        conn.execute("update whole_networks set fastest = null")
    rc = report_diagnostics.main(["--table", str(table), "--arch", ARCH, "--widths", str(widths_dir), "--out",
                                  str(tmp_path / "old"), "--no-op-check", *FAST])
    assert rc == 2 and not (tmp_path / "old" / "metrics.json").exists()


def test_remeasure_replaces_the_passes(reported, widths_dir, tmp_path) -> None:
    table, _ = reported
    full = widths_key(get_arch(ARCH).validate(json.loads((widths_dir / "full.json").read_text())))
    sql = "select run_id, pass_index from whole_networks where widths = ? order by pass_index"
    old = _rows(table, sql, (full,))
    total = _planned(table)
    assert report_diagnostics.main(["--table", str(table), "--arch", ARCH, "--widths", str(widths_dir / "full.json"),
                                    "--out", str(tmp_path / "re"), "--remeasure", "--no-overhead", "--no-op-check",
                                    *FAST]) == 0
    new = _rows(table, sql, (full,))
    assert [p for _, p in new][:2] == [0, 1] and {r for r, _ in new}.isdisjoint({r for r, _ in old})
    assert _planned(table) == total and _extra_passes_are_retimes(table)


def test_rebuilt_table_reuses_the_measurements(reported, small_table, widths_dir, tmp_path) -> None:
    old, _ = reported
    fresh = _copy_table(small_table(ARCH), tmp_path / "rebuilt.sqlite")
    out = tmp_path / "rebuilt"
    assert report_diagnostics.main(["--table", str(fresh), "--arch", ARCH, "--widths", str(widths_dir), "--sample",
                                    "3", "--measured-in", str(old), "--correction", "overhead", "--out", str(out),
                                    "--no-op-check", *FAST]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["measurement"]["measured_now"] == 0 and m["n"] == 4
    assert _rows(fresh, "select count(*) from whole_networks") == _rows(old, "select count(*) from whole_networks")
    assert _planned(fresh) == 8
    assert _rows(fresh, "select count(*) from invoke_probes")[0][0] == 12
    settings = [json.loads(s) for (s,) in _rows(fresh, "select settings from runs where status = 'finished'")]
    assert any(s.get("copied_from", {}).get("table") == old.name for s in settings)
    # the overhead came along with the probes, and --correction overhead applies it
    assert m["correction"]["seconds"] > 0 and m["prediction"] == "overhead_corrected"
    assert all(n["predicted_s"] == n["overhead_corrected_s"] < n["sum_of_layers_s"] for n in m["networks"])


@pytest.mark.parametrize("case", ["unknown device", "other arch", "empty dir", "missing file", "no networks",
                                  "correction without overhead", "negative span"])
def test_bad_input_gives_clear_errors(case, small_table, tmp_path, capsys) -> None:
    table = small_table(ARCH)
    args = ["--table", str(table), "--arch", ARCH, "--out", str(tmp_path / "r"), "--quiet"]
    if case == "unknown device":
        args += ["--device", "nosuchdevice", "--sample", "2"]
        expect = "nosuchdevice"
    elif case == "other arch":
        mb = get_arch("mbv2-tiny")
        (tmp_path / "mb.json").write_text(widths_to_json(mb.full_widths()))
        args += ["--widths", str(tmp_path / "mb.json")]
        expect = "unknown width group"
    elif case == "empty dir":
        (tmp_path / "empty").mkdir()
        args += ["--widths", str(tmp_path / "empty")]
        expect = "holds no width files"
    elif case == "missing file":
        args += ["--widths", str(tmp_path / "nope.json")]
        expect = "no such widths file"
    elif case == "negative span":
        args += ["--sample", "1", "--span", "-5"]
        expect = "--span must be a number of seconds >= 0, got -5"
    elif case == "correction without overhead":
        args += ["--sample", "1", "--correction", "overhead", "--no-overhead"]
        expect = "needs the per-invoke overhead"
    else:
        expect = "no networks"
    rows_before = _rows(table, "select count(*) from whole_networks")[0][0]
    command = report_diagnostics.main if "--no-overhead" in args else cli_report.main
    assert command(args) == 2
    err = capsys.readouterr().err
    assert "latency-report: error:" in err and expect in err
    if case == "other arch":
        assert "mb.json" in err and ARCH in err
    assert _rows(table, "select count(*) from whole_networks")[0][0] == rows_before == 0
    assert not (tmp_path / "r").exists()


def test_metrics_and_correction_by_hand() -> None:
    m = validation_metrics([1.0, 2.0, 3.0, 5.0], [1.0, 2.0, 4.0, 5.0])
    assert m["n"] == 4
    assert m["mape"] == pytest.approx(25 / 4) and m["max_ape"] == pytest.approx(25)
    assert m["within_5"] == 0.75 and m["within_10"] == 0.75
    assert m["mean_error"] == pytest.approx(-25 / 4)
    assert m["spearman"] == pytest.approx(1.0)
    # measured on predicted: least squares by hand
    x, y = np.array([1, 2, 3, 5.0]), np.array([1, 2, 4, 5.0])
    slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    assert m["slope"] == pytest.approx(slope)
    assert np.isnan(validation_metrics([1.0], [1.0])["pearson"])
    assert corrected_prediction([3.0, 4.0, 5.0], 1.0) == pytest.approx(10.0)  # (3-1)+(4-1)+(5-1)+1
    assert overhead_corrected(12.0, 1, 5.0) == 12.0  # one layer pays its overhead once
    with pytest.raises(ValueError):
        overhead_corrected(1.0, 0, 0.1)
    with pytest.raises(ValueError):
        validation_metrics([1.0], [0.0])


@pytest.mark.parametrize("name", ["wrn-40-2", "mbv2-cifar"])
def test_sampling_is_seeded_and_spans_the_range(name) -> None:
    arch = get_arch(name)
    a, b = sample_networks(arch, 24, 0), sample_networks(arch, 24, 0)
    assert [n.widths for n in a] == [n.widths for n in b] and len(a) == 24
    assert [n.widths for n in sample_networks(arch, 24, 1)] != [n.widths for n in a]
    assert len({n.key for n in a}) == 24
    assert any(n.label == "full" and n.widths == arch.full_widths() for n in a)
    assert any(v == 0 for n in a if n.source == "random" for v in n.widths.values())  # blocks removed
    macs = [network_macs(arch, n.widths) for n in a]
    assert max(macs) / min(macs) > 20


def test_op_check_of_a_network_with_a_fused_batch_norm() -> None:
    arch = get_arch(ARCH)
    # stage 2's only block removed: its shortcut conv alone feeds stage 3's batch-norm, which
    # the converter folds into it
    widths = arch.validate({"s2b0": 0})
    check = op_check(arch, widths, model_op_counts(network_model(arch, widths)),
                     CellModels(network_layer_types([arch])))
    assert check["fused"] == ["s2b0.shortcut+s3b0.bn"]
    assert check["matches"] and check["extra_in_network"] == {} == check["extra_in_layers"]
    assert check["network"]["MUL"] == 3  # s1b0.bn, s2b0.bn, head.bn; s3b0.bn is gone


def test_passes_default_to_the_devices_report_passes(small_table, tmp_path) -> None:
    table = _copy_table(small_table(ARCH), tmp_path / "t.sqlite")
    out = tmp_path / "r"
    assert report_diagnostics.main(["--table", str(table), "--arch", ARCH, "--sample", "1", "--no-overhead",
                                    "--no-op-check", "--quiet", "--out", str(out)]) == 0
    passes = defaults_for("local").report_passes
    assert passes == 10 and json.loads((out / "metrics.json").read_text())["measurement"]["passes"] == passes
    assert _planned(table, passes) == passes and _extra_passes_are_retimes(table, passes)


def test_a_table_measured_over_minutes_gets_its_report_spread_over_the_devices_span(small_table) -> None:
    span = defaults_for("local").report_span_s
    assert span == 300.0
    assert report_measure.default_span_s(span, span) == span == report_measure.default_span_s(3 * span, span)
    assert report_measure.default_span_s(span - 1, span) == 0.0  # met the host in the state a report finds
    table = small_table(ARCH)
    [(first, last)] = _rows(table, "select min(measured_at), max(measured_at) from measurements")
    assert report_measure.cells_span_s(str(table)) == pytest.approx(last - first) and last > first


def test_passes_are_spread_over_the_span_asked(small_table, tmp_path) -> None:
    """With --span, a pass waits for its share of the span: back to back, two passes of two
    networks are a fraction of a second apart."""
    table = _copy_table(small_table(ARCH), tmp_path / "t.sqlite")
    out = tmp_path / "r"
    assert report_diagnostics.main(["--table", str(table), "--arch", ARCH, "--sample", "2", "--passes", "3",
                                    "--span", "4.5", "--no-overhead", "--no-op-check", "--quiet", "--out",
                                    str(out)]) == 0
    starts = dict(_rows(table, "select pass_index, min(measured_at) from whole_networks group by pass_index"))
    assert starts[1] - starts[0] >= 1.5 - 0.3 and starts[2] - starts[0] >= 3.0 - 0.3, starts
    [(first, last)] = _rows(table, "select min(measured_at), max(measured_at) from whole_networks")
    measurement = json.loads((out / "metrics.json").read_text())["measurement"]
    assert measurement["span_s"] == pytest.approx(last - first)
    assert f"3 passes in shuffled order, over {last - first:.0f} s" in (out / "report.md").read_text()


@pytest.mark.parametrize("flag", ["--runs", "--warmup", "--threads", "--min-time-ms", "--cooldown", "--estimator",
                                  "--batch-size", "--exact-layers", "--raw", "--no-op-check", "--measured-in",
                                  "--no-overhead"])
def test_the_recipe_answers_what_the_report_no_longer_asks(flag, capsys) -> None:
    """How networks are timed is the table's recipe; the diagnostic options are the tool's."""
    with pytest.raises(SystemExit) as exc:
        cli_report.report_parser().parse_args(["--table", "t.sqlite", flag, "1"])
    assert exc.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err
    help_text = cli_report.report_parser().format_help()
    assert "--models-per-call" in help_text and flag not in help_text
