"""The validation report directory: report.md, metrics.json, scatter.png, breakdown.png.

Everything here renders values computed by `latency.metrics` and `latency.comparison`;
nothing is measured. The table is described by its recipe. Paths written into the report are
file names only (no machine paths).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .comparison import Comparison
from .host_check import HostCheck
from .network_check import NetworkCheck
from .metrics import SPREAD_LIMIT_PCT, bias_analysis, comparison_metrics, pass_spread_pct
from .overhead import OverheadEstimate
from .recipe import TableRecipe
from .table import LayerLatency


@dataclass
class ReportInput:
    arch: str
    device: str  # where the networks were measured
    table_name: str  # file name of the table
    table_devices: list[str]  # where the table's cells were measured
    recipe: TableRecipe  # how the table's cells were measured and combined
    rows: list[Comparison]
    overhead: OverheadEstimate | None  # applied to the predictions when not None
    overhead_measured: OverheadEstimate | None  # measured on `device` (may differ from the applied one)
    worst_breakdown: list[LayerLatency]
    measurement: dict  # runtime, runs, warmup, passes, run ids
    op_check: dict | None = None
    notes: list[str] = field(default_factory=list)
    host_check: HostCheck | None = None  # the table's cells timed again with the networks
    network_check: NetworkCheck | None = None  # the build's check networks timed again with them


def _ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e3:.3f}"


def _us(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e6:.2f}"


def _num(v: float, fmt: str = ".4f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def worst(rows: Sequence[Comparison]) -> Comparison:
    return max(rows, key=lambda r: abs(r.error_pct))


def _jsonable(v):
    """NaN is not JSON: metrics that cannot be computed (one network) become null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def metrics_document(inp: ReportInput) -> dict:
    m = comparison_metrics(inp.rows)
    m.update({
        "arch": inp.arch, "device": inp.device, "table": inp.table_name,
        "prediction": "overhead_corrected" if inp.overhead else "sum_of_layers",
        "estimator": inp.rows[0].estimator,
        "correction": inp.overhead.to_meta() if inp.overhead else None,
        "measured_overhead": inp.overhead_measured.to_meta() if inp.overhead_measured else None,
        "bias": bias_analysis(inp.rows, inp.overhead_measured or inp.overhead),
        "measurement": inp.measurement,
        "recipe": inp.recipe.to_json(),
        "networks": [{
            "label": r.network.label, "source": r.network.source, "widths": r.network.widths,
            "layers": r.n_layers, "params": r.params, "macs": r.macs,
            "predicted_s": r.predicted_s, "sum_of_layers_s": r.sum_of_layers_s,
            "overhead_corrected_s": r.overhead_corrected_s, "measured_s": r.measured_s,
            "measured_passes_s": list(r.measured.seconds), "full_speed_passes": r.measured.full_speed,
            "error_pct": r.error_pct, "exact_sum_s": r.exact_sum_s,
            "sum_of_layers_error_pct": r.raw_error_pct,
        } for r in inp.rows],
        "op_check": inp.op_check,
        "host_check": inp.host_check.to_json() if inp.host_check else None,
        "network_check": inp.network_check.to_json() if inp.network_check else None,
    })
    return _jsonable(m)


