"""NetAdapt, Fisher-with-cost and uniform end to end on tiny networks with real small tables."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from latency.table import LatencyTable
from models.arch import load_widths
from models.families import get_arch
from models.torch_builder import build_torch
from search.channels import removal_gains
from search.checkpoint_io import load_model
from search.finetune import FinetuneSettings, holdout_error
from search.fisher_prune import run_fisher
from search.netadapt import NetAdaptSettings, run_netadapt
from search.runs import SearchError
from search.uniform import run_uniform
from tests.test_search_fixtures import TINY_FT, one_thread, search_data, synthetic_dir, trained  # noqa: F401

quiet = dict(log=lambda line: None)


def check_history_chain(arch, predictor, result):
    """Each entry starts where the previous ended, changes one group, and is what the table says."""
    widths = dict(result.initial_widths)
    for entry in result.history:
        assert entry["latency_before_s"] == predictor.predict(widths)
        changed = {g for g in widths if entry["widths"][g] != widths[g]}
        assert changed == {entry["group"]}
        assert widths[entry["group"]] - entry["widths"][entry["group"]] == entry["removed"]
        widths = entry["widths"]
        assert entry["predicted_latency_s"] == predictor.predict(widths)
    assert widths == result.widths


@pytest.mark.parametrize("arch_name, target", [("wrn-10-1", 0.8), ("mbv2-tiny", 0.9)])
def test_netadapt_meets_every_step_and_the_target(small_table, search_data, trained, tmp_path, arch_name, target):
    arch = get_arch(arch_name)
    predictor = LatencyTable.open(small_table(arch_name)).predictor(arch)
    net = trained(arch_name)
    result = run_netadapt(net, predictor, search_data, tmp_path / "run", target,
                          settings=NetAdaptSettings(init_red_fact=4), finetune=TINY_FT, save_at=[0.95], **quiet)
    initial = predictor.predict(arch.full_widths())
    assert result.initial_latency == initial
    assert result.latency <= target * initial and result.latency == predictor.predict(result.widths)
    assert len(result.history) >= 2
    step = (1 - target) * initial / 4
    for i, entry in enumerate(result.history):
        assert entry["step_s"] == pytest.approx(step * 0.98 ** i, rel=1e-12)
        assert not entry["small"]
        assert entry["latency_before_s"] - entry["predicted_latency_s"] >= entry["step_s"]
        for c in entry["candidates"]:  # every candidate met the step with the fewest channels
            assert c["gain_s"] >= entry["step_s"]
        assert entry["group"] in {c["group"] for c in entry["candidates"]}
    check_history_chain(arch, predictor, result)

    run = tmp_path / "run"
    doc = json.loads((run / "widths.json").read_text())
    assert doc["finished"] and doc["widths"] == result.widths and doc["arch"] == arch_name
    assert load_widths(arch, run / "widths.json") == arch.validate(result.widths)
    assert [p["fraction"] for p in doc["saved"]] == [0.95, target]
    for p in doc["saved"]:
        assert p["predicted_latency_s"] <= p["fraction"] * initial
        assert load_model(run / p["model"]).widths == arch.validate(p["widths"])
    assert json.loads((run / "history.json").read_text())[-1]["widths"] == result.widths
    assert (run / "channels.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    final = load_model(run / "model.pt")
    assert final.widths == arch.validate(result.widths)
    # the saved model is the chosen candidate, whose held-out error the history reports
    assert holdout_error(final, search_data) == result.history[-1]["holdout_error"]


def test_block_is_removed_when_that_is_best(small_table, search_data, trained, tmp_path):
    """Constructed case: a block whose output is zero (removing it changes nothing) and a step
    that only the removal of the whole block meets."""
    arch = get_arch("wrn-10-1")
    predictor = LatencyTable.open(small_table("wrn-10-1")).predictor(arch)
    net = trained("wrn-10-1")
    widths = dict(net.widths)
    initial = predictor.predict(widths)
    block = None
    for g in ("s1b0", "s2b0", "s3b0"):
        gains = removal_gains(predictor.predict, widths, g, 0)
        if gains[-1] > gains[:-1].max():
            block = g
            break
    assert block is not None, "no block whose removal saves more than thinning it"
    with torch.no_grad():
        net.unit(f"{block}.conv2").conv.weight.zero_()
    base_error = holdout_error(net, search_data)
    without = predictor.predict(dict(widths, **{block: 0}))
    # target just above the block-less latency and one step: only the whole block meets it
    target = (without + 0.25 * (gains[-1] - gains[:-1].max())) / initial
    result = run_netadapt(net, predictor, search_data, tmp_path / "run", target,
                          settings=NetAdaptSettings(init_red_fact=1, groups=(block,)),
                          finetune=FinetuneSettings(batches=0), **quiet)
    entry = result.history[0]
    assert entry["group"] == block and entry["block_removed"] and entry["removed"] == arch.group_by_name[block].full
    assert result.widths[block] == 0 and len(result.history) == 1
    assert entry["holdout_error"] == base_error  # the block did nothing, so nothing was lost
    pruned = load_model(tmp_path / "run" / "model.pt")
    assert not any(name.startswith(block + ".conv") for name in (a.layer.name for a in pruned.active))
    assert pruned(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert result.latency == without


def test_heldout_split_never_reaches_training_or_fisher(small_table, search_data, trained, tmp_path):
    seen: dict[str, list[np.ndarray]] = {"train": [], "fisher": [], "holdout": []}
    search_data.observer = lambda kind, idx: seen[kind].append(np.array(idx))
    try:
        arch = get_arch("wrn-10-1")
        predictor = LatencyTable.open(small_table("wrn-10-1")).predictor(arch)
        run_netadapt(trained("wrn-10-1"), predictor, search_data, tmp_path / "na", 0.9,
                     settings=NetAdaptSettings(init_red_fact=2, criterion="fisher", fisher_batches=2),
                     finetune=TINY_FT, **quiet)
        run_fisher(trained("wrn-10-1"), predictor, search_data, tmp_path / "fi", 0.97,
                   finetune_settings=TINY_FT, **quiet)
    finally:
        search_data.observer = None
    assert all(seen[k] for k in seen)
    holdout = set(search_data.holdout_idx.tolist())
    trained_on = set(np.concatenate(seen["train"] + seen["fisher"]).tolist())
    evaluated = set(np.concatenate(seen["holdout"]).tolist())
    assert trained_on and not trained_on & holdout
    assert evaluated == holdout


def test_resume_after_interruption_mid_iteration_ends_the_same(small_table, search_data, trained, tmp_path):
    arch = get_arch("wrn-10-1")
    predictor = LatencyTable.open(small_table("wrn-10-1")).predictor(arch)
    kwargs = dict(settings=NetAdaptSettings(init_red_fact=4, sample_groups=0.7), finetune=TINY_FT, seed=3, **quiet)
    whole = run_netadapt(trained("wrn-10-1"), predictor, search_data, tmp_path / "whole", 0.8, **kwargs)
    assert len(whole.history) >= 3

    class Killed(Exception):
        pass

    def kill_in_second_iteration(event, info):
        if event == "candidate" and info["iteration"] == 1 and info["index"] == 1:
            raise Killed

    with pytest.raises(Killed):
        run_netadapt(trained("wrn-10-1"), predictor, search_data, tmp_path / "cut", 0.8,
                     callback=kill_in_second_iteration, **kwargs)
    assert not json.loads((tmp_path / "cut" / "widths.json").read_text())["finished"]
    with pytest.raises(SearchError, match="already holds a run"):
        run_netadapt(trained("wrn-10-1"), predictor, search_data, tmp_path / "cut", 0.8, **kwargs)
    with pytest.raises(SearchError, match="different settings"):
        run_netadapt(trained("wrn-10-1"), predictor, search_data, tmp_path / "cut", 0.7, resume=True, **kwargs)
    resumed = run_netadapt(trained("wrn-10-1"), predictor, search_data, tmp_path / "cut", 0.8, resume=True, **kwargs)
    assert resumed.widths == whole.widths
    assert [(e["group"], e["removed"], e["holdout_error"]) for e in resumed.history] == \
           [(e["group"], e["removed"], e["holdout_error"]) for e in whole.history]
    a, b = whole.net.state_dict(), resumed.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_workers_give_the_same_result_as_one(small_table, search_data, trained, tmp_path):
    arch = get_arch("wrn-10-1")
    predictor = LatencyTable.open(small_table("wrn-10-1")).predictor(arch)
    kwargs = dict(settings=NetAdaptSettings(init_red_fact=2), finetune=TINY_FT, threads=1, **quiet)
    one = run_netadapt(trained("wrn-10-1"), predictor, search_data, tmp_path / "one", 0.9, jobs=1, **kwargs)
    two = run_netadapt(trained("wrn-10-1"), predictor, search_data, tmp_path / "two", 0.9, jobs=2, **kwargs)
    assert two.widths == one.widths
    assert [[c["holdout_error"] for c in e["candidates"]] for e in two.history] == \
           [[c["holdout_error"] for c in e["candidates"]] for e in one.history]
    assert not (tmp_path / "two" / ".data").exists()  # the shared copy of the data is cleaned up


def test_ray_backend_when_installed(small_table, search_data, trained, tmp_path):
    pytest.importorskip("ray")
    arch = get_arch("wrn-10-1")
    predictor = LatencyTable.open(small_table("wrn-10-1")).predictor(arch)
    kwargs = dict(settings=NetAdaptSettings(init_red_fact=1, groups=("s3b0", "s2b0")), finetune=TINY_FT,
                  threads=1, **quiet)
    one = run_netadapt(trained("wrn-10-1"), predictor, search_data, tmp_path / "one", 0.95, **kwargs)
    ray = run_netadapt(trained("wrn-10-1"), predictor, search_data, tmp_path / "ray", 0.95, jobs=2,
                       backend="ray", **kwargs)
    assert ray.widths == one.widths


def test_fisher_with_cost_removes_one_channel_at_a_time(small_table, search_data, trained, tmp_path):
    arch = get_arch("wrn-10-1")
    predictor = LatencyTable.open(small_table("wrn-10-1")).predictor(arch)
    result = run_fisher(trained("wrn-10-1"), predictor, search_data, tmp_path / "run", 0.9, save_at=[0.95],
                        finetune_settings=TINY_FT, groups=("s2", "s2b0", "s3", "s3b0"), **quiet)
    initial = result.initial_latency
    assert result.latency <= 0.9 * initial
    check_history_chain(arch, predictor, result)
    assert all(e["removed"] == 1 for e in result.history)
    assert all(e["widths"]["s1"] == 16 and e["widths"]["s1b0"] == 16 for e in result.history)
    # a removal predicted faster is preferred whenever one exists: its gain was positive
    positive = [e for e in result.history if e["gain_s"] > 0]
    assert len(positive) >= len(result.history) // 2
    assert all(e["score"] == pytest.approx(e["fisher"] / e["gain_s"]) for e in positive)
    assert result.history[-1]["holdout_error"] is not None
    assert [p["fraction"] for p in result.saved] == [0.95, 0.9]
    first_below = next(e for e in result.history if e["predicted_latency_s"] <= 0.95 * initial)
    assert result.saved[0]["widths"] == first_below["widths"]


def test_uniform_baseline(small_table, tmp_path):
    arch = get_arch("mbv2-tiny")
    predictor = LatencyTable.open(small_table("mbv2-tiny")).predictor(arch)
    net = build_torch(arch)
    result = run_uniform(net, predictor, tmp_path / "run", 0.9, save_at=[0.95], **quiet)
    assert result.latency <= 0.9 * result.initial_latency
    factors = [p["factor"] for p in result.saved]
    assert factors == sorted(factors, reverse=True)
    assert load_model(tmp_path / "run" / "model.pt").widths == arch.validate(result.widths)
