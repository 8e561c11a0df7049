"""tools.load_spread: one real run through the gated local interpreter."""
from __future__ import annotations

import re

import pytest

from tools import load_spread


def test_every_network_gets_its_loads_and_the_fastest_is_below_the_median(capsys: pytest.CaptureFixture[str]) -> None:
    assert load_spread.main(["--arch", "wrn-10-1", "--networks", "2", "--loads", "3"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^\s*(\S+)\s+([\d.]+)us\s+([\d.]+)us\s+([\d.]+)us\s+([\d.]+)$", out, re.M)
    assert [r[0] for r in rows] == ["full", "random-00"], out
    for _, fastest, median, slowest, ratio in rows:
        assert 0 < float(fastest) <= float(median) <= float(slowest)
        assert float(ratio) == pytest.approx(float(fastest) / float(median), abs=1e-3)


def test_bad_counts_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        load_spread.main(["--loads", "1"])
    assert "--loads >= 2" in capsys.readouterr().err
