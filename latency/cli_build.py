"""`build-tables`: measure a latency table for a network on a device."""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from latency.quiet import add_verbose_flag, quiet_runtime
from models.families import KNOWN_ARCHS

#: the recipe fields a flag sets (flag dest -> recipe field); None = not given
RECIPE_FLAGS = {"grid": "grid_step", "block": "grid_block", "context": "context", "passes": "passes", "runs": "runs",
                "placements": "placements", "warmup": "warmup", "threads": "threads", "min_time_ms": "min_time_s",
                "vector_us": "vector_s", "estimator": "estimator", "sigma": "sigma", "edges": "edges"}


def _parser() -> argparse.ArgumentParser:
    from latency.network_check import CHECK_NETWORKS
    from latency.smoothing import EDGE_MODES, ESTIMATORS

    p = argparse.ArgumentParser(
        prog="build-tables",
        description="Time one single-layer TFLite model per (c_in, c_out) cell of every layer type of a network "
        "on a device, and store the table in an SQLite file. How cells are chosen, timed and combined is the "
        "table's recipe: its defaults come from the device (`local`, or the SSH profile in the devices file), "
        "each flag below overrides one field, and the table keeps its recipe. Every finished batch is "
        "committed: interrupt at any time and run the same command again to continue. On a finished table, "
        "another --estimator, --sigma or --edges re-derives it without measuring.",
    )
    p.add_argument("--device", default="local",
                   help="'local' (this CPU through LiteRT), or an SSH profile, group or comma-separated profiles "
                        "of the devices file (default: local)")
    p.add_argument("--devices-file", help="TOML file of SSH device profiles (default: tables/devices.toml)")
    p.add_argument("--arch", default="wrn-40-2", help=f"network ({KNOWN_ARCHS}); default wrn-40-2")
    p.add_argument("--out", help="table file (default: tables/<device>-<arch>.sqlite)")
    recipe = p.add_argument_group("recipe (default: the device's; a continued table keeps its own)")
    recipe.add_argument("--grid", help="'full' (every channel count) or 'step:K' (every K-th, the rest "
                                       "interpolated); local default step:4, SSH: the profile's (else full)")
    recipe.add_argument("--block", type=int, metavar="N",
                        help="with a step grid, also time N-1, N, N+1 around every multiple of N channels, where the "
                             "runtime's channel blocks step; local default: XNNPACK's block on this CPU, SSH: 0")
    recipe.add_argument("--context", choices=("network", "alone"),
                        help="time each cell as inside a network (local default) or back to back (SSH devices)")
    recipe.add_argument("--vector-us", type=float, metavar="US",
                        help="network context: US microseconds of float32 matrix products before each invocation, "
                             "as the heavy layers before it leave the core (local default 30, SSH 0)")
    recipe.add_argument("--passes", type=int,
                        help="passes over all cells, each in a new shuffled order (local 6, SSH 3)")
    recipe.add_argument("--runs", type=int, help="timed invocations per model and pass (local 20, SSH 50)")
    recipe.add_argument("--placements", type=int,
                        help="loads of each model per pass, each elsewhere in memory; its fastest counts (default 1)")
    recipe.add_argument("--warmup", type=int, help="untimed invocations before them (2)")
    recipe.add_argument("--threads", type=int, help="interpreter threads (1)")
    recipe.add_argument("--min-time-ms", type=float, metavar="MS",
                        help="back to back on the local device: time more than --runs invocations until MS are timed "
                             "(default 5; 0 = exactly --runs)")
    recipe.add_argument("--estimator", choices=tuple(ESTIMATORS),
                        help="how a cell's passes combine: 'median-fastest', the median of their fastest invocations "
                             "(local default); 'mean' of their means (SSH default, the thesis); median, min, fastest")
    recipe.add_argument("--sigma", type=float,
                        help="Gaussian smoothing over the grid, in channels; 0 = off (local default 0, SSH 3)")
    recipe.add_argument("--edges", choices=EDGE_MODES,
                        help="smoothing at the grid's edges: 'linear' fits a local plane (default), 'nearest' is "
                             "the thesis's plain filter")
    run = p.add_argument_group("how the build runs")
    run.add_argument("--workers", type=int, default=1,
                     help="local worker processes; they take turns, one model timed at a time (1)")
    run.add_argument("--models-per-call", type=int, default=32, metavar="N",
                     help="models handed to a device in one call (32)")
    run.add_argument("--seed", type=int, default=0, help="seed of the pass orders (0)")
    run.add_argument("--check-networks", type=int, default=CHECK_NETWORKS, metavar="N",
                     help="after the cells, time N whole networks (the full one, then at half width) as a report "
                          "does, store them and print how the table predicts them; a report times them again "
                          f"(default {CHECK_NETWORKS}; 0: none)"),
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    run.add_argument("--dry-run", action="store_true",
                     help="print cells, passes, bytes to send and an ETA, then exit: no device touched, no file written")
    add_verbose_flag(run)
    return p


