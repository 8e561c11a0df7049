"""Imports the thesis's Raspberry Pi 3B tables (per-layer-name arrays) into a table file.

The source (`tables/source/rpi3b-wrn-40-2-tflite-1.13.1.npz`, see its README) holds one array
per thesis layer name, already averaged over three passes and smoothed with sigma 3; values in
seconds, `A[i-1, o-1]` for i input and o output channels. Its layers are keyed by name, so
the table gets a `layer_map` from our WRN-40-2 layers to those names. It has no residual
additions and no unfoldable batch-norms: the table says so, and so does every prediction.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from models.families import wide_resnet
from .devices.base import DeviceInfo
from .layer_types import LayerType
from .recipe import TableRecipe
from .store import TableFileError, TableStore

#: thesis key -> (op, kernel, stride, input map)  (from the data README)
THESIS_TYPES = {
    "Conv_0": ("conv", 3, 1, 32),
    "Stride_1": ("conv", 3, 1, 32), "No_Stride_1": ("conv", 3, 1, 32), "Skip_1": ("conv", 1, 1, 32),
    "Stride_2": ("conv", 3, 2, 32), "No_Stride_2": ("conv", 3, 1, 16), "Skip_2": ("conv", 1, 2, 32),
    "Stride_3": ("conv", 3, 2, 16), "No_Stride_3": ("conv", 3, 1, 8), "Skip_3": ("conv", 1, 2, 16),
    "FC": ("head", 1, 1, 8),
}
PROVENANCE = (
    "Raspberry Pi 3B (Cortex-A53, 32-bit OS), TensorFlow Lite 1.13.1 benchmark_model, 1 thread, "
    "--num_runs=11 mean, 3 passes averaged, gaussian_filter(sigma=3, mode='nearest'); "
    "N. Greffe, 'Machine Learning under resource constraints', ULiege 2019, github.com/NatGr/NetAdapt "
    "perf_tables/res-40-2-tf-lite-rasberry-pi.pickle (converted to npz). Every cell is Conv2D->BN->ReLU, "
    "so skip convs include a BN+ReLU the real shortcuts lack; no residual additions, no unfoldable BN."
)


def thesis_layer_map(depth: int = 40, k: int = 2) -> dict[str, str]:
    arch = wide_resnet(depth, k)
    mapping = {}
    for layer in arch.layers:
        name = layer.name
        if name == "stem":
            mapping[name] = "Conv_0"
        elif name == "head":
            mapping[name] = "FC"
        elif layer.op == "conv":
            stage, block = name[1], int(name.split(".")[0].split("b")[1])
            part = name.split(".")[1]
            if part == "shortcut":
                mapping[name] = f"Skip_{stage}"
            elif part == "conv1":
                mapping[name] = f"Stride_{stage}" if block == 0 else f"No_Stride_{stage}"
            else:
                mapping[name] = f"No_Stride_{stage}"
    return mapping


def import_thesis_table(npz_path: str | Path, out: str | Path) -> Path:
    out = Path(out)
    if out.exists():
        raise TableFileError(f"{out} exists: remove it first (an import never merges into a table)")
    with np.load(npz_path, allow_pickle=False) as data:
        arrays = {k: np.asarray(data[k], dtype=float) for k in data.files}
    unknown = set(arrays) - set(THESIS_TYPES)
    if unknown or set(THESIS_TYPES) - set(arrays):
        raise TableFileError(f"{npz_path}: expected keys {sorted(THESIS_TYPES)}, got {sorted(arrays)}")
    # the thesis's method: benchmark_model's mean of 11 runs, 3 passes, sigma 3 with mode "nearest"
    recipe = TableRecipe(device_kind="ssh", runs=11, passes=3, sigma=3.0, estimator="mean", edges="nearest")
    store = TableStore.create_or_open(out, "wrn-40-2", recipe)
    try:
        store.set_meta(source="import", provenance=PROVENANCE, uncovered_ops=["add", "bn_act"], device="rpi3b",
                       units="seconds")
        run_id = store.start_run(DeviceInfo("rpi3b", "ssh", "benchmark_model", "1.13.1", "Raspberry Pi 3B (thesis)", 1,
                                            {"num_runs": 11, "passes": 3, "sigma": 3, "imported_from": Path(npz_path).name}))
        rows = []
        for key, a in arrays.items():
            op, kernel, stride, size = THESIS_TYPES[key]
            n_in, n_out = a.shape
            out_lo, out_hi = (10, 10) if op == "head" else (1, n_out)
            t = LayerType(key, op, kernel, stride, size, True, "relu" if op == "conv" else None, 1, n_in, out_lo, out_hi)
            store.add_layer_type(t, 1, [(i, o) for i in range(1, n_in + 1) for o in range(out_lo, out_hi + 1)])
            for i in range(n_in):
                for j in range(n_out):
                    rows.append({"type_key": key, "c_in": i + 1, "c_out": out_lo + j, "mean": float(a[i, j]),
                                 "median": None, "std": None, "count": 3, "value": float(a[i, j]),
                                 "smoothed": float(a[i, j]), "measured": 1})
        store.write_aggregates(rows)
        store.set_layer_map(thesis_layer_map())
        store.set_meta(incomplete_types={}, imported_at=time.time())
        store.end_run(run_id, "imported")
    finally:
        store.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Import the thesis's Raspberry Pi 3B WRN-40-2 tables (npz) into a table file.")
    parser.add_argument("npz", help="rpi3b-wrn-40-2-tflite-1.13.1.npz")
    parser.add_argument("--out", default="tables/rpi3b-wrn-40-2.sqlite")
    args = parser.parse_args(argv)
    try:
        print(import_thesis_table(args.npz, args.out))
    except (TableFileError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
