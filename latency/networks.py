"""The networks a table is validated on: which width assignments, their models and cells.

A network is a width assignment; its `key` (the canonical complete widths) identifies it in the
table file, so a network measured under one label is found again under any other. Networks
come from width files or are sampled (seeded: the same networks, and so their stored
measurements, come back for any table of the architecture). `Measured` is a network's stored
passes on one device.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from models.arch import Arch, WidthError
from models.thesis_names import load_widths_any
from .smoothing import ESTIMATOR_COLUMNS, SMALLEST_ESTIMATORS, estimate


class ValidationError(ValueError):
    """Bad input to a validation (widths of another architecture, no networks, ...)."""


@dataclass(frozen=True)
class Network:
    """A width assignment to validate; `key` (canonical complete widths) identifies it in the
    store, so a network measured under one label is found again under any other."""

    label: str
    widths: dict[str, int]
    source: str  # "file", "uniform", "random"

    @property
    def key(self) -> str:
        return widths_key(self.widths)


def widths_key(widths: Mapping[str, int]) -> str:
    return json.dumps({k: int(v) for k, v in sorted(widths.items())}, separators=(",", ":"))


def load_networks(arch: Arch, paths: Iterable[str | Path]) -> list[Network]:
    """Width assignments from JSON files and/or directories of them (`*.json`, sorted)."""
    out: list[Network] = []
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(path.glob("*.json"))
            if not files:
                raise ValidationError(f"{path}: directory holds no width files (*.json)")
        elif path.exists():
            files = [path]
        else:
            raise ValidationError(f"{path}: no such widths file or directory")
        for f in files:
            try:
                widths = load_widths_any(arch, f)  # our format, or the thesis's per-layer names
            except WidthError as exc:
                raise ValidationError(f"{exc} (is it a width assignment for {arch.name}?)") from exc
            out.append(Network(f.stem, widths, "file"))
    return out


def sample_networks(arch: Arch, n: int, seed: int = 0, remove_p: float = 0.2) -> list[Network]:
    """`n` width assignments spanning the latency range, a function of (arch, n, seed) only, so
    the same networks (and their stored measurements) come back for any table.

    About a quarter are uniform scalings (factors evenly spaced up to 1.0, the full network);
    the rest draw every group around a scale stratified over [0.1, 1] (x U(0.5, 1.5)), and
    remove each removable block with probability `remove_p`.
    """
    if n < 1:
        raise ValidationError(f"--sample must be >= 1, got {n}")
    rng = random.Random(f"{arch.name}:{seed}")
    groups = arch.prunable_groups
    out: list[Network] = []
    seen: set[str] = set()

    def add(label: str, widths: dict[str, int], source: str) -> bool:
        try:
            widths = arch.validate(widths)
            arch.active_layers(widths)  # rejects assignments that remove the output
        except WidthError:
            return False
        key = widths_key(widths)
        if key in seen:
            return False
        seen.add(key)
        out.append(Network(label, widths, source))
        return True

    n_uniform = max(1, round(n / 4))
    for i in range(n_uniform):
        f = (i + 1) / n_uniform
        add("full" if i == n_uniform - 1 else f"uniform-{f:.2f}",
            {g.name: max(1, round(g.full * f)) for g in groups}, "uniform")
    tries = 0
    while len(out) < n:
        i = len(out) - n_uniform
        tries += 1
        if tries > 100 * n:
            break  # a tiny architecture has fewer distinct assignments than asked for
        scale = 0.1 + 0.9 * (i + rng.random()) / max(1, n - n_uniform)
        widths = {}
        for g in groups:
            if g.may_be_zero and rng.random() < remove_p:
                widths[g.name] = 0
            else:
                widths[g.name] = min(g.full, max(1, round(g.full * scale * rng.uniform(0.5, 1.5))))
        add(f"random-{max(i, 0):02d}", widths, "random")
    return out


@dataclass(frozen=True)
class Measured:
    """A network's stored passes on one device."""

    seconds: tuple[float, ...]  # per pass, in pass order: the mean invocation
    run_ids: tuple[int, ...]
    fastest: tuple[float | None, ...] = ()  # per pass: the fastest invocation (None: not recorded)
    slow: tuple[bool | None, ...] = ()  # per pass: kept although the machine read slow (None: not read)

    @property
    def mean(self) -> float:
        return float(np.mean(self.seconds))

    @property
    def full_speed(self) -> list[int]:
        """The passes not kept slow (a pass whose speed was not read counts as at full speed, as
        a cell's does), or every pass where each was kept slow."""
        fast = [i for i in range(len(self.seconds)) if not (i < len(self.slow) and self.slow[i])]
        return fast or list(range(len(self.seconds)))

    def value(self, estimator: str = "mean") -> float:
        """The passes combined by `estimator` (`smoothing.ESTIMATORS`): those at full speed (as
        a table's cells count theirs, `TableStore.raw_by_cell`), unless the estimator takes the
        smallest, which a slow pass cannot win anyway."""
        values = self.fastest if ESTIMATOR_COLUMNS[estimator] == "fastest" else self.seconds
        if values and estimator not in SMALLEST_ESTIMATORS:
            values = tuple(values[i] for i in self.full_speed)
        return estimate(estimator, values or (None,), "a measured network")

    @property
    def std(self) -> float:
        return float(np.std(self.seconds, ddof=1)) if len(self.seconds) > 1 else 0.0


def network_model(arch: Arch, widths: Mapping[str, int]) -> bytes:
    """The whole network as .tflite (`to_tflite`), without the converter's stdout chatter."""
    import contextlib
    import io

    from models.keras_builder import to_tflite

    with contextlib.redirect_stdout(io.StringIO()):
        return to_tflite(arch, widths)


def network_cells(arch: Arch, widths: Mapping[str, int], pair_adds: bool = True) -> list[tuple[str, int, int]]:
    """(type key, c_in, c_out) of every layer the device runs for `widths` (a batch-norm the
    converter folds into a conv makes one fused layer, and one an addition alone feeds is
    timed with it: `fusion.runtime_plan`), keyed as the table keys its cells (one-axis types
    have c_out = 0)."""
    from .fusion import fused_layer, runtime_plan
    from .layer_types import network_layer_types, type_key

    types = network_layer_types([arch])
    ch = arch.channels(arch.validate(widths))
    out = []
    for i, folded in runtime_plan(arch, frozenset(g for g, c in ch.items() if c == 0), pair_adds):
        layer = arch.layers[i] if folded is None else fused_layer(arch.layers[i], arch.layers[folded])
        t = types[type_key(layer)]
        out.append((t.key, ch[layer.c_in], ch[layer.c_out] if t.two_axes else 0))
    return out
