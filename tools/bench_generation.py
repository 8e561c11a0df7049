"""Benchmark: single-layer .tflite generation by template rewriting vs the TFLite converter.

    python -m tools.bench_generation [--jobs 2] [--skip-timing] [--table T]

1. models/s for ~20 cells of a 3x3 conv at 32x32: Keras build + converter vs render;
2. seconds to render every cell of a WideResNet-40-2-sized grid (optionally in processes);
3. on-device-style latency (ai_edge_litert, 1 thread, 5 warm-up + 50 runs) of rendered vs
   directly converted models for a few sampled cells: weights are random, the cost must not be;
4. with --table (a table built since tables store their templates): the templates of its layer
   types converted, as a process without them does, against adopted from the table, as a
   report or a resumed build does.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if __package__ in (None, ""):  # run as a script: make `latency` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from latency.keras_snippets import KINDS, build_template, convert_keras, keras_layer_model
from latency.tflite_rewrite import ModelTemplate


@dataclass(frozen=True)
class LayerType:
    name: str
    kind: str
    maxima: tuple[int, ...]  # per axis of KINDS[kind]: every count 1..max is a cell
    input_hw: int
    stride: int = 1
    kernel: int = 1

    def cells(self) -> list[dict[str, int]]:
        grids = np.meshgrid(*[np.arange(1, m + 1) for m in self.maxima], indexing="ij")
        flat = np.stack([g.ravel() for g in grids], axis=1)
        return [dict(zip(KINDS[self.kind], map(int, row))) for row in flat]


# The conv types of a WRN-40-2 on 32x32 CIFAR images: (c_in max, c_out max, map, stride, kernel).
WRN_40_2: list[LayerType] = [
    LayerType("stem 3x3", "conv", (3, 16), 32, 1, 3),
    LayerType("b1 first 3x3", "conv_bn_relu", (16, 32), 32, 1, 3),
    LayerType("b1 3x3 +bn", "conv_bn_relu", (32, 32), 32, 1, 3),
    LayerType("b1 3x3", "conv", (32, 32), 32, 1, 3),
    LayerType("b1 shortcut 1x1", "conv", (16, 32), 32, 1, 1),
    LayerType("b2 first 3x3 s2", "conv_bn_relu", (32, 64), 32, 2, 3),
    LayerType("b2 3x3 +bn", "conv_bn_relu", (64, 64), 16, 1, 3),
    LayerType("b2 3x3", "conv", (64, 64), 16, 1, 3),
    LayerType("b2 shortcut 1x1 s2", "conv", (32, 64), 32, 2, 1),
    LayerType("b3 first 3x3 s2", "conv_bn_relu", (64, 128), 16, 2, 3),
    LayerType("b3 3x3 +bn", "conv_bn_relu", (128, 128), 8, 1, 3),
    LayerType("b3 3x3", "conv", (128, 128), 8, 1, 3),
    LayerType("b3 shortcut 1x1 s2", "conv", (64, 128), 16, 2, 1),
    LayerType("add 32", "add", (32,), 32),
    LayerType("add 16", "add", (64,), 16),
    LayerType("add 8", "add", (128,), 8),
    LayerType("bn+relu 32", "bn_relu", (32,), 32),
    LayerType("bn+relu 16", "bn_relu", (64,), 16),
    LayerType("bn+relu 8", "bn_relu", (128,), 8),
    LayerType("head", "head", (128,), 8),
]


def _template(t: LayerType) -> ModelTemplate:
    return build_template(t.kind, input_hw=t.input_hw, stride=t.stride, kernel=t.kernel)


def _render_chunk(template: ModelTemplate, cells: list[dict[str, int]], first_seed: int) -> tuple[int, int]:
    """Worker: render cells, return (models, bytes) so that nothing is optimised away."""
    total = 0
    for i, ch in enumerate(cells):
        total += len(template.render(ch, seed=first_seed + i))
    return len(cells), total


def bench_converter_vs_render(n_cells: int = 20) -> None:
    print(f"== 1. converter vs render: {n_cells} cells of conv_bn_relu 3x3 @ 32x32 ==")
    rng = np.random.default_rng(0)
    cells = [{"c_in": int(a), "c_out": int(b)} for a, b in rng.integers(1, 129, size=(n_cells, 2))]
    t0 = time.perf_counter()
    tpl = build_template("conv_bn_relu", input_hw=32, stride=1, kernel=3)
    t_tpl = time.perf_counter() - t0

    t_build = t_conv = 0.0
    for ch in cells:
        t0 = time.perf_counter()
        model = keras_layer_model("conv_bn_relu", ch, input_hw=32, kernel=3)
        t1 = time.perf_counter()
        convert_keras(model)
        t_build += t1 - t0
        t_conv += time.perf_counter() - t1
    t0 = time.perf_counter()
    tpl.render(cells[0])  # first render of a process generates the random-weight pool
    t_first = time.perf_counter() - t0
    reps = 20  # renders are too quick to time one pass reliably
    t0 = time.perf_counter()
    for r in range(reps):
        for i, ch in enumerate(cells):
            tpl.render(ch, seed=r * n_cells + i)
    t_render = (time.perf_counter() - t0) / reps

    conv_rate = n_cells / (t_build + t_conv)
    render_rate = n_cells / t_render
    print(f"template (keras build + convert + parse): {t_tpl:.2f} s, once per layer type "
          f"(first in process includes the TensorFlow import)")
    print(f"first render of a process (random-weight pool): {t_first * 1e3:.0f} ms, once per process")
    print(f"converter: {conv_rate:8.2f} models/s  ({(t_build + t_conv) / n_cells * 1e3:.0f} ms/model: "
          f"keras build {t_build / n_cells * 1e3:.0f} ms + convert {t_conv / n_cells * 1e3:.0f} ms)")
    print(f"render:    {render_rate:8.0f} models/s  ({t_render / n_cells * 1e6:.0f} us/model)")
    print(f"speed-up:  {render_rate / conv_rate:8.0f}x  (vs convert alone: {t_conv / t_render:.0f}x)")


def bench_grid(jobs: int) -> None:
    print(f"== 2. render every cell of a WRN-40-2-sized grid (jobs={jobs}) ==")
    t0 = time.perf_counter()
    templates = [_template(t) for t in WRN_40_2]
    t_templates = time.perf_counter() - t0
    work = [(tpl, t.cells()) for tpl, t in zip(templates, WRN_40_2)]
    n_total = sum(len(c) for _, c in work)
    for t, (_, cells) in zip(WRN_40_2, work):
        geometry = f"@{t.input_hw:2d} s{t.stride} k{t.kernel}"
        print(f"  {t.name:20s} {t.kind:16s} {str(t.maxima):11s} {geometry}: {len(cells):6d} cells")
    print(f"{len(templates)} templates converted in {t_templates:.1f} s")

    # ~equal-sized chunks so that two workers finish together
    chunk = 2000
    tasks, seed = [], 0
    for tpl, cells in work:
        for i in range(0, len(cells), chunk):
            tasks.append((tpl, cells[i : i + chunk], seed + i))
        seed += len(cells)

    t0 = time.perf_counter()
    if jobs <= 1:
        results = [_render_chunk(*task) for task in tasks]
    else:
        # spawn, not fork: the parent has TensorFlow's threads loaded. Workers import only
        # numpy + flatbuffers (the module's TensorFlow imports are lazy); startup is counted.
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            results = list(pool.map(_render_chunk, *zip(*tasks)))
    elapsed = time.perf_counter() - t0
    n = sum(r[0] for r in results)
    size = sum(r[1] for r in results)
    assert n == n_total
    print(f"rendered {n} cells ({size / 2**30:.2f} GiB of .tflite) in {elapsed:.1f} s "
          f"= {n / elapsed:.0f} models/s, {elapsed / n * 1e6:.0f} us/model wall")


def _mean_latency(model: bytes, warmup: int = 5, runs: int = 50) -> float:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model, num_threads=1)
    it.allocate_tensors()
    rng = np.random.default_rng(0)
    for d in it.get_input_details():
        it.set_tensor(d["index"], rng.standard_normal(d["shape"]).astype(np.float32))
    for _ in range(warmup):
        it.invoke()
    t0 = time.perf_counter()
    for _ in range(runs):
        it.invoke()
    return (time.perf_counter() - t0) / runs


def bench_timing(rounds: int = 5) -> None:
    print("== 3. latency of rendered vs directly converted models (1 thread, 5 warm-up + 50 runs) ==")
    # On a shared 2-core VM the 50-run mean of one model varies by up to ~2.5x between fresh
    # interpreter instances (bimodal), for rendered and converted models alike; so each model
    # gets `rounds` fresh interpreters, interleaved with the other model's, and we report the
    # median and the minimum of the 50-run means.
    print(f"   (per model: {rounds} fresh interpreters, interleaved; median / min of their 50-run means)")
    samples = [
        (WRN_40_2[2], {"c_in": 32, "c_out": 32}),
        (WRN_40_2[5], {"c_in": 17, "c_out": 50}),
        (WRN_40_2[10], {"c_in": 128, "c_out": 96}),
        (WRN_40_2[12], {"c_in": 64, "c_out": 128}),
        (WRN_40_2[15], {"c": 100}),
        (WRN_40_2[19], {"c_in": 77}),
    ]
    med_ratios, min_ratios = [], []
    for t, ch in samples:
        rendered = _template(t).render(ch, seed=1)
        direct = convert_keras(keras_layer_model(t.kind, ch, input_hw=t.input_hw, stride=t.stride, kernel=t.kernel))
        r_times, d_times = [], []
        for _ in range(rounds):
            r_times.append(_mean_latency(rendered))
            d_times.append(_mean_latency(direct))
        r, d = statistics.median(r_times), statistics.median(d_times)
        med_ratios.append(r / d)
        min_ratios.append(min(r_times) / min(d_times))
        print(f"  {t.name:19s} {str(ch):27s} rendered {r * 1e6:7.1f} / {min(r_times) * 1e6:7.1f} us"
              f"  direct {d * 1e6:7.1f} / {min(d_times) * 1e6:7.1f} us"
              f"  ratio {r / d:.3f} / {min(r_times) / min(d_times):.3f}")
    print(f"mean ratio rendered/direct: median-based {statistics.mean(med_ratios):.3f}, "
          f"min-based {statistics.mean(min_ratios):.3f}")


def bench_stored_templates(table: str) -> None:
    print(f"== 4. the templates of {Path(table).name}'s layer types: converted vs adopted from the table ==")
    from latency import generate
    from latency.store import TableStore

    store = TableStore.open(table)
    try:
        types, stored = store.layer_types(), store.templates()
    finally:
        store.close()
    if not stored:
        raise SystemExit(f"{table} stores no templates: build a table with this version first")
    keys = sorted(k for k in stored if k in types)
    generate.CellModels(types).template(keys[0])  # the TensorFlow import, not counted
    generate._TEMPLATES.clear()
    t0 = time.perf_counter()
    for k in keys:
        generate.CellModels(types).template(k)
    t_convert = time.perf_counter() - t0
    generate._TEMPLATES.clear()
    t0 = time.perf_counter()
    generate.adopt_table_templates(table)
    for k in keys:
        generate.CellModels(types).template(k)
    t_adopt = time.perf_counter() - t0
    print(f"{len(keys)} templates: converted in {t_convert:.2f} s, adopted from the table in {t_adopt * 1e3:.1f} ms "
          f"({t_convert / t_adopt:.0f}x)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=1, help="worker processes for the grid render")
    ap.add_argument("--cells", type=int, default=20, help="cells for the converter comparison")
    ap.add_argument("--skip-convert", action="store_true", help="skip part 1")
    ap.add_argument("--skip-grid", action="store_true", help="skip part 2")
    ap.add_argument("--skip-timing", action="store_true", help="skip part 3")
    ap.add_argument("--table", help="part 4: a table file that stores its templates")
    args = ap.parse_args(argv)
    if not args.skip_convert:
        bench_converter_vs_render(args.cells)
    if not args.skip_grid:
        bench_grid(args.jobs)
    if not args.skip_timing:
        bench_timing()
    if args.table:
        bench_stored_templates(args.table)


if __name__ == "__main__":
    main()
