"""tools.repeatability on real stored passes: a report, then a --remeasure of it on a copy."""
from __future__ import annotations

import re

import pytest

from latency.networks import Measured
from tests.test_report import ARCH, FAST, _copy_table, _rows, reported, widths_dir  # noqa: F401
from tools import report_diagnostics
from tools.repeatability import RepeatabilityError, main, repeat_metrics, repeat_rows


def test_second_run_compared_with_the_first(reported, widths_dir, tmp_path, capsys) -> None:  # noqa: F811
    first, _ = reported
    second = _copy_table(first, tmp_path / "second.sqlite")
    assert report_diagnostics.main(["--table", str(second), "--arch", ARCH, "--widths", str(widths_dir), "--sample",
                                    "3", "--remeasure", "--no-overhead", "--no-op-check", "--out",
                                    str(tmp_path / "rep"), *FAST]) == 0
    capsys.readouterr()
    assert main([str(first), str(second), "--arch", ARCH]) == 0
    out = capsys.readouterr().out

    def fastest(path):
        by_net: dict[str, float] = {}
        for widths, f in _rows(path, "select widths, fastest from whole_networks where device = 'local'"):
            by_net[widths] = min(f, by_net.get(widths, f))
        return by_net

    a, b = fastest(first), fastest(second)
    assert set(a) == set(b) and len(a) == 4
    expected = sorted((a[k], b[k]) for k in a)
    expected.sort(key=lambda r: r[1])
    printed = [tuple(float(x) for x in m) for m in re.findall(r"^\s+([\d.]+)\s+([\d.]+)\s+[+-][\d.]+$", out, re.M)]
    assert printed == [pytest.approx((x * 1e3, y * 1e3), abs=1e-4) for x, y in expected]
    apes = [abs(x - y) / y * 100 for x, y in expected]
    mape = float(re.search(r"MAPE ([\d.]+) %", out).group(1))
    worst = float(re.search(r"worst ([\d.]+) %", out).group(1))
    assert mape == pytest.approx(sum(apes) / len(apes), abs=0.006)
    assert worst == pytest.approx(max(apes), abs=0.006)
    assert "4 networks measured in both runs" in out


def test_files_without_measurements_are_refused(reported, small_table, tmp_path, capsys) -> None:  # noqa: F811
    first, _ = reported
    bare = _copy_table(small_table(ARCH), tmp_path / "bare.sqlite")
    assert main([str(first), str(bare), "--arch", ARCH]) == 2
    err = capsys.readouterr().err
    assert f"no {ARCH} network measured on device 'local'" in err and "run latency-report" in err
    assert main([str(first), str(tmp_path / "missing.sqlite"), "--arch", ARCH]) == 2
    assert "no such table file" in capsys.readouterr().err
    assert main([str(first), str(first), "--arch", ARCH, "--device", "pi"]) == 2
    assert "device 'pi'" in capsys.readouterr().err


def test_rows_combine_passes_and_keep_common_networks() -> None:
    first = {"a": Measured((2.0, 3.0), (1,), (1.5, 2.5)), "b": Measured((1.0, 1.0), (1,), (0.9, 0.8)),
             "only-first": Measured((9.0,), (1,), (9.0,))}
    second = {"a": Measured((2.2, 2.2), (2,), (1.65, 2.0)), "b": Measured((1.1, 0.9), (2,), (0.88, 0.9))}
    assert repeat_rows(first, second, "fastest") == [("b", 0.8, 0.88), ("a", 1.5, 1.65)]
    assert repeat_rows(first, second, "mean") == [("b", 1.0, pytest.approx(1.0)), ("a", 2.5, pytest.approx(2.2))]
    m = repeat_metrics(repeat_rows(first, second, "fastest"))
    assert m["n"] == 2 and m["mape"] == pytest.approx(100 * (1 - 1 / 1.1))  # both 10 % slower the second time
    with pytest.raises(RepeatabilityError, match="no measured network in common"):
        repeat_rows(first, {"c": second["a"]}, "fastest")
