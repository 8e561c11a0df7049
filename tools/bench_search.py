"""Benchmark: the search's own overhead, and candidates in parallel.

    python -m tools.bench_search [--removals 30] [--candidates 8] [--finetune-batches 5]

1. Fisher pruning with cost on WRN-40-2, with the shipped Raspberry Pi table as the cost
   model: seconds per removal excluding fine-tuning (latency gains of every group, the
   choice, the weight carry-over, the checkpoint), from a real `run_fisher` loop.
2. NetAdapt on WRN-40-2: iteration time with 1 worker and with 2 workers (loky, 1 torch
   thread per candidate), and with --all-threads 1 worker with torch's default threads.
3. Share of a NetAdapt iteration spent outside fine-tuning (and outside fine-tuning plus the
   held-out evaluation), from the 1-worker iterations.

The network is untrained and the data synthetic: times do not depend on either. Fine-tuning
is shortened (--finetune-batches x --batch-size) so the run takes minutes; the real default
(100 x 128) makes the overhead share smaller still.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from latency.table import LatencyTable
from models.datasets import load_cifar10
from models.families import get_arch
from models.synthetic_data import write_synthetic_cifar10
from models.torch_builder import build_torch
from search.data import SearchData
from search.finetune import FinetuneSettings
from search.fisher_prune import run_fisher
from search.netadapt import NetAdaptSettings, run_netadapt

REPO = Path(__file__).resolve().parent.parent


class Enough(Exception):
    """Raised from a callback to stop a run after the iterations measured."""


def bench_fisher(net, predictor, data, workdir: Path, removals: int, ft: FinetuneSettings
                 ) -> list[tuple[float, float]]:
    marks: list[float] = []
    entries: list[dict] = []

    def callback(event: str, info: dict) -> None:
        marks.append(time.perf_counter())
        entries.append(info["entry"])
        if len(marks) > removals:
            raise Enough

    try:
        run_fisher(net, predictor, data, workdir / "fisher", 0.05, finetune_settings=ft, callback=callback,
                   log=lambda line: None, plot=False)
    except Enough:
        pass
    # a removal = the time between two callbacks, less its fine-tuning (and Fisher accumulation);
    # `removal` in the entry is the gains, the choice and the carry-over, the rest the checkpoint
    return [((b - a) - e["seconds"]["finetune"], e["seconds"]["removal"])
            for a, b, e in zip(marks, marks[1:], entries[1:])]


def bench_netadapt(net, predictor, data, workdir: Path, name: str, iterations: int, jobs: int, threads: int | None,
                   settings: NetAdaptSettings, ft: FinetuneSettings) -> list[dict]:
    seen: list[dict] = []

    def callback(event: str, info: dict) -> None:
        if event == "iteration":
            seen.append(info["entry"])
            if len(seen) >= iterations:
                raise Enough

    try:
        run_netadapt(net, predictor, data, workdir / name, 0.8, settings=settings, finetune=ft, jobs=jobs,
                     threads=threads, callback=callback, log=lambda line: None, plot=False)
    except Enough:
        pass
    return seen


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="wrn-40-2")
    p.add_argument("--table", default=str(REPO / "tables" / "rpi3b-wrn-40-2.sqlite"))
    p.add_argument("--removals", type=int, default=30, help="Fisher removals timed")
    p.add_argument("--groups", default="s1b0,s1b2,s1b4,s2b0,s2b2,s2b4,s3b0,s3b2",
                   help="NetAdapt groups tried (one candidate each; an even count splits evenly over 2 workers)")
    p.add_argument("--iterations", type=int, default=2, help="NetAdapt iterations timed per configuration")
    p.add_argument("--finetune-batches", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--holdout", type=int, default=50, help="held-out images (evaluation cost)")
    p.add_argument("--skip-fisher", action="store_true")
    p.add_argument("--skip-netadapt", action="store_true")
    p.add_argument("--all-threads", action="store_true",
                   help="also time 1 worker with torch's default thread count (slow on a busy machine)")
    args = p.parse_args(argv)

    arch = get_arch(args.arch)
    predictor = LatencyTable.open(args.table).predictor(arch)
    torch.manual_seed(0)
    net = build_torch(arch)
    groups = len(arch.prunable_groups)
    print(f"{arch.name}, {groups} prunable groups, table {args.table}; torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        n_train = max(10 * args.holdout, args.batch_size * 4)
        d = load_cifar10(write_synthetic_cifar10(workdir / "data", n_train, 10, seed=0))
        data = SearchData.split(d.train_images, d.train_labels, args.holdout / n_train, seed=0)
        ft = FinetuneSettings(batches=args.finetune_batches, batch_size=args.batch_size)

        if not args.skip_fisher:
            before = torch.get_num_threads()
            torch.set_num_threads(1)
            timed = bench_fisher(net, predictor, data, workdir, args.removals,
                                 FinetuneSettings(batches=1, batch_size=2))
            torch.set_num_threads(before)
            overhead, choice = [t for t, _ in timed], [c for _, c in timed]
            print(f"\n[1] Fisher with cost, {arch.name}: time per removal excluding fine-tuning over "
                  f"{len(overhead)} removals: median {statistics.median(overhead) * 1e3:.1f} ms, "
                  f"mean {statistics.mean(overhead) * 1e3:.1f} ms, max {max(overhead) * 1e3:.1f} ms; of which "
                  f"latency gains + choice + weight carry-over median {statistics.median(choice) * 1e3:.1f} ms, "
                  f"the rest (checkpoint, history) median "
                  f"{statistics.median(o - c for o, c in timed) * 1e3:.1f} ms")

        if not args.skip_netadapt:
            settings = NetAdaptSettings(groups=tuple(g for g in args.groups.split(",") if g))
            print(f"\n[2] NetAdapt, {arch.name}: {args.iterations} iterations per configuration, "
                  f"groups {args.groups}, fine-tune {ft.batches} x {ft.batch_size}, "
                  f"held-out {data.holdout_idx.size} images")
            runs = {}
            configs = [("1 worker, 1 thread", 1, 1), ("2 workers, 1 thread each", 2, 1)]
            if args.all_threads:
                configs.append(("1 worker, all threads", 1, None))
            for name, jobs, threads in configs:
                t0 = time.perf_counter()
                entries = bench_netadapt(net, predictor, data, workdir, f"na-{jobs}-{threads}", args.iterations,
                                         jobs, threads, settings, ft)
                wall = time.perf_counter() - t0
                runs[name] = entries
                per = [e["seconds"]["total"] for e in entries]
                print(f"  {name:<26} iterations {', '.join(f'{s:.1f}' for s in per)} s "
                      f"({len(entries[0]['candidates'])}, {len(entries[-1]['candidates'])} candidates); "
                      f"whole call {wall:.1f} s")
            one = [e["seconds"]["total"] for e in runs["1 worker, 1 thread"]]
            two = [e["seconds"]["total"] for e in runs["2 workers, 1 thread each"]]
            print(f"  speed-up, 2 workers vs 1 (same candidates): {sum(one) / sum(two):.2f}x "
                  f"(last iteration alone: {one[-1] / two[-1]:.2f}x; first includes starting the workers)")

            print("\n[3] where a 1-worker iteration goes")
            for e in runs["1 worker, 1 thread"]:
                s = e["seconds"]
                outside_ft = 1 - s["finetune_sum"] / s["total"]
                outside_both = 1 - (s["finetune_sum"] + s["eval_sum"]) / s["total"]
                print(f"  iteration {e['iteration']}: total {s['total']:.2f} s = fine-tune {s['finetune_sum']:.2f} + "
                      f"held-out eval {s['eval_sum']:.2f} + carry-over {s['prepare_sum']:.2f} + plan "
                      f"{s['plan']:.3f} + pick/checkpoint/outputs {s['after']:.3f} + rest "
                      f"{s['total'] - s['finetune_sum'] - s['eval_sum'] - s['prepare_sum'] - s['plan'] - s['after']:.3f}"
                      f"; outside fine-tuning {outside_ft:.1%}, outside fine-tuning and evaluation {outside_both:.1%}")
            for e in runs["2 workers, 1 thread each"][-1:]:
                s = e["seconds"]
                busy = (s["finetune_sum"]) / (2 * s["total"])
                print(f"  2 workers, iteration {e['iteration']}: fine-tuning fills {busy:.1%} of the 2 workers' time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
