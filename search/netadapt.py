"""NetAdapt (Yang et al. 2018; Algorithm 4 of the thesis) with a latency table as the cost model.

Each iteration asks for a latency reduction `step` (the first is the total reduction divided
by `init_red_fact`, then it decays). For every width group: the fewest channels whose
removal meets the step, which channels (L2 norm or Fisher signal), a brief fine-tune of that
candidate and its error on the held-out split. The best candidate becomes the network; a
checkpoint is written; the loop ends when the predicted latency is at or under the target.
"""
from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from latency.table import Predictor
from models.torch_builder import ArchNet
from .channels import Outcome, channels_to_keep, fewest_to_meet, l2_scores, largest_gain, min_width, pick_best, \
    removal_gains
from .common import SearchResult, check_reachable, check_target, fingerprint, net_from_state, record_saved_points, \
    select_groups, table_fingerprint, write_outputs
from .data import SearchData, derive_seed
from .finetune import FinetuneSettings, holdout_error, probe_fisher
from .parallel import CandidateTask, check_backend, run_candidates, worker_threads
from .runs import Callback, Log, RunDir, SearchError, restore_rng, stderr_log

CRITERIA = ("l2", "fisher")


@dataclass(frozen=True)
class NetAdaptSettings:
    init_red_fact: float = 20.0  # first step = total reduction / init_red_fact
    decay: float = 0.98  # the step is multiplied by this after every iteration
    criterion: str = "l2"  # which channels go: "l2" (filter norm) or "fisher"
    allow_small_prunings: bool = False  # a group that cannot meet the step may still compete
    sample_groups: float = 1.0  # fraction of the groups tried per iteration (random subset)
    groups: tuple[str, ...] | None = None  # restrict the search to these groups
    fisher_batches: int = 20  # training batches probed per iteration for the Fisher criterion

    def __post_init__(self) -> None:
        if self.criterion not in CRITERIA:
            raise SearchError(f"unknown criterion {self.criterion!r}; choose one of {', '.join(CRITERIA)}")
        if self.init_red_fact <= 0 or not 0 < self.decay <= 1:
            raise SearchError("--init-red-fact must be > 0 and --decay in (0, 1]")
        if not 0 < self.sample_groups <= 1:
            raise SearchError(f"--sample-groups is a fraction of the groups in (0, 1]; got {self.sample_groups}")
        if self.fisher_batches < 1:
            raise SearchError("--fisher-batches must be >= 1")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["groups"] = list(self.groups) if self.groups is not None else None
        return d


@dataclass(frozen=True)
class Plan:
    group: str
    removed: int
    gain: float
    small: bool  # cannot meet the step: allowed by allow_small_prunings


def plan_iteration(predictor: Predictor, widths: dict[str, int], groups: Sequence[str], min_widths: dict[str, int],
                   step: float, allow_small: bool) -> tuple[list[Plan], list[str]]:
    """(candidates, groups that cannot meet the step): how many channels each group loses."""
    plans, skipped = [], []
    for g in groups:
        gains = removal_gains(predictor.predict, widths, g, min_widths[g])
        k, small = fewest_to_meet(gains, step), False
        if k is None and allow_small:
            k, small = largest_gain(gains), True
        if k is None:
            skipped.append(g)
        else:
            plans.append(Plan(g, k, float(gains[k - 1]), small))
    return plans, skipped


def sample(groups: list[str], fraction: float, seed: int, iteration: int) -> list[str]:
    if fraction >= 1 or len(groups) <= 1:
        return groups
    n = max(1, round(fraction * len(groups)))
    rng = np.random.default_rng(derive_seed(seed, iteration, "sample"))
    chosen = set(rng.choice(len(groups), size=n, replace=False).tolist())
    return [g for i, g in enumerate(groups) if i in chosen]


def data_fingerprint(data: SearchData) -> str:
    h = hashlib.sha1()
    for a in (data.labels, data.train_idx, data.holdout_idx):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _ms(s: float) -> str:
    return f"{s * 1e3:.3f} ms"


