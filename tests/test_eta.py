"""Time and bytes before work: the ETA maths (pure), the estimates against real renders and
encode_batch, the plan from the shipped Pi table, `build-tables --dry-run`, and a calibration batch
on an SSH device (the loopback sshd)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from latency import eta
from latency.layer_types import LayerType, grid_cells, network_layer_types
from models.families import get_arch
from tests.sshd_fixture import SshServer, sshd_server, write_devices_file  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[1]
PI_TABLE = ROOT / "tables" / "rpi3b-wrn-40-2.sqlite"


def conv(key: str, size: int, n_in: int, n_out: int, stride: int = 1, kernel: int = 3) -> LayerType:
    return LayerType(key, "conv", kernel, stride, size, True, "relu", 1, n_in, 1, n_out)


def build_tables(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "latency.cli_build", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)


# -- the maths ------------------------------------------------------------------------------------
def test_timed_compute_and_eta():
    # 78 s of layer time per pass, 2 + 50 invocations, 3 passes: 12,168 s of pure timed compute
    timed = eta.timed_compute_s(78.0, warmup=2, runs=50, passes=3)
    assert timed == pytest.approx(78.0 * 52 * 3)
    assert eta.eta_s(timed, 1.3, 1) == pytest.approx(timed * 1.3)
    assert eta.eta_s(timed, 1.3, 4) == pytest.approx(timed * 1.3 / 4)
    # a calibration: 32 cells in 4 s on one of two devices, 1,000 measurements left
    assert eta.calibrated_eta_s(4.0, 32, 1000, 2) == pytest.approx(4.0 / 32 * 1000 / 2)
    for bad in (lambda: eta.eta_s(1.0, 0.9, 1), lambda: eta.eta_s(1.0, 1.3, 0),
                lambda: eta.timed_compute_s(1.0, 2, 0, 3), lambda: eta.calibrated_eta_s(0.0, 32, 10, 1)):
        with pytest.raises(eta.EtaError):
            bad()


def test_reference_lookup_and_cost_model():
    """Cells come from the largest reference type of the same op, kernel, stride and map; types it
    lacks from the fitted cost model, counted apart."""
    small, big = conv("Small", 8, 2, 2), conv("Big", 8, 4, 4)
    values = {"Small": np.full((2, 2), 9.0), "Big": np.arange(1.0, 17.0).reshape(4, 4)}
    ours = conv("conv-k3-s1-m8-bn-relu", 8, 4, 4)
    grid = {ours.key: [(1, 1), (2, 3), (4, 4)]}
    model = eta.CostModel(0.5, 0.0, 0.0)
    sums = eta.reference_latencies(grid, {ours.key: ours}, {"Small": small, "Big": big}, values, model)
    assert sums.seconds == pytest.approx(1.0 + 7.0 + 16.0) and sums.estimated_cells == 0  # Big, not Small
    add = LayerType("add-m8", "add", 1, 1, 8, False, None, 1, 4, 0, 0)
    grid[add.key] = [(1, 0), (4, 0)]
    sums = eta.reference_latencies(grid, {ours.key: ours, add.key: add}, {"Small": small, "Big": big}, values, model)
    assert sums.seconds == pytest.approx(24.0 + 1.0) and sums.estimated_seconds == pytest.approx(1.0)
    assert (sums.cells, sums.estimated_cells) == (5, 2)


def test_cost_model_recovers_its_coefficients():
    t = conv("c", 16, 32, 32)
    truth = eta.CostModel(50e-6, 1e-9, 2e-9)
    fitted = eta.fit_cost_model((t, i, o, truth(t, i, o)) for i in (1, 4, 9, 16, 32) for o in (1, 3, 8, 20, 32))
    for name in ("fixed_s", "per_mac_s", "per_element_s"):
        assert getattr(fitted, name) == pytest.approx(getattr(truth, name), rel=1e-6)


def test_shipped_pi_table_sums():
    """The thesis's own grid is 78 s of layer time per pass; WRN-40-2's full grid here (each conv
    type with and without its batch-norm, shortcut types, additions) reads 139 s from it."""
    from latency.table import LatencyTable

    ref = LatencyTable.open(PI_TABLE)
    assert sum(v.sum() for v in ref.values.values()) == pytest.approx(77.59, abs=0.01)
    types = network_layer_types([get_arch("wrn-40-2")])
    grid = {k: grid_cells(t, 1) for k, t in types.items()}
    sums = eta.reference_latencies(grid, types, ref.types, ref.values)
    # the additions, the bn_act cells and the additions timed with their batch-norm (224 cells)
    assert sums.cells == 75552 and sums.estimated_cells == 672
    assert sums.seconds == pytest.approx(139.0, abs=0.1) and sums.estimated_seconds / sums.seconds < 0.001


def test_plan_lines():
    plan = eta.Plan(cells=100, passes=3, measurements_left=300, devices=4, model_bytes_per_pass=2_000_000,
                    sent_bytes_per_pass=13_700.0, setup_bytes_per_device=8_500_000, transfer="pool", timed_s=7200.0,
                    efficiency=1.3, eta_s=7200 * 1.3 / 4, eta_source="from reference table r.sqlite")
    text = "\n".join(eta.plan_lines(plan))
    assert "cells: 100 per pass x 3 passes = 300 measurements" in text
    assert "2 MB of models per pass" in text and "13.7 kB per pass (137 B per model)" in text
    assert "pure timed compute: 2 h 00 min (from reference table r.sqlite)" in text
    assert "ETA: 39 min 00 s on 4 devices x efficiency 1.30" in text
    none = eta.plan_lines(eta.Plan(10, 1, 10, 1, 1000, eta_source="needs a calibration"))
    assert none[-1] == "ETA: needs a calibration" and "sent" not in none[1]
    done = eta.plan_lines(eta.Plan(10, 1, 0, 1, 1000, eta_source="needs a calibration"))
    assert "left to measure: 0" in done[0] and done[-1] == "ETA: nothing left to measure"


# -- the byte estimates against real renders ----------------------------------------------------
def test_bytes_match_real_renders_and_encode_batch():
    """Model sizes and the pool transfer's bytes, estimated without rendering, against the
    project's renders and encode_batch (shuffled batches of 32, as a build sends them)."""
    from latency.devices.base import ModelJob
    from latency.devices.ssh_transfer import encode_batch, pool_index
    from latency.generate import CellModels
    from latency.passes import plan_passes

    types = network_layer_types([get_arch("wrn-10-1")])
    cells = [(k, i, o) for k, t in types.items() for i, o in grid_cells(t, 8)]
    generator = CellModels(types)
    models = [generator.render(k, i, o, seed=n) for n, (k, i, o) in enumerate(cells)]
    estimated = sum(eta.model_bytes(types[k], i, o) for k, i, o in cells)
    assert estimated == pytest.approx(sum(len(m) for m in models), rel=0.02)
    pool = pool_index()
    batches = plan_passes(range(len(cells)), set(), 1, 32, 0)
    sent = sum(len(encode_batch([ModelJob(n, models[n]) for n in batch], pool)) for _, batch in batches)
    assert sent / len(cells) == pytest.approx(eta.sent_bytes_per_model("pool", 32), rel=0.25)


