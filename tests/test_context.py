"""The network timing context: its pure parts, and build-tables / latency-report with it on this CPU."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from latency import context as cx
from latency.devices.defaults import LOCAL_VECTOR_S, local_defaults
from latency.overhead import PROBE_LABELS, PROBE_ROUNDS_PER_PASS, is_probe_batch, with_probe_rounds
from latency.recipe import RecipeError, TableRecipe, check_resume, recipe_from_meta
from latency.smoothing import ESTIMATOR_COLUMNS, ESTIMATORS
from latency.table import LatencyTable
from latency.networks import network_cells
from models.families import get_arch
from tests.test_tables import cli
from latency.devices.runner import load_model

ARCH = "wrn-10-1"


def test_cache_sizes_parse() -> None:
    assert cx.parse_cache_size("2048K\n") == 2 << 20
    assert cx.parse_cache_size("4M") == 4 << 20
    assert cx.parse_cache_size("512") == 512
    with pytest.raises(ValueError, match="cache size"):
        cx.parse_cache_size("lots")


def test_local_l2_reads_sysfs_or_says_none(tmp_path: Path) -> None:
    f = tmp_path / "size"
    f.write_text("1024K\n")
    assert cx.local_l2_bytes(f) == 1 << 20
    assert cx.local_l2_bytes(tmp_path / "absent") is None
    f.write_text("?")
    assert cx.local_l2_bytes(f) is None


def test_eviction_only_for_architectures_whose_weights_exceed_l2() -> None:
    wrn, mbv2 = get_arch("wrn-40-2"), get_arch("mbv2-cifar")
    assert cx.weight_bytes(wrn) > 8 << 20 > 2 << 20 > cx.weight_bytes(mbv2) > 0
    assert cx.evict_bytes_for(wrn, 2 << 20) == 4 << 20  # twice the L2
    assert cx.evict_bytes_for(mbv2, 2 << 20) == 0
    assert cx.evict_bytes_for(mbv2, 512 << 10) == 1 << 20  # a Pi 3B's 512 KiB L2
    assert cx.evict_bytes_for(wrn, None) == 0  # unknown cache: nothing to size the eviction by


def test_partners_are_the_smallest_model_of_every_layer_type() -> None:
    arch = get_arch(ARCH)
    types = {c[0] for c in network_cells(arch, arch.full_widths())}
    partners = cx.partner_models(arch)
    assert len(partners) >= len(types) and len(set(partners)) == len(partners)
    for model in partners:  # real models the runtime loads and runs
        interpreter = load_model(model)
        interpreter.invoke()


def test_channel_block_from_the_cpu_flags(tmp_path: Path) -> None:
    f = tmp_path / "cpuinfo"
    f.write_text("flags\t\t: fpu sse2 avx2 avx512f avx512bw\n")
    assert cx.local_channel_block(f) == 16
    f.write_text("flags\t\t: fpu sse2 avx2 fma\n")
    assert cx.local_channel_block(f) == 8
    assert cx.local_channel_block(tmp_path / "absent") == 8


def test_a_table_keeps_its_recipe() -> None:
    network = TableRecipe(device_kind="local", context="network", evict_bytes=0)
    check_resume(network, network.replace(sigma=1.0, estimator="median", passes=5), "t")  # derived fields may change
    with pytest.raises(RecipeError, match="context: 'network' in the table, 'alone' asked.*--context network"):
        check_resume(network, network.replace(context="alone"), "t")
    with pytest.raises(RecipeError, match="evict_bytes: 0 in the table"):
        check_resume(network, network.replace(evict_bytes=4 << 20), "t")
    with pytest.raises(RecipeError, match=r"passes: 3 measured in the table, 1 asked \(pass --passes 3 or more\)"):
        check_resume(network, network.replace(passes=1), "t")
    with pytest.raises(RecipeError, match="SSH devices"):
        check_resume(TableRecipe(device_kind="ssh"), TableRecipe(device_kind="local"), "t")
    with pytest.raises(RecipeError, match="placements: 1 in the table, 3 asked.*--placements 1"):
        check_resume(network, network.replace(placements=3), "t")
    with pytest.raises(RecipeError, match="--placements must be an integer >= 1, got 0"):
        network.replace(placements=0)
    assert network.replace(placements=3).timing((b"m",)).placements == 3
    # a table from before recipes existed, without a context, was timed back to back
    legacy = recipe_from_meta({"arch": "x", "grid_step": 4, "estimator": "mean", "sigma": 3}, {"kind": "local"})
    assert not legacy.in_network and legacy.grid_step == 4 and legacy.device_kind == "local"
    assert legacy.placements == 1  # one load per pass, as every table was timed before placements
    assert recipe_from_meta({"cell_context": {"context": "network", "evict_bytes": 8}}, {"kind": "local"}).in_network


def test_vector_work_is_a_measured_field_of_the_network_context() -> None:
    from latency.recipe import resolve

    local = local_defaults()
    assert local.recipe.in_network and local.recipe.vector_s == LOCAL_VECTOR_S > 0
    assert local.recipe.timing((b"m",)).vector_s == LOCAL_VECTOR_S
    # a table measured without it continues only without it, and the message names the flag
    older = local.recipe.replace(vector_s=0.0)
    with pytest.raises(RecipeError, match=r"vector_s: 0.0 in the table, 3e-05 asked \(pass --vector-us 0 to"):
        check_resume(older, local.recipe, "t")
    with pytest.raises(RecipeError, match=r"vector_s: 3e-05 in the table, 0.0 asked \(pass --vector-us 30 to"):
        check_resume(local.recipe, older, "t")
    # a stored recipe written before the field existed was timed without it
    stored = {k: v for k, v in local.recipe.to_json().items() if k != "vector_s"}
    assert TableRecipe.from_json(stored).vector_s == 0.0
    # back to back there is no layer before: the field is refused there, and a switch drops it
    with pytest.raises(RecipeError, match="--vector-us applies to --context network only"):
        local.recipe.replace(context="alone", vector_s=1e-6)
    alone = resolve(local.recipe, None, {"context": "alone"}, local.alone_min_time_s)
    assert alone.vector_s == 0.0 and alone.timing().vector_s == 0.0
    assert resolve(local.recipe, None, {"context": "alone", "min_time_s": 0.0}).vector_s == 0.0
    assert resolve(local.recipe, None, {"vector_s": 0.0}).vector_s == 0.0
    with pytest.raises(RecipeError, match="--vector-us must be a finite number of microseconds >= 0, got -1$"):
        local.recipe.replace(vector_s=-1e-6)
    with pytest.raises(RecipeError, match="--vector-us must be a finite number of microseconds >= 0, got nan"):
        local.recipe.replace(vector_s=float("nan"))


@pytest.fixture(scope="module")
def network_table(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ctx") / "t.sqlite"
    cli("-m", "latency.cli_build", "--device", "local", "--arch", ARCH, "--grid", "step:8", "--passes", "1",
        "--runs", "4", "--warmup", "1", "--context", "network", "--quiet", "--out", str(out))
    return out


def _meta(path: Path) -> dict:
    with sqlite3.connect(path) as db:
        return {k: json.loads(v) for k, v in db.execute("select key, value from meta")}


def test_build_times_cells_and_overhead_in_the_network_context(network_table: Path) -> None:
    meta = _meta(network_table)
    arch = get_arch(ARCH)
    recipe = TableRecipe.from_json(meta["recipe"])
    assert recipe.in_network and recipe.evict_bytes == cx.evict_bytes_for(arch, cx.local_l2_bytes())
    assert recipe.runs == 4 and recipe.warmup == 1 and recipe.min_time_s == 0
    assert recipe.vector_s == local_defaults().recipe.vector_s > 0  # the local default
    with sqlite3.connect(network_table) as db:
        # exactly --runs each (a count is stored only where it differs from the run's)
        assert {r for (r,) in db.execute("select distinct runs from measurements")} == {None}
        # the runs that timed cells and probes (the check networks' run times whole networks)
        settings = [json.loads(s) for (s,) in db.execute(
            "select settings from runs where id in (select run_id from measurements union "
            "select run_id from invoke_probes)")]
        checks = [json.loads(s) for (s,) in db.execute(
            "select settings from runs where id in (select run_id from build_networks)")]
        probes = db.execute("select n_ops, fastest from invoke_probes where device = 'local'").fetchall()
    assert all(s["partners"] == len(cx.partner_models(arch)) and "network context" in s["method"]
               and s["runs"] == 4 and s["min_time_s"] == 0 and s["vector_s"] == recipe.vector_s for s in settings)
    assert len(checks) == 1 and checks[0]["partners"] == 0 and checks[0]["runs"] == 4  # as a report times networks
    # the probes were timed in rounds spread among the cells, not in one burst after them
    with sqlite3.connect(network_table) as db:
        rounds = db.execute("select pass_index, min(measured_at), count(*) from invoke_probes group by pass_index"
                            ).fetchall()
        first, last = rounds[0][1], rounds[-1][1]
        between = db.execute("select count(*) from measurements where measured_at > ? and measured_at < ?",
                             [first, last]).fetchone()[0]
    assert [r for r, _, _ in rounds] == list(range(PROBE_ROUNDS_PER_PASS)) and {n for *_, n in rounds} == {6}
    assert between > 0
    # the overhead the table holds is the intercept of its own probes' fastest invocations, each
    # probe's rounds combined as the recipe combines a cell's passes
    assert ESTIMATOR_COLUMNS[recipe.estimator] == "fastest"
    combine = ESTIMATORS[recipe.estimator]
    xs = sorted({n for n, _ in probes})
    intercept = np.polyfit(xs, [combine([f for n, f in probes if n == x]) for x in xs], 1)[1]
    assert meta["invoke_overhead"]["seconds"] == pytest.approx(max(intercept, 0.0), rel=1e-6, abs=1e-12)


def test_build_refuses_to_mix_contexts(network_table: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.sqlite"
    out.write_bytes(network_table.read_bytes())
    with sqlite3.connect(out) as db:
        before = db.execute("select count(*) from measurements").fetchone()
    p = cli("-m", "latency.cli_build", "--device", "local", "--arch", ARCH, "--grid", "step:8", "--passes", "2",
            "--context", "alone", "--out", str(out), check=False)
    assert p.returncode == 2 and "context: 'network' in the table" in p.stderr and "--context network" in p.stderr
    with sqlite3.connect(out) as db:
        assert db.execute("select count(*) from measurements").fetchone() == before  # nothing lost or added
    p = cli("-m", "latency.cli_build", "--device", "local", "--arch", ARCH, "--grid", "step:8", "--passes", "2",
            "--block", "3", "--out", str(out), check=False)
    assert p.returncode == 2 and "grid_block" in p.stderr and "3 asked" in p.stderr and "--block" in p.stderr
    devices = tmp_path / "devices.toml"
    devices.write_text('[devices.pi-bm]\nhost = "pi.invalid"\ntimer = "benchmark_model"\nbenchmark_model = "bm"\n')
    p = cli("-m", "latency.cli_build", "--device", "pi-bm", "--devices-file", str(devices), "--arch", ARCH,
            "--context", "network", "--out", str(tmp_path / "pi.sqlite"), check=False)
    assert p.returncode == 2 and "benchmark_model times models back to back only" in p.stderr
    p = cli("-m", "latency.cli_build", "--arch", ARCH, "--min-time-ms", "5", "--out", str(tmp_path / "m.sqlite"),
            check=False)
    assert p.returncode == 2 and "exactly --runs" in p.stderr


def test_report_counts_the_tables_overhead_once_per_network(network_table: Path, tmp_path: Path) -> None:
    table = tmp_path / "t.sqlite"
    table.write_bytes(network_table.read_bytes())
    out = tmp_path / "rep"
    cli("-m", "tools.report_diagnostics", "--table", str(table), "--device", "local", "--arch", ARCH, "--sample", "2",
        "--passes", "1", "--exact-layers", "--no-op-check", "--quiet", "--out", str(out))
    m = json.loads((out / "metrics.json").read_text())
    o = _meta(table)["invoke_overhead"]["seconds"]
    assert m["prediction"] == "overhead_corrected" and m["correction"]["seconds"] == pytest.approx(o)
    predictor = LatencyTable.open(table).predictor(get_arch(ARCH))
    for n in m["networks"]:
        cells = [c.seconds for c in predictor.breakdown(n["widths"]) if c.seconds is not None]
        assert n["predicted_s"] == pytest.approx(sum(cells) - (len(cells) - 1) * o, rel=1e-9)
        assert predictor.predict(n["widths"]) == pytest.approx(n["predicted_s"], rel=1e-12)  # what the search uses
        assert n["exact_sum_s"] > 0
    with sqlite3.connect(table) as db:  # the report took the table's probes, timed in its context
        assert db.execute("select count(distinct run_id) from invoke_probes").fetchone()[0] == 1


def test_diagnostics_time_exact_cells_with_another_eviction(network_table: Path, tmp_path: Path) -> None:
    table = tmp_path / "t.sqlite"
    table.write_bytes(network_table.read_bytes())
    common = ("-m", "tools.report_diagnostics", "--table", str(table), "--device", "local", "--arch", ARCH,
              "--sample", "2", "--passes", "1", "--no-op-check", "--quiet", "--out", str(tmp_path / "rep"))
    p = cli(*common, "--exact-evict-mb", "0.5", check=False)
    assert p.returncode == 2 and "--exact-evict-mb needs --exact-layers" in p.stderr
    cli(*common, "--exact-layers", "--exact-evict-mb", "0.5")
    with sqlite3.connect(table) as db:
        settings = [json.loads(s) for (s,) in db.execute(
            "select settings from runs where id in (select distinct run_id from exact_cells)")]
        table_evict = _meta(table)["recipe"]["evict_bytes"]
    assert [s["evict_bytes"] for s in settings] == [512 * 1024] and table_evict != 512 * 1024
    before = table.read_bytes()
    p = cli(*common, "--exact-layers", "--exact-placements", "2", check=False)  # the cells above would be reused
    assert p.returncode == 2 and "already holds exact cells" in p.stderr and table.read_bytes() == before


def test_probe_rounds_are_spread_evenly_among_the_batches() -> None:
    batches = [(p, [10 * p + i]) for p in range(2) for i in range(8)]
    plan = with_probe_rounds(batches, [0, 1, 2, 3])
    assert [b for b in plan if not is_probe_batch(b[1])] == batches  # every batch, in its order
    at = [i for i, (_, keys) in enumerate(plan) if is_probe_batch(keys)]
    assert len(at) == 4 and all(3 <= b - a <= 5 for a, b in zip(at, at[1:]))  # 16 batches, a round every 4
    for i in at:
        _, keys = plan[i]
        assert sorted(label for label, _ in keys) == sorted(PROBE_LABELS) and len({r for _, r in keys}) == 1
        assert plan[i][0] == plan[i - 1][0]  # under the pass of the batch before it
    assert with_probe_rounds([], [0, 1]) == [(0, [(label, r) for label in PROBE_LABELS]) for r in (0, 1)]
