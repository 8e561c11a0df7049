"""A table's predictions of whole networks next to their measurements on the device."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from models.arch import Arch
from models.counts import network_macs, network_params
from .metrics import corrected_prediction, percent_errors
from .networks import Measured, Network, ValidationError
from .overhead import OverheadEstimate


@dataclass(frozen=True)
class Comparison:
    """One network: the table's predictions and the device's measurement."""

    network: Network
    sum_of_layers_s: float  # the plain sum of the table's cells
    overhead_corrected_s: float | None  # the sum with the per-invoke overhead counted once
    predicted_s: float  # the adopted prediction: one of the two above
    n_layers: int  # layers the table timed for this network
    measured: Measured
    params: int
    macs: int
    exact_sum_s: float | None = None  # sum of the exact single-layer models it runs, when measured
    estimator: str = "mean"  # how the passes combine

    @property
    def measured_s(self) -> float:
        return self.measured.value(self.estimator)

    @property
    def error_pct(self) -> float:
        return float(percent_errors([self.predicted_s], [self.measured_s])[0])

    @property
    def raw_error_pct(self) -> float:
        return float(percent_errors([self.sum_of_layers_s], [self.measured_s])[0])


def compare(table, arch: Arch, networks: Sequence[Network], measured: Mapping[str, Measured],
            overhead: OverheadEstimate | None, apply_overhead: bool = False, allow_missing: bool = False,
            exact: Mapping[str, float] | None = None, estimator: str = "mean") -> list[Comparison]:
    """Predictions of every network next to its stored measurement, all from the table's
    per-layer breakdown (the layers the device runs, fused batch-norms included): the plain
    sum (what `LatencyTable.predict` returns for a back-to-back table), the sum with the
    per-invoke overhead counted once (`corrected_prediction`, when an overhead is known), and
    the adopted one of the two."""
    if apply_overhead and overhead is None:
        raise ValidationError("the overhead correction needs an overhead measured on the table's device")
    out = []
    predictor = table.predictor(arch, allow_missing=allow_missing)
    for net in networks:
        if net.key not in measured:
            raise ValidationError(f"network {net.label} has no stored measurement")
        cells = [l.seconds for l in predictor.breakdown(net.widths) if l.seconds is not None]
        total = float(np.sum(cells))
        corrected = corrected_prediction(cells, overhead.seconds) if overhead else None
        out.append(Comparison(net, total, corrected, corrected if apply_overhead else total, len(cells),
                              measured[net.key], network_params(arch, net.widths), network_macs(arch, net.widths),
                              (exact or {}).get(net.key), estimator))
    return out
