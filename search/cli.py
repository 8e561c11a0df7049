"""`prune-search`: shrink a trained network's width groups until a latency target is met."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from models.arch import WidthError
from latency.quiet import add_verbose_flag, quiet_runtime
from models.families import KNOWN_ARCHS, get_arch

ALGORITHMS = ("netadapt", "fisher", "uniform")

DESCRIPTION = """\
Prune a trained network until its latency, predicted from a latency table, is at most
--target times the initial one. The result that matters is the width assignment
(OUT/widths.json), to be retrained from scratch.

algorithms:
  netadapt  NetAdapt: each iteration, for every width group, removes the fewest channels that
            lower the predicted latency by the iteration's step, fine-tunes every candidate
            briefly, and keeps the best on a held-out 10% of the training set.
  fisher    Fisher pruning with cost: removes one channel at a time, the one with the smallest
            Fisher signal / predicted latency gain, fine-tuning between removals.
  uniform   baseline: every group scaled by one factor (no data needed).

outputs in OUT: widths.json (final and saved points), history.json (per iteration),
channels.png (channels per layer), model.pt (pruned weights), state.pt (checkpoint:
an interrupted run continues with --resume and ends as an uninterrupted one would).
"""

EPILOG = """\
example:
  prune-search --checkpoint base.pt --table tables/rpi3b-wrn-40-2.sqlite --target 0.6 \\
      --algorithm netadapt --data cifar10 --data-dir ~/data --out runs/wrn-0.6 --jobs 2
