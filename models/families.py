"""Architecture families, built as `Arch` values, and the registry of names users type."""
from __future__ import annotations

import re
from typing import Callable

from .arch import INPUT, Arch, Layer, WidthGroup


def wide_resnet(depth: int = 40, k: int = 2, classes: int = 10, input_size: int = 32) -> Arch:
    """WideResNet-d-k for CIFAR with pre-activation blocks (Zagoruyko & Komodakis).

    Width groups: `s1..s3` are the residual streams (each stage's shortcut or stem, every
    block's second conv, and their readers), `sXbI` the inner width of block I of stage X
    (may be zero: the block becomes an identity, or its shortcut conv alone), `stem` the stem
    conv when it differs from stage 1's width.
    """
    if (depth - 4) % 6 or depth < 10:
        raise ValueError(f"WideResNet depth must be 6n+4 (10, 16, 22, 28, 40, ...), got {depth}")
    if k < 1:
        raise ValueError(f"WideResNet widening factor must be >= 1, got {k}")
    n = (depth - 4) // 6
    stage_width = [16 * k, 32 * k, 64 * k]
    groups = [WidthGroup("image", 3, prunable=False), WidthGroup("classes", classes, prunable=False)]
    stem_group = "s1" if stage_width[0] == 16 else "stem"
    if stem_group == "stem":
        groups.append(WidthGroup("stem", 16))
    for x, w in enumerate(stage_width, start=1):
        groups.append(WidthGroup(f"s{x}", w))
        groups += [WidthGroup(f"s{x}b{i}", w, may_be_zero=True) for i in range(n)]

    layers: list[Layer] = []
    # the stem carries the first block's BN-ReLU when nothing else reads its raw output
    first_needs_shortcut = stem_group != "s1"
    layers.append(Layer("stem", "conv", (INPUT,), "image", stem_group, input_size, 3, 1,
                        bn=first_needs_shortcut, act="relu" if first_needs_shortcut else None))
    prev, prev_group, size = "stem", stem_group, input_size
    for x in range(1, 4):
        for i in range(n):
            b = f"s{x}b{i}"
            out_group = f"s{x}"
            stride = 2 if (x > 1 and i == 0) else 1
            equal = prev_group == out_group
            if equal or prev != "stem":
                layers.append(Layer(f"{b}.bn", "bn_act", (prev,), prev_group, prev_group, size, act="relu"))
                preact = f"{b}.bn"
            else:
                preact = prev  # folded into the stem
            layers.append(Layer(f"{b}.conv1", "conv", (preact,), prev_group, b, size, 3, stride, bn=True, act="relu"))
            out_size = -(-size // stride)
            layers.append(Layer(f"{b}.conv2", "conv", (f"{b}.conv1",), b, out_group, out_size, 3, 1))
            if equal:
                shortcut = prev
            else:
                layers.append(Layer(f"{b}.shortcut", "conv", (preact,), prev_group, out_group, size, 1, stride))
                shortcut = f"{b}.shortcut"
            layers.append(Layer(f"{b}.add", "add", (f"{b}.conv2", shortcut), out_group, out_group, out_size))
            prev, prev_group, size = f"{b}.add", out_group, out_size
    layers.append(Layer("head.bn", "bn_act", (prev,), prev_group, prev_group, size, act="relu"))
    layers.append(Layer("head", "head", ("head.bn",), prev_group, "classes", size))
    return Arch(f"wrn-{depth}-{k}", tuple(groups), tuple(layers), input_size, "wrn",
                {"depth": depth, "k": k, "classes": classes})


def mobilenet_v2(
    stage_widths: tuple[int, int, int] = (24, 32, 64),
    blocks: tuple[int, int, int] = (2, 3, 3),
    expansion: int = 6,
    stem: int = 32,
    last: int = 256,
    se: bool = False,
    dropout: float = 0.2,
    classes: int = 10,
    input_size: int = 32,
    name: str | None = None,
) -> Arch:
    """MobileNetV2 for CIFAR in the WideResNet layout: three stages at 32/16/8 pixels
    (strides 1/2/2) of inverted residual blocks (1x1 expand, 3x3 depthwise, optional
    squeeze-excite with reduction 2, 1x1 linear projection), a 1x1 conv to `last` channels,
    average pool, dropout and a dense layer.

    Width groups: `stem`, the streams `s1..s3`, each block's expanded width `sXbI` (may be zero
    only when the block has a residual connection), its squeeze-excite width `sXbI.se`, `last`.
    """
    if expansion < 2:
        raise ValueError(f"MobileNetV2 expansion must be >= 2, got {expansion}")
    if len(stage_widths) != 3 or len(blocks) != 3 or min(blocks) < 1:
        raise ValueError("MobileNetV2 needs three stage widths and at least one block per stage")
    groups = [WidthGroup("image", 3, prunable=False), WidthGroup("classes", classes, prunable=False),
              WidthGroup("stem", stem), WidthGroup("last", last)]
    layers = [Layer("stem", "conv", (INPUT,), "image", "stem", input_size, 3, 1, bn=True, act="relu6")]
    prev, prev_group, prev_full, size = "stem", "stem", stem, input_size
    for x, (width, n) in enumerate(zip(stage_widths, blocks), start=1):
        groups.append(WidthGroup(f"s{x}", width))
        for i in range(n):
            b = f"s{x}b{i}"
            stride = 2 if (x > 1 and i == 0) else 1
            out_group = f"s{x}"
            residual = prev_group == out_group and stride == 1
            inner = prev_full * expansion
            groups.append(WidthGroup(b, inner, may_be_zero=residual))
            out_size = -(-size // stride)
            layers.append(Layer(f"{b}.expand", "conv", (prev,), prev_group, b, size, 1, 1, bn=True, act="relu6"))
            layers.append(Layer(f"{b}.dw", "dwconv", (f"{b}.expand",), b, b, size, 3, stride, bn=True, act="relu6"))
            last_inner = f"{b}.dw"
            if se:
                groups.append(WidthGroup(f"{b}.se", max(1, inner // 2)))
                layers.append(Layer(f"{b}.se", "se", (last_inner,), b, f"{b}.se", out_size))
                last_inner = f"{b}.se"
            layers.append(Layer(f"{b}.project", "conv", (last_inner,), b, out_group, out_size, 1, 1, bn=True))
            if residual:
                layers.append(Layer(f"{b}.add", "add", (f"{b}.project", prev), out_group, out_group, out_size))
                prev = f"{b}.add"
            else:
                prev = f"{b}.project"
            prev_group, prev_full, size = out_group, width, out_size
    layers.append(Layer("last", "conv", (prev,), prev_group, "last", size, 1, 1, bn=True, act="relu6"))
    layers.append(Layer("head", "head", ("last",), "last", "classes", size, dropout=dropout))
    default_name = f"mbv2-{stage_widths[0]}-{stage_widths[1]}-{stage_widths[2]}-t{expansion}" + ("-se" if se else "")
    return Arch(name or default_name, tuple(groups), tuple(layers), input_size, "mobilenetv2",
                {"stage_widths": list(stage_widths), "blocks": list(blocks), "expansion": expansion,
                 "stem": stem, "last": last, "se": se, "dropout": dropout, "classes": classes})


# -- names users type ----------------------------------------------------------------------------
_NAMED: dict[str, Callable[[], Arch]] = {
    "mbv2-cifar": lambda: mobilenet_v2(name="mbv2-cifar"),
    "mbv2-se-cifar": lambda: mobilenet_v2(se=True, name="mbv2-se-cifar"),
    # small members for tests, CI-sized tables and the demo; wide enough that compute, not the
    # per-layer overhead, dominates their latency, so pruning them moves it (at stages 8/12/16,
    # expansion 2, no uniformly scaled network was predicted under 0.95 of the full one)
    "mbv2-tiny": lambda: mobilenet_v2((16, 24, 32), (1, 2, 2), expansion=4, stem=16, last=64, name="mbv2-tiny"),
    "mbv2-se-tiny": lambda: mobilenet_v2((16, 24, 32), (1, 2, 2), expansion=4, stem=16, last=64, se=True,
                                          name="mbv2-se-tiny"),
}
KNOWN_ARCHS = "wrn-<depth>-<k> (e.g. wrn-40-2, wrn-16-1), " + ", ".join(_NAMED)


def get_arch(name: str) -> Arch:
    """`wrn-40-2`, `wrn-16-1`, `mbv2-cifar`, ...; unknown names list what is known."""
    m = re.fullmatch(r"wrn-(\d+)-(\d+)", name.strip().lower())
    if m:
        return wide_resnet(int(m.group(1)), int(m.group(2)))
    if name in _NAMED:
        return _NAMED[name]()
    raise ValueError(f"unknown architecture {name!r}; known: {KNOWN_ARCHS}")
