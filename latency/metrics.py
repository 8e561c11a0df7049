"""How well a table predicts whole networks: errors, agreement metrics, the overhead correction.

Pure functions: seconds and plain values in, numbers and dicts out (nothing is measured or
stored here). `comparison_metrics` and `bias_analysis` read the rows `latency.comparison`
builds.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from .comparison import Comparison
    from .overhead import OverheadEstimate

#: passes of one network further apart than this (max - min, % of the mean) were disturbed
SPREAD_LIMIT_PCT = 5.0
#: what a table's predictions of whole networks should meet (docs/measuring.md §1)
TARGETS = {"mape": 2.0, "max_ape": 5.0, "pearson": 0.999}


def percent_errors(predicted: Sequence[float], measured: Sequence[float]) -> np.ndarray:
    """Signed error of each prediction in percent of the measurement: 100 (p - m) / m."""
    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    if p.shape != m.shape:
        raise ValueError(f"{p.size} predictions for {m.size} measurements")
    if (m <= 0).any() or not np.isfinite(m).all():
        raise ValueError("measurements must be positive and finite")
    return 100.0 * (p - m) / m


def validation_metrics(predicted: Sequence[float], measured: Sequence[float]) -> dict:
    """Agreement of predictions with measurements (seconds in, unitless/percent out).

    `mape`/`max_ape` in percent; `pearson`, `spearman` correlations; `slope`/`intercept_s` of
    the least-squares line measured = slope * predicted + intercept; `within_5`/`within_10` the
    fraction of networks predicted within 5 % / 10 %; `mean_error` the signed mean error in
    percent (> 0: the table over-predicts).
    """
    from scipy import stats

    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    if p.size == 0:
        raise ValueError("no networks to compute metrics of")
    err = percent_errors(p, m)
    ape = np.abs(err)
    out = {
        "n": int(p.size),
        "mape": float(ape.mean()),
        "max_ape": float(ape.max()),
        "mean_error": float(err.mean()),
        "within_5": float((ape <= 5.0).mean()),
        "within_10": float((ape <= 10.0).mean()),
        "pearson": float("nan"), "spearman": float("nan"), "slope": float("nan"), "intercept_s": float("nan"),
    }
    # correlations and the fitted line need at least two distinct predictions
    if p.size >= 2 and np.ptp(p) > 0 and np.ptp(m) > 0:
        out["pearson"] = float(stats.pearsonr(p, m)[0])
        out["spearman"] = float(stats.spearmanr(p, m)[0])
        fit = stats.linregress(p, m)
        out["slope"], out["intercept_s"] = float(fit.slope), float(fit.intercept)
    return out


def fit_line(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float]:
    """(intercept, slope, standard error of the intercept) of least-squares y = a + b x."""
    from scipy import stats

    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 3 or np.ptp(x) == 0:
        raise ValueError("a line needs at least three points at two or more x values")
    fit = stats.linregress(x, y)
    return float(fit.intercept), float(fit.slope), float(fit.intercept_stderr)


def overhead_corrected(sum_of_layers_s: float, n_layers: int, overhead_s: float) -> float:
    """The network latency from the sum of `n_layers` single-layer timings: each of them
    includes one per-invoke overhead, the network pays it once, so n - 1 are removed."""
    if n_layers < 1:
        raise ValueError("a network has at least one layer")
    if overhead_s < 0:
        raise ValueError(f"a negative per-invoke overhead {overhead_s!r} makes no sense")
    return sum_of_layers_s - (n_layers - 1) * overhead_s


def corrected_prediction(layer_seconds: Sequence[float], overhead_s: float) -> float:
    """sum(layer - overhead) + overhead over the layers the table times."""
    return overhead_corrected(float(np.sum(layer_seconds)), len(layer_seconds), overhead_s)


def pass_spread_pct(seconds: Sequence[float]) -> float:
    """How far apart a network's passes are: (max - min) in percent of their mean."""
    a = np.asarray(seconds, float)
    return float(100 * (a.max() - a.min()) / a.mean())


