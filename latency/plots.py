"""Latency tables and per-layer breakdowns as PNG pictures (matplotlib, Agg, no pyplot state).

One picture per layer type: a heatmap of the table's `value` (the estimator of the passes,
interpolated where the grid is sparse, never smoothed) over c_in x c_out, each cell one pixel
block, so the runtime's channel-block steps stay visible; measured cells carry a dot. A layer
type with one varying channel axis (c_out range 0, or a fixed c_in or c_out: the stem, the
head) gets a line plot instead. The table file is only read.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .layer_types import LayerType
from .store import TableFileError, TableStore

FIGSIZE = (7.5, 5.8)
DPI = 110


@dataclass(frozen=True)
class TypeGrid:
    """One layer type's cells. Two axes: `seconds[i_out, i_in]`; one axis: `seconds[i_in]`
    (and `c_out` None). NaN where the table holds no value."""

    key: str
    c_in: np.ndarray
    c_out: np.ndarray | None
    seconds: np.ndarray
    measured: np.ndarray  # bool, shape of `seconds`

    @property
    def values_present(self) -> int:
        return int(np.isfinite(self.seconds).sum())


@dataclass(frozen=True)
class TableSource:
    """What a picture's title says about the table."""

    name: str
    arch: str
    devices: str  # device name(s) and runtime of the cells' measurements
    estimator: str
    block: int  # the runtime's channel block the grid was chosen around (0: none)


def type_grids(types: dict[str, LayerType], cells: Iterable[tuple[str, int, int, float | None, int]]
               ) -> dict[str, TypeGrid]:
    """Pure: the grids of `types` from (type key, c_in, c_out, seconds, measured) rows; rows
    of other types, or outside a type's range, are ignored."""
    grids = {}
    for key, t in types.items():
        c_in = np.arange(t.in_lo, t.in_hi + 1)
        c_out = np.arange(t.out_lo, t.out_hi + 1) if t.out_hi > 0 else None
        shape = (len(c_out), len(c_in)) if c_out is not None else (len(c_in),)
        grids[key] = TypeGrid(key, c_in, c_out, np.full(shape, np.nan), np.zeros(shape, dtype=bool))
    for key, ci, co, seconds, measured in cells:
        g = grids.get(key)
        if g is None or not g.c_in[0] <= ci <= g.c_in[-1]:
            continue
        if g.c_out is None:
            index: tuple = (ci - g.c_in[0],)
        elif g.c_out[0] <= co <= g.c_out[-1]:
            index = (co - g.c_out[0], ci - g.c_in[0])
        else:
            continue
        g.seconds[index] = np.nan if seconds is None else seconds
        g.measured[index] = bool(measured)
    return grids


def time_unit(max_seconds: float) -> tuple[float, str]:
    """(factor from seconds, unit) that keeps the largest value readable: ms from 1 ms up, else µs."""
    return (1e3, "ms") if max_seconds >= 1e-3 else (1e6, "µs")


def table_source(store: TableStore) -> TableSource:
    """Arch, measuring devices and estimator of an open table (read only)."""
    meta = store.meta()
    recipe = store.recipe()
    devices = [f"{d} ({rt} {v})" if rt else d for d, rt, v in store.db.execute(
        "select distinct device, runtime, runtime_version from runs "
        "where id in (select distinct run_id from measurements) order by device")]
    if not devices and meta.get("device"):
        devices = [str(meta["device"])]  # an imported table: no runs of its own
    return TableSource(store.path.name, str(meta.get("arch", "?")), ", ".join(devices) or "unknown device",
                       recipe.estimator, recipe.grid_block)


def _new_figure(size: tuple[float, float] = FIGSIZE):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(fig)  # Agg, no display, no global pyplot state
    return fig


