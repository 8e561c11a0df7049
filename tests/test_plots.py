"""plot-table and plot_breakdown: real PNGs of a real table, which is never written to."""
from __future__ import annotations

import hashlib
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from latency.cli_plot import main
from latency.plots import is_line, plot_breakdown, plot_table, read_table
from latency.table import LatencyTable, LayerLatency
from models.families import get_arch

ARCH = "wrn-10-1"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def table(small_table) -> Path:
    return small_table(ARCH, "step:8")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _png_shape(path: Path) -> tuple[int, ...]:
    from matplotlib.image import imread

    assert path.stat().st_size > 0
    assert path.read_bytes()[:8] == PNG_MAGIC
    return imread(path).shape


def _query(path: Path, sql: str, args: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def test_one_png_per_layer_type_and_the_table_is_untouched(table: Path, tmp_path: Path, capsys) -> None:
    before = _digest(table)
    keys = {k for (k,) in _query(table, "select key from layer_types")}
    out = tmp_path / "plots"
    assert main(["--table", str(table), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{len(keys)} pictures in {out}" in printed
    assert {p.name for p in out.iterdir()} == {f"{k}.png" for k in keys}
    shapes = {}
    for key in keys:
        shape = _png_shape(out / f"{key}.png")
        assert shape[0] >= 300 and shape[1] >= 500 and shape[2] in (3, 4)
        shapes[key] = shape
    assert _digest(table) == before  # a reader never changes the file

    grids, _ = read_table(table)
    lines = {k for k, g in grids.items() if is_line(g)}
    assert any(k.startswith("add-") for k in lines) and any(k.startswith("head-") for k in lines)
    assert keys - lines, "the table's convolutions are drawn as heatmaps"
    # a heatmap (with its colorbar) is a taller figure than a line plot
    assert all(shapes[h][0] > shapes[line][0] for h in keys - lines for line in lines)


def test_grids_hold_the_unsmoothed_values_and_the_measured_cells(table: Path) -> None:
    grids, source = read_table(table)
    assert source.arch == ARCH and "local" in source.devices and source.estimator
    rows = _query(table, "select type_key, c_in, c_out, value, smoothed, measured from aggregates")
    assert rows
    differs = 0
    for key, c_in, c_out, value, smoothed, measured in rows:
        g = grids[key]
        index = (c_in - g.c_in[0],) if g.c_out is None else (c_out - g.c_out[0], c_in - g.c_in[0])
        assert g.seconds[index] == pytest.approx(value, rel=1e-12)
        assert g.measured[index] == bool(measured)
        differs += not np.isclose(value, smoothed, rtol=1e-9)
    assert differs, "this table is smoothed (sigma 1): the value column and the smoothed one differ"
    # a step grid: most cells interpolated, the measured ones marked
    n_measured = sum(int(g.measured.sum()) for g in grids.values())
    assert 0 < n_measured < sum(g.seconds.size for g in grids.values())
    assert n_measured == sum(r[5] for r in rows)


def test_types_filter_and_errors(table: Path, tmp_path: Path, capsys) -> None:
    keys = sorted(k for (k,) in _query(table, "select key from layer_types"))
    chosen = [k for k in keys if k.startswith("conv-")][:1] + [k for k in keys if k.startswith("add-")][:1]
    out = tmp_path / "some"
    assert main(["--table", str(table), "--out", str(out), "--types", ",".join(chosen)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{k}.png" for k in chosen)

    capsys.readouterr()
    assert main(["--table", str(table), "--out", str(tmp_path / "none"), "--types", "conv-k9-s9-m1"]) == 2
    err = capsys.readouterr().err
    assert "no layer type conv-k9-s9-m1" in err and chosen[0] in err and "Traceback" not in err
    assert main(["--table", str(tmp_path / "missing.sqlite"), "--out", str(tmp_path / "x")]) == 2
    assert "no such table file" in capsys.readouterr().err


def test_unfinished_table(table: Path, tmp_path: Path) -> None:
    """Cells without a value are left blank; a type without any is listed, not drawn."""
    partial = tmp_path / "partial.sqlite"
    shutil.copyfile(table, partial)
    keys = sorted(k for (k,) in _query(table, "select key from layer_types"))
    conv = next(k for k in keys if k.startswith("conv-"))
    gone = next(k for k in keys if k != conv)
    conn = sqlite3.connect(partial)
    with conn:
        conn.execute("delete from aggregates where type_key = ?", (gone,))
        conn.execute("delete from aggregates where type_key = ? and c_in > c_out", (conv,))
    conn.close()
    written, empty = plot_table(partial, tmp_path / "plots")
    assert empty == [gone]
    assert {p.name for p in written} == {f"{k}.png" for k in keys if k != gone}
    grids, _ = read_table(partial, [conv])
    assert np.isnan(grids[conv].seconds).any() and np.isfinite(grids[conv].seconds).any()
    _png_shape(tmp_path / "plots" / f"{conv}.png")


def test_breakdown_bar_chart(table: Path, tmp_path: Path) -> None:
    rows = LatencyTable.open(table).breakdown(get_arch(ARCH))
    assert len(rows) >= 10 and all(r.seconds for r in rows)
    whole = plot_breakdown(rows, tmp_path / "breakdown.png", f"{ARCH} at full widths")
    assert whole == tmp_path / "breakdown.png"
    few = rows[:3] + [LayerLatency("extra", None, 8, 8, None)]  # a layer the table lacks: no bar
    plot_breakdown(few, tmp_path / "few.png", "four layers")
    tall, short = _png_shape(whole), _png_shape(tmp_path / "few.png")
    assert tall[0] > short[0]  # one row per layer: more layers, a taller picture
    with pytest.raises(ValueError, match="no layers"):
        plot_breakdown([], tmp_path / "empty.png", "nothing")
