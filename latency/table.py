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

from models.arch import Arch, WidthError
from .finalize import type_grid
from .layer_types import LayerType, type_key
from .store import TableFileError, TableStore

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
                 measured: dict[str, np.ndarray], layer_map: dict[str, str]):
        self.path = path
        self.meta = meta
        self.types = types
        self.values = values  # key -> (n_in, n_out) seconds
        self.measured = measured  # key -> bool mask of cells timed (not interpolated)
        self.layer_map = layer_map
        self._predictors: dict[tuple[str, bool], Predictor] = {}

    @classmethod
    def open(cls, path: str | Path, smoothed: bool = True) -> "LatencyTable":
        """Loads every finished layer type; `smoothed=False` gives the raw means of the passes."""
        store = TableStore.open(path)
        try:
            meta = store.meta()
            all_types = store.layer_types()
            column = "smoothed" if smoothed else "mean"
            values = {k: np.full(t.shape, np.nan) for k, t in all_types.items()}
            measured = {k: np.zeros(t.shape, bool) for k, t in all_types.items()}
            for key, c_in, c_out, v, m in store.db.execute(
                f"select type_key, c_in, c_out, {column}, measured from aggregates"
            ):
                t = all_types[key]
                i, j = c_in - t.in_lo, (c_out - t.out_lo) if t.two_axes else 0
                values[key][i, j] = v
                measured[key][i, j] = bool(m)
            done = {k for k, v in values.items() if not np.isnan(v).any()}
            layer_map = store.layer_map()
        finally:
            store.close()
        types = {k: t for k, t in all_types.items() if k in done}
        return cls(Path(path), meta, types, {k: values[k] for k in done}, {k: measured[k] for k in done}, layer_map)

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


