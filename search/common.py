"""What the three searches share: targets, reachability, saved points, final outputs."""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from models.arch import Arch
from models.torch_builder import ArchNet, build_torch
from latency.table import PredictionError, Predictor
from .channels import min_width
from .checkpoint_io import save_model
from .runs import RunDir, SearchError, plot_channels, widths_document, write_json


class TargetUnreachable(SearchError):
    """The latency target cannot be met by pruning this network under this table."""


@dataclass
class SearchResult:
    algorithm: str
    arch: Arch
    widths: dict[str, int]
    initial_widths: dict[str, int]
    initial_latency: float
    latency: float
    target: float  # fraction of the initial latency
    history: list[dict]
    saved: list[dict]
    run_dir: Path
    net: ArchNet | None = field(default=None, repr=False)

    @property
    def fraction(self) -> float:
        return self.latency / self.initial_latency


def check_target(target: float, save_at: Sequence[float]) -> tuple[float, list[float], float]:
    """(target, fractions to save at, fraction to stop at): the target is always a saved
    point; a run goes on past the target down to the smallest `save_at` fraction."""
    if not 0 < target < 1:
        raise SearchError(f"--target is the final latency as a fraction of the initial one, in (0, 1); got {target}")
    for f in save_at:
        if not 0 < f < 1:
            raise SearchError(f"--save-at fractions must be in (0, 1); got {f}")
    points = sorted({float(f) for f in save_at} | {float(target)}, reverse=True)
    return float(target), points, points[-1]


def select_groups(arch: Arch, groups: Sequence[str] | None) -> tuple[str, ...] | None:
    """The width groups a search may prune (`--groups`), checked against `arch`, in the
    order given; None = every prunable group. Every algorithm reads it the same way."""
    if groups is None:
        return None
    prunable = [g.name for g in arch.prunable_groups]
    unknown = [g for g in groups if g not in arch.group_by_name]
    fixed = [g for g in groups if g in arch.group_by_name and g not in prunable]
    problems = []
    if unknown:
        problems.append(f"{arch.name} has no width group {', '.join(map(repr, unknown))}")
    if fixed:
        problems.append(f"{', '.join(map(repr, fixed))} {'is' if len(fixed) == 1 else 'are'} fixed "
                        "(image channels or classes)")
    if not groups:
        problems.append("no group given")
    if problems:
        raise SearchError(f"--groups: {'; '.join(problems)}; the prunable groups of {arch.name} are "
                          f"{', '.join(prunable)} (describe-arch --arch {arch.name} --no-tflite shows their layers)")
    return tuple(dict.fromkeys(groups))  # as given (a run's stored settings), once each


def smallest_widths(arch: Arch, start: Mapping[str, int], groups: Sequence[str] | None = None) -> dict[str, int]:
    """Every group the search may prune at its minimum (blocks removed)."""
    out = {g.name: int(start.get(g.name, g.full)) for g in arch.prunable_groups}
    for g in arch.prunable_groups:
        if groups is None or g.name in groups:
            out[g.name] = min(out[g.name], min_width(g))
    return out


def latency_lower_bound(arch: Arch, predictor: Predictor, start: Mapping[str, int],
                        groups: Sequence[str] | None = None) -> float:
    """No network the search can reach from `start` is predicted faster than this (a bound,
    not a prediction: tables are not monotone). Every layer that survives even with all
    removable blocks gone counts at its fastest cell within the widths the search may give
    it; a conv that may absorb the batch-norm after it counts at its fastest form, and a
    batch-norm that may be absorbed counts 0."""
    lows = np.zeros(len(predictor.group_names), np.int64)
    highs = np.zeros(len(predictor.group_names), np.int64)
    for k, name in enumerate(predictor.group_names):
        g = arch.group_by_name[name]
        w = int(start.get(name, g.full)) if g.prunable else g.full
        may_prune = g.prunable and (groups is None or name in groups)
        lows[k], highs[k] = (min(w, min_width(g)) if may_prune else w), w
    zero = frozenset(n for n, lo in zip(predictor.group_names, lows) if lo == 0)
    forms: dict[int, list[int]] = {}  # layer index -> rows that can run it
    absorbable: set[int] = set()
    for (i, j), row in predictor.row_of.items():
        forms.setdefault(i, []).append(row)
        if j is not None:
            absorbable.add(j)

    def fastest(r: int) -> float:
        if predictor.skipped[r]:
            return 0.0  # an op the table declares it does not time
        if not predictor.covered[r]:
            return math.inf  # predictions through this row fail anyway
        ci = np.arange(max(lows[predictor.cin_g[r]], 1, predictor.in_lo[r]),
                       min(highs[predictor.cin_g[r]], predictor.in_hi[r]) + 1)
        co = np.arange(max(lows[predictor.cout_g[r]], 1, predictor.out_lo[r]),
                       min(highs[predictor.cout_g[r]], predictor.out_hi[r]) + 1) if predictor.two[r] else np.zeros(1, np.int64)
        if ci.size == 0 or co.size == 0:
            return math.inf
        idx = predictor.base[r] + (ci[:, None] - predictor.in_lo[r]) * predictor.ncols[r] \
            + (co[None, :] - predictor.out_lo[r]) * predictor.two[r]
        return float(predictor.flat[idx].min())

    total = 0.0
    for i, _ in arch.plan(zero):
        if i in absorbable:
            continue
        best = min(fastest(r) for r in forms[i])
        total += best if math.isfinite(best) else 0.0
    return total


