"""PyTorch modules built from an `Arch` and a width assignment.

One generic graph module runs the active layers in order; each layer is a small unit whose
parameters know which width group each of their axes belongs to (`param_axes`), which is all
that pruning, weight carry-over and the L2 criterion need.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .arch import INPUT, ActiveLayer, Arch, Layer

BN_EPS = 1e-5  # the Keras builder uses the same, so both give the same outputs


def torch_key(layer_name: str) -> str:
    return layer_name.replace(".", "_")


_ACTIVATIONS = {None: nn.Identity, "relu": nn.ReLU, "relu6": nn.ReLU6}


def _act(name: str | None) -> nn.Module:
    return _ACTIVATIONS[name]()


def same_padding(in_size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'same' padding (before, after): asymmetric for even maps with stride 2,
    so the trained network is exactly the one the converter emits."""
    out = -(-in_size // stride)
    total = max((out - 1) * stride + kernel - in_size, 0)
    return total // 2, total - total // 2


class Unit(nn.Module):
    """A layer of the architecture; `param_axes` maps each parameter/buffer name to the width
    group of every axis (None for an axis that is not a channel axis)."""

    layer: Layer

    def param_axes(self) -> dict[str, tuple[str | None, ...]]:
        raise NotImplementedError


class ConvUnit(Unit):
    def __init__(self, layer: Layer, c_in: int, c_out: int, depthwise: bool = False):
        super().__init__()
        self.layer = layer
        self.pad = same_padding(layer.in_size, layer.kernel, layer.stride)
        groups = c_in if depthwise else 1
        self.conv = nn.Conv2d(c_in, c_out, layer.kernel, layer.stride, padding=0, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=BN_EPS) if layer.bn else None
        self.act = _act(layer.act)
        self.depthwise = depthwise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        before, after = self.pad
        if before or after:
            x = F.pad(x, (before, after, before, after))
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)

    def param_axes(self) -> dict[str, tuple[str | None, ...]]:
        l = self.layer
        axes: dict[str, tuple[str | None, ...]] = {
            "conv.weight": (l.c_out, None, None, None) if self.depthwise else (l.c_out, l.c_in, None, None)
        }
        if self.bn is not None:
            axes.update({f"bn.{p}": (l.c_out,) for p in ("weight", "bias", "running_mean", "running_var")})
        return axes


class BnActUnit(Unit):
    def __init__(self, layer: Layer, c: int):
        super().__init__()
        self.layer = layer
        self.bn = nn.BatchNorm2d(c, eps=BN_EPS)
        self.act = _act(layer.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))

    def param_axes(self) -> dict[str, tuple[str | None, ...]]:
        return {f"bn.{p}": (self.layer.c_in,) for p in ("weight", "bias", "running_mean", "running_var")}


class AddUnit(Unit):
    def __init__(self, layer: Layer):
        super().__init__()
        self.layer = layer

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b

    def param_axes(self) -> dict[str, tuple[str | None, ...]]:
        return {}


class SqueezeExciteUnit(Unit):
    def __init__(self, layer: Layer, c: int, hidden: int):
        super().__init__()
        self.layer = layer
        self.fc1 = nn.Linear(c, hidden)
        self.fc2 = nn.Linear(hidden, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s[:, :, None, None]

    def param_axes(self) -> dict[str, tuple[str | None, ...]]:
        c, h = self.layer.c_in, self.layer.c_out
        return {"fc1.weight": (h, c), "fc1.bias": (h,), "fc2.weight": (c, h), "fc2.bias": (c,)}


class HeadUnit(Unit):
    def __init__(self, layer: Layer, c: int, classes: int):
        super().__init__()
        self.layer = layer
        self.dropout = nn.Dropout(layer.dropout) if layer.dropout else nn.Identity()
        self.fc = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(x.mean(dim=(2, 3))))

    def param_axes(self) -> dict[str, tuple[str | None, ...]]:
        return {"fc.weight": (self.layer.c_out, self.layer.c_in), "fc.bias": (self.layer.c_out,)}


