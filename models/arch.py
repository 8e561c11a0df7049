"""The one architecture description that every other part derives from.

An `Arch` is an ordered list of layers (a DAG in topological order) and the width groups that
tie their channel counts together. The layers are the units the device runs: a convolution
carries the batch-norm and activation that the TFLite converter folds into it, a batch-norm
the converter cannot fold (after a residual addition) is its own layer. So the table key of a
layer, the Keras model that is timed and the PyTorch module that is trained all come from the
same `Layer` values.

A width assignment is plain data, `{group_name: channels}`, for the prunable groups only.
"""
from __future__ import annotations

import json
import numbers
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Collection, Mapping, Sequence

#: ops a layer may have, with the number of channel axes of its latency table
OPS = {
    "conv": 2,  # Conv2D (no bias) [+ folded BN] [+ activation]
    "dwconv": 1,  # DepthwiseConv2D [+ folded BN] [+ activation]; c_in and c_out are one group
    "bn_act": 1,  # BatchNorm that cannot be folded (+ activation): MUL, ADD in TFLite
    "add": 1,  # residual addition of two inputs
    "se": 2,  # squeeze-excite: mean, dense c->h, relu, dense h->c, sigmoid, multiply
    "head": 1,  # global average pool + [dropout] + dense to the classes
}
ACTIVATIONS = (None, "relu", "relu6")
INPUT = "input"  # the name by which the first layer refers to the image


class WidthError(ValueError):
    """A width assignment that does not fit the architecture."""


@dataclass(frozen=True)
class WidthGroup:
    name: str
    full: int
    prunable: bool = True  # False for the image channels and the classes
    may_be_zero: bool = False  # an inner block width: the block then disappears


