"""tools.layer_chain: one real run on a tiny network, in one process through LiteRT."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from models.families import get_arch
from tools import layer_chain


def test_runs_on_a_tiny_network_and_a_reports_networks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arch = get_arch("wrn-10-1")
    widths = {g.name: max(1, g.full // 4) for g in arch.prunable_groups}
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"arch": "wrn-10-1", "networks": [{"label": "quarter", "widths": widths}]}))
    assert layer_chain.main(["--arch", "wrn-10-1", "--scale", "0.5", "--networks", str(metrics), "--rounds", "1",
                             "--carry-over"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^ +(\S+) +([\d.]+)MB +(\d+)us" + r" +([+-][\d.]+)%" * 5 + "$", out, re.M)
    assert [r[0] for r in rows] == ["uniform-0.5", "quarter"], out
    for _, mb, us, *pcts in rows:
        assert float(mb) > 0 and int(us) > 0
        assert all(-90 < float(p) < 500 for p in pcts)  # sums of real timings, not a stray unit
    carried = re.findall(r"^ +quarter +[\d.]+MB +([+-][\d.]+)%  \(outside the uniform range: nearest ratio\)$", out, re.M)
    assert len(carried) == 2, out  # from the chain's ratios, then the warm chain's
    assert all(-90 < float(c) < 500 for c in carried), out  # a quarter lies below the one uniform network
    assert len(re.findall(r"^carried over: MAPE [\d.]+ %, worst [\d.]+ %, mean [+-][\d.]+ % over 1 networks$",
                          out, re.M)) == 2, out
    types = re.findall(r"^  (\S+) +([\d.]+) us +([\d.]+) us +([\d.]+) us  x([\d.]+) x([\d.]+)$", out, re.M)
    assert {t[0].split("-")[0] for t in types} >= {"conv", "add", "head"}, out
    for _, recipe, chain, warm, ratio, warm_ratio in types:  # each ratio is the two sums', printed to 0.1 us
        r = float(recipe)
        for value, printed in ((float(chain), ratio), (float(warm), warm_ratio)):
            assert (value - 0.05) / (r + 0.05) - 0.0005 <= float(printed) <= (value + 0.05) / (r - 0.05) + 0.0005


def test_chain_times_every_model_in_order() -> None:
    calls: list[int] = []

    class Model:
        def __init__(self, i: int) -> None:
            self.i = i

        def invoke(self) -> None:
            calls.append(self.i)

    best = layer_chain.chain_fastest([Model(0), Model(1), Model(2)], 3)
    assert calls == [0, 1, 2] * 3
    assert len(best) == 3 and all(0 < b < 1 for b in best)


def test_a_warm_chain_writes_each_models_input_right_before_it_runs() -> None:
    events: list[tuple] = []

    class Model:
        def __init__(self, i: int) -> None:
            self.i = i

        def get_input_details(self) -> list[dict]:
            return [{"index": 7, "shape": [1, 2, 2, self.i + 1], "dtype": np.float32}]

        def set_tensor(self, index: int, value: np.ndarray) -> None:
            events.append(("write", self.i, index, value.shape))

        def invoke(self) -> None:
            events.append(("invoke", self.i))

    layer_chain.chain_fastest([Model(0), Model(1)], 2, write_inputs=True)
    assert events == [("write", 0, 7, (1, 2, 2, 1)), ("invoke", 0), ("write", 1, 7, (1, 2, 2, 2)), ("invoke", 1)] * 2


def test_the_sample_networks_are_the_reports() -> None:
    from latency.networks import sample_networks

    arch = get_arch("wrn-10-1")
    nets = layer_chain.networks_to_time(arch, [0.5], None, 4)
    assert [label for label, _ in nets] == ["uniform-0.5"] + [n.label for n in sample_networks(arch, 4)]
    assert nets[1:] == [(n.label, n.widths) for n in sample_networks(arch, 4)]


def test_another_architectures_report_is_refused(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"arch": "wrn-40-2", "networks": []}))
    with pytest.raises(SystemExit, match="a report of wrn-40-2, not wrn-10-1"):
        layer_chain.main(["--arch", "wrn-10-1", "--networks", str(metrics)])


def test_bad_counts_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        layer_chain.main(["--rounds", "0"])
    assert exc.value.code == 2 and "--rounds" in capsys.readouterr().err


def test_a_file_that_is_not_a_report_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "widths.json"
    other.write_text(json.dumps({"s1": 4}))
    with pytest.raises(SystemExit, match="not a report's metrics.json"):
        layer_chain.main(["--arch", "wrn-10-1", "--networks", str(other)])
    with pytest.raises(SystemExit, match="not a report's metrics.json"):
        layer_chain.main(["--arch", "wrn-10-1", "--networks", str(tmp_path / "absent.json")])


def test_carried_over_scales_each_convolution_by_its_types_ratio_at_the_networks_weights() -> None:
    cells = [("conv-k3-s1-m8", 4, 4), ("add-m8", 4, 0), ("conv-k1-s1-m8", 4, 4)]
    uniform = [  # (label, cells, medians, network, extra, weights)
        ("u1", cells, {"recipe": [1.0, 1.0, 2.0], "chain": [1.1, 5.0, 2.0]}, 0, 0, 1e6),
        ("u2", cells, {"recipe": [2.0, 1.0, 2.0], "chain": [2.6, 5.0, 2.2]}, 0, 0, 3e6),
    ]
    ratios = layer_chain.type_ratios(uniform)
    assert ratios == {"conv-k3-s1-m8": [(1e6, pytest.approx(1.1)), (3e6, pytest.approx(1.3))],
                      "conv-k1-s1-m8": [(1e6, 1.0), (3e6, pytest.approx(1.1))]}
    recipe = [10.0, 3.0, 20.0]
    # halfway: x1.2 and x1.05; the addition as the recipe timed it
    assert layer_chain.carried_over(cells, recipe, 2e6, ratios) == pytest.approx(12.0 + 3.0 + 21.0)
    # outside the measured weights: the nearest ratio, never a line drawn beyond it
    assert layer_chain.carried_over(cells, recipe, 9e6, ratios) == pytest.approx(13.0 + 3.0 + 22.0)
    assert layer_chain.carried_over(cells, recipe, 0.0, ratios) == pytest.approx(11.0 + 3.0 + 20.0)


def test_carry_over_needs_networks(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        layer_chain.main(["--carry-over"])
    assert exc.value.code == 2 and "--carry-over needs" in capsys.readouterr().err
