"""Do a timed network's ops match the ops of the cells the table sums for it?

Every timed network's model records its ops (`whole_networks.ops`); the cells summed for it
are known from the table's layer types (`op_map.expected_ops`, fused batch-norms included).
An op in the network that no cell times is latency the table cannot see.
"""
from __future__ import annotations

from collections import Counter
from typing import Mapping, Sequence

from models.arch import Arch
from .networks import Network


def model_op_counts(model: bytes) -> Counter:
    """Ops of a .tflite model by name (from the flatbuffer: no delegate hides any)."""
    from .tflite_schema import describe_model

    return Counter(name for name, _ in describe_model(model))


def op_check(arch: Arch, widths: Mapping[str, int], network_ops: Counter, generator) -> dict:
    """The ops of the timed network model against the ops of the cells the table sums for it
    (`op_map.expected_ops`, fused batch-norms included): `extra_in_network` are ops no cell
    times, `extra_in_layers` ops cells time that the network does not run. `generator` is a
    `CellModels` of the architecture's types (one converter call per type, cached)."""
    from .fusion import fused_layer, runtime_plan
    from .op_map import expected_ops

    expected = expected_ops(arch, generator, widths)
    zero = frozenset(g for g, c in arch.channels(arch.validate(widths)).items() if c == 0)
    # batch-norms the converter folds into a conv (an addition timed with its batch-norm folds nothing)
    fused = [fused_layer(arch.layers[i], arch.layers[f]).name for i, f in runtime_plan(arch, zero)
             if f is not None and arch.layers[i].op != "add"]
    return {"network": dict(network_ops), "expected": dict(expected), "fused": fused,
            "extra_in_network": dict(network_ops - expected), "extra_in_layers": dict(expected - network_ops),
            "matches": network_ops == expected}


def op_check_summary(arch: Arch, networks: Sequence[Network], ops_of: Mapping[str, Counter]) -> dict:
    """`op_check` of every network whose timed model's ops are stored (`ops_of`: network key ->
    ops), with how many were checked, match, and run a fused batch-norm."""
    from .generate import CellModels
    from .layer_types import network_layer_types

    generator = CellModels(network_layer_types([arch]))
    checks = {n.label: op_check(arch, n.widths, ops_of[n.key], generator) for n in networks if n.key in ops_of}
    return {"networks": checks, "checked": len(checks), "match": sum(c["matches"] for c in checks.values()),
            "with_fused_layers": sum(bool(c["fused"]) for c in checks.values())}
