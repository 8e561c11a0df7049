"""What the device actually runs: the converter folds a batch-norm (+ activation) into the
convolution before it when nothing else reads that convolution's output.

The families describe WideResNet's pre-activation batch-norms as their own layers, because
after a residual addition the converter cannot fold them. But removing blocks changes who
reads what: with a block gone, a shortcut conv may feed the next batch-norm alone, and the
converter then emits one fused CONV_2D instead of CONV_2D + MUL + ADD. Prediction and the
op check use this runtime view; the PyTorch and Keras models keep the unfused structure (the
converter does the folding itself).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import replace

from models.arch import INPUT, Arch, Layer


def can_fuse(conv: Layer, bn: Layer) -> bool:
    return (conv.op in ("conv", "dwconv") and not conv.bn and conv.act is None and bn.op == "bn_act"
            and bn.c_in == conv.c_out and bn.in_size == conv.out_size)


def fused_layer(conv: Layer, bn: Layer) -> Layer:
    """The conv as the converter emits it with `bn` folded in."""
    return replace(conv, name=f"{conv.name}+{bn.name}", bn=True, act=bn.act)


def runtime_plan(arch: Arch, zero: frozenset[str]) -> list[tuple[int, int | None]]:
    """(layer index, index of the batch-norm folded into it or None) of every op group the
    device runs when the groups in `zero` are 0, in order."""
    plan = arch.plan(zero)
    readers = Counter(src for _, inputs in plan for src in inputs)
    index = {arch.layers[i].name: i for i, _ in plan}
    folded: dict[int, int] = {}  # conv index -> bn index
    absorbed: set[int] = set()
    for i, inputs in plan:
        layer = arch.layers[i]
        if layer.op == "bn_act" and inputs[0] in index:
            j = index[inputs[0]]
            if readers[inputs[0]] == 1 and j != len(arch.layers) - 1 and can_fuse(arch.layers[j], layer):
                folded[j] = i
                absorbed.add(i)
    return [(i, folded.get(i)) for i, _ in plan if i not in absorbed]


class RuntimePlanner:
    """`runtime_plan` compiled for one architecture: the same result from integer arrays built
    once, about three times faster. Prediction calls it for every new set of removed blocks,
    which a search over block removals meets constantly."""

    def __init__(self, arch: Arch):
        self.arch = arch
        position = {l.name: i for i, l in enumerate(arch.layers)}
        group = {g.name: k for k, g in enumerate(arch.groups)}
        self.group_names = [g.name for g in arch.groups]
        self.n = len(arch.layers)
        # per layer: (c_in group, c_out group, input positions with INPUT = -1, is an addition)
        self.layers = [(group[l.c_in], group[l.c_out], tuple(-1 if s == INPUT else position[s] for s in l.inputs),
                        l.op == "add") for l in arch.layers]
        last = self.n - 1
        # batch-norm position -> the positions of the convs it would fold into if it read them alone
        self.folds: dict[int, frozenset[int]] = {}
        for conv, bn in fusion_candidates(arch):
            j = position[conv.name]
            if j != last:
                i = position[bn.name]
                self.folds[i] = self.folds.get(i, frozenset()) | {j}

    def __call__(self, zero: "list[bool] | tuple[bool, ...]") -> list[tuple[int, int | None]]:
        """Like `runtime_plan`, with `zero[k]` true when width group k is 0."""
        alias: list[int | None] = [None] * self.n
        alive: list[tuple[int, list[int]]] = []
        for i, (c_in, c_out, inputs, is_add) in enumerate(self.layers):
            if zero[c_in] or zero[c_out]:
                continue
            live = [s if s < 0 else alias[s] for s in inputs]
            if None in live:
                live = [s for s in live if s is not None]
                if not live:
                    continue
                if is_add and len(live) == 1:
                    alias[i] = live[0]  # the block is gone: identity
                    continue
                self._raise(zero)  # a layer lost an input: the slow path names it
            alias[i] = i
            alive.append((i, live))
        out = alias[-1]
        if out is None or out < 0:
            self._raise(zero)
        needed = [False] * self.n
        needed[out] = True
        readers = [0] * self.n
        kept = []
        for i, srcs in reversed(alive):
            if needed[i]:
                kept.append((i, srcs))
                for s in srcs:
                    if s >= 0:
                        needed[s] = True
                        readers[s] += 1
        kept.reverse()
        folded: dict[int, int] = {}
        for i, srcs in kept:
            convs = self.folds.get(i)
            if convs is not None and srcs[0] in convs and readers[srcs[0]] == 1:
                folded[srcs[0]] = i
        absorbed = set(folded.values())
        return [(i, folded.get(i)) for i, _ in kept if i not in absorbed]

    def _raise(self, zero) -> None:
        self.arch.plan(frozenset(n for n, z in zip(self.group_names, zero) if z))  # raises the WidthError
        raise AssertionError("RuntimePlanner and Arch.plan disagree")  # pragma: no cover


def fusion_candidates(arch: Arch) -> list[tuple[Layer, Layer]]:
    """Every (conv, batch-norm) pair that some width assignment folds: the layer types a table
    needs beyond the full network's. A batch-norm reads a conv directly, or through additions
    whose other branches can all vanish (their width group may be zero)."""
    droppable: dict[str, bool] = {}

    def can_drop(name: str) -> bool:
        if name == INPUT:
            return False
        if name not in droppable:
            layer = arch.layer_by_name[name]
            droppable[name] = any(arch.group_by_name[g].may_be_zero for g in (layer.c_in, layer.c_out)) or all(
                can_drop(s) for s in layer.inputs)
        return droppable[name]

    def sources(name: str) -> set[str]:
        """Layers whose output `name` may turn out to be."""
        if name == INPUT:
            return set()
        layer = arch.layer_by_name[name]
        found = {name}
        if layer.op == "add":
            for k, x in enumerate(layer.inputs):
                if all(can_drop(y) for m, y in enumerate(layer.inputs) if m != k):
                    found |= sources(x)
        return found

    pairs = []
    for bn in (l for l in arch.layers if l.op == "bn_act"):
        for name in sorted(sources(bn.inputs[0])):
            conv = arch.layer_by_name[name]
            if can_fuse(conv, bn):
                pairs.append((conv, bn))
    return pairs
