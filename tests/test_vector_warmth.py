"""tools.vector_warmth and the runner's vector work: the columns by hand, one real run on a small
network through LiteRT, and bad arguments refused."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from latency.devices import runner
from tools import vector_warmth as vw


def test_each_column_is_a_context_of_time_in_context() -> None:
    cols = vw.columns([30, 300], [300])
    assert list(cols) == ["partners only", "vector 30 us", "vector 300 us", "spin 300 us"]
    assert cols["partners only"] == {} and cols["spin 300 us"] == {"gap_s": pytest.approx(300e-6)}
    assert cols["vector 30 us"] == {"vector_s": pytest.approx(30e-6)}
    assert vw.columns([5], []) == {"partners only": {}, "vector 5 us": {"vector_s": pytest.approx(5e-6)}}


def test_a_cell_times_after_vector_work() -> None:
    from latency.context import partner_models
    from models.families import get_arch

    partners = [runner.load_model(m) for m in partner_models(get_arch("wrn-10-1"))]
    cell = partners[-1]
    mean, runs, fastest = runner.time_in_context(cell, partners[:-1], runs=5, warmup=1, vector_s=20e-6)
    assert runs == 5 and 0 < fastest <= mean and math.isfinite(mean)


def test_runs_on_a_small_network() -> None:
    lines: list[str] = []
    errors = vw.measure_scale("wrn-10-1", 0.25, vw.columns([20], [20]), passes=1, report=lines.append)
    assert list(errors) == ["partners only", "vector 20 us", "spin 20 us"]
    assert all(math.isfinite(e) and -100 < e for e in errors.values())
    assert lines[0].startswith("wrn-10-1 at 0.25 of every width: ") and "network " in lines[0]
    rows = [line for line in lines if line.startswith("  cells, ")]
    assert len(rows) == 3
    for row, (col, error) in zip(rows, errors.items()):
        assert row.startswith(f"  cells, {col}") and f"({error:+.1f} % of the network)" in row
    # partners only against itself: every kind at 1.000
    kinds = re.findall(r"(\w+) (\d\.\d{3})", rows[0].split("by kind: ")[1])
    assert kinds and all(ratio == "1.000" for _, ratio in kinds)
    assert sum(line.startswith("  vector 20 us: the layers it moves most: ") for line in lines) == 1


def test_a_network_given_by_its_widths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from latency.networks import network_cells
    from models.families import get_arch

    widths = {"s1": 3, "s1b0": 3, "s2": 6, "s2b0": 6, "s3": 13, "s3b0": 13}
    f = tmp_path / "widths.json"
    f.write_text(json.dumps(widths))
    assert vw.main(["--arch", "wrn-10-1", "--scale", "--widths", str(f), "--vector-us", "20", "--gap-us",
                    "--passes", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    layers = len(network_cells(get_arch("wrn-10-1"), widths))
    assert lines[0].startswith(f"wrn-10-1 at widths {f}: {layers} layers, network ")
    assert sum(line.startswith("  cells, ") for line in lines) == 2


def test_bad_arguments_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--passes", "0"], ["--scale", "1.5"], ["--vector-us", "0"]):
        with pytest.raises(SystemExit) as exc:
            vw.main(argv)
        assert exc.value.code == 2
    assert "--vector-us" in capsys.readouterr().err
    bad = tmp_path / "w.json"
    bad.write_text(json.dumps({"s9": 4}))
    for argv, says in ((["--scale"], "nothing to time"), (["--widths", str(bad)], str(bad)),
                       (["--widths", str(tmp_path / "absent.json")], "cannot read widths file")):
        with pytest.raises(SystemExit) as exc:
            vw.main(["--arch", "wrn-10-1", *argv])
        assert exc.value.code == 2 and says in capsys.readouterr().err
