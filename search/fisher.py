"""Fisher pruning signal (Theis et al. 2018) of every channel of every width group.

For a channel k of an activation a (N, C, H, W) and per-sample loss gradients dL/da:

    fisher_k = 0.5 * mean_n ( sum_ij a_nkij * dL/da_nkij )^2

A width group's channels appear in several activations (a residual stream is the output of
the stem, of every block's second conv, of the additions, ...): the group's signal is the sum
of the per-activation signals. The maths are the pure functions at the top; the hooks that
collect activations and gradients during a training pass are `FisherAccumulator`.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import torch

from models.arch import Arch, Layer
from models.torch_builder import ArchNet, SqueezeExciteUnit

# ops whose output keeps the input's channels (so its channel axis is the c_in group)
_SAME_CHANNEL_OPS = ("dwconv", "bn_act", "add", "se")


# -- pure maths ----------------------------------------------------------------------------
def channel_products(activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """sum over the spatial axes of a * dL/da: (N, C, ...) -> (N, C)."""
    prod = activation * grad
    return prod.flatten(2).sum(2) if prod.dim() > 2 else prod


def fisher_from_products(products: torch.Tensor) -> torch.Tensor:
    """0.5 * mean over samples of the squared products: (N, C) -> (C,)."""
    return 0.5 * products.pow(2).mean(0)


def fisher_signal(sum_sq: torch.Tensor, count: int) -> torch.Tensor:
    """The signal from accumulated sums of squared products over `count` samples."""
    if count <= 0:
        raise ValueError("no samples were accumulated")
    return 0.5 * sum_sq / count


def output_group(layer: Layer) -> str:
    """The width group of a layer's output channel axis."""
    return layer.c_in if layer.op in _SAME_CHANNEL_OPS else layer.c_out


def activation_sites(arch: Arch, layer_names: Iterable[str]) -> dict[str, list[tuple[str, str]]]:
    """group -> [(layer name, site)] of the activations whose channel axis is the group, for
    the prunable groups: site "out" is a layer's output, "se_hidden" the hidden activation of a
    squeeze-excite layer (its own width group)."""
    prunable = {g.name for g in arch.prunable_groups}
    sites: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for name in layer_names:
        layer = arch.layer_by_name[name]
        g = output_group(layer)
        if g in prunable:
            sites[g].append((name, "out"))
        if layer.op == "se" and layer.c_out in prunable:
            sites[layer.c_out].append((name, "se_hidden"))
    return dict(sites)


# -- hooks ---------------------------------------------------------------------------------
class FisherAccumulator:
    """Collects sums of squared (a * dL/da) products on `net` while it trains or is probed.

    Use as a context manager around the backward passes; every backward pass of a batch must
    call `count_batch(n)` once. The loss is usually the batch mean, so the seen gradients are
    1/N of the per-sample ones: `grad_scale` (set per batch) turns them back.
    """

    def __init__(self, net: ArchNet):
        self.net = net
        self.sites = activation_sites(net.arch, [a.layer.name for a in net.active])
        self._sum_sq: dict[tuple[str, str], torch.Tensor] = {}
        self._site_group = {site: g for g, sites in self.sites.items() for site in sites}
        self._handles: list = []
        self.count = 0
        self.grad_scale = 1.0

    def __enter__(self) -> "FisherAccumulator":
        for site in self._site_group:
            name, kind = site
            unit = self.net.unit(name)
            module = unit.fc1 if kind == "se_hidden" else unit
            assert kind != "se_hidden" or isinstance(unit, SqueezeExciteUnit)
            self._handles.append(module.register_forward_hook(self._forward_hook(site)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _forward_hook(self, site: tuple[str, str]):
        def hook(module, inputs, output):
            if not output.requires_grad:
                return
            # fc1's output z, before the relu: z * dL/dz == relu(z) * dL/drelu(z) exactly
            a = output.detach()

            def grad_hook(grad: torch.Tensor) -> None:
                prod = channel_products(a, grad.detach() * self.grad_scale)
                sq = prod.pow(2).sum(0)
                if site in self._sum_sq:
                    self._sum_sq[site] += sq
                else:
                    self._sum_sq[site] = sq

            output.register_hook(grad_hook)

        return hook

    def count_batch(self, n: int) -> None:
        self.count += n

    def reset(self) -> None:
        self._sum_sq.clear()
        self.count = 0

    def signals(self) -> dict[str, torch.Tensor]:
        """group -> (channels,) Fisher signal, summed over the group's activations."""
        out: dict[str, torch.Tensor] = {}
        for group, sites in self.sites.items():
            total = None
            for site in sites:
                if site not in self._sum_sq:
                    continue  # the activation got no gradient (nothing downstream depends on it)
                f = fisher_signal(self._sum_sq[site], self.count)
                total = f if total is None else total + f
            if total is None:
                total = torch.zeros(self.net.arch.channels(self.net.widths)[group])
            out[group] = total
        return out

