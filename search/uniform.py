"""The uniform baseline: every prunable group (or every one of `groups`) scaled by one factor
until the target is met; the other groups keep their widths.

The weights are carried over (the highest-L2 channels of each group) so the result can be
fine-tuned, but a uniform baseline is meant to be retrained from scratch like the others.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from latency.table import Predictor
from models.torch_builder import ArchNet, carry_over
from .channels import channels_to_keep, l2_scores, uniform_factor
from .common import SearchResult, TargetUnreachable, check_target, select_groups, table_fingerprint, write_outputs
from .runs import Log, RunDir, stderr_log


def scale_network(net: ArchNet, widths: dict[str, int]) -> ArchNet:
    keep = {g: channels_to_keep(l2_scores(net, g), net.widths[g] - w)
            for g, w in widths.items() if w != net.widths[g]}
    return carry_over(net, widths, keep)


def run_uniform(net: ArchNet, predictor: Predictor, run_dir: str | Path, target: float, *,
                save_at: Sequence[float] = (), groups: Sequence[str] | None = None, resume: bool = False,
                log: Log = stderr_log, plot: bool = True) -> SearchResult:
    """Scales to `target` and to every `save_at` fraction; instant, so `resume` only lets a
    finished run's directory be reused with the same settings."""
    arch = net.arch
    target, points, stop = check_target(target, save_at)
    groups = select_groups(arch, groups)
    run = RunDir(run_dir)
    config = {"algorithm": "uniform", "arch": arch.name, "target": target, "save_at": points,
              "initial_widths": dict(net.widths), "table": table_fingerprint(predictor),
              "groups": list(groups) if groups is not None else None}
    run.start(config, resume)
    initial_widths = dict(net.widths)
    initial = predictor.predict(initial_widths)
    saved, history = [], []
    for f in points:
        try:
            factor, widths = uniform_factor(arch, initial_widths, predictor.predict, f * initial, groups)
        except ValueError as exc:
            scaled = f"scaling {', '.join(groups)}" if groups is not None else "uniform scaling"
            raise TargetUnreachable(f"target not reachable by {scaled}: {f:.2f} of {initial * 1e3:.3f} ms "
                                    f"({exc})") from exc
        latency = predictor.predict(widths)
        saved.append({"fraction": f, "factor": factor, "predicted_latency_s": latency,
                      "achieved_fraction": latency / initial, "widths": widths})
        history.append({"iteration": len(history), "fraction": f, "factor": factor, "predicted_latency_s": latency,
                        "widths": widths})
        log(f"uniform: {f:.2f} -> factor {factor:.4f}, {latency * 1e3:.3f} ms ({latency / initial:.3f} of initial)")
    final = saved[-1]
    pruned = scale_network(net, final["widths"])
    result = SearchResult("uniform", arch, final["widths"], initial_widths, initial, final["predicted_latency_s"],
                          target, history, saved, run.path, pruned)
    run.checkpoint({"config": config, "iteration": len(history), "widths": final["widths"],
                    "state_dict": pruned.state_dict(), "history": history, "saved": saved, "finished": True})
    write_outputs(run, result, str(predictor.table.path), finished=True, plot=plot)
    return result
