"""`make demo`: the main job end to end, small enough for a laptop (minutes, 2 cores).

1. a real latency table of a small WideResNet on this machine's CPU (LiteRT), with the
   product's default recipe,
2. a validation report: 10 whole networks measured on the CPU against the table's predictions,
   and whether they meet the targets (MAPE <= 2 %, worst <= 5 %, Pearson >= 0.999),
3. a base network trained on a small *synthetic* CIFAR-10-layout dataset,
4. a short NetAdapt run with the table as the cost model,
5. the winning widths retrained from scratch, exported to .tflite (checked against PyTorch)
   and measured on the CPU.

Every stage is one of the project's commands, with the arguments a user would type (each is
printed); they run in this one process, so TensorFlow and PyTorch are imported once. The outputs
stay in --out (default demo-out/). Re-running reuses what is there (tables and runs resume).
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

from latency.metrics import TARGETS  # what a validation report should meet

ARCH = "wrn-10-1"
#: networks the validation report measures and predicts
SAMPLE = 10


#: the command each stage runs: its name as installed, and the module whose main() it is
COMMANDS = {"build-tables": "latency.cli_build", "latency-report": "latency.cli_report", "retrain": "search.cli_retrain",
            "prune-search": "search.cli", "export-tflite": "models.export"}


def run(stage: str, command: str, *args: str) -> None:
    """Runs `command` as its installed script would, in this process."""
    print(f"\n== {stage} ==\n$ {command} {' '.join(args)}", flush=True)
    t0 = time.time()
    try:
        code = importlib.import_module(COMMANDS[command]).main(list(args))
    except SystemExit as exc:  # argparse and the commands' own refusals
        code = exc.code if isinstance(exc.code, int) else 1
    sys.stdout.flush()
    if code:
        raise SystemExit(f"demo: stage '{stage}' failed (exit {code}); its output is above")
    print(f"[{stage}: {time.time() - t0:.0f} s]", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo-out", help="output directory (default demo-out)")
    parser.add_argument("--quick", action="store_true", help="CI-sized settings (tests use them)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    quick = args.quick
    table = out / f"local-{ARCH}.sqlite"
    data = out / "synthetic-cifar10"

    # the table and its validation run on the product's defaults; --quick (the tests') cuts them down
    run("latency table", "build-tables", "--device", "local", "--arch", ARCH, "--out", str(table),
        *(["--grid", "step:8", "--passes", "1", "--runs", "5"] if quick else []))
    run("validation report", "latency-report", "--table", str(table), "--device", "local", "--arch", ARCH,
        "--sample", "3" if quick else str(SAMPLE), *(["--passes", "1"] if quick else []), "--out", str(out / "report"))
    from models.synthetic_data import write_synthetic_cifar10

    if not (data / "cifar-10-batches-py").exists():
        write_synthetic_cifar10(data, n_train=600 if quick else 2500, n_test=200 if quick else 500, seed=0)
    train = ["--data", "synthetic", "--data-dir", str(data), "--torch-threads", "2"]
    run("base network (synthetic data)", "retrain", "--arch", ARCH, *train,
        "--epochs", "1" if quick else "2", "--batch-size", "64", "--out", str(out / "runs" / "base"),
        *(["--resume"] if (out / "runs" / "base" / "checkpoint.pt").exists() else []))
    search_dir = out / "runs" / "netadapt"
    run("NetAdapt search", "prune-search", "--algorithm", "netadapt", "--checkpoint", str(out / "runs" / "base" / "model.pt"),
        "--table", str(table), "--target", "0.7", "--init-red-fact", "4" if quick else "6",
        "--finetune-batches", "2" if quick else "5", "--batch-size", "64", "--data", "synthetic",
        "--data-dir", str(data), "--out", str(search_dir), *(["--resume"] if (search_dir / "state.pt").exists() else []))
    winner = out / "runs" / "winner"
    run("retrain the winner from scratch", "retrain", "--arch", ARCH, "--widths",
        str(search_dir / "widths.json"), *train, "--epochs", "1" if quick else "2", "--batch-size", "64",
        "--out", str(winner), *(["--resume"] if (winner / "checkpoint.pt").exists() else []))
    run("export and measure", "export-tflite", "--run", str(winner), "--out", str(out / "winner.tflite"), "--measure")

    metrics = json.loads((out / "report" / "metrics.json").read_text())
    widths = json.loads((search_dir / "widths.json").read_text())
    result = json.loads((winner / "result.json").read_text())
    missed = [name for name, ok in (("MAPE", metrics["mape"] <= TARGETS["mape"]),
                                     ("worst", metrics["max_ape"] <= TARGETS["max_ape"]),
                                     ("Pearson", metrics["pearson"] >= TARGETS["pearson"])) if not ok]
    print("\n== summary ==")
    print(f"table    {table}  (this CPU through LiteRT; plot-table --table {table} draws it)")
    print(f"report   {out / 'report' / 'report.md'}: {metrics['n']} whole networks measured against the table: "
          f"MAPE {metrics['mape']:.2f} %, worst {metrics['max_ape']:.2f} %, Pearson {metrics['pearson']:.5f}")
    print(f"         targets MAPE <= {TARGETS['mape']:g} %, worst <= {TARGETS['max_ape']:g} %, Pearson >= "
          f"{TARGETS['pearson']:g}: " + ("met" if not missed else "NOT met (" + ", ".join(missed) + ")"))
    checks = [(what, metrics[key]) for what, key in (("the table's cells", "host_check"),
                                                      ("whole networks", "network_check")) if metrics.get(key)]
    if checks:  # timed at the build and again with the report
        print("         against the build, " + " and ".join(f"{what} ran {c['drift_pct']:+.1f} %" for what, c in checks)
              + (" (the CPU moved in between)" if any(c["moved"] for _, c in checks) else ""))
    print(f"search   {search_dir}: NetAdapt to 0.7 of the latency, widths {json.dumps(widths.get('widths', widths))}")
    print(f"winner   {winner}: retrained from scratch, test error {result.get('test_error', float('nan')):.3f} on "
          f"synthetic data; exported to {out / 'winner.tflite'}")
    print(f"time     {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
