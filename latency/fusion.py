"""What the device actually runs: the converter folds a batch-norm (+ activation) into the
convolution before it when nothing else reads that convolution's output.

The families describe WideResNet's pre-activation batch-norms as their own layers, because
after a residual addition the converter cannot fold them. But removing blocks changes who
reads what: with a block gone, a shortcut conv may feed the next batch-norm alone, and the
converter then emits one fused CONV_2D instead of CONV_2D + MUL + ADD. Prediction and the
op check use this runtime view; the PyTorch and Keras models keep the unfused structure (the
converter does the folding itself).

An addition whose output only a batch-norm reads is not folded (the device runs ADD, MUL, ADD),
but it is timed together with that batch-norm, as one step: on a buffer nothing else reads the
runtime may run the batch-norm in place, which on some CPUs is far slower than on the model
input a single-layer model gives it (1.2-1.4x at 6 to 45 channels on one; docs/measuring.md,
"Narrow networks"). `pair_adds=False` plans without those pairs, for tables that lack them.
"""
from __future__ import annotations

from dataclasses import replace

from models.arch import INPUT, Arch, Layer


def can_fuse(conv: Layer, bn: Layer, pair_adds: bool = True) -> bool:
    """Whether `bn` joins `conv` as one step when it reads it alone: folded into a conv, or
    timed with an addition (`pair_adds`)."""
    ops = ("conv", "dwconv", "add") if pair_adds else ("conv", "dwconv")
    return (conv.op in ops and not conv.bn and conv.act is None and bn.op == "bn_act"
            and bn.c_in == conv.c_out and bn.in_size == conv.out_size)


def fused_layer(conv: Layer, bn: Layer) -> Layer:
    """The conv as the converter emits it with `bn` folded in (an addition: followed by it)."""
    return replace(conv, name=f"{conv.name}+{bn.name}", bn=True, act=bn.act)


def runtime_plan(arch: Arch, zero: frozenset[str], pair_adds: bool = True) -> list[tuple[int, int | None]]:
    """(layer index, index of the batch-norm folded into it or None) of every op group the
    device runs when the groups in `zero` are 0, in order. Callers that plan many zero sets
    build one `RuntimePlanner` and call it instead."""
    return RuntimePlanner(arch, pair_adds)(arch.zero_flags(zero))


class RuntimePlanner:
    """What the device runs for one architecture: the layers `Arch.plan_positions` keeps alive,
    with each batch-norm folded into the conv before it (or paired with the addition before it,
    `pair_adds`) when that layer feeds it alone.

    Which (conv, batch-norm) pairs can fold is worked out once, here; prediction then calls the
    planner for every new set of removed blocks, which a search over block removals meets
    constantly."""

    def __init__(self, arch: Arch, pair_adds: bool = True):
        self.arch = arch
        self.n = len(arch.layers)
        last = self.n - 1
        # batch-norm position -> the positions of the convs it folds into when it reads one alone
        # (never the network's output layer: the converter keeps that one as it is)
        self.folds: dict[int, frozenset[int]] = {}
        for i, bn in enumerate(arch.layers):
            if bn.op == "bn_act":
                convs = frozenset(j for j in range(i) if j != last and can_fuse(arch.layers[j], bn, pair_adds))
                if convs:
                    self.folds[i] = convs

    def __call__(self, zero: "list[bool] | tuple[bool, ...]") -> list[tuple[int, int | None]]:
        """`runtime_plan` with `zero[k]` true when width group k is 0."""
        plan = self.arch.plan_positions(zero)
        readers = [0] * (self.n + 1)  # the image (-1) counts in the spare last slot
        folds = self.folds
        pairs = []  # (conv, batch-norm) that fold if nothing else reads the conv
        for i, srcs in plan:
            for s in srcs:
                readers[s] += 1
            convs = folds.get(i)
            if convs is not None and srcs[0] in convs:
                pairs.append((srcs[0], i))
        folded = {j: i for j, i in pairs if readers[j] == 1}  # conv position -> batch-norm position
        if not folded:
            return [(i, None) for i, _ in plan]
        absorbed = set(folded.values())
        return [(i, folded.get(i)) for i, _ in plan if i not in absorbed]


def fusion_candidates(arch: Arch, pair_adds: bool = True) -> list[tuple[Layer, Layer]]:
    """Every (conv, batch-norm) pair that some width assignment folds, and with `pair_adds`
    every (addition, batch-norm) pair timed together: the layer types a table needs beyond the
    full network's. A batch-norm reads the layer directly, or through additions whose other
    branches can all vanish (their width group may be zero)."""
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
            if can_fuse(conv, bn, pair_adds):
                pairs.append((conv, bn))
    return pairs
