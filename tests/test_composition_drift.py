"""tools.composition_drift: its arithmetic computed by hand, and one real run on a small network."""
from __future__ import annotations

import re

import pytest

from tools import composition_drift as cd

A, B = ("conv-k3-s1-m8", 8, 8), ("add-m8", 8, 8)


def _round(cells: dict, networks: list[float], overhead: float = 1e-6) -> cd.Round:
    # probes on the line overhead + 0.02 us per op: the fit's intercept is the overhead
    return cd.Round(cells=cells, networks=networks, probes={n: overhead + n * 2e-8 for n in (1, 2, 4, 8)},
                    sentinel_s=1e-6)


def test_a_networks_error_is_its_cells_less_one_overhead_per_extra_layer() -> None:
    rnd = _round({A: 10e-6, B: 4e-6}, networks=[20e-6, 13e-6])
    # network 0 runs A, A, B: 24 us less 2 overheads = 22 us against 20 us; network 1 runs A, B: 13 us
    assert cd.sum_errors_pct(rnd, [[A, A, B], [A, B]]) == pytest.approx([10.0, 0.0])


def test_moves_are_against_the_first_round_per_layer_kind() -> None:
    first = _round({A: 10e-6, B: 4e-6, ("add-m16", 16, 16): 8e-6}, networks=[20e-6, 10e-6])
    now = _round({A: 10.1e-6, B: 4.4e-6, ("add-m16", 16, 16): 8.4e-6}, networks=[20e-6, 10.2e-6])
    nets, kinds = cd.moves_against(first, now)
    assert nets == pytest.approx(1.01)  # median of 1.00 and 1.02
    assert kinds == pytest.approx({"add": 1.075, "conv": 1.01})  # median of 1.10 and 1.05


def test_a_value_counts_the_passes_at_full_speed_when_there_are_any() -> None:
    # (mean, fastest, kept slow) per pass: the median of the fastest at full speed
    assert cd.combine([(3.5, 3.0, False), (1.5, 1.0, True), (5.5, 5.0, False)]) == 4.0
    assert cd.combine([(3.5, 3.0, True), (1.5, 1.0, True), (2.5, 2.0, True)]) == 2.0


def test_runs_on_a_small_network(capsys: pytest.CaptureFixture[str]) -> None:
    assert cd.main(["--arch", "wrn-10-1", "--sample", "2", "--rounds", "2", "--passes", "1"]) == 0
    out = capsys.readouterr().out
    rounds = re.findall(r"^round (\d): sentinel ([\d.]+) us; exact sums vs networks mean ([-+][\d.]+) % "
                        r"\(([-+][\d.]+) \.\. ([-+][\d.]+)\); against round 1: networks ([\d.]+), cells (.+?); ",
                        out, re.M)
    assert [r[0] for r in rounds] == ["1", "2"], out
    for _, sentinel, mean, low, high, _, kinds in rounds:
        assert 0 < float(sentinel) < 100
        assert float(low) <= float(mean) <= float(high)
        assert abs(float(mean)) < 50  # a sum of real cells, not a stray unit
        assert {k.split()[0] for k in kinds.split(", ")} == {"add", "bn_act", "conv", "head"}
    assert rounds[0][5] == "1.000" and all(k.endswith(" 1.000") for k in rounds[0][6].split(", "))


def test_bad_counts_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cd.main(["--rounds", "0"])
    assert exc.value.code == 2 and "--rounds" in capsys.readouterr().err
