"""`describe-arch`: print an architecture, its width groups, parameters and .tflite size."""
from __future__ import annotations

import argparse
import sys

from latency.quiet import add_verbose_flag, quiet_runtime

from .arch import WidthError, load_widths
from .families import KNOWN_ARCHS, get_arch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="describe-arch",
        description="Print an architecture description: layers, width groups, PyTorch parameters and "
        "the size of its float32 .tflite model.",
    )
    parser.add_argument("--arch", default="wrn-40-2", help=f"architecture ({KNOWN_ARCHS})")
    parser.add_argument("--widths", help="width assignment JSON file {group: channels} (default: full widths)")
    parser.add_argument("--no-tflite", action="store_true", help="skip the TFLite conversion (it takes seconds)")
    add_verbose_flag(parser)
    args = parser.parse_args(argv)
    quiet_runtime(args.verbose)
    try:
        arch = get_arch(args.arch)
        widths = load_widths(arch, args.widths) if args.widths else arch.full_widths()
    except (ValueError, WidthError) as exc:
        parser.error(str(exc))
    from .torch_builder import build_torch, count_parameters

    print(arch.describe())
    net = build_torch(arch, widths)
    print(f"active layers: {len(net.active)}; PyTorch parameters: {count_parameters(net):,}")
    if not args.no_tflite:
        from .keras_builder import to_tflite

        size = len(to_tflite(arch, widths))
        print(f".tflite (float32, batch 1): {size:,} bytes ({size / 2**20:.2f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