def run_netadapt(net: ArchNet, predictor: Predictor, data: SearchData, run_dir: str | Path, target: float, *,
                 settings: NetAdaptSettings = NetAdaptSettings(), finetune: FinetuneSettings = FinetuneSettings(),
                 seed: int = 0, save_at: Sequence[float] = (), jobs: int = 1, backend: str = "loky",
                 threads: int | None = None, resume: bool = False, callback: Callback | None = None,
                 log: Log = stderr_log, plot: bool = True) -> SearchResult:
    """Prunes `net` until its predicted latency is at most `target` x the initial one.

    `callback(event, info)` is called with "candidate" after each candidate's result and
    "iteration" after each checkpoint (raising from it interrupts the run like a kill)."""
    arch = net.arch
    target, points, stop = check_target(target, save_at)
    if jobs < 1:
        raise SearchError(f"--jobs must be >= 1, got {jobs}")
    check_backend(backend)
    n_threads = worker_threads(jobs, threads)
    chosen = select_groups(arch, settings.groups)
    considered = [g.name for g in arch.prunable_groups if chosen is None or g.name in chosen]
    min_widths = {g.name: min_width(g) for g in arch.prunable_groups}
    run = RunDir(run_dir)
    config = {"algorithm": "netadapt", "arch": arch.name, "target": target, "seed": seed, "save_at": points,
              "initial_widths": dict(net.widths), "base": fingerprint(net.state_dict()),
              "data": data_fingerprint(data), "settings": settings.as_dict(), "finetune": finetune.as_dict(),
              "table": table_fingerprint(predictor)}
    saved_state = run.start(config, resume)

    initial_widths = dict(net.widths)
    initial = predictor.predict(initial_widths)
    target_latency = stop * initial  # the target, or the smallest --save-at fraction below it
    if saved_state is None:
        check_reachable(arch, predictor, initial_widths, target_latency, considered)
        iteration, widths, history, saved = 0, dict(initial_widths), [], []
        step = (1 - target) * initial / settings.init_red_fact
        t0 = time.perf_counter()
        base_error = holdout_error(net, data, finetune.eval_batch_size)
        log(f"netadapt: {arch.name} predicted at {_ms(initial)}, target {_ms(target * initial)} ({target:.2f})"
            + (f", going on to {stop:.2f}" if stop < target else "") + ", "
            f"first step {_ms(step)}, held-out error {base_error:.2%} ({time.perf_counter() - t0:.1f} s), "
            f"{len(considered)} groups, {jobs} worker{'s' if jobs > 1 else ''}"
            + (f" ({backend})" if jobs > 1 else ""))
    else:
        iteration, widths, history = saved_state["iteration"], dict(saved_state["widths"]), list(saved_state["history"])
        saved, step, base_error = list(saved_state["saved"]), saved_state["step"], saved_state["base_error"]
        net = net_from_state(arch, widths, saved_state["state_dict"])
        restore_rng(saved_state["rng"])
        log(f"netadapt: resuming {run.path} at iteration {iteration}: {_ms(predictor.predict(widths))} "
            f"(target {_ms(target_latency)}), step {_ms(step)}")

    latency = predictor.predict(widths)
    shared_dir = run.file(".data")
    task_data = data.shared_in(shared_dir) if jobs > 1 and latency > target_latency else data
    try:
        while latency > target_latency:
            t_start = time.perf_counter()
            eligible = [g for g in considered if widths[g] > min_widths[g]]
            tried = sample(eligible, settings.sample_groups, seed, iteration)
            plans, skipped = plan_iteration(predictor, widths, tried, min_widths, step, settings.allow_small_prunings)
            if not plans and len(tried) < len(eligible):  # the sample drew only groups that cannot meet the step
                rest = [g for g in eligible if g not in tried]
                plans, more = plan_iteration(predictor, widths, rest, min_widths, step, settings.allow_small_prunings)
                skipped += more
            if not plans:
                raise SearchError(
                    f"iteration {iteration}: no width group can lower the predicted latency by the step of {_ms(step)} "
                    f"(now {_ms(latency)}, target {_ms(target_latency)}); try --allow-small-prunings, a larger "
                    "--init-red-fact (smaller steps), or a less ambitious --target")
            signals = None
            if settings.criterion == "fisher":
                signals = probe_fisher(net, data, settings.fisher_batches, finetune.batch_size,
                                       derive_seed(seed, iteration, "fisher"))
            parent_state = {k: v.detach() for k, v in net.state_dict().items()}
            tasks = []
            for p in plans:
                scores = signals[p.group] if signals is not None else l2_scores(net, p.group)
                keep = channels_to_keep(scores, p.removed)
                tasks.append(CandidateTask(arch, dict(widths), parent_state, p.group, keep, finetune,
                                           derive_seed(seed, iteration, p.group, "finetune"), task_data, n_threads))
            t_planned = time.perf_counter()
            log(f"iteration {iteration}: step {_ms(step)}, {len(plans)} candidates"
                + (f"; cannot meet the step: {', '.join(skipped)}" if skipped else ""))

            def on_result(i: int, r) -> None:
                p = plans[i]
                log(f"  [{i + 1}/{len(plans)}] {p.group} -{p.removed} ch{' (small)' if p.small else ''}: "
                    f"-{_ms(p.gain)}, held-out error {r.error:.2%} ({sum(r.seconds.values()):.1f} s)")
                if callback:
                    callback("candidate", {"iteration": iteration, "index": i, "group": p.group, "error": r.error})

            results = run_candidates(tasks, jobs, backend, on_result)
            t_ran = time.perf_counter()
            best = pick_best([Outcome(r.error, p.gain) for p, r in zip(plans, results)], base_error)
            p, r = plans[best], results[best]
            new_widths = dict(widths, **{p.group: widths[p.group] - p.removed})
            net = net_from_state(arch, new_widths, r.state)
            new_latency = predictor.predict(new_widths)
            entry = {
                "iteration": iteration, "step_s": step, "latency_before_s": latency, "group": p.group,
                "removed": p.removed, "small": p.small, "block_removed": new_widths[p.group] == 0,
                "predicted_latency_s": new_latency, "gain_s": latency - new_latency,
                "fraction": new_latency / initial, "holdout_error": r.error, "previous_error": base_error,
                "widths": new_widths, "skipped": skipped,
                "candidates": [{"group": pp.group, "removed": pp.removed, "small": pp.small, "gain_s": pp.gain,
                                "predicted_latency_s": latency - pp.gain, "holdout_error": rr.error,
                                "ratio": (rr.error - base_error) / pp.gain, "seconds": rr.seconds}
                               for pp, rr in zip(plans, results)],
                "seconds": {"plan": t_planned - t_start, "candidates": t_ran - t_planned,
                            "finetune_sum": sum(rr.seconds["finetune"] for rr in results),
                            "eval_sum": sum(rr.seconds["eval"] for rr in results),
                            "prepare_sum": sum(rr.seconds["prepare"] for rr in results)},
            }
            widths, latency, base_error = new_widths, new_latency, r.error
            iteration += 1
            step *= settings.decay
            record_saved_points(points, saved, initial, latency, widths, iteration, base_error, run, net)
            entry["seconds"]["after"] = time.perf_counter() - t_ran
            entry["seconds"]["total"] = time.perf_counter() - t_start
            history.append(entry)
            run.checkpoint({"config": config, "iteration": iteration, "widths": widths,
                            "state_dict": net.state_dict(), "history": history, "saved": saved, "step": step,
                            "base_error": base_error, "initial_latency": initial})
            result = SearchResult("netadapt", arch, widths, initial_widths, initial, latency, target, history,
                                  saved, run.path, net)
            write_outputs(run, result, str(predictor.table.path), finished=False, plot=False)
            log(f"iteration {iteration - 1}: pruned {p.group} by {p.removed} channel{'s' if p.removed > 1 else ''}"
                f"{' (block removed)' if entry['block_removed'] else ''} -> {_ms(latency)} "
                f"({latency / initial:.3f} of initial, target {target:.2f}), held-out error {base_error:.2%}, "
                f"{entry['seconds']['total']:.1f} s")
            if callback:
                callback("iteration", {"iteration": iteration - 1, "entry": entry})
    finally:
        if shared_dir.exists():
            shutil.rmtree(shared_dir, ignore_errors=True)

    result = SearchResult("netadapt", arch, widths, initial_widths, initial, latency, target, history, saved,
                          run.path, net)
    run.checkpoint({"config": config, "iteration": iteration, "widths": widths, "state_dict": net.state_dict(),
                    "history": history, "saved": saved, "step": step, "base_error": base_error,
                    "initial_latency": initial, "finished": True})
    write_outputs(run, result, str(predictor.table.path), finished=True, plot=plot)
    log(f"netadapt: done after {iteration} iterations: {_ms(latency)} = {latency / initial:.3f} of "
        f"{_ms(initial)} (target {target:.2f}), held-out error {base_error:.2%}; results in {run.path}")
    return result