def make_unit(active: ActiveLayer) -> Unit:
    layer, c_in, c_out = active.layer, active.c_in, active.c_out
    if layer.op == "conv":
        return ConvUnit(layer, c_in, c_out)
    if layer.op == "dwconv":
        return ConvUnit(layer, c_in, c_in, depthwise=True)
    if layer.op == "bn_act":
        return BnActUnit(layer, c_in)
    if layer.op == "add":
        return AddUnit(layer)
    if layer.op == "se":
        return SqueezeExciteUnit(layer, c_in, c_out)
    if layer.op == "head":
        return HeadUnit(layer, c_in, c_out)
    raise ValueError(f"no PyTorch unit for op {layer.op!r}")


class ArchNet(nn.Module):
    """The network of `arch` at `widths`: runs the active layers in order."""

    def __init__(self, arch: Arch, widths: Mapping[str, int] | None = None):
        super().__init__()
        self.arch = arch
        self.widths = arch.validate(widths or {})
        self.active = arch.active_layers(self.widths)
        self.units = nn.ModuleDict({torch_key(a.layer.name): make_unit(a) for a in self.active})
        self._steps = [(torch_key(a.layer.name), a.layer.name, a.inputs) for a in self.active]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = {INPUT: x}
        out = x
        for key, name, inputs in self._steps:
            out = self.units[key](*[outs[s] for s in inputs])
            outs[name] = out
        return out

    def unit(self, layer_name: str) -> Unit:
        return self.units[torch_key(layer_name)]  # type: ignore[return-value]

    def group_tensors(self, group: str) -> list[tuple[str, int, torch.Tensor]]:
        """(parameter name, axis, tensor) of every parameter with an axis in `group`."""
        found = []
        for key, unit in self.units.items():
            for pname, axes in unit.param_axes().items():
                tensor = unit.get_parameter(pname) if pname in dict(unit.named_parameters()) else unit.get_buffer(pname)
                for axis, g in enumerate(axes):
                    if g == group:
                        found.append((f"{key}.{pname}", axis, tensor))
        return found


def build_torch(arch: Arch, widths: Mapping[str, int] | None = None) -> ArchNet:
    return ArchNet(arch, widths)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def carry_over(net: ArchNet, new_widths: Mapping[str, int], keep: Mapping[str, Sequence[int]]) -> ArchNet:
    """A smaller network for `new_widths` whose weights are those of `net` at the channel
    indices `keep[group]` (for every group whose width changed), across every layer the group
    touches. Groups not in `keep` must keep their width and keep all their channels."""
    arch = net.arch
    new_widths = arch.validate(new_widths)
    old_ch = arch.channels(net.widths)
    new_ch = arch.channels(new_widths)
    unknown = set(keep) - set(new_ch)
    if unknown:
        raise ValueError(f"keep names unknown width groups: {', '.join(sorted(unknown))}")
    index: dict[str, torch.Tensor] = {}
    for group, n_new in new_ch.items():
        if group in keep:
            idx = torch.as_tensor(list(keep[group]), dtype=torch.long)
            if idx.numel() != n_new:
                raise ValueError(f"keep[{group!r}] has {idx.numel()} indices but the new width is {n_new}")
            if idx.numel() and (idx.min() < 0 or idx.max() >= old_ch[group] or idx.unique().numel() != idx.numel()):
                raise ValueError(f"keep[{group!r}] must be distinct indices in [0, {old_ch[group]})")
            index[group] = idx
        elif n_new != old_ch[group]:
            raise ValueError(f"group {group!r} changes from {old_ch[group]} to {n_new} channels but keep[{group!r}] is not given")
    new = ArchNet(arch, new_widths)
    old_units = net.units
    with torch.no_grad():
        for key, unit in new.units.items():
            if key not in old_units:
                raise ValueError(f"layer {unit.layer.name} does not exist in the source network")
            old_unit = old_units[key]
            old_state = old_unit.state_dict()
            new_state = {}
            axes_map = unit.param_axes()
            for pname, value in old_state.items():
                for axis, g in enumerate(axes_map.get(pname, ())):
                    if g is not None and g in index:
                        value = value.index_select(axis, index[g])
                new_state[pname] = value.clone()
            unit.load_state_dict(new_state)
    return new
