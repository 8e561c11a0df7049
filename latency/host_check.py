"""The device then and now: a few of the table's own cells timed again with a report's networks.

A report compares cells timed during the build with networks timed now. Where the device's speed
moved in between (a shared VM's neighbours, a Pi warmer or cooler than during its build), every
error carries that move, and the networks' figures alone cannot tell it from an error of the
table. So a report times again the measured cells its networks lean on most, at most one per
layer type, exactly as the table's cells were timed (recipe, context, speed gate), half their
passes before the networks and half after, so that they meet the device in the same minutes as
the networks; it sets their values now against the table's own: the median ratio is how far the
device moved (docs/measuring.md, "The device then and now").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from .layer_types import layer_kind

#: cells a report times again by default
CHECK_CELLS = 12
#: a move beyond this (the MAPE target) is reported as one
MOVED_PCT = 2.0

Cell = tuple[str, int, int]  # (layer type key, c_in, c_out; 0 for a one-axis type)


def choose_check_cells(networks: Iterable[Sequence[Cell]], table: Mapping[Cell, float],
                       k: int = CHECK_CELLS) -> list[Cell]:
    """The measured cells the networks lean on most, one per layer type, for `k` types: first the
    type that weighs most of every layer kind (`layer_kind`), heaviest kind first, then the other
    types by weight. Every layer of every network counts for the measured cell of its type nearest
    to it (channels apart, summed over both axes), with that cell's value; a type's cell is the
    one counted most, the type's weight the sum over its cells. The light kinds (additions,
    batch-norms) are those that move most with the host's caches, so each has a cell."""
    if k < 0:
        raise ValueError(f"the number of check cells must be >= 0, got {k}")
    grid: dict[str, list[Cell]] = {}
    for cell in sorted(table):
        grid.setdefault(cell[0], []).append(cell)
    weight: dict[Cell, float] = {}
    for cells in networks:
        for key, c_in, c_out in cells:
            if key not in grid:
                continue
            near = min(grid[key], key=lambda g: (abs(g[1] - c_in) + abs(g[2] - c_out), g))
            weight[near] = weight.get(near, 0.0) + table[near]
    by_type: dict[str, list[Cell]] = {}
    for cell in weight:
        by_type.setdefault(cell[0], []).append(cell)
    ranked = sorted(by_type.items(), key=lambda kv: (-sum(weight[c] for c in kv[1]), kv[0]))
    first: dict[str, str] = {}  # kind -> its heaviest type, heaviest kind first
    for key, _ in ranked:
        first.setdefault(layer_kind(key), key)
    order = list(first.values()) + [key for key, _ in ranked if key not in first.values()]
    return [max(by_type[key], key=lambda c: (weight[c], c)) for key in order[:k]]


class Moves:
    """Timings at the build (`then_s`) and again with a report (`now_s`), one pair per checked
    item: how far they moved. Shared by the check cells and the check networks
    (`latency.network_check`)."""

    then_s: tuple[float, ...]
    now_s: tuple[float, ...]

    def _validate(self, items: Sequence, what: str) -> None:
        if not items or not len(items) == len(self.then_s) == len(self.now_s):
            raise ValueError(f"a {what} check needs one value then and one now for each of at least one {what}")
        if not all(v > 0 for v in (*self.then_s, *self.now_s)):
            raise ValueError(f"a {what} check needs positive timings")

    @property
    def moves_pct(self) -> list[float]:
        """Per item: now against then, in per cent."""
        return [100.0 * (n / t - 1.0) for t, n in zip(self.then_s, self.now_s)]

    @property
    def drift_pct(self) -> float:
        """The median move: + the device runs slower now than during the build."""
        return float(np.median(self.moves_pct))

    @property
    def moved(self) -> bool:
        return abs(self.drift_pct) > MOVED_PCT


def kind_moves(cells: Sequence[Cell], moves_pct: Sequence[float]) -> dict[str, float]:
    """Per layer kind of the cells, the median of their moves (per cent), kinds in name order."""
    by_kind: dict[str, list[float]] = {}
    for cell, move in zip(cells, moves_pct):
        by_kind.setdefault(layer_kind(cell[0]), []).append(move)
    return {k: float(np.median(v)) for k, v in sorted(by_kind.items())}


@dataclass(frozen=True)
class HostCheck(Moves):
    """The check cells' values in the table (then) and timed with the networks (now)."""

    cells: tuple[Cell, ...]
    then_s: tuple[float, ...]
    now_s: tuple[float, ...]

    def __post_init__(self) -> None:
        self._validate(self.cells, "cell")

    def sentence(self) -> str:
        moves = self.moves_pct
        line = (f"host check: {len(self.cells)} of the table's cells timed again with the networks ran "
                f"{self.drift_pct:+.1f} % against the build (median; {min(moves):+.1f} to {max(moves):+.1f} %")
        kinds = kind_moves(self.cells, moves)
        if len(kinds) > 1:
            line += "; by layer kind " + ", ".join(f"{k} {v:+.1f} %" for k, v in kinds.items())
        line += ")"
        if self.moved:
            line += (f"; the device has moved by more than {MOVED_PCT:g} % since the table was built, and the "
                     "errors below carry that move")
        return line

    def to_json(self) -> dict:
        return {"drift_pct": self.drift_pct, "moved": self.moved, "limit_pct": MOVED_PCT,
                "kinds": kind_moves(self.cells, self.moves_pct),
                "cells": [{"type_key": c[0], "c_in": c[1], "c_out": c[2], "then_s": t, "now_s": n, "move_pct": m}
                          for c, t, n, m in zip(self.cells, self.then_s, self.now_s, self.moves_pct)]}


def host_check(cells: Sequence[Cell], then: Mapping[Cell, float], now: Mapping[Cell, float]) -> HostCheck | None:
    """The check of the `cells` that have a value both in the table and now; None if none has."""
    both = [c for c in cells if c in then and c in now]
    if not both:
        return None
    return HostCheck(tuple(both), tuple(then[c] for c in both), tuple(now[c] for c in both))
