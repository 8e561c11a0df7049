"""The context a table's cells are timed in: back to back, or as they run inside a network.

Timed back to back, a single-layer model finds its weights, code and buffers as warm as they
can be; inside a network every layer runs after other layers, and when the network's weights
exceed the L2 cache, after they have pushed its own weights out of it. Summed, back-to-back
cells therefore fall short of whole networks (docs/measuring.md).
The `network` context reproduces both conditions for each timed invocation
(`latency.devices.runner.time_in_context`): other layer types run first (the smallest model of
each type: other code, almost no data), and for an architecture whose full weights exceed the
device's L2, twice the L2 is written over first while the layer's own input and output stay
warm. The per-invoke overhead is measured in the same context and counted once per network.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from models.arch import Arch
from .recipe import TableRecipe

#: meta key of the measured per-invoke overhead (a dict, see `latency.overhead.OverheadEstimate`)
OVERHEAD_META_KEY = "invoke_overhead"
#: where Linux describes the second-level cache of the first CPU
L2_SIZE_FILE = Path("/sys/devices/system/cpu/cpu0/cache/index2/size")


def parse_cache_size(text: str) -> int:
    """Bytes of a sysfs cache size such as '2048K' or '4M'."""
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    digits = text[:-1] if text[-1:] in "KMG" else text
    if not digits.isdigit():
        raise ValueError(f"cannot read a cache size from {text!r}")
    return int(digits) * scale


def local_l2_bytes(path: Path = L2_SIZE_FILE) -> int | None:
    """This machine's L2 cache per core, or None where the system does not say."""
    try:
        return parse_cache_size(path.read_text())
    except (OSError, ValueError):
        return None


def local_channel_block(cpuinfo: Path = Path("/proc/cpuinfo")) -> int:
    """Output channels XNNPACK's float kernels pack together on this CPU: 16 with AVX-512
    (one 512-bit register of floats), else 8."""
    try:
        flags = cpuinfo.read_text()
    except OSError:
        return 8
    return 16 if " avx512f" in flags else 8


def weight_bytes(arch: Arch, widths: Mapping[str, int] | None = None) -> int:
    """Bytes of float32 weights of the network (batch-norms folded), full width by default."""
    from models.counts import network_params

    return 4 * network_params(arch, widths if widths is not None else arch.full_widths())


def evict_bytes_for(arch: Arch, l2_bytes: int | None) -> int:
    """Bytes to write over the caches before each timed invocation: twice the L2 when the
    architecture's full weights exceed it (its layers then fetch their weights from beyond L2
    in every inference), else none (they stay in L2 from one inference to the next)."""
    if not l2_bytes or weight_bytes(arch) <= l2_bytes:
        return 0
    return 2 * l2_bytes


def partner_models(arch: Arch) -> tuple[bytes, ...]:
    """The smallest single-layer model of every layer type of the architecture, in key order."""
    from .generate import CellModels
    from .layer_types import network_layer_types

    types = network_layer_types([arch])
    renderer = CellModels(types)
    return tuple(renderer.render(k, t.in_lo, t.out_lo) for k, t in sorted(types.items()))


def overhead_per_extra_layer_s(recipe: TableRecipe, meta: Mapping) -> float:
    """What a prediction subtracts per layer beyond the first: the invoke overhead the table
    measured in its cells' network context (each cell paid it, a network pays it once); 0 for
    back-to-back cells, which predict by their plain sum."""
    if not recipe.in_network:
        return 0.0
    return float((meta.get(OVERHEAD_META_KEY) or {}).get("seconds") or 0.0)
