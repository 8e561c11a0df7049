"""Timing again the cells whose every pass ran while the machine read slow.

The local device's speed gate waits at most 2 s for a full-speed reading; a model timed after
that is kept and flagged (`devices.speed_gate.SpeedGate.last_slow`, stored as
`measurements.slow`). A cell counts only its passes at full speed when it has one
(`TableStore.raw_by_cell`); a cell with none is timed in one more pass after the planned ones,
up to `MAX_EXTRA_PASSES` more, each at another time; a cell that still has none is kept as
measured, and the build says how many.
"""
from __future__ import annotations

from typing import Mapping

from .passes import pass_order

#: extra passes a cell gets at most while every pass of it reads slow
MAX_EXTRA_PASSES = 3


def plan_retimes(slow: Mapping[int, int], passes: int, per_call: int, seed: int,
                 max_extra: int = MAX_EXTRA_PASSES) -> tuple[list[tuple[int, list[int]]], list[int]]:
    """(batches `(pass, cells)` of at most `per_call` cells, each cell under the pass after its
    last one, in that pass's order; the cells left because they had their `max_extra` extra
    passes already). `slow` maps the cells without a pass at full speed to their last pass
    index (`TableStore.slow_cells`); `passes` is the recipe's."""
    if per_call < 1 or max_extra < 0:
        raise ValueError("per_call must be >= 1 and max_extra >= 0")
    by_pass: dict[int, list[int]] = {}
    left = []
    for cell, last in slow.items():
        following = max(last + 1, passes)
        if following >= passes + max_extra:
            left.append(cell)
        else:
            by_pass.setdefault(following, []).append(cell)
    batches = []
    for p in sorted(by_pass):
        order = pass_order(by_pass[p], seed, p)
        batches += [(p, order[i:i + per_call]) for i in range(0, len(order), per_call)]
    return batches, sorted(left)
