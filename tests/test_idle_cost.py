"""tools.idle_cost: one real run on a tiny network, in one process through LiteRT."""
from __future__ import annotations

import re

import pytest

from tools import idle_cost


def test_runs_on_a_tiny_network(capsys: pytest.CaptureFixture[str]) -> None:
    assert idle_cost.main(["--arch", "wrn-10-1", "--scale", "0.5", "--rounds", "1", "--gap-ms", "0.2",
                           "--write-mb", "1", "--read-mb", "2"]) == 0
    out = capsys.readouterr().out
    network = float(re.search(r"network (\d+\.\d) us \(median of rounds\)", out).group(1))
    rows = re.findall(r"cells, (.+?) *, less \(n - 1\) o: +(-?\d+\.\d) us +\(([+-][\d.]+) % of the network\)", out)
    assert [c for c, _, _ in rows] == ["recipe", "gap 0.2 ms", "write 1 MB", "read 2 MB"], out
    for _, cells, pct in rows:  # each sum set against the network as printed
        c = float(cells)
        # both printed to 0.1 us, the percentage to 0.1: how far that rounding can move it
        rounding = 100 * (0.05 / (network - 0.05) + 0.05 * (c + 0.05) / (network - 0.05) ** 2) + 0.05
        assert float(pct) == pytest.approx(100 * (c / network - 1), abs=rounding)
        assert 0 < c
    assert len(re.findall(r"^  \S+ \d+->\d+: [\d.]+ us, x[\d.]+$", out, re.M)) == 6


def test_bad_gap_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        idle_cost.main(["--gap-ms", "0"])
    assert exc.value.code == 2 and "--gap-ms" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        idle_cost.main(["--read-mb", "-1"])
    assert exc.value.code == 2 and "--read-mb" in capsys.readouterr().err
