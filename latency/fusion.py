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
