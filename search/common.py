"""What the three searches share: targets, reachability, saved points, final outputs."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch

from models.arch import Arch
from models.torch_builder import ArchNet, build_torch
from latency.table import Predictor
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


def smallest_widths(arch: Arch, groups: Sequence[str] | None = None, start: Mapping[str, int] | None = None
                    ) -> dict[str, int]:
    """Every group the search may prune at its minimum (blocks removed)."""
    out = dict(start or arch.full_widths())
    for g in arch.prunable_groups:
        if groups is None or g.name in groups:
            out[g.name] = min(out[g.name], min_width(g))
    return out


def check_reachable(arch: Arch, predictor: Predictor, widths: Mapping[str, int], target_latency: float,
                    groups: Sequence[str] | None = None) -> None:
    """Fails early when even the smallest network the search could reach is predicted above
    the target (the table is not monotone, so this is a guide, not a proof)."""
    smallest = smallest_widths(arch, groups, widths)
    low = predictor.predict(smallest)
    if low > target_latency:
        raise TargetUnreachable(
            f"target not reachable: {target_latency * 1e3:.3f} ms requested, but even the smallest network "
            f"(every prunable group at its minimum{', blocks removed' if any(g.may_be_zero for g in arch.prunable_groups) else ''}) "
            f"is predicted at {low * 1e3:.3f} ms ({low / predictor.predict(widths):.3f} of the initial latency)"
        )


def fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """Identifies the starting weights, so a resume cannot silently start from other ones."""
    h = hashlib.sha1()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def table_fingerprint(predictor: Predictor) -> str:
    """Identifies the cost model (the table's values for this architecture), not its path."""
    return hashlib.sha1(predictor.flat.tobytes()).hexdigest()


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
