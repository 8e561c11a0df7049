"""Evaluating NetAdapt candidates, in this process or in parallel through joblib.

A candidate is independent of the others: a task ships the parent's weights and widths,
which channels to keep, and the data (as memory-mapped files for worker processes), never a
module. Each task fixes its own thread count and derives its randomness from its seed, so
its result does not depend on which worker runs it.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from models.arch import Arch
from models.torch_builder import build_torch, carry_over
from .data import SearchData
from .finetune import FinetuneSettings, finetune, holdout_error
from .runs import SearchError

BACKENDS = ("loky", "ray")


@dataclass
class CandidateTask:
    arch: Arch
    parent_widths: dict[str, int]
    parent_state: dict[str, torch.Tensor]
    group: str
    keep: list[int]  # channel indices of `group` that survive
    settings: FinetuneSettings
    seed: int
    data: SearchData
    threads: int | None = None  # torch intra-op threads for this task (None: leave as is)


@dataclass
class CandidateResult:
    group: str
    error: float
    state: dict[str, torch.Tensor]
    seconds: dict[str, float]  # prepare (build + carry-over), finetune, eval


def evaluate_candidate(task: CandidateTask) -> CandidateResult:
    """Carry the parent's weights over to the candidate, fine-tune it, measure its held-out error."""
    previous_threads = torch.get_num_threads()
    if task.threads:
        torch.set_num_threads(task.threads)
    try:
        t0 = time.perf_counter()
        parent = build_torch(task.arch, task.parent_widths)
        parent.load_state_dict(task.parent_state)
        widths = dict(task.parent_widths, **{task.group: len(task.keep)})
        net = carry_over(parent, widths, {task.group: task.keep})
        del parent
        t1 = time.perf_counter()
        finetune(net, task.data, task.settings, task.seed)
        t2 = time.perf_counter()
        error = holdout_error(net, task.data, task.settings.eval_batch_size)
        t3 = time.perf_counter()
        return CandidateResult(task.group, error, net.state_dict(),
                               {"prepare": t1 - t0, "finetune": t2 - t1, "eval": t3 - t2})
    finally:
        torch.set_num_threads(previous_threads)


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise SearchError(f"unknown parallel backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "ray":
        try:
            import ray  # noqa: F401
            from ray.util.joblib import register_ray  # noqa: F401
        except ImportError as exc:
            raise SearchError("--backend ray needs the optional 'ray' package: pip install 'netadapt-lut[ray]' "
                              f"(import failed: {exc})") from exc


@contextmanager
def _backend_context(backend: str) -> Iterator[None]:
    import joblib

    if backend == "ray":
        check_backend(backend)
        from ray.util.joblib import register_ray

        register_ray()  # joblib's "ray" backend: starts or joins a Ray cluster
    with joblib.parallel_config(backend=backend):
        yield


def run_candidates(tasks: Sequence[CandidateTask], jobs: int = 1, backend: str = "loky",
                   on_result: Callable[[int, CandidateResult], None] | None = None) -> list[CandidateResult]:
    """Results in task order; `on_result(index, result)` as each arrives (in order)."""
    results: list[CandidateResult] = []
    if jobs == 1 or len(tasks) <= 1:
        for i, task in enumerate(tasks):
            results.append(evaluate_candidate(task))
            if on_result:
                on_result(i, results[-1])
        return results
    import joblib

    with _backend_context(backend):
        # results as they come (for progress lines) where the backend can stream them
        parallel = joblib.Parallel(n_jobs=min(jobs, len(tasks)), return_as="generator" if backend == "loky" else "list")
        for i, result in enumerate(parallel(joblib.delayed(evaluate_candidate)(t) for t in tasks)):
            results.append(result)
            if on_result:
                on_result(i, result)
    return results


def worker_threads(jobs: int, threads: int | None) -> int | None:
    """Threads per candidate: given, or 1 per worker when several run at once (the workers
    are the parallelism), or the process default for a single in-process worker."""
    if threads is not None:
        if threads < 1:
            raise SearchError(f"--torch-threads must be >= 1, got {threads}")
        return threads
    return 1 if jobs > 1 else None

