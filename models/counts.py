"""What a width assignment of an architecture holds: weights and multiply-accumulates."""
from __future__ import annotations

from typing import Mapping

from .arch import Arch


def network_params(arch: Arch, widths: Mapping[str, int]) -> int:
    """Number of weights the network's TFLite model holds (BN folded), a cache-pressure proxy."""
    n = 0
    for a in arch.active_layers(widths):
        l = a.layer
        if l.op == "conv":
            n += l.kernel * l.kernel * a.c_in * a.c_out + (a.c_out if l.bn else 0)
        elif l.op == "dwconv":
            n += l.kernel * l.kernel * a.c_in + (a.c_in if l.bn else 0)
        elif l.op == "bn_act":
            n += 2 * a.c_in
        elif l.op == "se":
            n += 2 * a.c_in * a.c_out + a.c_in + a.c_out
        elif l.op == "head":
            n += a.c_in * a.c_out + a.c_out
    return n


def network_macs(arch: Arch, widths: Mapping[str, int]) -> int:
    """Multiply-accumulates of one inference (convolutions and dense layers)."""
    n = 0
    for a in arch.active_layers(widths):
        l = a.layer
        hw = l.out_size * l.out_size
        if l.op == "conv":
            n += hw * l.kernel * l.kernel * a.c_in * a.c_out
        elif l.op == "dwconv":
            n += hw * l.kernel * l.kernel * a.c_in
        elif l.op == "se":
            n += 2 * a.c_in * a.c_out
        elif l.op == "head":
            n += a.c_in * a.c_out
    return n
