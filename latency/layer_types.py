"""Layer types: the key under which a layer's latency is tabulated, and its grid of cells.

Two layers share a type when the device runs the same op on the same map with the same
fused extras; only their channel counts differ. The key is derived from the `Layer` itself, so
strided convs, residual additions, unfoldable batch-norms and the head each get their own
tables, and nothing is keyed by parsing layer names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from models.arch import OPS, Arch, Layer


@dataclass(frozen=True)
class LayerType:
    key: str
    op: str
    kernel: int
    stride: int
    in_size: int
    bn: bool
    act: str | None
    #: channel range of each axis, inclusive; one-axis ops have out_lo == out_hi == 0
    in_lo: int
    in_hi: int
    out_lo: int
    out_hi: int

    @property
    def two_axes(self) -> bool:
        return OPS[self.op] == 2 or self.out_hi > 0

    @property
    def shape(self) -> tuple[int, int]:
        return (self.in_hi - self.in_lo + 1, (self.out_hi - self.out_lo + 1) if self.two_axes else 1)

    @property
    def n_cells(self) -> int:
        rows, cols = self.shape
        return rows * cols

    def contains(self, c_in: int, c_out: int) -> bool:
        if not self.in_lo <= c_in <= self.in_hi:
            return False
        return not self.two_axes or self.out_lo <= c_out <= self.out_hi


def type_key(layer: Layer) -> str:
    """E.g. `conv-k3-s2-m32-bn-relu`, `add-m16`, `head-m8`."""
    parts = [layer.op]
    if layer.op in ("conv", "dwconv"):
        parts += [f"k{layer.kernel}", f"s{layer.stride}"]
    parts.append(f"m{layer.in_size}")
    if layer.bn:
        parts.append("bn")
    if layer.act:
        parts.append(layer.act)
    return "-".join(parts)  # a head's dropout does not run at inference: not part of the key


def layer_kind(key: str) -> str:
    """The op of a layer type's key: 'dwconv' of 'dwconv-k3-s1-m16-bn-relu6'. Kinds differ in what
    bounds them (arithmetic for convs, memory for additions and depthwise convs), so they move
    differently when the host's other work changes (docs/measuring.md §1)."""
    return key.split("-", 1)[0]


def layer_axes(arch: Arch, layer: Layer) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """Channel range (lo, hi) of each axis of this layer in `arch`: a fixed group (the image,
    the classes) is a single value; a prunable one runs from 1 (or 0, never tabulated) to full."""

    def axis(group_name: str) -> tuple[int, int]:
        g = arch.group_by_name[group_name]
        return (g.full, g.full) if not g.prunable else (1, g.full)

    if OPS[layer.op] == 1 and layer.op != "head":
        return axis(layer.c_in), None
    return axis(layer.c_in), axis(layer.c_out)


def network_layer_types(arches: Iterable[Arch]) -> dict[str, LayerType]:
    """Every layer type of the given networks, with the union of their channel ranges."""
    from .fusion import fused_layer, fusion_candidates

    found: dict[str, LayerType] = {}
    for arch in arches:
        runtime_layers = list(arch.layers) + [fused_layer(c, b) for c, b in fusion_candidates(arch)]
        for layer in runtime_layers:
            key = type_key(layer)
            (ilo, ihi), out = layer_axes(arch, layer)
            olo, ohi = out if out else (0, 0)
            if key in found:
                t = found[key]
                ilo, ihi = min(ilo, t.in_lo), max(ihi, t.in_hi)
                if out:
                    olo, ohi = min(olo, t.out_lo), max(ohi, t.out_hi)
            found[key] = LayerType(key, layer.op, layer.kernel, layer.stride, layer.in_size, layer.bn, layer.act,
                                   ilo, ihi, olo, ohi)
    return dict(sorted(found.items()))


def parse_grid(spec: str) -> int:
    """`full` -> 1, `step:K` -> K (every K-th channel count, plus both edges)."""
    spec = spec.strip().lower()
    if spec == "full":
        return 1
    if spec.startswith("step:"):
        try:
            step = int(spec[5:])
        except ValueError:
            step = 0
        if step >= 1:
            return step
    raise ValueError(f"grid must be 'full' or 'step:K' with K >= 1 (e.g. step:4), got {spec!r}")


#: a step grid this fine measures every count below its step too: a batch-norm at 32x32 cost
#: 1.0 us at one channel and 10.5 us at three, where step:4 interpolated 7.6 us
SMALL_COUNTS = 4


def axis_values(lo: int, hi: int, step: int, block: int = 0) -> list[int]:
    """Channel counts measured on one axis: lo, every `step`-th count, and hi; with `block`,
    also both neighbours of every multiple of it. A runtime packs channels in blocks (16 for
    XNNPACK's float kernels on AVX-512): a layer costs about the same across a block and steps
    at its ends, where a full block can even be faster than one channel less
    (docs/measuring.md). Measuring M - 1, M and M + 1 keeps linear interpolation inside one
    block. A fine grid (step up to `SMALL_COUNTS`) measures every count below its step: there
    the runtime takes other paths (one channel is a plain elementwise loop) and the cost is far
    from linear (docs/measuring.md §8); a coarse grid is for a quick look and stays coarse."""
    values = set(range(lo, hi + 1, step)) | {lo, hi}
    if lo == 1 and step > 1:
        values |= set(range(step, hi + 1, step))  # multiples of the step: the runtimes pack by 4/8
    if lo == 1 and 1 < step <= SMALL_COUNTS:
        values |= set(range(1, step + 1))
    if block > 0 and step > 1:
        for m in range(block, hi + 2, block):
            values |= {m - 1, m, m + 1}
    return sorted(v for v in values if lo <= v <= hi)


def grid_cells(t: LayerType, step: int, block: int = 0) -> list[tuple[int, int]]:
    """(c_in, c_out) of every cell to measure; one-axis types have c_out = 0."""
    ins = axis_values(t.in_lo, t.in_hi, step, block)
    if not t.two_axes:
        return [(c, 0) for c in ins]
    outs = axis_values(t.out_lo, t.out_hi, step, block)
    return [(i, o) for i in ins for o in outs]
