"""The Fisher signal from the hooks against an independent autograd computation."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.arch import INPUT
from models.families import get_arch
from models.torch_builder import build_torch
from search.fisher import FisherAccumulator, channel_products, fisher_from_products, fisher_signal
from search.finetune import probe_fisher
from tests.test_search_fixtures import one_thread, search_data, synthetic_dir  # noqa: F401  (fixtures)

# wrn-10-1 written out by hand: which layer outputs carry each group's channels
WRN_10_1_SITES = {
    "s1": ["stem", "s1b0.bn", "s1b0.conv2", "s1b0.add", "s2b0.bn"],
    "s1b0": ["s1b0.conv1"],
    "s2": ["s2b0.conv2", "s2b0.shortcut", "s2b0.add", "s3b0.bn"],
    "s2b0": ["s2b0.conv1"],
    "s3": ["s3b0.conv2", "s3b0.shortcut", "s3b0.add", "head.bn"],
    "s3b0": ["s3b0.conv1"],
}


def retained_forward(net, x):
    """The network's forward pass, written out again, keeping every activation (and the
    squeeze-excite hidden pre-activation) so autograd can give dL/da for each."""
    outs, acts = {INPUT: x}, {}
    out = x
    for a in net.active:
        name, unit = a.layer.name, net.unit(a.layer.name)
        ins = [outs[s] for s in a.inputs]
        if a.layer.op == "se":
            hidden = F.relu(unit.fc1(ins[0].mean(dim=(2, 3))))  # the activation after the relu
            acts[(name, "hidden")] = hidden
            out = ins[0] * torch.sigmoid(unit.fc2(hidden))[:, :, None, None]
        else:
            out = unit(*ins)
        outs[name] = out
        acts[(name, "out")] = out
    return out, acts


def reference_fisher(net, batches, sites):
    """0.5 * mean_n (sum_ij a * dL_n/da)^2 per layer, summed over each group's layers, with
    per-sample losses (sum reduction) and torch.autograd.grad on the retained activations."""
    sq = {}
    count = 0
    for x, y in batches:
        torch.manual_seed(7)
        logits, acts = retained_forward(net, x)
        loss = F.cross_entropy(logits, y, reduction="sum")
        keys = [k for g in sites for k in sites[g]]
        grads = torch.autograd.grad(loss, [acts[k] for k in keys])
        for k, g in zip(keys, grads):
            a = acts[k].detach()
            s = (a * g).sum(dim=(2, 3)) if a.dim() == 4 else a * g
            sq[k] = sq.get(k, 0) + s.pow(2).sum(0)
        count += x.shape[0]
    return {g: sum(0.5 * sq[k] / count for k in sites[g]) for g in sites}


def test_pure_maths_on_numbers():
    a = torch.tensor([[[[1.0, 2.0]], [[0.0, 1.0]]], [[[3.0, 0.0]], [[1.0, 1.0]]]])  # (2, 2, 1, 2)
    g = torch.tensor([[[[1.0, 1.0]], [[5.0, 2.0]]], [[[-1.0, 4.0]], [[1.0, -1.0]]]])
    prod = channel_products(a, g)
    assert prod.tolist() == [[3.0, 2.0], [-3.0, 0.0]]
    assert fisher_from_products(prod).tolist() == [0.5 * (9 + 9) / 2, 0.5 * (4 + 0) / 2]
    assert fisher_signal(prod.pow(2).sum(0), 2).tolist() == fisher_from_products(prod).tolist()


def test_fisher_matches_autograd_on_wrn(search_data):  # noqa: F811
    torch.manual_seed(1)
    net = build_torch(get_arch("wrn-10-1"))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    got = probe_fisher(net, search_data, batches=2, batch_size=16, seed=5)
    # probing leaves the network as it was (no step, batch-norm statistics restored)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    batches = list(search_data.train_batches(2, 16, 5, kind="fisher"))
    sites = {g: [(n, "out") for n in names] for g, names in WRN_10_1_SITES.items()}
    want = reference_fisher(net, batches, sites)
    assert set(got) == set(want)
    for g in want:
        assert got[g].shape == (net.widths[g],)
        torch.testing.assert_close(got[g], want[g], rtol=1e-4, atol=1e-12)
        assert float(want[g].sum()) > 0


def test_fisher_matches_autograd_on_mbv2_with_squeeze_excite(search_data):  # noqa: F811
    torch.manual_seed(2)
    arch = get_arch("mbv2-se-tiny")
    net = build_torch(arch, {"s2b1": 10, "s3": 9, "s3b1.se": 5})
    sites: dict[str, list] = {}
    for a in net.active:
        layer = a.layer
        group = layer.c_out if layer.op in ("conv", "head") else layer.c_in
        if arch.group_by_name[group].prunable:
            sites.setdefault(group, []).append((layer.name, "out"))
        if layer.op == "se":
            sites.setdefault(layer.c_out, []).append((layer.name, "hidden"))
    assert any(k[1] == "hidden" for v in sites.values() for k in v)
    x, y = next(search_data.train_batches(1, 12, 9))
    with FisherAccumulator(net) as acc:
        torch.manual_seed(7)
        F.cross_entropy(net(x), y).backward()
        acc.count_batch(x.shape[0])
    # a mean loss gives 1/N of the per-sample gradients: with grad_scale 1 the signal is 1/N^2
    got = acc.signals()
    net.zero_grad()
    want = reference_fisher(net, [(x, y)], sites)
    assert set(got) == set(want)
    for g in want:
        torch.testing.assert_close(got[g] * x.shape[0] ** 2, want[g], rtol=1e-4, atol=1e-12)


def test_fisher_of_a_removed_block_is_absent(search_data):  # noqa: F811
    net = build_torch(get_arch("wrn-10-1"), {"s2b0": 0})
    got = probe_fisher(net, search_data, batches=1, batch_size=8, seed=0)
    assert "s2b0" not in got and got["s2"].shape == (32,)
    with pytest.raises(ValueError):
        fisher_signal(torch.zeros(3), 0)
