"""Checks that the layer types cover every op the converter emits for the whole network.

The whole network is converted once; its ops (CONV_2D, DEPTHWISE_CONV_2D, ADD, MUL, MEAN,
FULLY_CONNECTED, LOGISTIC, ...) must be exactly the ops of the single-layer templates of its
active layers. A surplus op (a batch-norm the converter could not fold, a RESHAPE, a PAD)
would be latency the table never measured: the build stops and names it.
"""
from __future__ import annotations

from collections import Counter
from typing import Mapping

from models.arch import Arch
from .fusion import fused_layer, runtime_plan
from .generate import CellModels
from .layer_types import type_key
from .tflite_schema import describe_model


class OpMappingError(RuntimeError):
    pass


def expected_ops(arch: Arch, generator: CellModels, widths: Mapping[str, int] | None = None) -> Counter:
    ops: Counter = Counter()
    zero = frozenset(g for g, c in arch.channels(arch.validate(widths or {})).items() if c == 0)
    for i, folded in runtime_plan(arch, zero):
        layer = arch.layers[i]
        if folded is not None:
            layer = fused_layer(layer, arch.layers[folded])
        template = generator.template(type_key(layer))
        ops.update(op for op, _ in describe_model(template.template_bytes))
    return ops


def check_network_ops(arch: Arch, generator: CellModels, widths: Mapping[str, int] | None = None) -> dict[str, int]:
    """Returns the network's op counts; raises OpMappingError naming unmapped or missing ops."""
    from models.keras_builder import to_tflite

    network = Counter(op for op, _ in describe_model(to_tflite(arch, widths)))
    expected = expected_ops(arch, generator, widths)
    if network != expected:
        surplus = network - expected
        missing = expected - network
        raise OpMappingError(
            f"{arch.name}: the converted network does not match its layer types — ops the tables would not "
            f"time: {dict(surplus) or 'none'}; ops the tables time that the network lacks: {dict(missing) or 'none'}"
        )
    return dict(sorted(network.items()))
