"""Latency tables on this machine's CPU: build, store, resume, smooth, interpolate, predict."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from latency.layer_types import axis_values, grid_cells, network_layer_types, parse_grid
from latency.smoothing import cell_stats, fill_sparse, smooth
from latency.recipe import TableRecipe
from latency.store import TableFileError, TableStore
from latency.table import LatencyTable, PredictionError
from models.arch import WidthError
from models.families import get_arch
from models.thesis_names import widths_from_thesis

ROOT = Path(__file__).resolve().parents[1]
PI_TABLE = ROOT / "tables" / "rpi3b-wrn-40-2.sqlite"
PI_NPZ = ROOT / "tables" / "source" / "rpi3b-wrn-40-2-tflite-1.13.1.npz"
THESIS_WIDTHS = ROOT / "tables" / "source" / "rpi3b-wrn-40-2-netadapt-pruned-widths.json"


def cli(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


# -- real tables built on this CPU ------------------------------------------------------------
@pytest.mark.parametrize("arch_name", ["wrn-10-1", "mbv2-tiny"])
def test_small_table_content(small_table, arch_name):
    path = small_table(arch_name)
    arch = get_arch(arch_name)
    types = network_layer_types([arch])
    db = sqlite3.connect(path)
    meta = {k: json.loads(v) for k, v in db.execute("select key, value from meta")}
    assert meta["arch"] == arch_name and meta["schema_version"] == 3
    meta["passes"] = meta["recipe"]["passes"]
    assert set(r[0] for r in db.execute("select key from layer_types")) == set(types)
    # every grid cell measured exactly once per pass, with a positive time
    expected = sum(len(grid_cells(t, 4)) for t in types.values())
    assert db.execute("select count(*) from cells").fetchone()[0] == expected
    assert db.execute("select count(*) from measurements where pass_index < ?",
                      [meta["passes"]]).fetchone()[0] == expected * meta["passes"]
    # beyond them, an extra pass only for a cell whose every pass before was kept slow (latency.retime)
    assert db.execute("select count(*) from measurements m where pass_index >= ? and exists (select 1 from "
                      "measurements e where e.cell_id = m.cell_id and e.pass_index < m.pass_index and "
                      "not coalesce(e.slow, 0))", [meta["passes"]]).fetchone()[0] == 0
    assert db.execute("select min(seconds) from measurements").fetchone()[0] > 0
    run = db.execute("select device, runtime, runtime_version, threads, status from runs").fetchone()
    assert run[0] == "local" and run[1] and run[2] and run[3] == 1 and run[4] == "finished"
    # aggregates cover every cell of each type's full range, measured cells marked
    n_full = sum(t.n_cells for t in types.values())
    assert db.execute("select count(*) from aggregates").fetchone()[0] == n_full
    assert db.execute("select count(*) from aggregates where measured = 1").fetchone()[0] == expected
    # a prediction is the sum of the breakdown, and positive
    table = LatencyTable.open(path)
    total = table.predict(arch)
    parts = table.breakdown(arch)
    assert total > 0 and total == pytest.approx(sum(p.seconds for p in parts))
    from latency.fusion import fused_layer, runtime_plan

    steps = [arch.layers[i].name if f is None else fused_layer(arch.layers[i], arch.layers[f]).name
             for i, f in runtime_plan(arch, frozenset())]
    assert [p.layer for p in parts] == steps
    # every layer appears, alone or with the batch-norm that alone reads it
    assert {n for s in steps for n in s.split("+")} == {a.layer.name for a in arch.active_layers()}
    # the template each type's cells were rendered from is stored with them
    store = TableStore.open(path)
    try:
        templates = store.templates()
    finally:
        store.close()
    assert set(templates) == set(types)
    from latency.generate import _markers

    assert all(model[4:8] == b"TFL3" and markers == _markers(types[k]) for k, (markers, model) in templates.items())
    assert db.execute("select count(distinct converter) from templates where converter like 'tensorflow %'"
                      ).fetchone()[0] == 1


def test_a_table_renders_its_cells_from_its_stored_templates(small_table, tmp_path, monkeypatch):
    # a report's check cells, partners and op check, and a resumed build, convert nothing: they
    # render from the templates the table stored, even where this process would convert others
    import shutil

    from latency import generate

    path = tmp_path / "table.sqlite"
    shutil.copy(small_table("wrn-10-1"), path)
    types = network_layer_types([get_arch("wrn-10-1")])
    key = "conv-k3-s1-m16"
    marks = generate._markers(types[key])
    other = generate.convert_cell(types[key], marks["c_in"], marks["c_out"], seed=7)  # other weights
    db = sqlite3.connect(path)
    assert db.execute("update templates set model = ? where type_key = ?", [other, key]).rowcount == 1
    db.commit()
    db.close()
    monkeypatch.setattr(generate, "_TEMPLATES", {})  # this process has converted nothing
    converted = []
    monkeypatch.setattr(generate, "convert_cell", lambda *a, **k: converted.append(a) or b"")
    assert generate.adopt_table_templates(path) == len(types)
    renderer = generate.CellModels(types)
    assert renderer.template(key).template_bytes == other
    assert all(renderer.render(k, t.in_lo, t.out_lo)[4:8] == b"TFL3" for k, t in types.items())
    assert converted == []
    assert generate.adopt_table_templates(tmp_path / "none.sqlite") == 0
    assert generate.adopt_table_templates(path, "wrn-16-1") == 0  # another architecture's table


def test_prediction_matches_cells(small_table):
    """The predicted latency is exactly the smoothed cells of what the device runs: the active
    layers, with a batch-norm folded into a conv that became its only input."""
    from latency.fusion import fused_layer, runtime_plan
    from latency.layer_types import type_key

    arch = get_arch("wrn-10-1")
    table = LatencyTable.open(small_table("wrn-10-1"))
    widths = dict(arch.full_widths(), s2=17, s1b0=0, s3b0=5)
    ch = arch.channels(widths)
    db = sqlite3.connect(table.path)
    total = 0.0
    steps = runtime_plan(arch, frozenset(g for g, c in ch.items() if c == 0))
    assert any(folded is not None for _, folded in steps)  # the stem now feeds s2b0.bn alone
    for i, folded in steps:
        layer = arch.layers[i] if folded is None else fused_layer(arch.layers[i], arch.layers[folded])
        key = type_key(layer)
        t = table.types[key]
        c_out = ch[layer.c_out] if t.two_axes else 0
        total += db.execute("select smoothed from aggregates where type_key=? and c_in=? and c_out=?",
                            (key, ch[layer.c_in], c_out)).fetchone()[0]
    assert table.predict(arch, widths) == pytest.approx(total, rel=1e-12)
    names = {p.layer for p in table.breakdown(arch, widths)}
    assert "s1b0.conv1" not in names and "stem+s2b0.bn" in names and "s2b0.bn" not in names


@pytest.mark.parametrize("arch_name", ["wrn-10-1", "wrn-40-2", "mbv2-cifar", "mbv2-se-tiny"])
def test_compiled_planner_equals_runtime_plan(arch_name):
    """The integer planner prediction uses gives exactly runtime_plan's steps for every zero
    set tried, and the same WidthError where a zero width removes the output or an input."""
    import random

    from latency.fusion import RuntimePlanner, runtime_plan
    from models.arch import WidthError

    arch = get_arch(arch_name)
    planner = RuntimePlanner(arch)
    names = [g.name for g in arch.groups]
    droppable = [g.name for g in arch.groups if g.may_be_zero]
    rng = random.Random(arch_name)
    zero_sets = [frozenset()] + [frozenset(rng.sample(droppable, rng.randint(1, len(droppable))))
                                 for _ in range(300)]
    fused = 0
    for zero in zero_sets:
        expected = runtime_plan(arch, zero)
        assert planner([n in zero for n in names]) == expected
        fused += sum(f is not None for _, f in expected)
    if arch_name.startswith("wrn"):
        assert fused > 0  # the sets tried include folded batch-norms
    # every prunable group at zero, the fixed ones too: errors, from both
    everything = frozenset(names)
    with pytest.raises(WidthError) as slow:
        runtime_plan(arch, everything)
    with pytest.raises(WidthError) as fast:
        planner([True] * len(names))
    assert str(fast.value) == str(slow.value)


def _local_linear_reference(grid: np.ndarray, sigma: float, i: int, j: int) -> float:
    """Weighted least squares of a + b dx + c dy + d dx dy around (i, j), Gaussian weights
    within 4 sigma: the definition the table's smoothing implements, solved directly."""
    rows, cols = grid.shape
    ii, jj = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    dx, dy = (ii - i).ravel(), (jj - j).ravel()
    reach = 4 * sigma + 0.5
    w = np.exp(-0.5 * (dx ** 2 + dy ** 2) / sigma ** 2) * (np.abs(dx) <= reach) * (np.abs(dy) <= reach)
    basis = [np.ones_like(dx), dx]
    if cols > 1:
        basis += [dy, dx * dy]
    a = np.stack(basis, 1).astype(float) * np.sqrt(w)[:, None]
    coef = np.linalg.lstsq(a, grid.ravel() * np.sqrt(w), rcond=None)[0]
    return float(coef[0])


