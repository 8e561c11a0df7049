"""tools.context_cost: its arithmetic, its command line, and one real run on a tiny network."""
from __future__ import annotations

import pytest

from tools import context_cost


def test_spanning_keeps_both_ends_in_order() -> None:
    items = list(range(20))
    picked = context_cost.spanning(items, 5)
    assert picked[0] == 0 and picked[-1] == 19 and picked == sorted(set(picked)) and len(picked) == 5
    assert context_cost.spanning(items[:3], 8) == [0, 1, 2]


def test_sum_error_removes_one_overhead_per_extra_layer() -> None:
    # 3 layers of 10 s with 1 s of invoke overhead each: the network runs 10 + 10 + 10 - 2 = 28 s
    assert context_cost.sum_error_pct([10.0, 10.0, 10.0], 1.0, 28.0) == pytest.approx(0.0)
    assert context_cost.sum_error_pct([10.0, 10.0, 10.0], 0.0, 28.0) == pytest.approx(100 * 2 / 28)


def test_bad_groups_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for groups in ("a,b", "1"):
        with pytest.raises(SystemExit) as exc:
            context_cost.main(["--groups", groups])
        assert exc.value.code == 2
    assert "--groups" in capsys.readouterr().err


def test_runs_on_a_tiny_network(capsys: pytest.CaptureFixture[str]) -> None:
    # two passes: the tool keeps the fastest of its passes, and one pass on a busy host can fall
    # into a slow phase that doubles a 40 us network's layers (the bound below)
    assert context_cost.main(["--arch", "wrn-10-1", "--networks", "2", "--groups", "4",
                              "--passes", "2", "--min-time-ms", "0"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.strip().startswith(("random", "uniform", "full"))]
    assert len(lines) == 2
    for line in lines:  # label, params, layers, measured, then one error per context
        fields = line.split()
        assert len(fields) == 4 + 3 and fields[3].endswith("us")
        assert all(abs(float(f)) < 100 for f in fields[4:])
    assert "mean |error|" in out