def comparison_metrics(rows: Sequence["Comparison"]) -> dict:
    """The adopted prediction's metrics, the disturbed networks, and the metrics of every
    alternative prediction the rows hold (`alternatives`)."""
    m = validation_metrics([r.predicted_s for r in rows], [r.measured_s for r in rows])
    # another process on the device shows as passes of one network that disagree
    m["disturbed"] = [r.network.label for r in rows if pass_spread_pct(r.measured.seconds) > SPREAD_LIMIT_PCT]
    meas = [r.measured_s for r in rows]
    alt = {"sum_of_layers": validation_metrics([r.sum_of_layers_s for r in rows], meas)}
    if rows and all(r.overhead_corrected_s is not None for r in rows):
        alt["overhead_corrected"] = validation_metrics([r.overhead_corrected_s for r in rows], meas)
    if rows and all(r.exact_sum_s is not None for r in rows):
        alt["exact_cells"] = validation_metrics([r.exact_sum_s for r in rows], meas)
        if "overhead_corrected" in alt:
            oh = [(r.sum_of_layers_s - r.overhead_corrected_s) for r in rows]  # (n - 1) o
            alt["exact_cells_overhead_corrected"] = validation_metrics(
                [r.exact_sum_s - d for r, d in zip(rows, oh)], meas)
    m["alternatives"] = alt
    return m


def bias_analysis(rows: Sequence["Comparison"], overhead: "OverheadEstimate | None") -> dict:
    """The numbers that say where sum-of-layers minus measured comes from (seconds, percent).

    - the overhead hypothesis: the plain sum over-predicts by (n - 1) o, `overhead_pct_mean`
      percent of the measurement on average;
    - the table's plain sum against the measurement (`sum_error_pct_mean`): table error and
      composition bias together;
    - with exact single-layer timings (every layer at its own widths, no interpolation or
      smoothing): the composition bias alone, per network as (exact sum - measured) / (n - 1)
      per extra layer (a per-invoke overhead would make it equal o) and in percent; its trend
      with the network's weight footprint (MB of float32 weights: cache pressure); and the
      table's own error against the exact sums.
    """
    n = np.array([r.n_layers for r in rows], float)
    meas = np.array([r.measured_s for r in rows])
    plain = np.array([r.sum_of_layers_s for r in rows])
    weights_mb = np.array([r.params for r in rows], float) * 4 / 1e6
    extra = np.maximum(n - 1, 1)
    out: dict = {"overhead_s": overhead.seconds if overhead else None,
                 "per_op_s": overhead.per_op_s if overhead else None,
                 "overhead_pct_mean": float((100 * (n - 1) * overhead.seconds / meas).mean()) if overhead else None,
                 "sum_error_pct_mean": float((100 * (plain - meas) / meas).mean()),
                 "sum_excess_per_extra_layer_s_median": float(np.median((plain - meas) / extra))}
    if rows and all(r.exact_sum_s is not None for r in rows):
        exact = np.array([r.exact_sum_s for r in rows])
        per_layer = (exact - meas) / extra
        composition = 100 * (exact - meas) / meas
        out.update({
            "composition_per_extra_layer_s_median": float(np.median(per_layer)),
            "composition_per_extra_layer_s": [float(x) for x in per_layer],
            "composition_error_pct_mean": float(composition.mean()),
            "composition_ape_mean": float(np.abs(composition).mean()),
            "table_vs_exact_pct_mean": float((100 * (plain - exact) / exact).mean()),
            "table_vs_exact_ape_mean": float(np.abs(100 * (plain - exact) / exact).mean()),
        })
        if len(rows) >= 3 and np.ptp(weights_mb) > 0:
            slope, _ = np.polyfit(weights_mb, composition, 1)
            out["composition_pct_per_weight_mb"] = float(slope)
            out["composition_vs_weights_pearson"] = float(np.corrcoef(weights_mb, composition)[0, 1])
    return out
