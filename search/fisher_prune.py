"""Fisher pruning with a latency cost (Theis et al. 2018, with the table as the cost).

Fine-tune `N` batches while accumulating every channel's Fisher signal; remove the one
channel with the smallest `fisher / latency gain`, where the gain is the table's prediction
with the group one channel narrower (every layer the group touches); repeat until the
predicted latency is at or under the target. Width assignments are saved as the latency
passes each requested fraction. One checkpoint per removal.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping, Sequence

from latency.table import Predictor
from models.torch_builder import ArchNet, carry_over
from .channels import Removal, choose_removal, min_width
from .common import SearchResult, check_reachable, check_target, fingerprint, net_from_state, record_saved_points, \
    select_groups, table_fingerprint, write_outputs
from .data import SearchData, derive_seed
from .finetune import FinetuneSettings, finetune, holdout_error
from .fisher import FisherAccumulator
from .netadapt import data_fingerprint
from .runs import Callback, Log, RunDir, SearchError, restore_rng, stderr_log


def one_channel_gains(predictor: Predictor, widths: Mapping[str, int], groups: Sequence[str]) -> dict[str, float]:
    """Predicted latency saved by one channel fewer in each group (negative where the table rises)."""
    now = predictor.predict(widths)
    trial = dict(widths)
    gains = {}
    for g in groups:
        trial[g] = widths[g] - 1
        gains[g] = now - predictor.predict(trial)
        trial[g] = widths[g]
    return gains


def remove_channel(net: ArchNet, removal: Removal) -> ArchNet:
    width = net.widths[removal.group]
    keep = [i for i in range(width) if i != removal.channel]
    return carry_over(net, dict(net.widths, **{removal.group: width - 1}), {removal.group: keep})


def run_fisher(net: ArchNet, predictor: Predictor, data: SearchData, run_dir: str | Path, target: float, *,
               finetune_settings: FinetuneSettings = FinetuneSettings(), seed: int = 0,
               save_at: Sequence[float] = (), groups: Sequence[str] | None = None, eval_every: int = 0,
               resume: bool = False, callback: Callback | None = None, log: Log = stderr_log,
               plot: bool = True) -> SearchResult:
    """Removes one channel at a time until the predicted latency is at most `target` x the
    initial one and every `save_at` fraction has been passed. `callback("removal", info)`
    after each checkpoint. The held-out error is measured every `eval_every` removals (0:
    only at saved points and at the end)."""
    arch = net.arch
    target, points, stop_fraction = check_target(target, save_at)
    if finetune_settings.batches < 1:
        raise SearchError("Fisher pruning accumulates its signal while fine-tuning: --finetune-batches must be >= 1")
    groups = select_groups(arch, groups)
    considered = [g.name for g in arch.prunable_groups if groups is None or g.name in groups]
    min_widths = {g.name: min_width(g) for g in arch.prunable_groups}
    run = RunDir(run_dir)
    config = {"algorithm": "fisher", "arch": arch.name, "target": target, "seed": seed, "save_at": points,
              "initial_widths": dict(net.widths), "base": fingerprint(net.state_dict()),
              "data": data_fingerprint(data), "finetune": finetune_settings.as_dict(),
              "groups": list(groups) if groups is not None else None, "eval_every": eval_every,
              "table": table_fingerprint(predictor)}
    saved_state = run.start(config, resume)
    initial_widths = dict(net.widths)
    initial = predictor.predict(initial_widths)
    stop_latency = stop_fraction * initial
    if saved_state is None:
        check_reachable(arch, predictor, initial_widths, stop_latency, considered)
        iteration, history, saved = 0, [], []
        log(f"fisher: {arch.name} predicted at {initial * 1e3:.3f} ms, pruning to {stop_fraction:.2f} "
            f"({stop_latency * 1e3:.3f} ms), {finetune_settings.batches} fine-tune batches per removal")
    else:
        iteration, history, saved = saved_state["iteration"], list(saved_state["history"]), list(saved_state["saved"])
        net = net_from_state(arch, saved_state["widths"], saved_state["state_dict"])
        restore_rng(saved_state["rng"])
        log(f"fisher: resuming {run.path} after {iteration} removals")

    latency = predictor.predict(net.widths)
    error = history[-1]["holdout_error"] if history else None
    t_report = t_written = time.perf_counter()
    while latency > stop_latency:
        t0 = time.perf_counter()
        with FisherAccumulator(net) as acc:
            finetune(net, data, finetune_settings, derive_seed(seed, iteration, "finetune"), fisher=acc)
            signals = acc.signals()
        t1 = time.perf_counter()
        eligible = [g for g in considered if net.widths[g] > min_widths[g]]
        if not eligible:
            raise SearchError(f"every group is at its minimum at {latency * 1e3:.3f} ms; the target "
                              f"{stop_latency * 1e3:.3f} ms is not reachable")
        removal = choose_removal(signals, one_channel_gains(predictor, net.widths, eligible))
        before = latency
        net = remove_channel(net, removal)
        latency = predictor.predict(net.widths)
        iteration += 1
        error = None
        if eval_every and iteration % eval_every == 0:
            error = holdout_error(net, data, finetune_settings.eval_batch_size)
        reached = [f for f in points if f not in {p["fraction"] for p in saved} and latency <= f * initial]
        if reached or latency <= stop_latency:
            error = holdout_error(net, data, finetune_settings.eval_batch_size) if error is None else error
        record_saved_points(points, saved, initial, latency, net.widths, iteration, error, run, net)
        t2 = time.perf_counter()
        entry = {"iteration": iteration - 1, "group": removal.group, "channel": removal.channel, "removed": 1,
                 "fisher": removal.fisher, "gain_s": removal.gain, "score": removal.score,
                 "latency_before_s": before, "predicted_latency_s": latency, "fraction": latency / initial,
                 "block_removed": net.widths[removal.group] == 0, "holdout_error": error,
                 "widths": dict(net.widths), "seconds": {"finetune": t1 - t0, "removal": t2 - t1}}
        history.append(entry)
        run.checkpoint({"config": config, "iteration": iteration, "widths": dict(net.widths),
                        "state_dict": net.state_dict(), "history": history, "saved": saved})
        if reached or time.perf_counter() - t_written > 30:  # readable progress, not only at the end
            t_written = time.perf_counter()
            write_outputs(run, SearchResult("fisher", arch, dict(net.widths), initial_widths, initial, latency, target,
                                            history, saved, run.path, net),
                          str(predictor.table.path), finished=False, plot=False)
        if time.perf_counter() - t_report > 5 or latency <= stop_latency:
            t_report = time.perf_counter()
            log(f"removal {iteration}: {removal.group} channel {removal.channel} (fisher {removal.fisher:.3g}, "
                f"gain {removal.gain * 1e3:.3f} ms) -> {latency * 1e3:.3f} ms ({latency / initial:.3f} of initial)"
                + (f", held-out error {error:.2%}" if error is not None else ""))
        if callback:
            callback("removal", {"iteration": iteration - 1, "entry": entry})

    if error is None:
        error = holdout_error(net, data, finetune_settings.eval_batch_size)
    result = SearchResult("fisher", arch, dict(net.widths), initial_widths, initial, latency, target, history,
                          saved, run.path, net)
    run.checkpoint({"config": config, "iteration": iteration, "widths": dict(net.widths),
                    "state_dict": net.state_dict(), "history": history, "saved": saved, "finished": True})
    write_outputs(run, result, str(predictor.table.path), finished=True, plot=plot)
    log(f"fisher: done after {iteration} removals: {latency * 1e3:.3f} ms = {latency / initial:.3f} of "
        f"{initial * 1e3:.3f} ms, held-out error {error:.2%}; results in {run.path}")
    return result