def test_smoothed_values_are_local_linear_gaussian_of_filled_means(small_table):
    path = small_table("mbv2-tiny")
    raw = LatencyTable.open(path, smoothed=False)
    smoothed = LatencyTable.open(path)
    recipe = TableStore.open(path).recipe()
    sigma = recipe.sigma
    assert recipe.edges == "linear"
    rng = np.random.default_rng(0)
    for key, grid in raw.values.items():
        for i, j in [(0, 0), (grid.shape[0] - 1, grid.shape[1] - 1)] + [
                (int(rng.integers(grid.shape[0])), int(rng.integers(grid.shape[1]))) for _ in range(3)]:
            assert smoothed.values[key][i, j] == pytest.approx(_local_linear_reference(grid, sigma, i, j), rel=1e-9)


def test_rebuilding_a_finished_table_resmooths_without_measuring(small_table, tmp_path):
    """build-tables on a finished table with other smoothing settings re-derives it from the
    stored measurements: nothing is measured, and --quiet prints no progress."""
    import shutil

    out = tmp_path / "t.sqlite"
    shutil.copy(small_table("wrn-10-1"), out)
    db = sqlite3.connect(out)
    before = db.execute("select count(*), max(id) from measurements").fetchone()
    p = cli("-m", "latency.cli_build", "--device", "local", "--arch", "wrn-10-1", "--grid", "step:4", "--passes", "1",
            "--sigma", "2", "--edges", "nearest", "--quiet", "--out", str(out))
    assert "measurements (" not in p.stderr
    assert db.execute("select count(*), max(id) from measurements").fetchone() == before
    recipe = TableStore.open(out).recipe()
    assert recipe.sigma == 2 and recipe.edges == "nearest"
    raw, smoothed = LatencyTable.open(out, smoothed=False), LatencyTable.open(out)
    for key, grid in raw.values.items():
        np.testing.assert_allclose(smoothed.values[key], gaussian_filter(grid, 2, mode="nearest"), rtol=1e-9)

    # the same command again keeps the table's recipe: nothing re-derived differently
    cli("-m", "latency.cli_build", "--device", "local", "--arch", "wrn-10-1", "--quiet", "--out", str(out))
    assert TableStore.open(out).recipe() == recipe
    # each cell's fastest invocation of all passes (the local default), then not smoothed
    cli("-m", "latency.cli_build", "--device", "local", "--arch", "wrn-10-1", "--grid", "step:4", "--passes", "1",
        "--estimator", "fastest", "--quiet", "--out", str(out))
    assert db.execute("select count(*), max(id) from measurements").fetchone() == before
    recipe = TableStore.open(out).recipe()
    assert recipe.estimator == "fastest" and recipe.sigma == 0
    fastest = dict(db.execute("select cell_id, min(fastest) from measurements group by cell_id").fetchall())
    means = dict(db.execute("select cell_id, min(seconds) from measurements group by cell_id").fetchall())
    assert all(0 < fastest[c] <= means[c] for c in fastest)
    got = {(k, i, o): (v, sm) for k, i, o, v, sm in db.execute(
        "select type_key, c_in, c_out, value, smoothed from aggregates where measured = 1")}
    for cell_id, key, i, o in db.execute("select id, type_key, c_in, c_out from cells"):
        assert got[(key, i, o)] == (pytest.approx(fastest[cell_id]), pytest.approx(fastest[cell_id]))


