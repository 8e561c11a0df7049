"""A search's run directory: the per-iteration checkpoint and the outputs people read.

    RUN/state.pt       the checkpoint (atomic, replaced after every iteration)
    RUN/config.json    the settings the run was started with
    RUN/history.json   one entry per iteration (rewritten after every iteration)
    RUN/widths.json    the current / final width assignment and every saved point
    RUN/model.pt       the final network (checkpoint_io format), model-at-F.pt per saved point
    RUN/channels.png   channels per layer, pruned against original
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from models.arch import Arch
from models.atomic_write import atomic_path, write_text_atomic
from .checkpoint_io import atomic_torch_save
from .unreadable import why_unreadable

STATE_VERSION = 1


class SearchError(RuntimeError):
    """A search that cannot start or go on (unreachable target, stuck, bad resume)."""


def stderr_log(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)


Log = Callable[[str], None]
Callback = Callable[[str, dict], None]


def write_json(path: Path, obj: Any) -> None:
    """Atomic: readers never see a half-written file."""
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.ndarray, torch.Tensor)):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# -- RNG states ---------------------------------------------------------------------------------
def capture_rng() -> dict:
    """Global RNG states as plain data (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": list(random.getstate()[1]),
    }


def restore_rng(state: Mapping) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate((3, tuple(state["python"]), None))


# -- the run directory --------------------------------------------------------------------------
class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def state(self) -> Path:
        return self.path / "state.pt"

    def file(self, name: str) -> Path:
        return self.path / name

    def start(self, config: Mapping[str, Any], resume: bool) -> dict | None:
        """Opens the run: the saved state when resuming (after checking the settings are the
        same), None for a fresh start (refusing to overwrite an existing run)."""
        if resume:
            if not self.state.is_file():
                raise SearchError(f"nothing to resume in {self.path}: no {self.state.name} there (run without --resume to start)")
            try:
                state = torch.load(self.state, map_location="cpu", weights_only=True)
            except Exception as exc:
                raise SearchError(f"cannot read the run checkpoint {self.state}: {why_unreadable(self.state, exc)}; "
                                  "the run cannot continue from it: start afresh with another --out") from exc
            if state.get("version") != STATE_VERSION:
                raise SearchError(f"{self.state} has checkpoint version {state.get('version')}, expected {STATE_VERSION}")
            diff = {k: (state["config"].get(k), v) for k, v in config.items() if state["config"].get(k) != v}
            if diff:
                listed = "; ".join(f"{k}: run has {a!r}, now {b!r}" for k, (a, b) in diff.items())
                raise SearchError(f"cannot resume {self.path} with different settings ({listed}); give the run's "
                                  "settings again, or another --out (or delete this run) to start afresh")
            return state
        if self.state.exists():
            raise SearchError(f"{self.path} already holds a run ({self.state.name}); pass --resume to continue it "
                              "or choose another output directory")
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.file("config.json"), dict(config))
        return None

    def checkpoint(self, state: dict) -> None:
        state = dict(state, version=STATE_VERSION, rng=capture_rng())
        atomic_torch_save(state, self.state)


# -- outputs ------------------------------------------------------------------------------------
def widths_document(arch: Arch, algorithm: str, widths: Mapping[str, int], initial_widths: Mapping[str, int],
                    initial_latency: float, latency: float, target: float, saved: list[dict],
                    finished: bool, table: str) -> dict:
    return {
        "arch": arch.name,
        "algorithm": algorithm,
        "finished": finished,
        "table": table,
        "target_fraction": target,
        "initial_latency_s": initial_latency,
        "predicted_latency_s": latency,
        "fraction": latency / initial_latency if initial_latency else None,
        "widths": {k: int(v) for k, v in widths.items()},  # models.arch.load_widths reads this key
        "initial_widths": {k: int(v) for k, v in initial_widths.items()},
        "saved": saved,
    }


def plot_channels(arch: Arch, original: Mapping[str, int], pruned: Mapping[str, int], path: Path,
                  title: str = "", saved: list[dict] | None = None) -> None:
    """Output channels of every convolution (and squeeze-excite hidden width) against the
    original network, in the style of the thesis's Figures 4.7 / 4.15: removed layers at 0."""
    # a bare Figure on the Agg canvas: no pyplot, so no global backend is switched
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layers = [l for l in arch.layers if l.op in ("conv", "dwconv", "se")]
    ch_orig = arch.channels(arch.validate(original))
    ch_new = arch.channels(arch.validate(pruned))
    alive = {a.layer.name for a in arch.active_layers(pruned)}
    x = np.arange(len(layers))
    before = [ch_orig[l.c_out] for l in layers]
    after = [ch_new[l.c_out] if l.name in alive else 0 for l in layers]
    fig = Figure(figsize=(max(6.0, 0.28 * len(layers) + 2), 4.2))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.bar(x, before, color="#c9d6e8", label="original", width=0.8)
    for point in saved or []:
        w = point["widths"]
        ch = arch.channels(arch.validate(w))
        alive_p = {a.layer.name for a in arch.active_layers(w)}
        ax.plot(x, [ch[l.c_out] if l.name in alive_p else 0 for l in layers], marker=".", lw=0.8,
                label=f"at {point['fraction']:.2f} of the latency")
    ax.bar(x, after, color="#1f4e8c", label="pruned", width=0.5)
    ax.set_xticks(x)
    ax.set_xticklabels([l.name for l in layers], rotation=90, fontsize=6)
    ax.set_ylabel("output channels")
    ax.set_title(title or f"{arch.name}: channels per layer")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:  # keeps the suffix: savefig picks the format from it
        fig.savefig(tmp, dpi=120)
