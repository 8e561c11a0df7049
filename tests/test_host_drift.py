"""tools.host_drift: the summary's arithmetic, and one real run on a small network."""
from __future__ import annotations

import math
import re

import pytest

from tools import host_drift


def test_summary_gives_each_readers_spread_and_how_it_follows_the_reference() -> None:
    rows = [{"network ms": 3.0, "sentinel us": 0.50, "layer us": 9.0},
            {"network ms": 3.3, "sentinel us": 0.55, "layer us": 9.0},
            {"network ms": 3.6, "sentinel us": 0.60, "layer us": 9.1}]
    summary = host_drift.drift_summary(rows, "network ms")
    assert summary["network ms"] == pytest.approx((1.2, 1.0))
    assert summary["sentinel us"] == pytest.approx((1.2, 1.0))  # moves in step with the network
    spread, r = summary["layer us"]
    assert spread == pytest.approx(9.1 / 9.0) and 0 < r < 1


def test_span_spread_takes_the_fastest_of_each_run_of_windows() -> None:
    values = [3.0, 3.3, 2.8, 3.6, 3.5]
    assert host_drift.span_spread(values, 1) == pytest.approx(3.6 / 2.8)
    # runs of 2: fastest 3.0, 2.8, 2.8, 3.5
    assert host_drift.span_spread(values, 2) == pytest.approx(3.5 / 2.8)
    assert host_drift.span_spread(values, 5) == 1.0
    with pytest.raises(ValueError, match="span"):
        host_drift.span_spread(values, 6)


def test_one_window_has_no_correlation_to_report() -> None:
    spread, r = host_drift.drift_summary([{"network ms": 3.0, "sentinel us": 0.5}], "network ms")["sentinel us"]
    assert spread == 1.0 and math.isnan(r)


def test_runs_on_a_small_network(capsys: pytest.CaptureFixture[str]) -> None:
    assert host_drift.main(["--arch", "wrn-10-1", "--windows", "3", "--window-s", "0.2"]) == 0
    out = capsys.readouterr().out
    windows = [line.split() for line in out.splitlines() if re.match(r"\s+\d+\s+[\d.]+\s+[\d.]+\s+[\d.]+$", line)]
    assert [int(w[0]) for w in windows] == [1, 2, 3]
    for _, sentinel_us, layer_us, network_ms in windows:
        # the sentinel is a microsecond chain, the largest layer less than the whole network
        assert 0 < float(sentinel_us) < float(layer_us) < float(network_ms) * 1e3
    assert re.search(r"network ms +slowest window / fastest 1\.\d{3}, Pearson r with the network over windows \+1\.00",
                     out), out
    assert re.search(r"runs of consecutive windows, slowest run / fastest run: 1 x 0.2 s 1\.\d{3}, 2 x 0.2 s 1\.\d{3}$",
                     out.strip()), out


def test_bad_windows_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        host_drift.main(["--windows", "0"])
    assert exc.value.code == 2 and "--windows" in capsys.readouterr().err
