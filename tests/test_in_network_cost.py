"""tools.in_network_cost: one real run on a tiny network through the gated local device."""
from __future__ import annotations

import re

import pytest

from tools import in_network_cost


def test_cells_are_timed_as_the_local_recipe_times_them() -> None:
    from latency.devices.defaults import local_defaults
    from models.families import get_arch

    arch, recipe = get_arch("wrn-10-1"), local_defaults().recipe
    network = in_network_cost.cell_timing(arch, "network")
    assert network.partners and network.placements == recipe.placements and network.runs == recipe.runs
    alone = in_network_cost.cell_timing(arch, "alone")
    assert not alone.partners and alone.evict_bytes == 0 and alone.min_time_s > 0


def test_runs_on_a_tiny_network(capsys: pytest.CaptureFixture[str]) -> None:
    assert in_network_cost.main(["--arch", "wrn-10-1", "--scale", "0.5", "--passes", "1"]) == 0
    out = capsys.readouterr().out
    blocks = [line for line in out.splitlines() if re.match(r"\s*\d+-\d+\s", line)]
    assert len(blocks) == 4  # three residual blocks, then the head
    whole = re.search(r"whole network ([\d.]+) us, its layers alone less \(n - 1\) o ([\d.]+) us: ratio ([\d.]+)", out)
    assert whole, out
    network_us, layers_us, ratio = map(float, whole.groups())
    assert network_us > 0 and layers_us > 0 and ratio == pytest.approx(network_us / layers_us, rel=2e-3)
    assert 0.5 < ratio < 2  # a plausible network against its layers, not a unit slip


def test_bad_scale_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        in_network_cost.main(["--scale", "1.5"])
    assert exc.value.code == 2 and "--scale" in capsys.readouterr().err