def _overrides(args: argparse.Namespace) -> dict:
    """The recipe fields given on the command line, in the recipe's units."""
    from latency.layer_types import parse_grid

    given = {field: getattr(args, dest) for dest, field in RECIPE_FLAGS.items()}
    if given["grid_step"] is not None:
        given["grid_step"] = parse_grid(given["grid_step"])
    if given["min_time_s"] is not None:
        given["min_time_s"] = given["min_time_s"] / 1000.0
    if given["vector_s"] is not None:
        given["vector_s"] = given["vector_s"] / 1e6
    return given


def resolve_recipe(args: argparse.Namespace, arch, out: Path):
    """The recipe this command asks for: the stored one of a table being continued (else the
    device's defaults) with the flags given; a network context's cache eviction from the L2 of
    the CPU that times it (this one, or the SSH devices')."""
    from latency import context as cx
    from latency.devices.defaults import defaults_for
    from latency.recipe import recipe_from_meta, resolve
    from latency.schema import first_run_settings
    from latency.store import TableStore

    defaults = defaults_for(args.device, args.devices_file)
    stored = None
    if out.is_file():
        existing = TableStore.open(out)  # read-only: build_table refuses a file that does not fit
        try:
            meta = existing.meta()
            if meta.get("arch") == arch.name:
                stored = recipe_from_meta(meta, first_run_settings(existing.db))
        finally:
            existing.close()
    recipe = resolve(defaults.recipe, stored, _overrides(args), defaults.alone_min_time_s)
    if recipe.in_network:
        if recipe.device_kind == "local":
            l2 = cx.local_l2_bytes()
        else:  # the devices' own L2, read over SSH (or their profiles')
            from latency.devices.ssh_facts import device_l2_bytes

            # a dry run touches no device: the profiles' l2_bytes, if they say
            l2 = device_l2_bytes(args.device, args.devices_file, connect=not args.dry_run)
        recipe = recipe.replace(evict_bytes=cx.evict_bytes_for(arch, l2))
    return recipe


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except (KeyboardInterrupt, ImportError) as exc:  # Ctrl-C outside the build's own handling
        # (while importing: a compiled module's initialisation turns it into an ImportError)
        if not isinstance(exc, KeyboardInterrupt) and not isinstance(exc.__cause__, KeyboardInterrupt):
            raise
        print("\ninterrupted: every finished batch is saved; run the same command again to continue",
              file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    # heavy imports stay inside main: spawned device workers re-import the caller's main module
    parser = _parser()
    args = parser.parse_args(argv)
    quiet_runtime(args.verbose)
    from latency import context as cx
    from latency.build import BuildError, BuildInterrupted, BuildOptions, build_table
    from latency.devices.base import DeviceError
    from latency.devices.registry import make_devices
    from latency.network_check import CHECK_FACTORS
    from latency.recipe import RecipeError
    from latency.retime import MAX_EXTRA_PASSES
    from latency.smoothing import EstimatorError
    from latency.store import TableFileError
    from models.families import get_arch

    try:
        arch = get_arch(args.arch)
        for name in ("workers", "models_per_call"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if not 0 <= args.check_networks <= len(CHECK_FACTORS):
            raise ValueError(f"--check-networks must be between 0 and {len(CHECK_FACTORS)}, got {args.check_networks}")
        out = Path(args.out or f"tables/{args.device.replace(',', '+')}-{arch.name}.sqlite")
        from latency.build_plan import calibrate, imported_table, print_plan  # time before work (latency.eta)
        from latency.generate import adopt_table_templates

        if not args.out and imported_table(out, arch):  # the shipped thesis table is never measured into
            out = out.with_name(f"{out.stem}-measured.sqlite")
        recipe = resolve_recipe(args, arch, out)
        plan = None if args.quiet and not args.dry_run else print_plan(
            args, arch, recipe, out, print if args.dry_run else (lambda s: print(s, file=sys.stderr, flush=True)))
        if args.dry_run:
            return 0
        adopt_table_templates(out, arch.name)  # a table being continued renders its partners and cells as it did
        partners = cx.partner_models(arch) if recipe.in_network else ()
        devices = make_devices(args.device, recipe.timing(partners), args.workers, args.devices_file)
        checker = None
        if args.check_networks:  # whole networks are timed as a report times them, on the first device
            from latency.devices.defaults import defaults_for
            from latency.network_timing import whole_network_timing

            local = recipe.device_kind == "local"
            checker = (make_devices(args.device, whole_network_timing(recipe, local), 1, args.devices_file)[0],
                       defaults_for(args.device, args.devices_file).report_passes)
    except (ValueError, TableFileError) as exc:
        parser.error(str(exc))
    options = BuildOptions(models_per_call=args.models_per_call, seed=args.seed)
    report = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))

    async def build():
        # first Ctrl-C: finish the batches in flight, save them, stop; a second one aborts
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def request_stop() -> None:
            stop.set()
            print("\nstopping: finishing the batches in flight (Ctrl-C again to abort)", file=sys.stderr, flush=True)
            loop.remove_signal_handler(signal.SIGINT)

        loop.add_signal_handler(signal.SIGINT, request_stop)
        loop.add_signal_handler(signal.SIGTERM, request_stop)
        if plan is not None and plan.eta_s is None and recipe.device_kind == "ssh":  # no reference: time a batch
            await calibrate(plan, arch, recipe, devices, args.models_per_call, args.seed, report)
        done = await build_table(arch, out, devices, recipe, options, report, stop)
        checks = []
        if checker is not None and not done.incomplete_types and not stop.is_set():
            from latency.build_check import time_check_networks

            from latency.networks import ValidationError
            from latency.table import PredictionError

            try:
                checks = await time_check_networks(out, arch, checker[0], args.check_networks, checker[1],
                                                   args.seed, report)
            except (PredictionError, ValidationError) as exc:  # the table stands; only its check could not
                print(f"check networks: not predicted: {exc}", file=sys.stderr)
        return done, checks

    try:
        result, checks = asyncio.run(build())
    except (KeyboardInterrupt, BuildInterrupted):
        print(f"\ninterrupted: every finished batch is saved in {out}; run the same command again to continue",
              file=sys.stderr)
        return 130
    except (TableFileError, BuildError, DeviceError, RecipeError) as exc:
        print(f"build-tables: error: {exc}", file=sys.stderr)
        return 2
    except EstimatorError as exc:
        print(f"build-tables: error: {exc} (every measurement is kept in {out}; another --out measures afresh)",
              file=sys.stderr)
        return 2
    print(f"table: {result.path}")
    print(f"cells: {result.cells:,} x {recipe.passes} passes; measured now: {result.measured_now:,}, "
          f"already there: {result.already_measured:,}")
    if result.timed_s > 0:
        print(f"wall {result.wall_s:.1f} s, pure timed compute {result.timed_s:.1f} s, "
              f"efficiency (wall / timed) {result.wall_s / result.timed_s:.2f}")
    if result.retimed or result.kept_slow:
        print(f"timed again: {result.retimed:,} timings of cells whose every pass was kept although this machine "
              "never read fast around it" + (f"; {result.kept_slow:,} cells kept so after "
                                             f"{MAX_EXTRA_PASSES} extra passes" if result.kept_slow else ""))
    for r in result.retired:
        print(f"retired device: {r}")
    from latency.network_check import build_check_lines

    for line in build_check_lines(checks):
        print(line)
    for d in devices:  # a machine that ran slow for stretches says what waiting for full speed cost
        gated = getattr(d, "gate_stats", None)
        if gated is not None and gated.summary():
            print(f"{d.name}: {gated.summary()}")
    if result.incomplete_types:
        print("incomplete layer types (run again to finish): " +
              ", ".join(f"{k} ({v})" for k, v in result.incomplete_types.items()))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