def scatter_png(rows: Sequence[Comparison], path: Path, title: str) -> None:
    """Predicted vs measured (ms) with the y = x line and the +-5 % band."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 6), dpi=110)
    FigureCanvasAgg(fig)  # Agg, no display, no global pyplot state
    ax = fig.add_subplot()
    pred = [r.predicted_s * 1e3 for r in rows]
    meas = [r.measured_s * 1e3 for r in rows]
    lo, hi = min(pred + meas) * 0.9, max(pred + meas) * 1.05
    ax.plot([lo, hi], [lo, hi], "k-", lw=1, label="y = x")
    ax.fill_between([lo, hi], [lo * 0.95, hi * 0.95], [lo * 1.05, hi * 1.05], color="0.85", label="±5 %")
    colors = {"file": "tab:red", "uniform": "tab:green", "random": "tab:blue"}
    for source in sorted({r.network.source for r in rows}):
        xs = [p for p, r in zip(pred, rows) if r.network.source == source]
        ys = [m for m, r in zip(meas, rows) if r.network.source == source]
        ax.scatter(xs, ys, s=18, color=colors.get(source, "tab:gray"), label=source, zorder=3)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel("measured latency (ms)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(True, lw=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")


def _context_words(recipe: TableRecipe) -> str:
    if not recipe.in_network:
        return "back to back"
    vector = f", after {recipe.vector_s * 1e6:g} us of vector arithmetic" if recipe.vector_s else ""
    evicted = f", after {recipe.evict_bytes // 1024} KiB written over the caches" if recipe.evict_bytes else ""
    return f"in a network context: other layer types run before each invocation{vector}{evicted}"


def _table_words(recipe: TableRecipe) -> str:
    block = f" and both sides of every multiple of {recipe.grid_block} channels" if recipe.grid_block else ""
    return (f"grid step {recipe.grid_step}{block}, {recipe.passes} passes, cell = the {recipe.estimator} of the "
            f"passes, sigma {recipe.sigma:g}, edges {recipe.edges}; timed {_context_words(recipe)}")


def _timing_words(ms: dict) -> str:
    at_least = f", at least {ms['min_time_s'] * 1e3:g} ms timed" if ms.get("min_time_s") else ""
    return f"warm-up {ms.get('warmup', '?')}, mean of {ms.get('runs', '?')} runs{at_least}"


def _span_words(ms: dict) -> str:
    return f", over {ms['span_s']:.0f} s" if ms.get("span_s") else ""


def report_markdown(inp: ReportInput, metrics: dict) -> str:
    rows = inp.rows
    ms = inp.measurement
    lines = [f"# Latency table validation: {inp.arch} on {inp.device}", ""]
    lines += [
        f"- table: `{inp.table_name}` (cells measured on {', '.join(inp.table_devices) or 'unknown'}; "
        f"{_table_words(inp.recipe)})",
        f"- networks measured on `{inp.device}` with {ms.get('runtime', '?')}, back to back: {_timing_words(ms)}, "
        f"{ms.get('passes', '?')} passes in shuffled order{_span_words(ms)}; "
        f"measured = the {ms.get('estimator', 'mean')} of the "
        f"passes (runs {', '.join(map(str, ms.get('run_ids', []))) or '-'})",
    ]
    if inp.overhead:
        o = inp.overhead
        lines.append(f"- prediction: sum over the n layers the network runs of (cell − o) + o, with the per-invoke "
                     f"overhead o = {_us(o.seconds)} µs (± {_us(o.stderr_s)}) measured on `{o.device}`"
                     + (" in the cells' context, as `LatencyTable.predict`" if inp.recipe.in_network else ""))
    else:
        lines.append("- prediction: the plain sum of the cells of the layers the network runs, as "
                     "`LatencyTable.predict` (the per-invoke overhead correction is an alternative below)")
    if inp.host_check:
        lines.append(f"- {inp.host_check.sentence()}")
    if inp.network_check:
        lines.append(f"- {inp.network_check.sentence()}")
    lines += [f"- note: {n}" for n in inp.notes]
    if metrics["disturbed"]:
        lines.append(f"- note: {len(metrics['disturbed'])} of {len(rows)} networks have passes more than "
                     f"{SPREAD_LIMIT_PCT:.0f} % apart (another process disturbed the device?): "
                     f"{', '.join(metrics['disturbed'])}")
    lines += ["", "## Summary", "", "| metric | prediction | plain sum of layers |", "|---|---:|---:|"]
    u = metrics["alternatives"]["sum_of_layers"]
    for key, name, fmt in (("n", "networks", "d"), ("mape", "MAPE %", ".2f"), ("max_ape", "worst APE %", ".2f"),
                           ("mean_error", "mean signed error %", "+.2f"), ("pearson", "Pearson r", ".5f"),
                           ("spearman", "Spearman ρ", ".5f"), ("slope", "slope (measured on predicted)", ".4f"),
                           ("within_5", "within 5 %", ".0%"), ("within_10", "within 10 %", ".0%")):
        lines.append(f"| {name} | {_num(metrics[key], fmt)} | {_num(u[key], fmt)} |")
    has_exact = all(r.exact_sum_s is not None for r in rows)
    lines += ["", "## Networks", "",
              "| # | network | source | layers | params | predicted ms | sum of layers ms | measured ms | "
              "pass spread % | error % |" + (" exact cells ms |" if has_exact else ""),
              "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if has_exact else "")]
    for i, r in enumerate(sorted(rows, key=lambda r: r.measured_s), start=1):
        spread = pass_spread_pct(r.measured.seconds)
        lines.append(f"| {i} | {r.network.label} | {r.network.source} | {r.n_layers} | {r.params:,} | "
                     f"{_ms(r.predicted_s)} | {_ms(r.sum_of_layers_s)} | {_ms(r.measured_s)} | {spread:.1f} | "
                     f"{r.error_pct:+.2f} |" + (f" {_ms(r.exact_sum_s)} |" if has_exact else ""))
    lines += ["", "## Bias of the sum of single-layer times", ""]
    b = metrics["bias"]
    o = inp.overhead_measured or inp.overhead
    if o:
        lines += [
            f"Per-invoke overhead on `{o.device}` ({o.runtime}): chains of n one-element MULs, {o.combined} of the "
            f"passes; "
            f"the intercept is what every single-layer model pays once and the network once in total, the slope "
            f"the per-op dispatch both pay.", "",
            "| probe | n ops | µs |", "|---|---:|---:|"]
        for label, sec in sorted(o.probes.items(), key=lambda kv: int(kv[0].rsplit("-", 1)[-1])):
            lines.append(f"| {label} | {label.rsplit('-', 1)[-1]} | {_us(sec)} |")
        lines += ["", f"- intercept (overhead) o = {_us(o.seconds)} µs ± {_us(o.stderr_s)}, "
                      f"per-op slope {o.per_op_s * 1e9:.1f} ns",
                  f"- if it were the bias, the plain sum would over-predict by (n − 1) o = "
                  f"{b['overhead_pct_mean']:+.2f} % on average here, i.e. {_us(o.seconds)} µs per extra layer"]
    lines.append(f"- plain sum of the table's cells − measured: mean signed error {b['sum_error_pct_mean']:+.2f} %, "
                 f"median {_us(b['sum_excess_per_extra_layer_s_median'])} µs per extra layer (table error and "
                 f"composition bias together)")
    if "composition_error_pct_mean" in b:
        lines += [
            f"- exact single-layer models (every layer at its own widths, no interpolation or smoothing) summed − "
            f"measured, the composition bias alone: median {_us(b['composition_per_extra_layer_s_median'])} µs per "
            f"extra layer, mean signed error {b['composition_error_pct_mean']:+.2f} % (mean absolute "
            f"{b['composition_ape_mean']:.2f} %)"]
        if "composition_pct_per_weight_mb" in b:
            lines.append(f"- its trend with the weight footprint (cache pressure): "
                         f"{b['composition_pct_per_weight_mb']:+.2f} % per MB of weights "
                         f"(Pearson {b['composition_vs_weights_pearson']:+.2f})")
        lines.append(f"- the table's own error against the exact sums (grid interpolation, smoothing, cell noise): "
                     f"mean {b['table_vs_exact_pct_mean']:+.2f} %, mean absolute {b['table_vs_exact_ape_mean']:.2f} %")
    alts = metrics["alternatives"]
    lines += ["", "| prediction | MAPE % | worst % | mean signed % | Pearson |", "|---|---:|---:|---:|---:|"]
    names = {"sum_of_layers": "plain sum of the table's cells", "overhead_corrected": "… with (n − 1) o removed",
             "exact_cells": "sum of exact single-layer models",
             "exact_cells_overhead_corrected": "… with (n − 1) o removed"}
    for key, name in names.items():
        if key in alts:
            a = alts[key]
            lines.append(f"| {name} | {_num(a['mape'], '.2f')} | {_num(a['max_ape'], '.2f')} | "
                         f"{_num(a['mean_error'], '+.2f')} | {_num(a['pearson'], '.5f')} |")
    if inp.op_check:
        oc = inp.op_check
        lines += ["", f"Ops of every timed network (its .tflite) against the ops of the single-layer models the table "
                      f"sums for it: {oc['match']} of {oc['checked']} match ({oc['with_fused_layers']} networks run a "
                      f"batch-norm the converter folds into the conv before it, timed as that fused conv)."]
        shown = [(k, c) for k, c in oc["networks"].items() if c["fused"] or not c["matches"]]
        if shown:
            lines += ["", "| network | fused layers | ops in no cell | cell ops the network lacks | match |",
                      "|---|---|---|---|---|"]
            for label, c in shown:
                lines.append(f"| {label} | {', '.join(c['fused']) or '-'} | {_ops(c['extra_in_network']) or '-'} | "
                             f"{_ops(c['extra_in_layers']) or '-'} | {'yes' if c['matches'] else 'NO'} |")
    w = worst(rows)
    lines += ["", f"## Worst network: {w.network.label} ({w.error_pct:+.2f} %)", "",
              f"Predicted {_ms(w.predicted_s)} ms, measured {_ms(w.measured_s)} ms "
              f"(passes: {', '.join(_ms(s) for s in w.measured.seconds)} ms); per layer in `breakdown.png`.", "",
              "| layer | type | c_in | c_out | cell ms | share % |", "|---|---|---:|---:|---:|---:|"]
    total = sum(l.seconds for l in inp.worst_breakdown if l.seconds is not None) or 1.0
    for l in inp.worst_breakdown:
        share = "-" if l.seconds is None else f"{100 * l.seconds / total:.1f}"
        lines.append(f"| {l.layer} | {l.type_key or '(not in table)'} | {l.c_in} | {l.c_out} | {_ms(l.seconds)} | "
                     f"{share} |")
    lines.append("")
    return "\n".join(lines)


def _ops(c: dict) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(c.items()))


def write_report(out_dir: str | Path, inp: ReportInput) -> dict:
    """Writes report.md, metrics.json, scatter.png and breakdown.png (the worst network's
    per-layer prediction) into `out_dir`; returns the metrics."""
    if not inp.rows:
        raise ValueError("a report needs at least one network")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = metrics_document(inp)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n")
    (out / "report.md").write_text(report_markdown(inp, metrics))
    scatter_png(inp.rows, out / "scatter.png", f"{inp.arch} on {inp.device}: MAPE {_num(metrics['mape'], '.2f')} %, "
                                               f"r = {_num(metrics['pearson'], '.4f')}")
    from .plots import plot_breakdown

    w = worst(inp.rows)
    plot_breakdown(inp.worst_breakdown, out / "breakdown.png",
                   f"worst network {w.network.label} ({w.error_pct:+.2f} %): the table's cells")
    return metrics