"""


def _fractions(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions like 0.8,0.6,0.4; got {text!r}")


def _groups(text: str) -> list[str]:
    groups = [g.strip() for g in text.split(",") if g.strip()]
    if not groups:
        raise argparse.ArgumentTypeError(f"expected comma-separated width group names like s1,s2b0; got {text!r}")
    return groups


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prune-search", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    req = p.add_argument_group("what to prune and where")
    req.add_argument("--checkpoint", required=True,
                     help="trained model file {arch, widths, state_dict} (as written by the retrain command)")
    req.add_argument("--arch", help=f"architecture ({KNOWN_ARCHS}); default: the checkpoint's, and must match it")
    req.add_argument("--table", required=True, help="latency table (.sqlite) covering the architecture's layer types")
    req.add_argument("--target", type=float, required=True,
                     help="final predicted latency as a fraction of the initial one, e.g. 0.6")
    req.add_argument("--algorithm", choices=ALGORITHMS, default="netadapt", help="default: netadapt")
    req.add_argument("--out", required=True, help="run directory for the checkpoint and results")
    req.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    data = p.add_argument_group("data (netadapt, fisher)")
    data.add_argument("--data", choices=("cifar10", "synthetic"), default="cifar10",
                      help="dataset in --data-dir (synthetic: generated there if the directory holds none)")
    data.add_argument("--data-dir", help="directory holding cifar-10-batches-py (or its contents)")
    data.add_argument("--holdout-fraction", type=float, default=0.1,
                      help="stratified part of the training set used only to compare candidates (default 0.1)")
    ft = p.add_argument_group("fine-tuning")
    ft.add_argument("--finetune-batches", type=int, default=100,
                    help="batches per candidate (netadapt) or between removals (fisher); default 100")
    ft.add_argument("--batch-size", type=int, default=128, help="default 128")
    ft.add_argument("--lr", type=float, default=8e-4, help="SGD learning rate, fresh optimiser per candidate (default 8e-4)")
    ft.add_argument("--momentum", type=float, default=0.9, help="default 0.9")
    ft.add_argument("--weight-decay", type=float, default=5e-4, help="default 5e-4")
    ft.add_argument("--eval-batch-size", type=int, default=500, help="held-out evaluation batch size (default 500)")
    ft.add_argument("--seed", type=int, default=0, help="every random choice derives from it (default 0)")
    na = p.add_argument_group("netadapt")
    na.add_argument("--criterion", choices=("l2", "fisher"), default="l2",
                    help="which channels a candidate loses: smallest filter L2 norm or smallest Fisher signal")
    na.add_argument("--init-red-fact", type=float, default=20.0,
                    help="first step = total latency reduction / this (default 20)")
    na.add_argument("--decay", type=float, default=0.98, help="step decay per iteration (default 0.98)")
    na.add_argument("--allow-small-prunings", action="store_true",
                    help="a group that cannot meet the step alone may still be pruned when its ratio is best")
    na.add_argument("--sample-groups", type=float, default=1.0, metavar="F",
                    help="try a random fraction F of the groups per iteration (default 1: all)")
    na.add_argument("--fisher-batches", type=int, default=20,
                    help="training batches probed per iteration for --criterion fisher (default 20)")
    na.add_argument("--jobs", type=int, default=1, help="candidates evaluated in parallel (default 1)")
    na.add_argument("--backend", choices=("loky", "ray"), default="loky",
                    help="joblib backend for --jobs > 1: loky (processes on this machine) or ray (needs 'ray')")
    na.add_argument("--torch-threads", dest="threads", type=int,
                    help="torch threads per candidate (default: 1 per worker with --jobs > 1, else torch's default)")
    common = p.add_argument_group("all algorithms")
    common.add_argument("--groups", type=_groups, metavar="G1,G2,...",
                        help="prune only these width groups, the others keep their widths (uniform scales only "
                             "these); describe-arch lists an architecture's groups (default: all prunable ones)")
    common.add_argument("--save-at", type=_fractions, default=[], metavar="F1,F2,...",
                        help="also save the width assignment when the latency passes these fractions "
                             "(the run goes on down to the smallest)")
    common.add_argument("--eval-every", type=int, default=0,
                        help="fisher: held-out error every N removals (default: at saved points only)")
    common.add_argument("--raw", action="store_true", help="use the table's unsmoothed means")
    common.add_argument("--quiet", action="store_true", help="no progress lines")
    add_verbose_flag(common)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_runtime(args.verbose)
    from latency.store import TableFileError
    from latency.table import LatencyTable, PredictionError
    from models.datasets import DatasetError, open_dataset
    from models.writable import check_writable
    from models.synthetic_data import write_synthetic_cifar10
    from .checkpoint_io import CheckpointError, load_model
    from .common import select_groups
    from .data import SearchData
    from .finetune import FinetuneSettings
    from .runs import SearchError, stderr_log

    log = (lambda line: None) if args.quiet else stderr_log

    def fail(message: str) -> int:
        print(f"prune-search: error: {message}", file=sys.stderr)
        return 2

    try:
        check_writable(args.out, directory=True)  # before any work
        net = load_model(args.checkpoint)
        if args.arch and get_arch(args.arch).name != net.arch.name:
            return fail(f"--arch {args.arch} does not match the checkpoint's architecture {net.arch.name}")
        table = LatencyTable.open(args.table, smoothed=not args.raw)
        predictor = table.predictor(net.arch)
        predictor.predict(net.widths)  # the starting widths must be inside the table
        if table.coverage_note():
            log(f"note: {table.coverage_note()}")
        groups = select_groups(net.arch, args.groups)  # before any work, the same for every algorithm
        common = dict(save_at=args.save_at, resume=args.resume, log=log)
        if args.algorithm == "uniform":
            from .uniform import run_uniform

            result = run_uniform(net, predictor, args.out, args.target, groups=groups, **common)
        else:
            if not args.data_dir:
                return fail(f"--algorithm {args.algorithm} fine-tunes: give --data-dir (and --data cifar10|synthetic)")
            data_dir = Path(args.data_dir).expanduser()
            if args.data == "synthetic" and not any(data_dir.glob("**/batches.meta")):
                log(f"writing a synthetic CIFAR-10-format dataset to {data_dir}")
                write_synthetic_cifar10(data_dir, seed=args.seed)
            data = SearchData.from_cifar(open_dataset(args.data, data_dir), args.holdout_fraction, args.seed)
            ft = FinetuneSettings(args.finetune_batches, args.batch_size, args.lr, args.momentum, args.weight_decay,
                                  args.eval_batch_size)
            if args.algorithm == "netadapt":
                from .netadapt import NetAdaptSettings, run_netadapt

                settings = NetAdaptSettings(args.init_red_fact, args.decay, args.criterion, args.allow_small_prunings,
                                            args.sample_groups, groups, args.fisher_batches)
                result = run_netadapt(net, predictor, data, args.out, args.target, settings=settings, finetune=ft,
                                      seed=args.seed, jobs=args.jobs, backend=args.backend, threads=args.threads,
                                      **common)
            else:
                from .fisher_prune import run_fisher

                if args.jobs > 1:
                    log("note: fisher pruning is sequential (one network); --jobs is ignored")
                result = run_fisher(net, predictor, data, args.out, args.target, finetune_settings=ft,
                                    seed=args.seed, groups=groups, eval_every=args.eval_every, **common)
    except (CheckpointError, TableFileError, PredictionError, DatasetError, SearchError, WidthError,
            ValueError, OSError) as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        print("prune-search: interrupted; continue with the same command and --resume", file=sys.stderr)
        return 130
    print(f"{result.algorithm}: {net.arch.name} at {result.latency * 1e3:.3f} ms predicted = "
          f"{result.fraction:.3f} of {result.initial_latency * 1e3:.3f} ms (target {args.target}); "
          f"widths in {Path(args.out) / 'widths.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
