"""The pure decisions: channel counts against brute force on real tables, channel choice, pick rule."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from latency.table import LatencyTable
from models.families import get_arch
from models.torch_builder import build_torch
from search.channels import Outcome, channels_to_keep, choose_removal, distinct_factors, fewest_to_meet, l2_scores, \
    largest_gain, min_width, pick_best, removal_gains, scaled_widths, uniform_factor
from search.netadapt import plan_iteration, sample


def brute_force_count(table, arch, widths, group, step, lowest):
    """Independent of search.channels: every count, straight from the table."""
    now = table.predict(arch, widths)
    for k in range(1, widths[group] - lowest + 1):
        if now - table.predict(arch, dict(widths, **{group: widths[group] - k})) >= step:
            return k
    return None


@pytest.mark.parametrize("arch_name", ["wrn-10-1", "mbv2-tiny"])
def test_fewest_channels_is_brute_force_on_the_real_table(small_table, arch_name):
    arch = get_arch(arch_name)
    table = LatencyTable.open(small_table(arch_name))
    predictor = table.predictor(arch)
    rng = np.random.default_rng(0)
    mins = {g.name: min_width(g) for g in arch.prunable_groups}
    states = [arch.full_widths()] + [{g.name: int(rng.integers(max(1, g.full // 2), g.full + 1))
                                      for g in arch.prunable_groups} for _ in range(3)]
    checked = found = 0
    for widths in states:
        now = predictor.predict(widths)
        for step_fraction in (0.002, 0.01, 0.03, 0.1):
            step = step_fraction * now
            plans, skipped = plan_iteration(predictor, widths, list(mins), mins, step, allow_small=False)
            by_group = {p.group: p for p in plans}
            for g in mins:
                want = brute_force_count(table, arch, widths, g, step, mins[g])
                if want is None:
                    assert g in skipped
                else:
                    found += 1
                    assert by_group[g].removed == want
                    assert by_group[g].gain >= step
                    # and it is the fewest: every smaller count misses the step
                    assert all(now - predictor.predict(dict(widths, **{g: widths[g] - k})) < step for k in range(1, want))
                checked += 1
    assert found > checked // 4  # the cases are not all trivial misses


def test_a_block_removal_is_the_fewest_when_only_it_meets_the_step(small_table):
    arch = get_arch("wrn-10-1")
    predictor = LatencyTable.open(small_table("wrn-10-1")).predictor(arch)
    widths = arch.full_widths()
    cases = 0
    for g in (g for g in arch.prunable_groups if g.may_be_zero):
        gains = removal_gains(predictor.predict, widths, g.name, 0)
        partial, whole = gains[:-1].max(), gains[-1]
        if whole > partial:  # removing the whole block saves more than any thinning of it
            step = (partial + whole) / 2
            assert fewest_to_meet(gains, step) == g.full
            cases += 1
    assert cases >= 1


def test_count_rules_on_a_non_monotone_curve():
    gains = [0.1, 0.5, 0.2, 0.9, 0.3]
    assert fewest_to_meet(gains, 0.4) == 2  # a bisection between 1 and 5 would test 3 (0.2) and answer 4
    assert fewest_to_meet(gains, 0.6) == 4
    assert fewest_to_meet(gains, 1.0) is None
    assert largest_gain(gains) == 4
    assert largest_gain([-0.1, 0.0]) is None and largest_gain([]) is None


def test_l2_scores_cover_every_coupled_filter():
    torch.manual_seed(0)
    net = build_torch(get_arch("wrn-10-1"))
    conv2 = net.unit("s2b0.conv2").conv.weight.detach()
    shortcut = net.unit("s2b0.shortcut").conv.weight.detach()
    want = (conv2.pow(2).sum((1, 2, 3)) + shortcut.pow(2).sum((1, 2, 3))).sqrt()
    torch.testing.assert_close(l2_scores(net, "s2").float(), want)
    inner = net.unit("s2b0.conv1").conv.weight.detach()
    torch.testing.assert_close(l2_scores(net, "s2b0").float(), inner.pow(2).sum((1, 2, 3)).sqrt())


def test_channels_to_keep_drops_the_lowest():
    assert channels_to_keep(torch.tensor([3.0, 1.0, 2.0, 1.0, 5.0]), 2) == [0, 2, 4]  # tie: lower index goes
    assert channels_to_keep(np.array([1.0, 2.0]), 0) == [0, 1]
    assert channels_to_keep(np.array([1.0, 2.0]), 2) == []
    with pytest.raises(ValueError):
        channels_to_keep(np.array([1.0]), 2)


def test_pick_best_rule():
    base = 0.20
    # nobody improves: the smallest loss per second wins (0.02/2 < 0.01/0.5)
    assert pick_best([Outcome(0.21, 0.5), Outcome(0.22, 2.0), Outcome(0.30, 1.0)], base) == 1
    # some improve: the most accurate wins, whatever its gain
    assert pick_best([Outcome(0.19, 5.0), Outcome(0.15, 0.1), Outcome(0.20, 9.0)], base) == 1
    # a block removal that costs nothing beats every thinning that costs something
    assert pick_best([Outcome(0.21, 3.0), Outcome(0.20, 1.0)], base) == 1
    # ties: larger gain
    assert pick_best([Outcome(0.20, 1.0), Outcome(0.20, 2.0)], base) == 1
    with pytest.raises(ValueError):
        pick_best([], base)


def test_choose_removal_by_fisher_per_second():
    signals = {"a": torch.tensor([0.4, 0.1, 0.3]), "b": torch.tensor([0.05, 0.2]), "c": torch.tensor([0.001])}
    r = choose_removal(signals, {"a": 1.0, "b": 0.1, "c": -0.5})
    assert (r.group, r.channel) == ("a", 1) and math.isclose(r.score, 0.1, rel_tol=1e-6)  # b: 0.05 / 0.1 = 0.5
    # no group predicted faster: the smallest signal goes
    r = choose_removal(signals, {"a": 0.0, "b": -1.0, "c": -0.5})
    assert (r.group, r.channel) == ("c", 0) and math.isinf(r.score)


def test_uniform_factor_meets_the_target_on_the_real_table(small_table):
    arch = get_arch("wrn-10-1")
    predictor = LatencyTable.open(small_table("wrn-10-1")).predictor(arch)
    start = arch.full_widths()
    initial = predictor.predict(start)
    factors = distinct_factors(arch, start)
    assert factors == sorted(factors) and factors[-1] == 1.0
    assert len({tuple(scaled_widths(arch, start, f).values()) for f in factors}) == len(factors)
    for fraction in (0.9, 0.7, 0.5):
        factor, widths = uniform_factor(arch, start, predictor.predict, fraction * initial)
        assert predictor.predict(widths) <= fraction * initial
        assert widths == scaled_widths(arch, start, factor) and 0 < factor < 1
        assert all(w >= 1 for w in widths.values())
    with pytest.raises(ValueError):
        uniform_factor(arch, start, predictor.predict, 1e-9)


def test_group_sampling_is_seeded():
    groups = [f"g{i}" for i in range(10)]
    a, b = sample(groups, 0.3, seed=1, iteration=4), sample(groups, 0.3, seed=1, iteration=4)
    assert a == b and len(a) == 3 and set(a) <= set(groups)
    assert sample(groups, 1.0, 1, 4) == groups
    assert any(sample(groups, 0.3, 1, i) != a for i in range(5, 10))


def test_uniform_factor_survives_an_outlier_at_the_smallest_widths():
    """A measured outlier (one slow cell at 1 channel) breaks the bisection's assumption that
    the smallest network meets the target: the check then tries every factor."""
    arch = get_arch("wrn-10-1")
    start = arch.full_widths()

    def predict(widths):
        outlier = 1000.0 if widths["s1"] == 1 else 0.0
        return sum(widths.values()) + outlier

    target = 0.6 * sum(start.values())
    factor, widths = uniform_factor(arch, start, predict, target)
    assert predict(widths) <= target
    larger = [f for f in distinct_factors(arch, start) if f > factor]
    assert all(predict(scaled_widths(arch, start, f)) > target for f in larger)


def test_small_prunings_compete_only_when_allowed(small_table):
    arch = get_arch("wrn-10-1")
    predictor = LatencyTable.open(small_table("wrn-10-1")).predictor(arch)
    widths = arch.full_widths()
    mins = {g.name: min_width(g) for g in arch.prunable_groups}
    step = 10 * predictor.predict(widths)  # no group can meet it
    plans, skipped = plan_iteration(predictor, widths, list(mins), mins, step, allow_small=False)
    assert plans == [] and skipped == list(mins)
    plans, skipped = plan_iteration(predictor, widths, list(mins), mins, step, allow_small=True)
    assert plans and all(p.small for p in plans)
    for p in plans:
        gains = removal_gains(predictor.predict, widths, p.group, mins[p.group])
        assert p.removed == largest_gain(gains) and p.gain == gains.max() > 0