# -- resume after an interruption ----------------------------------------------------------------
def test_interrupted_build_resumes_without_loss_or_duplicates(tmp_path):
    out = tmp_path / "t.sqlite"
    # enough runs per cell that measuring takes seconds, so the interrupt lands mid-build
    args = ["-m", "latency.cli_build", "--device", "local", "--arch", "wrn-10-1", "--grid", "step:8",
            "--passes", "2", "--runs", "200", "--warmup", "1", "--min-time-ms", "0", "--models-per-call", "8",
            "--placements", "1", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    # interrupt as soon as some (not all) batches are committed
    deadline = time.monotonic() + 300
    count = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists():
            try:
                count = sqlite3.connect(out).execute("select count(*) from measurements").fetchone()[0]
            except sqlite3.OperationalError:
                count = 0
            if count >= 40:
                break
        time.sleep(0.02)
    assert proc.poll() is None, f"the build ended before it could be interrupted:\n{proc.communicate()}"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "run the same command again" in stderr
    db = sqlite3.connect(out)
    interrupted = db.execute("select count(*) from measurements").fetchone()[0]
    kept = set(db.execute("select cell_id, pass_index, seconds from measurements"))
    n_cells = db.execute("select count(*) from cells").fetchone()[0]
    assert 40 <= interrupted < 2 * n_cells
    assert db.execute("select status from runs").fetchone()[0] == "interrupted"
    db.close()

    cli(*args)
    db = sqlite3.connect(out)
    all_rows = db.execute("select cell_id, pass_index, slow from measurements").fetchall()
    rows = [(c, p) for c, p, _ in all_rows if p < 2]
    assert len(rows) == len(set(rows)) == 2 * n_cells  # nothing duplicated, nothing missing
    assert set(rows) == {(c, p) for (c,) in db.execute("select id from cells") for p in (0, 1)}
    slow = {(c, p) for c, p, s in all_rows if s}
    for c, p, _ in all_rows:  # an extra pass only for a cell whose every pass before it read slow
        assert p < 2 or all((c, q) in slow for q in range(p)), (c, p)
    assert kept <= set(db.execute("select cell_id, pass_index, seconds from measurements"))  # nothing re-measured
    # the runs that timed cells (a network-context build then times its overhead probes in a run of their own)
    assert [r[0] for r in db.execute("select status from runs where id in (select run_id from measurements) "
                                     "order by id")] == ["interrupted", "finished"]


# -- maths -----------------------------------------------------------------------------------------
def test_cell_stats():
    assert cell_stats([1.0, 2.0, 6.0]) == (3.0, 2.0, pytest.approx(np.std([1, 2, 6], ddof=1)), 3)
    assert cell_stats([4.0]) == (4.0, 4.0, 0.0, 1)
    with pytest.raises(ValueError):
        cell_stats([])


def test_fill_sparse_is_exact_on_bilinear_surfaces_and_keeps_measured_cells():
    ii, jj = np.meshgrid(np.arange(13), np.arange(9), indexing="ij")
    surface = 2.0 + 0.5 * ii + 0.25 * jj + 0.1 * ii * jj  # bilinear: linear interpolation is exact
    rows, cols = axis_values(0, 12, 4), axis_values(0, 8, 4)
    sparse = np.full(surface.shape, np.nan)
    sparse[np.ix_(rows, cols)] = surface[np.ix_(rows, cols)]
    filled = fill_sparse(sparse, rows, cols)
    np.testing.assert_allclose(filled, surface)
    # a non-linear surface: measured cells are kept exactly, the others lie between neighbours
    curved = np.sqrt(1.0 + ii ** 2 + jj ** 2)
    sparse[np.ix_(rows, cols)] = curved[np.ix_(rows, cols)]
    filled = fill_sparse(sparse, rows, cols)
    np.testing.assert_array_equal(filled[np.ix_(rows, cols)], curved[np.ix_(rows, cols)])
    assert filled.min() >= curved.min() and filled.max() <= curved.max()
    with pytest.raises(ValueError, match="edges"):
        fill_sparse(sparse, rows[:-1], cols)  # would need extrapolation


def test_fill_sparse_one_axis():
    values = np.full((9, 1), np.nan)
    values[[0, 4, 8], 0] = [1.0, 5.0, 3.0]
    np.testing.assert_allclose(fill_sparse(values, [0, 4, 8], [0])[:, 0], [1, 2, 3, 4, 5, 4.5, 4, 3.5, 3])


def test_smooth_nearest_is_the_thesis_gaussian():
    grid = np.zeros((15, 15))
    grid[7, 7] = 1.0
    out = smooth(grid, 3, edges="nearest")
    np.testing.assert_allclose(out, gaussian_filter(grid, 3, mode="nearest"))
    assert out.argmax() == 7 * 15 + 7 and out[7, 7] < 0.1
    np.testing.assert_allclose(out, out.T)
    np.testing.assert_array_equal(smooth(grid, 0), grid)
    with pytest.raises(ValueError):
        smooth(grid, -1)
    with pytest.raises(ValueError, match="edge mode 'mirror'"):
        smooth(grid, 3, edges="mirror")


def test_smooth_linear_edges():
    rng = np.random.default_rng(1)
    # away from the edges it is the Gaussian filter itself
    grid = rng.random((40, 30))
    inner = (slice(13, 27), slice(13, 17))
    np.testing.assert_allclose(smooth(grid, 3)[inner], gaussian_filter(grid, 3, mode="nearest")[inner], rtol=1e-12)
    # a latency rising with both channel counts keeps its level everywhere, corners included,
    # where the thesis's 'nearest' mode lowers the full-width corner
    ci, co = np.meshgrid(np.arange(1, 33), np.arange(1, 25), indexing="ij")
    plane = 2.0 + 0.5 * ci + 0.25 * co + 0.01 * ci * co
    np.testing.assert_allclose(smooth(plane, 3), plane, rtol=1e-12)
    assert gaussian_filter(plane, 3, mode="nearest")[-1, -1] < 0.96 * plane[-1, -1]  # 5 % low
    # one-axis grids too; and noise is still smoothed away at the edge
    line = (3.0 + 0.1 * np.arange(50))[:, None]
    np.testing.assert_allclose(smooth(line, 3), line, rtol=1e-12)
    noisy = plane * (1 + 0.05 * rng.standard_normal(plane.shape))
    edge_error = lambda g: float(np.sqrt(np.mean((g / plane - 1)[:, -1] ** 2)))  # noqa: E731
    assert edge_error(smooth(noisy, 3)) < 0.6 * edge_error(noisy)


def test_grid_spec_and_axis_values():
    assert parse_grid("full") == 1 and parse_grid("step:8") == 8
    for bad in ("step:0", "step:x", "half", ""):
        with pytest.raises(ValueError, match="step:K"):
            parse_grid(bad)
    assert axis_values(1, 32, 8) == [1, 8, 9, 16, 17, 24, 25, 32]
    # a fine grid measures every count below its step: at the low end the cost is far from linear
    assert axis_values(1, 30, 8)[0] == 1 and axis_values(1, 30, 8)[-1] == 30
    assert axis_values(3, 3, 4) == [3]
    assert axis_values(1, 12, 4) == [1, 2, 3, 4, 5, 8, 9, 12]
    # with a channel block, both neighbours of each of its multiples too (interpolation stays in a block)
    blocked = axis_values(1, 40, 4, 16)
    assert set(axis_values(1, 40, 4)) < set(blocked)
    assert set(blocked) - set(axis_values(1, 40, 4)) == {15, 31}  # 17, 33 (4k + 1) were there already
    assert {15, 16, 17, 31, 32, 33} <= set(blocked) and max(blocked) == 40
    assert axis_values(1, 16, 1, 16) == list(range(1, 17))  # a full grid has them all anyway
    assert axis_values(20, 30, 4, 8) == [20, 23, 24, 25, 28, 30]


# -- the thesis's Raspberry Pi table ----------------------------------------------------------------
def test_pi_table_reproduces_the_thesis_numbers():
    table = LatencyTable.open(PI_TABLE)
    arch = get_arch("wrn-40-2")
    assert round(table.predict(arch) * 1e3, 1) == 353.0
    widths = widths_from_thesis(arch, json.loads(THESIS_WIDTHS.read_text()))
    assert round(table.predict(arch, widths) * 1e3, 1) == 281.9
    assert "residual additions" in table.coverage_note()
    assert table.meta["provenance"].startswith("Raspberry Pi 3B")


def test_pi_import_reproduces_the_shipped_file(tmp_path):
    from latency.import_thesis import import_thesis_table

    out = import_thesis_table(PI_NPZ, tmp_path / "pi.sqlite")
    fresh, shipped = LatencyTable.open(out), LatencyTable.open(PI_TABLE)
    assert set(fresh.values) == set(shipped.values)
    data = np.load(PI_NPZ, allow_pickle=False)
    for key in data.files:
        np.testing.assert_array_equal(fresh.values[key], data[key])
    with pytest.raises(TableFileError, match="exists"):
        import_thesis_table(PI_NPZ, out)


def test_predict_cli_on_pi_table():
    proc = cli("-m", "latency.cli_predict", "--table", str(PI_TABLE), "--arch", "wrn-40-2", "--json")
    data = json.loads(proc.stdout)
    assert round(data["ms"], 1) == 353.0 and "residual additions" in data["note"]
    assert len(data["layers"]) == len(get_arch("wrn-40-2").layers)


# -- bad input -------------------------------------------------------------------------------------------
def test_build_cli_bad_inputs(tmp_path):
    p = cli("-m", "latency.cli_build", "--arch", "resnet-9000", "--out", str(tmp_path / "x.sqlite"), check=False)
    assert p.returncode == 2 and "unknown architecture 'resnet-9000'" in p.stderr and "wrn-40-2" in p.stderr
    p = cli("-m", "latency.cli_build", "--device", "toaster", "--arch", "mbv2-tiny", check=False)
    assert p.returncode == 2 and "unknown device" in p.stderr and "local" in p.stderr
    p = cli("-m", "latency.cli_build", "--arch", "mbv2-tiny", "--grid", "step:0", check=False)
    assert p.returncode == 2 and "step:K" in p.stderr
    p = cli("-m", "latency.cli_build", "--arch", "mbv2-tiny", "--out", str(tmp_path / "no" / "dir" / "t.sqlite"),
            check=False)
    assert p.returncode == 2 and "does not exist" in p.stderr
    not_a_table = tmp_path / "notes.sqlite"
    not_a_table.write_text("hello")
    p = cli("-m", "latency.cli_build", "--arch", "mbv2-tiny", "--out", str(not_a_table), check=False)
    assert p.returncode == 2 and "not a latency table" in p.stderr
    assert not_a_table.read_text() == "hello"  # untouched
    shipped = PI_TABLE.read_bytes()
    p = cli("-m", "latency.cli_build", "--arch", "mbv2-tiny", "--out", str(PI_TABLE), check=False)
    assert p.returncode == 2 and "table of 'wrn-40-2'" in p.stderr
    assert PI_TABLE.read_bytes() == shipped  # refused before anything is written


def test_prediction_bad_inputs(small_table, tmp_path):
    table = LatencyTable.open(small_table("wrn-10-1"))
    arch = get_arch("wrn-10-1")
    with pytest.raises(WidthError, match="s2"):
        table.predict(arch, {"s2": 999})
    with pytest.raises(WidthError, match="unknown width group 'nope'"):
        table.predict(arch, {"nope": 3})
    with pytest.raises(PredictionError, match="lacks layer types of mbv2-tiny"):
        table.predict(get_arch("mbv2-tiny"))
    # explicitly allowed: the missing layers are listed, not silently zero
    pred = table.predictor(get_arch("mbv2-tiny"), allow_missing=True)
    assert pred.missing and all(isinstance(n, str) for n in pred.missing)
    # a wider network than the table's range is refused, never extrapolated
    with pytest.raises(PredictionError, match="outside the table's range"):
        table.predict(get_arch("wrn-10-2"), allow_missing=True)
    with pytest.raises(TableFileError, match="not a latency table"):
        bad = tmp_path / "x.sqlite"
        bad.write_bytes(b"\0" * 100)
        LatencyTable.open(bad)
    with pytest.raises(TableFileError, match="no such table"):
        LatencyTable.open(tmp_path / "missing.sqlite")
    p = cli("-m", "latency.cli_predict", "--table", str(PI_TABLE), "--arch", "wrn-16-1", check=False)
    assert p.returncode == 2 and "cannot predict wrn-16-1" in p.stderr


def test_measurements_record_extra_runs_also_in_older_files(tmp_path):
    """A timing that took more invocations than its run's settings (a minimum timed duration)
    stores how many; a file from before that column gets it on the first write."""
    from latency.devices.base import DeviceInfo, Timing
    from latency.layer_types import LayerType
    from latency.store import TableStore

    path = tmp_path / "t.sqlite"
    store = TableStore.create_or_open(path, "test", TableRecipe(device_kind="local"))
    t = LayerType("add-m8", "add", 1, 1, 8, False, None, 1, 4, 0, 0)
    store.add_layer_type(t, 1, grid_cells(t, 1))
    run = store.start_run(DeviceInfo("local", "local", "ai-edge-litert", "x", "h", 1))
    store.db.execute("alter table measurements drop column runs")  # as written by older versions
    store.db.execute("alter table measurements drop column fastest")
    store.db.execute("delete from _sqlite_migrations where name = '0002_measurement_invocations'")
    store.db.conn.commit()
    store.close()
    reader = TableStore.open(path)  # read-only: an older file is read as it is
    assert reader.raw_by_cell("fastest") == {}
    reader.close()
    store = TableStore.open(path, write=True)  # a writer migrates it
    (c1, c2) = list(store.cells())[:2]
    assert store.raw_by_cell("fastest") == {}
    assert store.add_measurements(run, "local", 0, [Timing(c1, 1e-6, 0.0, runs=700, fastest_s=0.8e-6),
                                                    Timing(c2, 2e-6, 0.0)]) == 2
    assert dict(store.db.execute("select cell_id, runs from measurements").fetchall()) == {c1: 700, c2: None}
    assert store.raw_by_cell("fastest") == {c1: [0.8e-6], c2: [None]}
    with pytest.raises(ValueError, match="non-finite"):
        store.add_measurements(run, "local", 1, [Timing(c1, 1e-6, 0.0, fastest_s=float("nan"))])
    store.close()


def test_median_and_min_estimators_resist_a_disturbed_pass(tmp_path):
    """A pass disturbed by other work (one cell 100x slower) moves the mean, not the median;
    the minimum takes the fastest pass (0.9x here)."""
    from latency.devices.base import DeviceInfo, Timing
    from latency.finalize import finalize
    from latency.layer_types import LayerType
    from latency.store import TableStore

    store = TableStore.create_or_open(tmp_path / "t.sqlite", "test", TableRecipe(device_kind="local"))
    t = LayerType("add-m8", "add", 1, 1, 8, False, None, 1, 4, 0, 0)
    store.add_layer_type(t, 1, grid_cells(t, 1))
    run = store.start_run(DeviceInfo("local", "local", "ai-edge-litert", "x", "h", 1))
    cells = store.cells()
    for p in range(3):
        store.add_measurements(run, "local", p, [
            Timing(cid, {0: 1.0, 1: 100.0 if c == 2 else 1.0, 2: 0.9}[p] * c * 1e-6, 0.0)
            for cid, (_, c, _) in cells.items()])
    for estimator, expected in (("mean", (1 + 100 + 0.9) / 3 * 2e-6), ("median", 2e-6), ("min", 0.9 * 2e-6)):
        finalize(store, 0, estimator)
        row = store.db.execute("select value, mean, median from aggregates where c_in = 2").fetchone()
        assert row[0] == pytest.approx(expected) and row[1] == pytest.approx((1 + 100 + 0.9) / 3 * 2e-6)
        assert row[2] == pytest.approx(2e-6)
    with pytest.raises(ValueError, match="estimator"):
        finalize(store, 0, "mode")


def test_fastest_estimator_takes_the_fastest_invocation_of_all_passes(tmp_path):
    """Each pass records its fastest invocation; 'fastest' smooths their minimum, and refuses
    (naming the cell and the way out) a table whose passes did not record it."""
    from latency.devices.base import DeviceInfo, Timing
    from latency.finalize import finalize
    from latency.layer_types import LayerType
    from latency.smoothing import EstimatorError
    from latency.store import TableStore

    store = TableStore.create_or_open(tmp_path / "t.sqlite", "test", TableRecipe(device_kind="local"))
    t = LayerType("add-m8", "add", 1, 1, 8, False, None, 1, 4, 0, 0)
    store.add_layer_type(t, 1, grid_cells(t, 1))
    run = store.start_run(DeviceInfo("local", "local", "ai-edge-litert", "x", "h", 1))
    cells = store.cells()
    fastest_factor = {0: 0.95, 1: 0.7, 2: 0.9}  # pass 1 holds the fastest invocation, not the fastest mean
    for p in range(3):
        store.add_measurements(run, "local", p, [
            Timing(cid, {0: 1.0, 1: 1.5, 2: 1.1}[p] * c * 1e-6, 0.0, fastest_s=fastest_factor[p] * c * 1e-6)
            for cid, (_, c, _) in cells.items()])
    finalize(store, 0, "fastest")
    values = dict(store.db.execute("select c_in, value from aggregates").fetchall())
    assert values == pytest.approx({c: 0.7 * c * 1e-6 for c in range(1, 5)})
    finalize(store, 0, "median-fastest")  # the median over passes (loads) of their fastest invocations
    assert store.db.execute("select value from aggregates where c_in = 4").fetchone()[0] == pytest.approx(0.9 * 4e-6)
    finalize(store, 0, "min")  # the fastest pass mean, for comparison
    assert store.db.execute("select value from aggregates where c_in = 4").fetchone()[0] == pytest.approx(4e-6)
    cid = next(iter(cells))
    store.add_measurements(run, "local", 3, [Timing(cid, 1e-6, 0.0)])  # e.g. timed by benchmark_model
    with pytest.raises(EstimatorError, match=r"add-m8 \(1, 0\).*--estimator min"):
        finalize(store, 0, "fastest")


def test_an_addition_pairs_with_the_batch_norm_that_alone_reads_it():
    """In a WideResNet the batch-norm after a stage's last addition (the next block reads the
    batch-norm through its shortcut conv) and the head's are timed with their addition; after
    the other additions the identity shortcut reads the sum too, and the two stay apart. Without
    pairs (`pair_adds=False`, tables that lack those types) every addition stands alone."""
    from latency.fusion import fused_layer, runtime_plan
    from latency.layer_types import type_key
    from latency.networks import network_cells

    arch = get_arch("wrn-16-1")  # two blocks per stage: one identity shortcut each
    paired = [(arch.layers[i].name, arch.layers[f].name) for i, f in runtime_plan(arch, frozenset())
              if f is not None]
    assert paired == [("s1b1.add", "s2b0.bn"), ("s2b1.add", "s3b0.bn"), ("s3b1.add", "head.bn")]
    assert all(f is None for _, f in runtime_plan(arch, frozenset(), pair_adds=False))
    keys = [k for k, _, _ in network_cells(arch, arch.full_widths())]
    assert keys.count("add-m32-bn-relu") == 1 and keys.count("add-m32") == 1 and "bn_act-m32-relu" in keys
    assert type_key(fused_layer(arch.layer_by_name["s3b1.add"], arch.layer_by_name["head.bn"])) == "add-m8-bn-relu"
    # with the second block of stage 1 removed, the first block's sum feeds s2b0.bn alone
    zero = frozenset({"s1b1"})
    names = [arch.layers[i].name + ("+" + arch.layers[f].name if f is not None else "")
             for i, f in runtime_plan(arch, zero)]
    assert "s1b0.add+s2b0.bn" in names and "s1b1.add" not in names


def test_a_table_without_the_pairs_sums_the_two_cells(small_table, tmp_path):
    """A table that lacks the pair types (built before them) predicts from the addition's and
    the batch-norm's own cells; one that has them, from the pair's cell."""
    import shutil

    from latency.fusion import fused_layer, fusion_candidates
    from latency.layer_types import type_key

    arch = get_arch("wrn-10-1")
    path = small_table("wrn-10-1")
    with_pairs = LatencyTable.open(path)
    assert with_pairs.predictor(arch).pair_adds
    copy = tmp_path / "without-pairs.sqlite"
    shutil.copy(path, copy)
    pairs = sorted({type_key(fused_layer(a, b)) for a, b in fusion_candidates(arch) if a.op == "add"})
    with sqlite3.connect(copy) as db:
        for k in pairs:
            for t in ("aggregates", "measurements", "cells", "layer_types"):
                if t == "measurements":
                    db.execute("delete from measurements where cell_id in (select id from cells where type_key = ?)", [k])
                else:
                    db.execute(f"delete from {t} where {'key' if t == 'layer_types' else 'type_key'} = ?", [k])
    without = LatencyTable.open(copy)
    assert not without.predictor(arch).pair_adds
    parts = {p.layer: p.seconds for p in without.breakdown(arch)}
    assert "s2b0.bn" in parts and "s1b0.add" in parts and not any("+" in n for n in parts)
    assert without.predict(arch) != with_pairs.predict(arch)
    o = without.predictor(arch).overhead_s
    assert without.predict(arch) == pytest.approx(sum(parts.values()) - o * (len(parts) - 1), rel=1e-12)