# -- build-tables --dry-run ------------------------------------------------------------------------
def test_dry_run_rpi3b_wrn_40_2_prints_the_plan_and_writes_nothing(tmp_path):
    before = sorted(p.name for p in (ROOT / "tables").iterdir())
    p = build_tables("--device", "rpi3b", "--arch", "wrn-40-2", "--dry-run")
    assert p.returncode == 0, p.stderr
    assert "cells: 32,096 per pass x 3 passes = 96,288 measurements" in p.stdout  # step:4, block 8
    assert "2.46 GB of models per pass" in p.stdout and "sent over SSH (pool transfer)" in p.stdout
    # the additions timed with their batch-norm are not in the thesis's grid: the cost model's share
    assert ("pure timed compute: 2 h 26 min (from reference table rpi3b-wrn-40-2.sqlite; 0.1% of it from a cost "
            "model for cells the reference lacks)") in p.stdout
    assert "ETA: 3 h 10 min on 1 device x efficiency 1.30" in p.stdout
    assert sorted(p.name for p in (ROOT / "tables").iterdir()) == before  # no table file, no -wal
    out = tmp_path / "t.sqlite"
    p = build_tables("--device", "rpi3b", "--arch", "wrn-40-2", "--grid", "full", "--dry-run", "--out", str(out))
    assert p.returncode == 0 and "75,552 per pass" in p.stdout and "ETA: 7 h 49 min on 1 device" in p.stdout
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_dry_run_without_a_reference_and_into_the_shipped_table(tmp_path):
    p = build_tables("--device", "local", "--arch", "wrn-10-1", "--dry-run", "--out", str(tmp_path / "t.sqlite"))
    assert p.returncode == 0 and "ETA: needs a reference table or a calibration" in p.stdout
    assert list(tmp_path.iterdir()) == []
    p = build_tables("--device", "rpi3b", "--arch", "wrn-40-2", "--dry-run", "--out", str(PI_TABLE))
    assert p.returncode == 2 and "is an imported table" in p.stderr and "another --out" in p.stderr


# -- a calibration batch on an SSH device -----------------------------------------------------------
def test_calibration_batch_on_an_ssh_device(sshd_server: SshServer, tmp_path):
    """An SSH device without a reference table: the dry run says so; a build times one batch of
    its own cells there first, prints the ETA it gives, then builds the table."""
    devices_file = write_devices_file(tmp_path / "devices.toml", {"box": sshd_server.profile(tmp_path / "wd")})
    out = tmp_path / "t.sqlite"
    args = ("--device", "box", "--devices-file", str(devices_file), "--arch", "wrn-10-1", "--grid", "step:32",
            "--passes", "1", "--out", str(out))
    p = build_tables(*args, "--dry-run")
    assert p.returncode == 0 and "profile box names no reference_table" in p.stdout
    assert "a build without --dry-run times one batch there first" in p.stdout and not out.exists()
    p = build_tables(*args)
    assert p.returncode == 0, p.stderr
    assert "cells: 92 per pass x 1 passes = 92 measurements" in p.stderr
    calibration = [line for line in p.stderr.splitlines() if "(calibration: 32 cells in" in line]
    assert calibration and calibration[0].strip().startswith("ETA: ") and "on box)" in calibration[0]
    assert "measured now: 92" in p.stdout
