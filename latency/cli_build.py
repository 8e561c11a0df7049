"""`build-tables`: measure a latency table for a network on a device."""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from latency.devices.local import DEFAULT_MIN_TIME_S
from latency.smoothing import ESTIMATOR_COLUMNS, ESTIMATORS, EstimatorError
from latency.quiet import add_verbose_flag, quiet_runtime
from models.families import KNOWN_ARCHS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="build-tables",
        description="Generate one single-layer TFLite model per (c_in, c_out) cell of every layer type of a "
        "network, time them on a device (warm-up, then the mean of --runs invocations, --passes passes in "
        "a freshly shuffled order), smooth them with a 2-D Gaussian filter and store everything in an SQLite "
        "table file. Every finished batch is committed: interrupt at any time and run the same command again "
        "to continue.",
    )
    p.add_argument("--device", default="local",
                   help="'local' (this machine's CPU through LiteRT), an SSH device profile or group from the "
                        "devices file (e.g. rpi3b), or a comma-separated list of profiles (default: local)")
    p.add_argument("--devices-file", help="TOML file of SSH device profiles (default: tables/devices.toml)")
    p.add_argument("--arch", default="wrn-40-2", help=f"network ({KNOWN_ARCHS}); default wrn-40-2")
    p.add_argument("--grid", default="full",
                   help="'full' (every channel count) or 'step:K' (every K-th count plus the edges; the rest "
                        "interpolated). Default full")
    p.add_argument("--block", type=int, metavar="N",
                   help="with a step grid, also measure both sides of every multiple of N channels (N - 1, N, "
                        "N + 1): runtimes pack channels in blocks, and a layer's time steps at their ends, so "
                        "interpolating across one errs by up to 20 %%. Default on the local device: the float "
                        "block of XNNPACK on this CPU (16 with AVX-512, else 8); on SSH devices 0 (none, the "
                        "thesis's grid); a table continues with the block it was started with")
    p.add_argument("--passes", type=int,
                   help="passes over all cells, each in a new random order (default: the device profile's, else 3)")
    p.add_argument("--runs", type=int, help="timed invocations per model and pass (default: profile's, else 50)")
    p.add_argument("--warmup", type=int, help="untimed invocations before them (default: profile's, else 2)")
    p.add_argument("--threads", type=int, help="interpreter threads (default: profile's, else 1)")
    p.add_argument("--min-time-ms", type=float,
                   help=f"local device: time more than --runs invocations until this many milliseconds are timed "
                        f"(default {DEFAULT_MIN_TIME_S * 1000:g}; 0 = exactly --runs). A tiny layer's 50 runs last "
                        "less than "
                        "loading its model; timing it longer costs little and steadies its value")
    p.add_argument("--workers", type=int, default=1,
                   help="local worker processes (1). They take turns: one model is loaded or timed at a time, and "
                        "nothing else of the build runs meanwhile, since work on the other core slows small layers")
    p.add_argument("--sigma", type=float,
                   help="Gaussian smoothing sigma in channels; 0 = off. Default: 3 (the thesis) for the estimators "
                        "of pass means; 0 for those of the fastest invocations, whose measured cells reproduce "
                        "within 0.1 %% (median) where smoothing only blurs the runtime's channel-block steps")
    p.add_argument("--edges", choices=("linear", "nearest"), default="linear",
                   help="smoothing at the grid's edges: 'linear' (default) fits a local plane, so the edge cells "
                        "(a full-width layer is on the edge of both axes) keep their level; 'nearest' is the "
                        "thesis's plain Gaussian filter, which lowers them on a rising grid")
    p.add_argument("--estimator", choices=tuple(ESTIMATORS),
                   help="per-cell value smoothed into the table: the mean of the passes (the thesis; the default "
                        "for SSH devices), their median, their minimum, or 'fastest', the fastest single "
                        "invocation of all passes (the default for the local device: on a shared machine other work "
                        "only ever slows an invocation down, in phases lasting seconds, so the fastest one is the "
                        "undisturbed time). latency-report combines a network's passes the same way")
    p.add_argument("--context", choices=("network", "alone"),
                   help="how each cell is timed. 'network' (the default on the local device): as the layer runs "
                        "inside a network — three other layer types' smallest models run before every timed "
                        "invocation, and when the architecture's full weights exceed this CPU's L2 cache, twice the "
                        "L2 is written over first — exactly --runs invocations each; the per-invoke overhead is "
                        "then measured the same way and counted once per network. Back-to-back cells sum 2-5 %% "
                        "short of whole networks here. 'alone': back to back, as the thesis (the only choice on "
                        "SSH devices)")
    p.add_argument("--batch-size", type=int, default=32, help="models per device call (32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pass orders (0)")
    p.add_argument("--out", help="table file (default tables/<device>-<arch>.sqlite)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    add_verbose_flag(p)
    return p


async def _context_overhead(out: Path, device, wanted: dict, passes: int, seed: int, estimator: str,
                            report) -> None:
    """For a network context, times the overhead probes in it (stored like latency-report's,
    where the prediction reads them)."""
    from latency import validate as v
    from latency.store import TableStore

    if wanted["context"] != "network":
        return
    store = TableStore.open(out)
    try:
        info = await device.start()
        try:
            o = await v.measure_overhead(store, device, info, passes, seed, report=report, estimator=estimator)
        finally:
            await device.close()
        if report:
            report(f"per-invoke overhead in the network context: {o.seconds * 1e6:.2f} us")
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    # heavy imports stay inside main: spawned device workers re-import the caller's main module
    parser = _parser()
    args = parser.parse_args(argv)
    quiet_runtime(args.verbose)
    from latency import context as cx
    from latency.build import BuildError, BuildInterrupted, BuildSettings, build_table
    from latency.devices.base import DeviceError, TimingSettings
    from latency.devices.registry import make_devices, min_time_s
    from latency.layer_types import parse_grid
    from latency.store import TableFileError
    from models.families import get_arch

    try:
        arch = get_arch(args.arch)
        step = parse_grid(args.grid)
        for name in ("passes", "runs", "threads", "workers", "batch_size"):
            if getattr(args, name) is not None and getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if (args.warmup is not None and args.warmup < 0) or (args.sigma is not None and args.sigma < 0):
            raise ValueError("--warmup and --sigma must be >= 0")
        given = {k: getattr(args, k) for k in ("runs", "warmup", "threads") if getattr(args, k) is not None}
        out = Path(args.out or f"tables/{args.device.replace(',', '+')}-{arch.name}.sqlite")
        stored_meta = None
        if out.is_file():
            from latency.store import TableStore

            existing = TableStore.open(out)
            try:
                stored_meta = existing.meta()
            finally:
                existing.close()
            if stored_meta.get("arch") != arch.name:
                stored_meta = None  # another architecture's file: the build refuses it
        # a table goes on in the context it was started in, unless one is asked for
        context = args.context or (
            (stored_meta.get(cx.CONTEXT_META_KEY) or {"context": "alone"})["context"] if stored_meta is not None
            else ("network" if args.device == "local" else "alone"))
        if args.block is not None and args.block < 0:
            raise ValueError("--block must be >= 0 (0: no block neighbours)")
        block = args.block if args.block is not None else (
            stored_meta.get("grid_block") or 0 if stored_meta is not None
            else (cx.local_channel_block() if args.device == "local" else 0))
        if context == "network" and args.device != "local":
            raise ValueError("--context network times cells on the local device only; SSH devices time them "
                             "back to back (--context alone)")
        if context == "network" and args.min_time_ms:
            raise ValueError("--min-time-ms applies to --context alone; in a network context every cell is timed "
                             "exactly --runs times")
        wanted = cx.context_meta("alone", 0, 0, None)
        if context == "network":
            l2 = cx.local_l2_bytes()
            partners = cx.partner_models(arch)
            wanted = cx.context_meta("network", len(partners), cx.evict_bytes_for(arch, l2), l2)
            given.update(partners=partners, evict_bytes=wanted["evict_bytes"])
        else:
            min_time = min_time_s(args.device, args.min_time_ms)
            if min_time:
                given["min_time_s"] = min_time
        timing = TimingSettings(**given)
        devices = make_devices(args.device, timing, args.workers, args.devices_file, cli_set=set(given))
        passes = args.passes
        if passes is None and args.device != "local":
            from latency.devices.profiles import passes_for

            passes = passes_for([n.strip() for n in args.device.split(",")], args.devices_file)
        passes = passes or 3
    except ValueError as exc:
        parser.error(str(exc))
    runs = getattr(devices[0], "settings", timing).runs
    estimator = args.estimator or ("fastest" if args.device == "local" else "mean")
    sigma = args.sigma if args.sigma is not None else (0.0 if ESTIMATOR_COLUMNS[estimator] == "fastest" else 3.0)
    settings = BuildSettings(passes=passes, grid_step=step, grid_block=block, sigma=sigma, edges=args.edges,
                             estimator=estimator, batch_size=args.batch_size, seed=args.seed, cell_context=wanted)
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
        result = await build_table(arch, out, devices, settings, runs, report, stop)
        if not result.incomplete_types:
            await _context_overhead(out, devices[0], wanted, passes, args.seed, estimator, report)
        return result

    try:
        result = asyncio.run(build())
    except (KeyboardInterrupt, BuildInterrupted):
        print(f"\ninterrupted: every finished batch is saved in {out}; run the same command again to continue",
              file=sys.stderr)
        return 130
    except (TableFileError, BuildError, DeviceError, cx.ContextError) as exc:
        print(f"build-tables: error: {exc}", file=sys.stderr)
        return 2
    except EstimatorError as exc:
        print(f"build-tables: error: {exc} (every measurement is kept in {out}; another --out measures afresh)",
              file=sys.stderr)
        return 2
    print(f"table: {result.path}")
    print(f"cells: {result.cells:,} x {settings.passes} passes; measured now: {result.measured_now:,}, "
          f"already there: {result.already_measured:,}")
    if result.timed_s > 0:
        print(f"wall {result.wall_s:.1f} s, pure timed compute {result.timed_s:.1f} s, "
              f"efficiency (wall / timed) {result.wall_s / result.timed_s:.2f}")
    for r in result.retired:
        print(f"retired device: {r}")
    if result.incomplete_types:
        print("incomplete layer types (run again to finish): " +
              ", ".join(f"{k} ({v})" for k, v in result.incomplete_types.items()))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
