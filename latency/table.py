"""A latency table loaded into arrays, and the prediction of any width assignment from it.

The latency of a network is the sum of its active layers' cells. The search asks for
thousands of predictions, so a `Predictor` compiles an architecture against the table once
(one flat array, per-layer offsets) and a prediction is a few vectorised numpy operations.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from models.arch import Arch, Layer
from .context import overhead_per_extra_layer_s
from .fusion import RuntimePlanner, fused_layer, fusion_candidates
from .layer_types import LayerType, type_key
from .recipe import TableRecipe, recipe_from_meta
from .store import TableStore

OP_NAMES = {"add": "residual additions", "bn_act": "unfoldable batch-norms", "se": "squeeze-excite blocks",
            "head": "the pooling + dense head", "conv": "convolutions", "dwconv": "depthwise convolutions"}


class PredictionError(ValueError):
    """A width assignment the table cannot predict (outside its range, type missing)."""


@dataclass(frozen=True)
class LayerLatency:
    layer: str
    type_key: str | None  # None when the table does not cover the layer
    c_in: int
    c_out: int
    seconds: float | None


class LatencyTable:
    def __init__(self, path: Path, meta: dict, types: dict[str, LayerType], values: dict[str, np.ndarray],
                 measured: dict[str, np.ndarray], layer_map: dict[str, str], recipe: TableRecipe | None = None):
        self.path = path
        self.meta = meta
        self.recipe = recipe if recipe is not None else recipe_from_meta(meta)  # how its cells were measured
        self.types = types
        self.values = values  # key -> (n_in, n_out) seconds
        self.measured = measured  # key -> bool mask of cells timed (not interpolated)
        self.layer_map = layer_map
        self._predictors: dict[tuple[str, bool], Predictor] = {}

    @classmethod
    def open(cls, path: str | Path, smoothed: bool = True) -> "LatencyTable":
        """Loads every finished layer type (read-only: the file is never changed); `smoothed=False`
        gives the unsmoothed per-cell values (the passes combined by the table's estimator;
        interpolated on sparse grids)."""
        store = TableStore.open(path)
        try:
            meta = store.meta()
            recipe = store.recipe()
            all_types = store.layer_types()
            values = {k: np.full(t.shape, np.nan) for k, t in all_types.items()}
            measured = {k: np.zeros(t.shape, bool) for k, t in all_types.items()}
            for key, c_in, c_out, v, m in store.cell_values(smoothed):
                t = all_types[key]
                i, j = c_in - t.in_lo, (c_out - t.out_lo) if t.two_axes else 0
                values[key][i, j] = v
                measured[key][i, j] = bool(m)
            done = {k for k, v in values.items() if not np.isnan(v).any()}
            layer_map = store.layer_map()
        finally:
            store.close()
        types = {k: t for k, t in all_types.items() if k in done}
        return cls(Path(path), meta, types, {k: values[k] for k in done}, {k: measured[k] for k in done}, layer_map,
                   recipe)

    @property
    def arch_name(self) -> str:
        return self.meta.get("arch", "?")

    @property
    def uncovered_ops(self) -> tuple[str, ...]:
        """Ops the table declares it does not time (an imported table without additions)."""
        return tuple(self.meta.get("uncovered_ops", ()))

    def coverage_note(self) -> str | None:
        if not self.uncovered_ops:
            return None
        names = ", ".join(OP_NAMES.get(op, op) for op in self.uncovered_ops)
        return f"this table does not time {names}: predictions leave them out"

    def layer_type_of(self, arch: Arch, layer_name: str) -> str | None:
        layer = arch.layer_by_name[layer_name]
        if layer.op in self.uncovered_ops:
            return None
        if self.layer_map:
            # an imported table is keyed by the layers of its own network only
            if arch.name != self.arch_name:
                raise PredictionError(
                    f"table {self.path} is keyed by the layers of {self.arch_name} and cannot predict {arch.name}"
                )
            return self.layer_map.get(layer_name)
        return type_key(layer)

    def predictor(self, arch: Arch, allow_missing: bool = False) -> "Predictor":
        cache_key = (arch.name, allow_missing)
        if cache_key not in self._predictors:
            self._predictors[cache_key] = Predictor(self, arch, allow_missing)
        return self._predictors[cache_key]

    def predict(self, arch: Arch, widths: Mapping[str, int] | None = None, allow_missing: bool = False) -> float:
        """Predicted latency in seconds."""
        return self.predictor(arch, allow_missing).predict(widths or {})

    def breakdown(self, arch: Arch, widths: Mapping[str, int] | None = None,
                  allow_missing: bool = False) -> list[LayerLatency]:
        return self.predictor(arch, allow_missing).breakdown(widths or {})


def table_pairs_adds(table: LatencyTable, arch: Arch) -> bool:
    """Whether `table` times each addition together with a batch-norm that alone reads it
    (`latency.fusion`): it holds every such pair type of `arch`. Tables built before the pairs
    existed, and tables imported with a layer map, sum the two cells instead."""
    adds = [type_key(fused_layer(a, b)) for a, b in fusion_candidates(arch) if a.op == "add"]
    return bool(adds) and not table.layer_map and all(k in table.types for k in adds)


class Predictor:
    """`arch` compiled against a table.

    Rows are what the device runs: every layer as described, plus each conv with a following
    batch-norm folded in, which some width assignments produce, and each addition with the
    batch-norm that alone reads it where the table times those pairs (`fusion`)."""

    def __init__(self, table: LatencyTable, arch: Arch, allow_missing: bool = False):
        self.table, self.arch, self.allow_missing = table, arch, allow_missing
        self.overhead_s = overhead_per_extra_layer_s(table.recipe, table.meta)
        self.group_names = [g.name for g in arch.groups]
        gidx = {n: i for i, n in enumerate(self.group_names)}
        self.full = np.array([g.full for g in arch.groups])
        self.min = np.array([0 if g.may_be_zero else (g.full if not g.prunable else 1) for g in arch.groups])
        offsets, flat, pos = {}, [], 0
        for k, v in table.values.items():
            offsets[k] = pos
            flat.append(v.ravel())
            pos += v.size
        self.flat = np.concatenate(flat) if flat else np.zeros(0)

        rows: list[tuple[Layer, str | None]] = []  # (runtime layer, type key)
        self.row_of: dict[tuple[int, int | None], int] = {}
        for i, layer in enumerate(arch.layers):
            self.row_of[(i, None)] = len(rows)
            rows.append((layer, table.layer_type_of(arch, layer.name)))
        position = {l.name: i for i, l in enumerate(arch.layers)}
        self.pair_adds = table_pairs_adds(table, arch)
        for conv, bn in fusion_candidates(arch, self.pair_adds):
            fused = fused_layer(conv, bn)
            key = table.layer_map.get(conv.name) if table.layer_map else type_key(fused)
            self.row_of[(position[conv.name], position[bn.name])] = len(rows)
            rows.append((fused, key))
        n = len(rows)
        self.rows = rows
        self.base = np.zeros(n, np.int64)
        self.ncols = np.ones(n, np.int64)
        self.in_lo, self.in_hi = np.zeros(n, np.int64), np.zeros(n, np.int64)
        self.out_lo, self.out_hi = np.zeros(n, np.int64), np.zeros(n, np.int64)
        self.two = np.zeros(n, bool)
        self.covered = np.zeros(n, bool)
        self.skipped = np.zeros(n, bool)  # ops the table declares it does not time
        self.cin_g = np.array([gidx[l.c_in] for l, _ in rows])
        self.cout_g = np.array([gidx[l.c_out] for l, _ in rows])
        for r, (layer, key) in enumerate(rows):
            if key is None and layer.op in table.uncovered_ops:
                self.skipped[r] = True
                continue
            t = table.types.get(key) if key else None
            if t is None:
                continue
            self.covered[r] = True
            self.base[r] = offsets[key]
            self.ncols[r] = t.shape[1]
            self.in_lo[r], self.in_hi[r] = t.in_lo, t.in_hi
            self.two[r] = t.two_axes
            self.out_lo[r], self.out_hi[r] = (t.out_lo, t.out_hi) if t.two_axes else (0, 0)
        self.skipped_ops = [rows[r][0].name for r in np.flatnonzero(self.skipped[:len(arch.layers)])]
        lacking = [r for r in range(len(arch.layers)) if not self.covered[r] and not self.skipped[r]]
        self.missing = [rows[r][0].name for r in lacking]  # layers whose type the table lacks
        if lacking and not allow_missing:
            self._raise_lacking(lacking)
        # the tightest range of each group over the rows that read it: one cheap check per
        # prediction; a violation is then located layer by layer
        self.gmin = np.zeros(len(self.group_names), np.int64)
        self.gmax = np.full(len(self.group_names), np.iinfo(np.int64).max)
        for r in np.flatnonzero(self.covered):
            ranges = [(self.cin_g[r], self.in_lo[r], self.in_hi[r])]
            if self.two[r]:
                ranges.append((self.cout_g[r], self.out_lo[r], self.out_hi[r]))
            for g, lo, hi in ranges:
                self.gmin[g], self.gmax[g] = max(self.gmin[g], lo), min(self.gmax[g], hi)
        # one vectorised test per prediction covers both the assignment's validity and the
        # table's range; anything it flags is then explained by the slow paths
        self.ok_lo = np.maximum(np.maximum(self.min, self.gmin), 1)
        self.ok_hi = np.minimum(self.full, self.gmax)
        self.zero_ok = np.where(self.min == 0, 0, -1)
        self.defaults = [(n, int(self.full[i])) for i, n in enumerate(self.group_names)]
        self.known = frozenset(self.group_names)
        self._plans: dict[bytes, tuple[np.ndarray, ...]] = {}
        self._planner = RuntimePlanner(arch, self.pair_adds)

    def _raise_lacking(self, rows: list[int]) -> None:
        lacking: dict[str, list[str]] = {}
        for r in rows:
            layer, key = self.rows[r]
            lacking.setdefault(key or f"(no type for {layer.op})", []).append(layer.name)
        listed = "; ".join(f"{k} (layers {', '.join(v[:3])}{', ...' if len(v) > 3 else ''})" for k, v in lacking.items())
        incomplete = self.table.meta.get("incomplete_types") or {}
        hint = (f" — not finished in this table: {', '.join(k for k in lacking if k in incomplete)}; "
                "run build-tables again to complete it") if any(k in incomplete for k in lacking) else ""
        raise PredictionError(
            f"table {self.table.path} (built for {self.table.arch_name}) lacks layer types of {self.arch.name}: "
            f"{listed}{hint}. Build a table for this architecture, or pass allow_missing / --allow-missing to "
            "leave them out."
        )

    def _vector(self, widths: Mapping[str, int]) -> np.ndarray:
        vec = np.array([widths.get(n, d) for n, d in self.defaults])
        if vec.dtype.kind != "i" or not self.known.issuperset(widths) or (vec > self.full).any() \
                or (vec < self.min).any():
            valid = self.arch.channels(self.arch.validate(widths))  # raises the precise WidthError
            return np.array([valid[n] for n in self.group_names], np.int64)
        return vec

    def runtime_rows(self, vec: np.ndarray) -> np.ndarray:
        """Row indices of what the device runs for this assignment (uncovered rows included)."""
        row_of = self.row_of
        return np.array([row_of[step] for step in self._planner((vec == 0).tolist())], np.int64)

    def _plan(self, vec: np.ndarray) -> tuple[np.ndarray, ...]:
        sig = (vec == 0).tobytes()
        plan = self._plans.get(sig)
        if plan is None:
            rows = self.runtime_rows(vec)
            lacking = [int(r) for r in rows if not self.covered[r] and not self.skipped[r]]
            if lacking and not self.allow_missing:
                self._raise_lacking(lacking)
            rows = rows[self.covered[rows]]
            two = self.two[rows].astype(np.int64)
            const = self.base[rows] - self.in_lo[rows] * self.ncols[rows] - two * self.out_lo[rows]
            plan = (rows, const, self.ncols[rows], two, self.cin_g[rows], self.cout_g[rows])
            self._plans[sig] = plan
        return plan

    def _check_range(self, vec: np.ndarray, rows: np.ndarray) -> None:
        c_in = vec[self.cin_g[rows]]
        c_out = vec[self.cout_g[rows]]
        bad = (c_in < self.in_lo[rows]) | (c_in > self.in_hi[rows]) | \
              (self.two[rows] & ((c_out < self.out_lo[rows]) | (c_out > self.out_hi[rows])))
        if bad.any():
            r = int(rows[np.argmax(bad)])
            layer, key = self.rows[r]
            raise PredictionError(
                f"layer {layer.name} ({key}) needs cell c_in={int(vec[self.cin_g[r]])}, "
                f"c_out={int(vec[self.cout_g[r]])}, outside the table's range c_in {self.in_lo[r]}..{self.in_hi[r]}"
                + (f", c_out {self.out_lo[r]}..{self.out_hi[r]}" if self.two[r] else "")
                + f"; the table {self.table.path} cannot predict it without extrapolating"
            )

    def _cells(self, vec: np.ndarray, plan: tuple) -> np.ndarray:
        _, const, ncols, two, cin_g, cout_g = plan
        return self.flat[const + vec[cin_g] * ncols + two * vec[cout_g]]

    def predict(self, widths: Mapping[str, int]) -> float:
        """Predicted latency in seconds."""
        vec = np.array([widths.get(n, d) for n, d in self.defaults])
        if vec.dtype.kind != "i" or not self.known.issuperset(widths) or \
                (((vec < self.ok_lo) | (vec > self.ok_hi)) & (vec != self.zero_ok)).any():
            vec = self._vector(widths)  # raises a WidthError if the assignment is invalid
            self._check_range(vec, self._plan(vec)[0])  # names a layer outside the table's range
        cells = self._cells(vec, self._plan(vec))
        return float(cells.sum()) - self.overhead_s * (len(cells) - 1)

    def breakdown(self, widths: Mapping[str, int]) -> list[LayerLatency]:
        vec = self._vector(widths)
        plan = self._plan(vec)
        rows = plan[0]
        self._check_range(vec, rows)
        seconds = dict(zip(rows.tolist(), self._cells(vec, plan).tolist()))
        out = []
        for r in self.runtime_rows(vec).tolist():
            layer, key = self.rows[r]
            c_in, c_out = int(vec[self.cin_g[r]]), int(vec[self.cout_g[r]])
            out.append(LayerLatency(layer.name, key if r in seconds else None, c_in, c_out, seconds.get(r)))
        return out
