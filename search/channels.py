"""Pure decisions of the searches: how many channels, which channels, which candidate.

Nothing here trains or reads files; the latency comes in as a `predict(widths) -> seconds`
function (a table `Predictor.predict`), so every rule can be checked against brute force.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Collection, Mapping, Sequence

import numpy as np
import torch

from models.arch import Arch, WidthGroup
from models.torch_builder import ArchNet

Predict = Callable[[Mapping[str, int]], float]


def min_width(group: WidthGroup) -> int:
    """A block's inner width may reach 0 (the block disappears); other groups keep 1."""
    return 0 if group.may_be_zero else 1


def removal_gains(predict: Predict, widths: Mapping[str, int], group: str, lowest: int) -> np.ndarray:
    """gains[k - 1] = predicted latency now minus with k channels fewer in `group`, for
    k = 1 .. widths[group] - lowest. Every count is predicted: the table is not monotone."""
    now = predict(widths)
    trial = dict(widths)
    gains = np.empty(max(widths[group] - lowest, 0))
    for k in range(1, len(gains) + 1):
        trial[group] = widths[group] - k
        gains[k - 1] = now - predict(trial)
    return gains


def fewest_to_meet(gains: Sequence[float], step: float) -> int | None:
    """The fewest channels whose removal lowers the latency by at least `step` (None: no
    count does). A linear scan, never a bisection: a count can meet the step while a larger
    one does not."""
    for k, g in enumerate(gains, start=1):
        if g >= step:
            return k
    return None


def largest_gain(gains: Sequence[float]) -> int | None:
    """The fewest channels that give the largest positive gain (a "small pruning")."""
    if len(gains) == 0:
        return None
    best = float(np.max(gains))
    if best <= 0:
        return None
    return int(np.flatnonzero(np.asarray(gains) >= best)[0]) + 1


# -- which channels ----------------------------------------------------------------------------
def l2_scores(net: ArchNet, group: str) -> torch.Tensor:
    """Per channel of `group`, the L2 norm of its filters over every coupled layer: the
    weights (conv kernels, dense rows) whose output axis is the group, taken together."""
    n = net.arch.channels(net.widths)[group]
    sq = torch.zeros(n, dtype=torch.float64)
    for name, axis, tensor in net.group_tensors(group):
        if axis == 0 and name.endswith("weight") and tensor.dim() >= 2:
            sq += tensor.detach().double().flatten(1).pow(2).sum(1)
    return sq.sqrt()


def channels_to_keep(scores: torch.Tensor | np.ndarray, n_remove: int) -> list[int]:
    """Sorted indices that survive when the `n_remove` lowest scores go (ties: the lower
    index goes first, so the choice is deterministic)."""
    s = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64)
    if not 0 <= n_remove <= s.size:
        raise ValueError(f"cannot remove {n_remove} of {s.size} channels")
    order = np.argsort(s, kind="stable")
    return sorted(int(i) for i in order[n_remove:])


# -- which candidate ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """What the pick rule needs of a candidate."""

    error: float  # held-out error after fine-tuning
    gain: float  # predicted latency reduction (seconds), > 0


def pick_best(outcomes: Sequence[Outcome], base_error: float) -> int:
    """NetAdapt's choice: if some candidate is more accurate than the current network, the
    most accurate one; otherwise the smallest accuracy loss per second of latency gained.
    Ties go to the larger gain, then to the earlier candidate."""
    if not outcomes:
        raise ValueError("no candidates to choose from")
    improving = [i for i, o in enumerate(outcomes) if o.error < base_error]
    if improving:
        return min(improving, key=lambda i: (outcomes[i].error, -outcomes[i].gain, i))

    def ratio(o: Outcome) -> float:
        return (o.error - base_error) / o.gain if o.gain > 0 else math.inf

    return min(range(len(outcomes)), key=lambda i: (ratio(outcomes[i]), -outcomes[i].gain, i))