def check_reachable(arch: Arch, predictor: Predictor, widths: Mapping[str, int], target_latency: float,
                    groups: Sequence[str] | None = None) -> None:
    """Fails early (not hours into a run) when the table cannot predict the networks the
    search will visit (a block removed folds a batch-norm into a conv: a layer type of its
    own), or when no network the search could reach can meet the target."""
    probes = [smallest_widths(arch, widths, groups)]
    probes += [dict(widths, **{g.name: 0}) for g in arch.prunable_groups
               if g.may_be_zero and widths.get(g.name, g.full) > 0 and (groups is None or g.name in groups)]
    for probe in probes:
        vec = np.array([probe.get(n, arch.group_by_name[n].full) for n in predictor.group_names], np.int64)
        lacking = [r for r in predictor.runtime_rows(vec) if not predictor.covered[r] and not predictor.skipped[r]]
        if lacking and not predictor.allow_missing:
            zeros = sorted(n for n, v in zip(predictor.group_names, vec) if v == 0)
            listed = ", ".join(f"{predictor.rows[r][0].name} ({predictor.rows[r][1] or 'no type'})" for r in lacking)
            raise PredictionError(
                f"table {predictor.table.path} lacks layer types that this search needs once "
                f"{', '.join(zeros) or 'groups'} {'are' if len(zeros) > 1 else 'is'} removed: {listed}; "
                "rebuild the table with the current build-tables (it times those fused layers too)")
    low = latency_lower_bound(arch, predictor, widths, groups)
    if low > target_latency:
        raise TargetUnreachable(
            f"target not reachable: {target_latency * 1e3:.4f} ms requested, but no network this search can reach "
            f"is predicted under {low * 1e3:.4f} ms ({low / predictor.predict(widths):.3f} of the initial latency: "
            "every layer that remains at its fastest cell)"
        )


def fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """Identifies the starting weights, so a resume cannot silently start from other ones."""
    h = hashlib.sha1()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def table_fingerprint(predictor: Predictor) -> str:
    """Identifies the cost model (the table's values), not its path; independent of the order
    in which the table lists its layer types."""
    h = hashlib.sha1()
    values = predictor.table.values
    for key in sorted(values):
        h.update(key.encode())
        h.update(np.ascontiguousarray(values[key], dtype=np.float64).tobytes())
    return h.hexdigest()


def net_from_state(arch: Arch, widths: Mapping[str, int], state: Mapping[str, torch.Tensor]) -> ArchNet:
    net = build_torch(arch, widths)
    net.load_state_dict(state)
    return net


def record_saved_points(points: Sequence[float], saved: list[dict], initial: float, latency: float,
                        widths: Mapping[str, int], iteration: int, error: float | None,
                        run: RunDir | None = None, net: ArchNet | None = None) -> list[dict]:
    """Adds a saved point for every requested fraction newly reached; returns the new ones."""
    done = {p["fraction"] for p in saved}
    new = []
    for f in points:
        if f not in done and latency <= f * initial:
            point = {"fraction": f, "iteration": iteration, "predicted_latency_s": latency,
                     "achieved_fraction": latency / initial, "holdout_error": error,
                     "widths": {k: int(v) for k, v in widths.items()}}
            if run is not None and net is not None:
                name = f"model-at-{f:.2f}.pt"
                save_model(run.file(name), net)
                point["model"] = name
            saved.append(point)
            new.append(point)
    return new


def write_outputs(run: RunDir, result: SearchResult, table: str, finished: bool, plot: bool) -> None:
    doc = widths_document(result.arch, result.algorithm, result.widths, result.initial_widths,
                          result.initial_latency, result.latency, result.target, result.saved, finished, table)
    write_json(run.file("widths.json"), doc)
    write_json(run.file("history.json"), result.history)
    if plot:
        plot_channels(result.arch, result.initial_widths, result.widths, run.file("channels.png"),
                      title=f"{result.arch.name}, {result.algorithm}: {result.fraction:.2f} of the predicted latency",
                      saved=[p for p in result.saved if p["widths"] != result.widths])
    if finished and result.net is not None:
        save_model(run.file("model.pt"), result.net)
