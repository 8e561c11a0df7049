"""Does a batch-norm that cannot be folded cost more when another op wrote its input?

    python -m tools.producer_cost [--shapes 6x32,13x16,26x8] [--rounds 30]

A table times a `bn_act` layer (the MUL and ADD a pre-activation batch-norm becomes, with its
ReLU) as a single-layer model: its input is the model's input. Inside a network the op before
it (a residual ADD, a convolution, another batch-norm) wrote that input in the same
invocation, and when nothing else reads it the runtime may run the batch-norm's ops in place.
For each channels x size this tool converts the batch-norm alone and after each producer (a
ReLU, the same ReLU also given out as a second output so that it cannot be overwritten, an
ADD, a 3x3 conv with ReLU, another batch-norm), times every model back to back (fastest of
`--rounds` x 200 invocations, one thread, no speed gate: an instrument, run it on a quiet
machine) and prints what the batch-norm adds to its producer, beside its time alone (which
includes the invoke overhead the added time does not). Nothing is stored.
"""
from __future__ import annotations

import argparse

from latency.quiet import add_verbose_flag, quiet_runtime

PRODUCERS = ("relu", "relu, also an output", "add", "conv3x3+relu", "bn")


def _bn_act(keras, x):
    return keras.layers.ReLU()(keras.layers.BatchNormalization()(x))


def build(producer: str | None, c: int, size: int, with_bn: bool, seed: int = 0) -> bytes:
    """.tflite (batch 1, NHWC, c channels at size x size) of the producer, the batch-norm, or
    the producer followed by the batch-norm."""
    import keras

    from latency.keras_snippets import randomise_weights
    from models.keras_builder import convert_keras

    x = keras.Input((size, size, c), batch_size=1)
    inputs, y = [x], x
    outputs = []
    if producer in ("relu", "relu, also an output"):
        y = keras.layers.ReLU()(x)
        if producer != "relu":
            outputs.append(y)  # a second reader: the batch-norm's ops cannot overwrite it
    elif producer == "add":
        other = keras.Input((size, size, c), batch_size=1)
        inputs.append(other)
        y = keras.layers.Add()([x, other])
    elif producer == "conv3x3+relu":
        y = keras.layers.Conv2D(c, 3, padding="same", activation="relu")(x)
    elif producer == "bn":
        y = _bn_act(keras, x)
    elif producer is not None:
        raise ValueError(f"unknown producer {producer!r}; one of {', '.join(PRODUCERS)}")
    if with_bn:
        y = _bn_act(keras, y)
    model = keras.Model(inputs, [y] + outputs if outputs and with_bn else y)
    randomise_weights(model, seed)  # trained-like statistics: the converter keeps the MUL and the ADD
    return convert_keras(model)


def fastest_invocation_us(model: bytes, rounds: int, runs: int = 200) -> tuple[float, list[str]]:
    """(fastest of rounds x runs invocations in µs, the model's op names)."""
    from latency.devices.runner import load_model, time_loaded_stats

    interpreter = load_model(model)
    fastest = min(time_loaded_stats(interpreter, runs, warmup=0 if r else 5)[2] for r in range(rounds))
    ops = [o["op_name"] for o in interpreter._get_ops_details() if o["op_name"] != "DELEGATE"]
    return fastest * 1e6, ops


def _shape(text: str) -> tuple[int, int]:
    try:
        c, size = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not CHANNELSxSIZE, e.g. 6x32") from None
    if c < 1 or size < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: channels and size must be >= 1")
    return c, size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="6x32,13x16,26x8",
                   help="channels x map size of the batch-norms, comma-separated (6x32,13x16,26x8: wrn-10-1's "
                        "at 0.4 of its widths)")
    p.add_argument("--rounds", type=int, default=30, help="rounds of 200 invocations per model (30)")
    add_verbose_flag(p)
    args = p.parse_args(argv)
    quiet_runtime(args.verbose)
    try:
        shapes = [_shape(s) for s in args.shapes.split(",")]
    except argparse.ArgumentTypeError as exc:
        p.error(f"--shapes: {exc}")
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    from latency.quiet import absorb_runtime_banner

    absorb_runtime_banner()
    print(f"{'shape':>7s} {'producer':>21s} {'producer':>9s} {'+ bn':>8s} {'bn adds':>8s} {'bn alone':>9s} {'ratio':>6s}")
    for c, size in shapes:
        alone, ops = fastest_invocation_us(build(None, c, size, True), args.rounds)
        if ops != ["MUL", "ADD"]:
            print(f"{c}x{size}: the batch-norm converted to {ops}, not MUL and ADD; skipped")
            continue
        for producer in PRODUCERS:
            before, _ = fastest_invocation_us(build(producer, c, size, False), args.rounds)
            both, _ = fastest_invocation_us(build(producer, c, size, True), args.rounds)
            adds = both - before
            print(f"{c:>3d}x{size:<3d} {producer:>21s} {before:7.2f}us {both:6.2f}us {adds:6.2f}us "
                  f"{alone:7.2f}us {adds / alone:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