# -- Fisher with cost --------------------------------------------------------------------------
@dataclass(frozen=True)
class Removal:
    group: str
    channel: int
    fisher: float
    gain: float  # predicted latency reduction of removing one channel of the group
    score: float  # fisher / gain (inf when the table predicts no gain)


def choose_removal(signals: Mapping[str, torch.Tensor | np.ndarray], gains: Mapping[str, float]) -> Removal:
    """The channel with the smallest `fisher / latency gain` among the groups in `gains`.

    A group whose one-channel removal is not predicted faster (the table is not monotone)
    only competes when no group is: then the smallest Fisher signal goes, so the search
    still moves towards the smaller networks where the latency does drop."""
    best: Removal | None = None
    for group, gain in gains.items():
        f = np.asarray(signals[group].detach().cpu() if isinstance(signals[group], torch.Tensor) else signals[group],
                       dtype=np.float64)
        if f.size == 0:
            continue
        k = int(np.argmin(f))  # the same channel minimises fisher / gain within a group
        score = f[k] / gain if gain > 0 else math.inf
        cand = Removal(group, k, float(f[k]), float(gain), float(score))
        if best is None or (cand.score, cand.fisher) < (best.score, best.fisher):
            best = cand
    if best is None:
        raise ValueError("no group left to prune")
    return best


# -- uniform scaling ---------------------------------------------------------------------------
def scale_width(width: int, factor: float) -> int:
    """round(factor * width), halves up, at least 1 (uniform scaling thins blocks, it does
    not remove them); a group already at 0 stays there."""
    if width == 0:
        return 0
    return max(1, min(width, math.floor(factor * width + 0.5)))


def scaled_widths(arch: Arch, start: Mapping[str, int], factor: float,
                  groups: Collection[str] | None = None) -> dict[str, int]:
    """`start` with every prunable group (or only those of `groups`) scaled by `factor`."""
    return {g.name: scale_width(int(start[g.name]), factor) if groups is None or g.name in groups
            else int(start[g.name]) for g in arch.prunable_groups}


def distinct_factors(arch: Arch, start: Mapping[str, int], groups: Collection[str] | None = None) -> list[float]:
    """One factor per distinct uniformly scaled network, ascending: widths change only at
    factors (c + 0.5) / w, so the midpoints between those breakpoints (and 1) cover them all."""
    breaks = sorted({(c + 0.5) / w for g in arch.prunable_groups if groups is None or g.name in groups
                     for w in [int(start[g.name])] for c in range(1, w)})
    if not breaks:
        return [1.0]
    return [breaks[0] / 2] + [(a + b) / 2 for a, b in zip(breaks, breaks[1:])] + [1.0]


def uniform_factor(arch: Arch, start: Mapping[str, int], predict: Predict, target: float,
                   groups: Collection[str] | None = None) -> tuple[float, dict[str, int]]:
    """The factor whose uniformly scaled network (only `groups` scaled, when given) is
    predicted at or under `target` seconds: a bisection over the distinct factors, then checked.

    The table is not monotone, so the bisection can end on a network that misses the target
    (a bump, or an outlier at the smallest widths): then every factor is tried, largest first."""
    factors = distinct_factors(arch, start, groups)
    scaled = functools.partial(scaled_widths, arch, start, groups=groups)
    meets: dict[int, bool] = {}

    def ok(i: int) -> bool:
        if i not in meets:
            meets[i] = predict(scaled(factors[i])) <= target
        return meets[i]

    top = len(factors) - 1
    if ok(top):
        return factors[top], scaled(factors[top])
    lo, hi = 0, top  # bisection invariant for a monotone table: ok(lo), not ok(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    if ok(lo):  # the check
        return factors[lo], scaled(factors[lo])
    for i in range(top - 1, -1, -1):  # a bump defeated the bisection: every factor, largest first
        if ok(i):
            return factors[i], scaled(factors[i])
    raise ValueError("no uniform scaling of the network is predicted at or under the target")