class Predictor:
    """`arch` compiled against a table."""

    def __init__(self, table: LatencyTable, arch: Arch, allow_missing: bool = False):
        self.table, self.arch = table, arch
        self.group_names = [g.name for g in arch.groups]
        gidx = {n: i for i, n in enumerate(self.group_names)}
        self.full = np.array([g.full for g in arch.groups])
        self.min = np.array([0 if g.may_be_zero else (g.full if not g.prunable else 1) for g in arch.groups])
        self.fixed = {g.name: g.full for g in arch.groups if not g.prunable}
        keys = list(table.types)
        offsets, flat, pos = {}, [], 0
        for k in keys:
            offsets[k] = pos
            flat.append(table.values[k].ravel())
            pos += table.values[k].size
        self.flat = np.concatenate(flat) if flat else np.zeros(0)
        n = len(arch.layers)
        self.layer_key: list[str | None] = []
        self.missing: list[str] = []  # layers whose type the table lacks
        self.skipped_ops: list[str] = []  # layers of ops the table declares uncovered
        self.base = np.zeros(n, np.int64)
        self.ncols = np.ones(n, np.int64)
        self.in_lo, self.in_hi = np.zeros(n, np.int64), np.zeros(n, np.int64)
        self.out_lo, self.out_hi = np.zeros(n, np.int64), np.zeros(n, np.int64)
        self.two = np.zeros(n, bool)
        self.covered = np.zeros(n, bool)
        self.cin_g = np.array([gidx[l.c_in] for l in arch.layers])
        self.cout_g = np.array([gidx[l.c_out] for l in arch.layers])
        lacking: dict[str, list[str]] = {}
        for i, layer in enumerate(arch.layers):
            key = table.layer_type_of(arch, layer.name)
            self.layer_key.append(key)
            if key is None and layer.op in table.uncovered_ops:
                self.skipped_ops.append(layer.name)
                continue
            t = table.types.get(key) if key else None
            if t is None:
                lacking.setdefault(key or f"(no type for {layer.op})", []).append(layer.name)
                continue
            self.covered[i] = True
            self.base[i] = offsets[key]
            self.ncols[i] = t.shape[1]
            self.in_lo[i], self.in_hi[i] = t.in_lo, t.in_hi
            self.two[i] = t.two_axes
            self.out_lo[i], self.out_hi[i] = (t.out_lo, t.out_hi) if t.two_axes else (0, 0)
        if lacking:
            self.missing = [l for ls in lacking.values() for l in ls]
            if not allow_missing:
                listed = "; ".join(f"{k} (layers {', '.join(v[:3])}{', ...' if len(v) > 3 else ''})" for k, v in lacking.items())
                incomplete = table.meta.get("incomplete_types") or {}
                hint = (f" — not finished in this table: {', '.join(k for k in lacking if k in incomplete)}; run build-tables again to complete it"
                        if any(k in incomplete for k in lacking) else "")
                raise PredictionError(
                    f"table {table.path} (built for {table.arch_name}) lacks layer types of {arch.name}: {listed}{hint}. "
                    "Build a table for this architecture, or pass allow_missing / --allow-missing to leave them out."
                )
        # the loosest range of each group over the layers that read it: one cheap check per
        # prediction; a violation is then located layer by layer
        self.gmin = np.zeros(len(self.group_names), np.int64)
        self.gmax = np.full(len(self.group_names), np.iinfo(np.int64).max)
        for i in np.flatnonzero(self.covered):
            ranges = [(self.cin_g[i], self.in_lo[i], self.in_hi[i])]
            if self.two[i]:
                ranges.append((self.cout_g[i], self.out_lo[i], self.out_hi[i]))
            for g, lo, hi in ranges:
                self.gmin[g], self.gmax[g] = max(self.gmin[g], lo), min(self.gmax[g], hi)
        self.defaults = [(n, int(self.full[i])) for i, n in enumerate(self.group_names)]
        self.known = frozenset(self.group_names)
        self._plans: dict[bytes, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}

    def _vector(self, widths: Mapping[str, int]) -> np.ndarray:
        vec = np.array([widths.get(n, d) for n, d in self.defaults])
        if vec.dtype.kind != "i" or not self.known.issuperset(widths) or (vec > self.full).any() \
                or (vec < self.min).any():
            return self._checked_vector(widths)
        return vec

    def _checked_vector(self, widths: Mapping[str, int]) -> np.ndarray:
        valid = self.arch.channels(self.arch.validate(widths))  # raises the precise WidthError
        return np.array([valid[n] for n in self.group_names], np.int64)

    def _plan(self, vec: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        zero = vec == 0
        sig = zero.tobytes()
        plan = self._plans.get(sig)
        if plan is None:
            zero_names = frozenset(n for n, z in zip(self.group_names, zero) if z)
            idx = np.array([i for i, _ in self.arch.plan(zero_names)], np.int64)
            idx = idx[self.covered[idx]]
            two = self.two[idx].astype(np.int64)
            const = self.base[idx] - self.in_lo[idx] * self.ncols[idx] - two * self.out_lo[idx]
            plan = (idx, const, self.ncols[idx], two)
            self._plans[sig] = plan
        return plan

    def _indices(self, vec: np.ndarray, plan: np.ndarray) -> np.ndarray:
        c_in = vec[self.cin_g[plan]]
        c_out = np.where(self.two[plan], vec[self.cout_g[plan]], 0)
        bad = (c_in < self.in_lo[plan]) | (c_in > self.in_hi[plan]) | \
              (self.two[plan] & ((c_out < self.out_lo[plan]) | (c_out > self.out_hi[plan])))
        if bad.any():
            i = int(plan[np.argmax(bad)])
            layer = self.arch.layers[i]
            raise PredictionError(
                f"layer {layer.name} ({self.layer_key[i]}) needs cell c_in={int(vec[self.cin_g[i]])}, "
                f"c_out={int(vec[self.cout_g[i]])}, outside the table's range c_in {self.in_lo[i]}..{self.in_hi[i]}"
                + (f", c_out {self.out_lo[i]}..{self.out_hi[i]}" if self.two[i] else "")
                + f"; the table {self.table.path} cannot predict it without extrapolating"
            )
        return self.base[plan] + (c_in - self.in_lo[plan]) * self.ncols[plan] + \
            np.where(self.two[plan], c_out - self.out_lo[plan], 0)

    def predict(self, widths: Mapping[str, int]) -> float:
        vec = self._vector(widths)
        if ((vec != 0) & ((vec < self.gmin) | (vec > self.gmax))).any():
            idx = self._plan(vec)[0]
            self._indices(vec, idx)  # names the layer outside the table's range
        idx, const, ncols, two = self._plan(vec)
        return float(self.flat[const + vec[self.cin_g[idx]] * ncols + two * vec[self.cout_g[idx]]].sum())

    def breakdown(self, widths: Mapping[str, int]) -> list[LayerLatency]:
        vec = self._vector(widths)
        zero_names = frozenset(n for n, v in zip(self.group_names, vec) if v == 0)
        out = []
        for i, _ in self.arch.plan(zero_names):
            layer = self.arch.layers[i]
            c_in, c_out = int(vec[self.cin_g[i]]), int(vec[self.cout_g[i]])
            if self.covered[i]:
                idx = self._indices(vec, np.array([i]))
                out.append(LayerLatency(layer.name, self.layer_key[i], c_in, c_out, float(self.flat[idx[0]])))
            else:
                out.append(LayerLatency(layer.name, None, c_in, c_out, None))
        return out
