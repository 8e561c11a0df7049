"""Benchmark: time of one training epoch (default WRN-40-2, 50,000 32x32 images, batch 128).

    python -m tools.bench_epoch [--arch wrn-40-2] [--iters 10] [--warmup 2] [--threads N] [--device cpu]

Runs the training step of `search.retrain_step` (loader with augmentation, forward, backward, SGD
Nesterov step, cosine scheduler step; float16 autocast on CUDA) on random images held in
memory, times `--iters` iterations after `--warmup` untimed ones and extrapolates to an epoch
of `images // batch` iterations. The test-set evaluation at the end of a run is not included.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from models.batches import channel_mean_std, make_loader
from models.families import get_arch
from models.torch_builder import build_torch, count_parameters
from search.retrain_config import RetrainConfig, describe_device, resolve_device
from search.retrain_step import make_setup, train_step


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_epoch", description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="wrn-40-2")
    p.add_argument("--images", type=int, default=50_000, help="training images in the epoch (default 50000)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--iters", type=int, default=10, help="timed iterations (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first (default 2)")
    p.add_argument("--torch-threads", dest="threads", type=int, help="PyTorch CPU threads (default: PyTorch's choice)")
    p.add_argument("--torch-device", dest="device", choices=("auto", "cpu", "cuda"), default="cpu")
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    args = p.parse_args(argv)
    if args.iters < 1 or args.warmup < 0 or args.images < args.batch_size:
        p.error("need --iters >= 1, --warmup >= 0 and --images >= --batch-size")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    argv_shown = sys.argv[1:] if argv is None else argv
    print(" ".join(["command: python -m tools.bench_epoch", *map(shlex.quote, argv_shown)]), flush=True)

    device = resolve_device(args.device)
    # content does not change the cost of a dense float network: random pixels will do
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(args.images, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, size=args.images).astype(np.int64)
    mean, std = channel_mean_std(images)
    loader = make_loader(images, labels, args.batch_size, True, mean, std, seed=0)
    steps_per_epoch = len(loader)
    cfg = RetrainConfig(arch=args.arch, data="synthetic", data_dir="(in memory)", batch_size=args.batch_size,
                        epochs=1, device=args.device)
    torch.manual_seed(0)
    net = build_torch(get_arch(cfg.arch))
    setup = make_setup(net, cfg, steps_per_epoch, device)
    net.train()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"{cfg.arch}: {count_parameters(net):,} parameters; {args.images} images, batch {args.batch_size} "
          f"({steps_per_epoch} iterations per epoch); {describe_device(device)}, "
          f"{'float16 autocast' if setup.amp else 'float32'}; torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {load[0]:.2f}",
          flush=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    batches = iter(loader)
    times: list[float] = []
    cpu_times: list[float] = []
    for i in range(args.warmup + args.iters):
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        x, y = next(batches)  # the loader's crop/flip/normalise is part of an epoch's cost
        loss, _ = train_step(setup, x, y)
        float(loss)  # waits for the step, as the epoch's bookkeeping eventually does
        sync()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        label = "warm-up" if i < args.warmup else "timed"
        print(f"  iteration {i + 1}/{args.warmup + args.iters} ({label}): {dt:.3f} s (process CPU {dc:.3f} s)",
              flush=True)
        if i >= args.warmup:
            times.append(dt)
            cpu_times.append(dc)

    mean_s = statistics.fmean(times)
    it_s = 1.0 / mean_s
    epoch_s = steps_per_epoch * mean_s
    print(f"{it_s:.3f} iterations/s ({mean_s:.3f} s per iteration, median {statistics.median(times):.3f}, "
          f"min {min(times):.3f}, max {max(times):.3f} over {len(times)}); "
          f"{it_s * args.batch_size:.1f} images/s")
    print(f"projected epoch ({steps_per_epoch} iterations): {epoch_s:.0f} s = {epoch_s / 60:.1f} min; "
          f"200 epochs: {200 * epoch_s / 3600:.1f} h")
    # on a shared machine wall time includes waiting for a core; CPU time does not
    cpu_s = statistics.fmean(cpu_times)
    print(f"process CPU time {cpu_s:.3f} s per iteration over {torch.get_num_threads()} thread(s): an idle machine "
          f"would take at least {cpu_s / torch.get_num_threads():.3f} s per iteration, "
          f"{steps_per_epoch * cpu_s / torch.get_num_threads() / 60:.1f} min per epoch")
    if args.json:
        print(json.dumps({"arch": cfg.arch, "device": describe_device(device), "amp": setup.amp,
                          "threads": torch.get_num_threads(), "batch_size": args.batch_size,
                          "iterations_per_epoch": steps_per_epoch, "iteration_s": times,
                          "iterations_per_s": it_s, "epoch_s": epoch_s,
                          "cpu_s_per_iteration": cpu_s, "load_average": load[0]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