def _block_ticks(ax, axis: str, lo: int, hi: int, block: int) -> None:
    """Ticks at the multiples of the channel block, where the runtime's steps are."""
    if block <= 0 or (hi - lo) / block > 24:
        return
    ticks = [lo] + [m for m in range(block * -(-lo // block), hi + 1, block) if m != lo] + ([hi] if hi % block else [])
    (ax.set_xticks if axis == "x" else ax.set_yticks)(ticks)


def _title(grid: TypeGrid, source: TableSource, marks: str) -> str:
    n_measured, n = int(grid.measured.sum()), grid.seconds.size
    measured = ("every cell measured" if n_measured == n
                else f"{n_measured:,} of {n:,} cells measured ({marks}), the rest interpolated")
    return (f"{grid.key}\n{source.arch} ({source.name}), measured on {source.devices}\n"
            f"value: estimator '{source.estimator}', unsmoothed; {measured}")


def heatmap_png(grid: TypeGrid, path: Path, source: TableSource) -> None:
    """Latency over c_in (x) x c_out (y), one pixel block per cell; dots on measured cells."""
    import matplotlib

    factor, unit = time_unit(float(np.nanmax(grid.seconds)))
    fig = _new_figure()
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")  # cells without a value (unfinished)
    lo_in, hi_in, lo_out, hi_out = grid.c_in[0], grid.c_in[-1], grid.c_out[0], grid.c_out[-1]
    image = ax.imshow(np.ma.masked_invalid(grid.seconds * factor), origin="lower", aspect="auto",
                      interpolation="nearest", cmap=cmap,
                      extent=(lo_in - 0.5, hi_in + 0.5, lo_out - 0.5, hi_out + 0.5))
    if not grid.measured.all():
        ys, xs = np.nonzero(grid.measured)
        size = float(np.clip(2000.0 / max(grid.seconds.shape), 1.0, 9.0))
        ax.scatter(grid.c_in[xs], grid.c_out[ys], s=size, c="white", edgecolors="black", linewidths=0.3)
    bar = fig.colorbar(image, ax=ax)
    bar.set_label(f"latency ({unit})")
    _block_ticks(ax, "x", lo_in, hi_in, source.block)
    _block_ticks(ax, "y", lo_out, hi_out, source.block)
    ax.set_xlabel("input channels (c_in)")
    ax.set_ylabel("output channels (c_out)")
    ax.set_title(_title(grid, source, "dots"), fontsize=8.5)
    fig.tight_layout()
    fig.savefig(path, format="png")


def _line_axis(grid: TypeGrid) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(channels, seconds, measured, x label) of a grid with one varying axis."""
    if grid.c_out is None:
        return grid.c_in, grid.seconds, grid.measured, "channels (c_in = c_out)"
    if len(grid.c_out) == 1:
        return grid.c_in, grid.seconds[0], grid.measured[0], f"input channels (c_in; c_out fixed at {grid.c_out[0]})"
    return grid.c_out, grid.seconds[:, 0], grid.measured[:, 0], f"output channels (c_out; c_in fixed at {grid.c_in[0]})"


def line_png(grid: TypeGrid, path: Path, source: TableSource) -> None:
    """A type with one varying channel axis: latency over it; markers on measured cells."""
    channels, seconds, measured, label = _line_axis(grid)
    factor, unit = time_unit(float(np.nanmax(seconds)))
    fig = _new_figure((FIGSIZE[0], FIGSIZE[1] * 0.8))
    ax = fig.add_subplot()
    y = seconds * factor
    ax.plot(channels, y, "-", lw=1.0, color="tab:blue", drawstyle="steps-mid", label="table value")
    if not measured.all():
        ax.plot(channels[measured], y[measured], "o", ms=3, color="black", label="measured cell")
    _block_ticks(ax, "x", int(channels[0]), int(channels[-1]), source.block)
    ax.set_xlabel(label)
    ax.set_ylabel(f"latency ({unit})")
    ax.set_ylim(bottom=0)
    ax.grid(True, lw=0.3)
    ax.legend(loc="upper left", fontsize=7)
    ax.set_title(_title(grid, source, "markers"), fontsize=8.5)
    fig.tight_layout()
    fig.savefig(path, format="png")


def is_line(grid: TypeGrid) -> bool:
    """One varying channel axis (one-axis op, or a fixed c_in or c_out): a line, not a heatmap."""
    return grid.c_out is None or 1 in grid.seconds.shape


def _file_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key) + ".png"


def read_table(table: str | Path, types: Sequence[str] | None = None) -> tuple[dict[str, TypeGrid], TableSource]:
    """The grids of a table's layer types (all, or `types`) and what their titles say, read
    through a read-only `TableStore`. An unknown type key raises TableFileError naming the
    known ones."""
    store = TableStore.open(table)
    try:
        layer_types = store.layer_types()
        if types:
            unknown = [k for k in types if k not in layer_types]
            if unknown:
                raise TableFileError(f"{Path(table).name} has no layer type {', '.join(unknown)}; "
                                     f"it has {', '.join(sorted(layer_types))}")
            layer_types = {k: layer_types[k] for k in types}
        return type_grids(layer_types, store.cell_values(smoothed=False)), table_source(store)
    finally:
        store.close()


def plot_table(table: str | Path, out_dir: str | Path, types: Sequence[str] | None = None
               ) -> tuple[list[Path], list[str]]:
    """One PNG per layer type of the table (or of `types`) in `out_dir`, named by its key.
    Returns (files written, types left out because the table holds no value for them yet)."""
    grids, source = read_table(table, types)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written, empty = [], []
    for key in sorted(grids):
        grid = grids[key]
        if not grid.values_present:
            empty.append(key)
            continue
        path = out / _file_name(key)
        (line_png if is_line(grid) else heatmap_png)(grid, path, source)
        written.append(path)
    return written, empty


def plot_breakdown(rows: Sequence, path: str | Path, title: str) -> Path:
    """Horizontal bars of a network's per-layer latency, in network order, coloured by op.

    `rows`: `latency.table.LayerLatency` (layer, type_key, c_in, c_out, seconds); a row with
    `seconds` None (a layer the table does not cover) is listed without a bar."""
    rows = list(rows)
    if not rows:
        raise ValueError("plot_breakdown: no layers to draw")
    known = [r.seconds for r in rows if r.seconds is not None]
    factor, unit = time_unit(max(known) if known else 0.0)
    fig = _new_figure((8.0, float(np.clip(1.4 + 0.19 * len(rows), 3.0, 40.0))))
    ax = fig.add_subplot()
    ops = sorted({(r.type_key or "not in table").split("-")[0] for r in rows})
    palette = dict(zip(ops, [f"C{i % 10}" for i in range(len(ops))]))
    y = np.arange(len(rows))
    for op in ops:
        idx = [i for i, r in enumerate(rows) if (r.type_key or "not in table").split("-")[0] == op]
        ax.barh(y[idx], [(rows[i].seconds or 0.0) * factor for i in idx], color=palette[op], label=op, height=0.75)
    for i, r in enumerate(rows):
        if r.seconds is None:
            ax.text(0, i, "  not in table", va="center", fontsize=7, color="tab:red")
    ax.set_yticks(y, [f"{r.layer}  {r.c_in}→{r.c_out}" for r in rows], fontsize=7)
    ax.invert_yaxis()  # first layer on top
    ax.set_xlabel(f"predicted latency ({unit})")
    total = sum(known) * factor
    ax.set_title(f"{title}\n{len(rows)} layers, sum {total:.3g} {unit}", fontsize=9)
    ax.grid(True, axis="x", lw=0.3)
    ax.legend(loc="lower right", fontsize=7, title="op", title_fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path
