"""Full-size validation on the local CPU: build a table per architecture, then a latency report
of sampled whole networks against it, and a summary of the figures.

    python -m tools.bench_validation --arch wrn-16-2 --arch mbv2-cifar --grid step:4 --passes 1 \
        --runs 20 --sample 24 --reports-dir reports/bench

Both steps are the product's commands called in-process (`build-tables`, and `latency-report`
through `tools.report_diagnostics` for its --exact-layers), so both resume: a finished table is
not measured again, stored networks are not re-timed. The report times the networks as the
table's recipe says (its runs, warm-up, estimator). The summary (`summary.md`, `summary.json`
in the reports directory) holds the exact commands.

On a shared machine other processes disturb the timings; `--min-idle F` waits (up to
`--max-wait` s) before each step until the CPUs are at least F idle, and the idle fraction
seen at each step's start is recorded in the summary.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable


def _idle_fraction(seconds: float = 5.0) -> float:
    """Fraction of CPU time idle over the next `seconds` (Linux /proc/stat; 1.0 elsewhere)."""
    def sample() -> list[int]:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:9]]

    try:
        a = sample()
        time.sleep(seconds)
        b = sample()
    except OSError:
        return 1.0
    total = sum(b) - sum(a)
    return (b[3] + b[4] - a[3] - a[4]) / total if total else 1.0  # idle + iowait


def _wait_quiet(min_idle: float | None, max_wait: float) -> float:
    """Waits (up to `max_wait` s) until the CPUs were at least `min_idle` idle for three 5-s
    windows in a row; returns the idle fraction of the last window."""
    start, quiet, idle = time.time(), 0, _idle_fraction()
    while min_idle is not None and time.time() - start < max_wait:
        quiet = quiet + 1 if idle >= min_idle else 0
        if quiet >= 3:
            break
        idle = _idle_fraction()
    return idle


def _timed_step(command: Callable[[list[str]], int], argv: list[str],
               args: argparse.Namespace) -> tuple[float, float, int]:
    """(idle fraction before it, seconds it took, exit code) of one CLI step, run once the
    machine is quiet enough."""
    idle = _wait_quiet(args.min_idle, args.max_wait)
    t0 = time.time()
    rc = command(argv)
    return idle, time.time() - t0, rc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", action="append", default=[], help="architecture(s) (default wrn-16-2, mbv2-cifar)")
    p.add_argument("--grid", default="step:4")
    p.add_argument("--passes", type=int, default=1, help="table passes (1)")
    p.add_argument("--runs", type=int, default=20, help="runs per table cell and report network (20)")
    p.add_argument("--sample", type=int, default=24, help="sampled networks per architecture (24)")
    p.add_argument("--report-passes", type=int, default=3)
    p.add_argument("--estimator", default="mean", help="build-tables --estimator, which the report uses too (mean)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tables-dir", default="reports/bench/tables", help="(under reports/: git ignores it)")
    p.add_argument("--reports-dir", default="reports/bench")
    p.add_argument("--min-idle", type=float,
                   help="before each step wait until the CPUs are at least this idle (0..1) for 15 s")
    p.add_argument("--max-spread", type=float, default=None,
                   help="latency-report --max-spread: measure networks whose passes disagree by more %% again")
    p.add_argument("--max-wait", type=float, default=600.0)
    args = p.parse_args(argv)

    from latency import cli_build
    from tools import report_diagnostics

    arches = args.arch or ["wrn-16-2", "mbv2-cifar"]
    tables, reports = Path(args.tables_dir), Path(args.reports_dir)
    tables.mkdir(parents=True, exist_ok=True)
    reports.mkdir(parents=True, exist_ok=True)
    summary = []
    for arch in arches:
        table = tables / f"local-{arch}.sqlite"
        out = reports / f"local-{arch}"
        build = ["--device", "local", "--arch", arch, "--grid", args.grid, "--passes", str(args.passes),
                 "--runs", str(args.runs), "--estimator", args.estimator, "--out", str(table), "--quiet"]
        report = ["--table", str(table), "--device", "local", "--arch", arch, "--sample", str(args.sample),
                  "--seed", str(args.seed), "--passes", str(args.report_passes), "--exact-layers", "--out", str(out)]
        if args.max_spread is not None:
            report += ["--max-spread", str(args.max_spread)]
        idle_build, build_s, rc = _timed_step(cli_build.main, build, args)
        if rc:
            print(f"build-tables failed for {arch} (exit {rc})", file=sys.stderr)
            return rc
        idle_report, report_s, rc = _timed_step(report_diagnostics.main, report, args)
        if rc:
            print(f"latency-report failed for {arch} (exit {rc})", file=sys.stderr)
            return rc
        m = json.loads((out / "metrics.json").read_text())
        summary.append({
            "arch": arch, "build_command": "build-tables " + " ".join(build),
            "report_command": "python -m tools.report_diagnostics " + " ".join(report), "build_wall_s": build_s,
            "report_wall_s": report_s, "idle_before_build": idle_build, "idle_before_report": idle_report,
            **{k: m[k] for k in ("n", "mape", "max_ape", "pearson", "spearman", "slope", "within_5", "within_10",
                                 "mean_error")},
            "alternatives": m["alternatives"], "bias": m["bias"], "disturbed": len(m["disturbed"]),
            "overhead_us": (m["measured_overhead"] or {}).get("seconds", 0.0) * 1e6,
        })
    (reports / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = ["| arch | n | MAPE % | worst % | Pearson | slope | mean err % | disturbed | overhead µs | "
             "MAPE (n−1)o removed | exact-cells MAPE | exact-cells mean err % |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summary:
        alt = s["alternatives"]
        lines.append(f"| {s['arch']} | {s['n']} | {s['mape']:.2f} | {s['max_ape']:.2f} | {s['pearson']:.5f} | "
                     f"{s['slope']:.4f} | {s['mean_error']:+.2f} | {s['disturbed']} | {s['overhead_us']:.2f} | "
                     f"{alt.get('overhead_corrected', {}).get('mape', float('nan')):.2f} | "
                     f"{alt.get('exact_cells', {}).get('mape', float('nan')):.2f} | "
                     f"{alt.get('exact_cells', {}).get('mean_error', float('nan')):+.2f} |")
    lines += [""] + [f"- `{s['build_command']}` ({s['build_wall_s']:.0f} s)\n- `{s['report_command']}` "
                     f"({s['report_wall_s']:.0f} s)" for s in summary]
    (reports / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
