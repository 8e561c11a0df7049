"""Benchmark: converting Keras models to TFLite from a frozen graph (what timed models use) vs
through Keras's SavedModel export (what a deployed model uses, for its serving signature).

    python -m tools.bench_conversion [--arch wrn-10-1] [--rounds 2] [--time-loads 12]

1. seconds per conversion of the architecture's single-layer models (one per layer type, as a
   table's templates are made) and of its full network, each path in turn, `--rounds` times;
2. that both paths emit the same operators, in order, with the same input and output shapes;
3. with `--time-loads N`: the full network from each path timed in N alternating loads
   (20 invocations each, the fastest kept; the median over loads), as their ratio.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

from latency.quiet import absorb_runtime_banner


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_conversion", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="wrn-10-1", help="architecture whose models are converted (wrn-10-1)")
    parser.add_argument("--rounds", type=int, default=2, help="conversions of every model per path (2)")
    parser.add_argument("--time-loads", type=int, default=0, metavar="N",
                        help="also time the full network from each path in N alternating loads (0: no)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.time_loads < 0:
        parser.error("--rounds must be >= 1 and --time-loads >= 0")
    absorb_runtime_banner()
    from latency.generate import single_layer_keras
    from latency.layer_types import network_layer_types
    from latency.tflite_schema import describe_model
    from models.families import get_arch
    from models.keras_builder import _trained_like, build_keras, convert_keras

    arch = get_arch(args.arch)
    models = [single_layer_keras(t, t.in_lo + 4, t.out_lo + 4) for _, t in sorted(network_layer_types([arch]).items())]
    network = build_keras(arch, None)
    _trained_like(network)
    models.append(network)
    paths = {"frozen graph": lambda m: convert_keras(m), "SavedModel": lambda m: convert_keras(m, signature=True)}
    for convert in paths.values():
        convert(models[0])  # the first conversion of a process pays one-off set-up
    seconds = {name: [] for name in paths}
    outputs = {}
    for _ in range(args.rounds):
        for name, convert in paths.items():
            t0 = time.perf_counter()
            outputs[name] = [convert(m) for m in models]
            seconds[name].append((time.perf_counter() - t0) / len(models))
    per = {name: statistics.median(s) for name, s in seconds.items()}
    print(f"{args.arch}: {len(models) - 1} single-layer models and the full network, {args.rounds} rounds")
    for name, s in per.items():
        print(f"  {name:<12} {s * 1e3:7.1f} ms per conversion")
    print(f"  SavedModel / frozen graph: x{per['SavedModel'] / per['frozen graph']:.2f}")
    frozen, saved = outputs["frozen graph"], outputs["SavedModel"]
    same = sum(describe_model(a) == describe_model(b) for a, b in zip(frozen, saved))
    print(f"  same operators and tensor shapes: {same} of {len(models)}")
    if args.time_loads:
        from latency.devices.runner import load_model, time_loaded_stats

        fastest = {name: [] for name in paths}
        for i in range(args.time_loads):
            order = list(paths) if i % 2 else list(paths)[::-1]
            for name in order:
                flatbuffer = outputs[name][-1]
                fastest[name].append(time_loaded_stats(load_model(flatbuffer), 20, 2)[2])
        a, b = (statistics.median(fastest[n]) for n in paths)
        print(f"  full network timed: frozen graph {a * 1e6:.1f} us, SavedModel {b * 1e6:.1f} us "
              f"(ratio {a / b:.4f}, median of {args.time_loads} loads' fastest)")
    return 0 if same == len(models) else 1


if __name__ == "__main__":
    sys.exit(main())