@dataclass(frozen=True)
class Layer:
    name: str
    op: str
    inputs: tuple[str, ...]
    c_in: str  # width group of the input channels
    c_out: str  # width group of the output channels (== c_in for dwconv, bn_act, add)
    in_size: int  # input map height == width
    kernel: int = 1
    stride: int = 1
    bn: bool = False  # a batch-norm folded after the conv
    act: str | None = None
    dropout: float = 0.0  # head only

    @property
    def out_size(self) -> int:
        return -(-self.in_size // self.stride)  # 'same' padding

    def groups(self) -> tuple[str, ...]:
        return (self.c_in,) if self.c_in == self.c_out else (self.c_in, self.c_out)


@dataclass(frozen=True)
class ActiveLayer:
    """A layer that exists under a given width assignment, with concrete channel counts."""

    layer: Layer
    inputs: tuple[str, ...]  # resolved through removed blocks
    c_in: int
    c_out: int


@dataclass(frozen=True)
class Arch:
    name: str
    groups: tuple[WidthGroup, ...]
    layers: tuple[Layer, ...]
    input_size: int = 32
    family: str = ""
    params: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [g.name for g in self.groups]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: duplicate width group names")
        seen = {INPUT}
        for layer in self.layers:
            if layer.op not in OPS:
                raise ValueError(f"{self.name}: layer {layer.name} has unknown op {layer.op!r}")
            if layer.act not in ACTIVATIONS:
                raise ValueError(f"{self.name}: layer {layer.name} has unknown act {layer.act!r}")
            for g in (layer.c_in, layer.c_out):
                if g not in names:
                    raise ValueError(f"{self.name}: layer {layer.name} uses unknown group {g!r}")
            for src in layer.inputs:
                if src not in seen:
                    raise ValueError(f"{self.name}: layer {layer.name} reads {src!r} before it exists")
            if layer.name in seen:
                raise ValueError(f"{self.name}: duplicate layer name {layer.name}")
            seen.add(layer.name)

    # -- groups and widths -------------------------------------------------------------------
    @cached_property
    def group_by_name(self) -> dict[str, WidthGroup]:
        return {g.name: g for g in self.groups}

    @property
    def prunable_groups(self) -> tuple[WidthGroup, ...]:
        return tuple(g for g in self.groups if g.prunable)

    def full_widths(self) -> dict[str, int]:
        return {g.name: g.full for g in self.prunable_groups}

    def validate(self, widths: Mapping[str, object]) -> dict[str, int]:
        """Checks a width assignment; returns it complete (missing groups at full width)."""
        if not isinstance(widths, Mapping):
            raise WidthError(f"{self.name}: a width assignment is a mapping group -> channels, got {type(widths).__name__}")
        out = self.full_widths()
        for name, value in widths.items():
            group = self.group_by_name.get(name)
            if group is None:
                known = ", ".join(g.name for g in self.prunable_groups)
                raise WidthError(f"{self.name}: unknown width group {name!r} (known groups: {known})")
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                else:
                    raise WidthError(f"{self.name}: group {name!r} must be a whole number of channels, got {value!r}")
            value = int(value)  # numpy integers (from search code) become plain ints
            if not group.prunable:
                if value != group.full:
                    raise WidthError(f"{self.name}: group {name!r} is fixed at {group.full} channels, got {value}")
                continue
            if value > group.full:
                raise WidthError(f"{self.name}: group {name!r} has {value} channels, above its full width {group.full}")
            if value < 0:
                raise WidthError(f"{self.name}: group {name!r} has a negative width {value}")
            if value == 0 and not group.may_be_zero:
                raise WidthError(f"{self.name}: group {name!r} may not be pruned to zero (it is not a removable block width); keep at least 1 channel")
            out[name] = value
        return out

    def channels(self, widths: Mapping[str, int]) -> dict[str, int]:
        """Every group's channel count, fixed groups included (widths already validated)."""
        out = {g.name: g.full for g in self.groups}
        out.update(widths)
        return out

    # -- layers under an assignment ----------------------------------------------------------
    def active_layers(self, widths: Mapping[str, int] | None = None) -> list[ActiveLayer]:
        """The layers that exist under `widths`: a zero group removes its layers, an addition
        that lost a branch passes the other one through, and layers nobody reads vanish."""
        ch = self.channels(self.validate(widths or {}))
        return self._active_for_zero_set(frozenset(n for n, c in ch.items() if c == 0), ch)

    def _active_for_zero_set(self, zero: frozenset[str], ch: Mapping[str, int]) -> list[ActiveLayer]:
        plan = self.plan(zero)
        return [ActiveLayer(self.layers[i], inputs, ch[self.layers[i].c_in], ch[self.layers[i].c_out]) for i, inputs in plan]

    def zero_flags(self, zero: Collection[str]) -> list[bool]:
        """`zero` (group names) as one flag per group, in the order of `groups`."""
        return [g.name in zero for g in self.groups]

    def plan(self, zero: frozenset[str]) -> tuple[tuple[int, tuple[str, ...]], ...]:
        """(layer index, resolved inputs) of the layers alive when the groups in `zero` are 0.

        Depends only on which groups are zero, so callers (prediction) cache it."""
        names = [l.name for l in self.layers]
        return tuple((i, tuple(INPUT if s < 0 else names[s] for s in srcs))
                     for i, srcs in self.plan_positions(self.zero_flags(zero)))

    @cached_property
    def _topology(self) -> tuple[tuple[int, int, tuple[int, ...], bool], ...]:
        """Per layer: (c_in group position, c_out group position, input positions with the image
        as -1, is an addition): the graph as integers, so that planning is list indexing."""
        position = {l.name: i for i, l in enumerate(self.layers)}
        group = {g.name: k for k, g in enumerate(self.groups)}
        return tuple((group[l.c_in], group[l.c_out], tuple(-1 if s == INPUT else position[s] for s in l.inputs),
                      l.op == "add") for l in self.layers)

    def plan_positions(self, zero: Sequence[bool]) -> list[tuple[int, list[int]]]:
        """The one derivation of which layers run: (layer index, positions of its resolved
        inputs, -1 for the image) of every layer alive when width group k is 0 where `zero[k]`.

        A zero group removes its layers, an addition that lost a branch passes the other one
        through, a layer that lost some but not all inputs is an error, and layers nobody reads
        vanish. `plan` is the same with names; prediction calls this for every new set of
        removed blocks, which a search over block removals meets constantly."""
        n = len(self.layers)
        alias: list[int | None] = [None] * n
        alive: list[tuple[int, list[int]]] = []
        for i, (c_in, c_out, inputs, is_add) in enumerate(self._topology):
            if zero[c_in] or zero[c_out]:
                continue
            live = [s if s < 0 else alias[s] for s in inputs]
            if None in live:
                live = [s for s in live if s is not None]
                if live and not (is_add and len(live) == 1):
                    raise WidthError(f"{self.name}: layer {self.layers[i].name} lost an input to a zero width")
            if not live:
                continue
            if is_add and len(live) == 1:
                alias[i] = live[0]  # the block is gone: identity
                continue
            alias[i] = i
            alive.append((i, live))
        output = alias[-1]
        if output is None:
            raise WidthError(f"{self.name}: the width assignment removes the network's output")
        if output < 0:
            return []  # the network is the image itself: nothing runs
        # dead-code elimination: a pre-activation whose block vanished is not run
        needed = [False] * n
        needed[output] = True
        kept = []
        for i, srcs in reversed(alive):
            if needed[i]:
                kept.append((i, srcs))
                for s in srcs:
                    if s >= 0:
                        needed[s] = True
        kept.reverse()
        return kept

    def output_name(self, widths: Mapping[str, int] | None = None) -> str:
        return self.active_layers(widths)[-1].layer.name

    def layers_of_group(self, group: str) -> list[Layer]:
        return [l for l in self.layers if group in (l.c_in, l.c_out)]

    @cached_property
    def layer_by_name(self) -> dict[str, Layer]:
        return {l.name: l for l in self.layers}

    def describe(self) -> str:
        lines = [f"{self.name}: {len(self.layers)} layers, {len(self.prunable_groups)} prunable width groups"]
        lines.append("width groups:")
        for g in self.groups:
            kind = "fixed" if not g.prunable else ("may be zero" if g.may_be_zero else "at least 1")
            lines.append(f"  {g.name:<14} {g.full:>5}  {kind}")
        lines.append("layers:")
        for l in self.layers:
            extra = f"k{l.kernel} s{l.stride}" if l.op in ("conv", "dwconv") else ""
            fused = "+".join(x for x in (("bn" if l.bn else ""), l.act or "") if x)
            lines.append(
                f"  {l.name:<18} {l.op:<7} {extra:<6} {l.in_size:>3}x{l.in_size:<3} {l.c_in}->{l.c_out} {fused}".rstrip()
            )
        return "\n".join(lines)


# -- width assignments as files ----------------------------------------------------------------
def widths_to_json(widths: Mapping[str, int]) -> str:
    return json.dumps({k: int(v) for k, v in widths.items()}, indent=1, sort_keys=True)


def widths_from_json(arch: Arch, text: str, source: str = "widths") -> dict[str, int]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WidthError(f"{source}: not valid JSON ({exc})") from exc
    if isinstance(data, dict) and "widths" in data and isinstance(data["widths"], dict):
        data = data["widths"]  # a run's widths.json: {"widths": {...}, ...}
    if not isinstance(data, dict):
        raise WidthError(f"{source}: expected a JSON object {{group: channels}}")
    try:
        return arch.validate(data)
    except WidthError as exc:
        raise WidthError(f"{source}: {exc}") from exc


def load_widths(arch: Arch, path: str | Path) -> dict[str, int]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise WidthError(f"cannot read widths file {path}: {exc.strerror}") from exc
    return widths_from_json(arch, text, source=str(path))
