"""`retrain`: train a network from random initialisation (the thesis recipe) into a run directory.

    retrain --arch wrn-40-2 --data cifar10 --data-dir data/ --out runs/wrn-40-2
    retrain --out runs/wrn-40-2 --resume          # continue after an interruption

The run directory's model.pt is what `prune-search --checkpoint` starts from; a pruned
network is retrained from scratch with `--widths runs/search/widths.json`.
"""
from __future__ import annotations

import argparse
import sys

from latency.quiet import add_verbose_flag, quiet_runtime
from models.arch import WidthError
from models.datasets import DATASETS, DatasetError
from models.families import KNOWN_ARCHS
from .checkpoint_io import CheckpointError
from models.atomic_write import WriteError
from models.writable import check_writable
from .retrain import StopRequest, stdout_log, train
from .retrain_config import RetrainConfig, RetrainError, TrainingDiverged, read_widths_file
from .retrain_run_dir import config_from_state, read_state
from .retrain_step import LR_SCHEDULE

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULTS = {"epochs": 200, "batch_size": 128, "lr": 0.1, "seed": 0, "device": "auto"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="retrain",
        description="Train a network from random initialisation: SGD, Nesterov momentum 0.9, weight decay 1e-4, "
        f"lr {LR_SCHEDULE}, training-set normalisation and crop/flip augmentation. Checkpoints every epoch; "
        "Ctrl-C stops after the current batch with a checkpoint, --resume continues.",
    )
    # None defaults: with --resume an option left out is taken from the run being resumed
    p.add_argument("--arch", help=f"architecture ({KNOWN_ARCHS})")
    p.add_argument("--widths", help="width assignment JSON ({group: channels} or a search's widths.json); "
                   "default: full width")
    p.add_argument("--data", choices=sorted(DATASETS), help="dataset name: cifar10 or synthetic")
    p.add_argument("--data-dir", help="directory holding cifar-10-batches-py (or the extracted batches)")
    p.add_argument("--epochs", type=int, help=f"training epochs (default {DEFAULTS['epochs']})")
    p.add_argument("--out", required=True, help="run directory, e.g. runs/NAME")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--batch-size", type=int, help=f"batch size (default {DEFAULTS['batch_size']})")
    p.add_argument("--lr", type=float, help=f"initial learning rate (default {DEFAULTS['lr']})")
    p.add_argument("--seed", type=int, help=f"seed of initialisation, batch order and augmentation (default {DEFAULTS['seed']})")
    p.add_argument("--torch-device", dest="device", choices=("auto", "cpu", "cuda"),
                   help="where PyTorch trains: CUDA with mixed precision when available, else CPU (default auto)")
    p.add_argument("--torch-threads", dest="threads", type=int,
                   help="PyTorch CPU threads (default: PyTorch's choice, one per core; fewer helps on a busy machine)")
    p.add_argument("--checkpoint-minutes", type=float, default=10.0,
                   help="also save a checkpoint inside an epoch this often (default 10)")
    p.add_argument("--progress-seconds", type=float, default=60.0,
                   help="print a progress line inside an epoch this often (default 60)")
    add_verbose_flag(p)
    return p


def build_config(args: argparse.Namespace) -> RetrainConfig:
    """The run's settings: from the command line, or with --resume from the run's checkpoint
    (options given must then agree with it, except --data-dir and --torch-device)."""
    given = {k: getattr(args, k) for k in ("arch", "data", "data_dir", "epochs", "batch_size", "lr", "seed",
                                           "device") if getattr(args, k) is not None}
    if args.resume:
        saved = config_from_state(read_state(args.out))
        if "arch" in given and given["arch"] != saved.arch:  # before the widths are read against it
            raise RetrainError(f"cannot resume {args.out} with different settings: arch: run has {saved.arch!r}, "
                               f"now {given['arch']!r}")
        settings = saved.as_dict()
        settings.update(given)
        if args.widths is not None:
            settings["widths"] = read_widths_file(settings["arch"], args.widths)
        # a differing setting is reported by train() with both values
        return RetrainConfig(**settings)
    missing = [f"--{k.replace('_', '-')}" for k in ("arch", "data", "data_dir") if k not in given]
    if missing:
        raise RetrainError(f"{', '.join(missing)} required (or --resume to continue an existing run)")
    settings = {**DEFAULTS, **given}
    settings["widths"] = read_widths_file(settings["arch"], args.widths) if args.widths else {}
    return RetrainConfig(**settings)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    quiet_runtime(args.verbose)
    if args.checkpoint_minutes <= 0 or args.progress_seconds <= 0:
        parser.error("--checkpoint-minutes and --progress-seconds must be positive")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--torch-threads must be >= 1")
        import torch

        torch.set_num_threads(args.threads)
    try:
        cfg = build_config(args)
        check_writable(args.out, directory=True)  # before the data are loaded and the network built
    except (RetrainError, WidthError, DatasetError, CheckpointError, WriteError) as exc:
        print(f"retrain: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    stop = StopRequest(stdout_log)
    try:
        with stop.installed():
            outcome = train(cfg, args.out, resume=args.resume, should_stop=stop,
                            checkpoint_every_s=args.checkpoint_minutes * 60, progress_every_s=args.progress_seconds)
    except TrainingDiverged as exc:
        print(f"retrain: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (RetrainError, DatasetError, WidthError, CheckpointError, WriteError) as exc:
        print(f"retrain: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"retrain: aborted; the last checkpoint in {args.out} is kept (continue with --resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not outcome.finished:
        print(f"retrain: interrupted; continue with: retrain --out {args.out} --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
