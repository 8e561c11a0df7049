"""Training a network from random initialisation: the unpruned base network that
`prune-search --checkpoint` starts from, and pruned networks retrained from scratch.

The recipe is the thesis's (Table 3.2): SGD with Nesterov momentum 0.9, weight decay 1e-4 on
every parameter, batch 128, learning rate 0.1 decayed to 0 by a cosine **per iteration** (the
rate changes after every batch, so it does not depend on where epochs end), cross-entropy.
Images are normalised with the training set's per-channel statistics and augmented by
reflect-pad 4, random 32x32 crop and horizontal flip (`models.batches.make_loader`).
On CUDA the forward pass runs under float16 autocast with a GradScaler; on CPU in float32.

A run directory (`search.retrain_run_dir`) holds the training state in checkpoint.pt, replaced
atomically after every epoch, every few minutes inside an epoch and when the run is asked to
stop (Ctrl-C / SIGTERM); --resume reads it. At the end it gets model.pt and result.json.

A resumed run repeats an uninterrupted one exactly on CPU: the batch order and augmentation
are drawn per (seed, epoch) by the loader, and the global RNG (dropout) is saved and restored.
"""
from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch

from models.batches import channel_mean_std, make_loader
from models.datasets import CifarData, open_dataset
from models.families import get_arch
from models.torch_builder import ArchNet, build_torch, count_parameters
from .checkpoint_io import atomic_torch_save, save_model
from .retrain_config import RetrainConfig, RetrainError, TrainingDiverged, describe_device, resolve_device
from .retrain_run_dir import (CHECKPOINT, MODEL, RESULT, STATE_VERSION, RunOutcome, check_fresh_dir, check_same_run,
                              data_fingerprint, epoch_line, fmt_duration, read_state, run_complete, write_json,
                              write_logs)
from .retrain_step import AUGMENTATION, LR_SCHEDULE, evaluate, make_setup, train_step

Log = Callable[[str], None]
StopCheck = Callable[[int, int], bool]  # (epoch index, batches done in it) -> stop now?


def stdout_log(line: str) -> None:
    print(line, flush=True)


# -- stopping on request -----------------------------------------------------------------------
class StopRequest:
    """A stop check set by Ctrl-C or SIGTERM: the run finishes its batch, saves a checkpoint
    and returns. A second Ctrl-C aborts at once (losing only the work since the last save)."""

    def __init__(self, log: Log = stdout_log) -> None:
        self.requested = False
        self.log = log

    def __call__(self, epoch: int, step: int) -> bool:
        return self.requested

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.log(f"{signal.Signals(signum).name}: stopping after this batch and saving a checkpoint "
                 "(Ctrl-C again to abort at once)")

    @contextlib.contextmanager
    def installed(self) -> Iterator["StopRequest"]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signal handlers can only be set from the main thread
            return
        old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)



def train(cfg: RetrainConfig, out: str | Path, resume: bool = False, should_stop: StopCheck | None = None,
          log: Log = stdout_log, checkpoint_every_s: float = 600.0, progress_every_s: float = 60.0) -> RunOutcome:
    """Trains `cfg` into run directory `out` (or continues it with `resume`).

    `should_stop(epoch, step)` is asked after every batch (epoch from 0, step = batches done in
    that epoch); when it says yes the run saves a checkpoint and returns unfinished.
    """
    out = Path(out)
    device = resolve_device(cfg.device)
    if resume:
        state = read_state(out)  # before loading data: a missing checkpoint fails fast
    else:
        check_fresh_dir(out)
        state = None
    data = open_dataset(cfg.data, cfg.data_dir)
    fingerprint = data_fingerprint(data)
    if state is not None:
        check_same_run(state, cfg, fingerprint, out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RetrainError(f"cannot create the run directory {out}: {exc.strerror or exc}; choose a writable --out") from exc

    mean, std = channel_mean_std(data.train_images)
    loader = make_loader(data.train_images, data.train_labels, cfg.batch_size, True, mean, std, seed=cfg.seed)
    steps = len(loader)
    if steps == 0:
        raise RetrainError(f"the training set ({data.train_images.shape[0]} images) is smaller than one batch "
                           f"({cfg.batch_size}); lower --batch-size")
    torch.manual_seed(cfg.seed)  # the random initialisation
    net = build_torch(get_arch(cfg.arch), cfg.widths)
    s = make_setup(net, cfg, steps, device)
    history: list[dict[str, Any]] = []
    epoch, step, train_seconds = 0, 0, 0.0
    partial = {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0, "lr": cfg.lr}
    if state is not None:
        net.load_state_dict(state["model"])
        s.optimizer.load_state_dict(state["optimizer"])
        s.scheduler.load_state_dict(state["scheduler"])
        if s.amp and state["scaler"]:
            s.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and len(state["rng"]["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        epoch, step, train_seconds = int(state["epoch"]), int(state["step"]), float(state["train_seconds"])
        partial = dict(state["partial"])
        history = list(state["log"])
        if epoch >= cfg.epochs and run_complete(out):
            log(f"{out} already finished its {cfg.epochs} epochs; nothing to do")
            return RunOutcome(out, True, epoch, 0, json.loads((out / RESULT).read_text()))
        if epoch >= cfg.epochs:
            log(f"{out} finished training, but its {MODEL} or {RESULT} is missing or unreadable: writing them again "
                f"from {CHECKPOINT}")
    dev_name = describe_device(device)
    n_params = count_parameters(net)

    def save(epoch_: int, step_: int, part: Mapping[str, Any]) -> None:
        atomic_torch_save({
            "version": STATE_VERSION,
            "config": cfg.as_dict(),
            "data_fingerprint": fingerprint,
            "epoch": epoch_, "step": step_, "partial": dict(part), "train_seconds": train_seconds,
            "model": net.state_dict(), "optimizer": s.optimizer.state_dict(),
            "scheduler": s.scheduler.state_dict(), "scaler": s.scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []},
            "log": history,
        }, out / CHECKPOINT)

    log(f"retrain {cfg.arch} ({n_params:,} parameters) on {cfg.data}: {data.train_images.shape[0]} training / "
        f"{data.test_images.shape[0]} test images; {cfg.epochs} epochs of {steps} batches of {cfg.batch_size}; "
        f"{dev_name}, {'float16 autocast' if s.amp else 'float32'}; run directory {out}")
    if state is not None:
        log(f"resuming after epoch {epoch}" + (f", batch {step}/{steps} of epoch {epoch + 1}" if step else ""))
    else:
        save(0, 0, partial)  # a run directory always holds a checkpoint: --resume works from now on
        write_logs(out, history, cfg.epochs)

    net.train()
    last_save = last_progress = time.perf_counter()
    while epoch < cfg.epochs:
        loader.epoch = epoch  # the batch order and augmentation of this epoch, whatever came before
        dev_loss = torch.tensor(partial["loss_sum"], dtype=torch.float64, device=device)
        dev_correct = torch.tensor(partial["correct"], dtype=torch.int64, device=device)
        seen = int(partial["seen"])
        lr_start = float(partial["lr"]) if step else s.scheduler.get_last_lr()[0]
        t0 = time.perf_counter() - float(partial["seconds"])
        t_session = time.perf_counter()
        stopped = False
        for i, (x, y) in enumerate(loader):
            if i < step:
                continue  # already trained before the interruption (the loader still draws them)
            loss, correct = train_step(s, x, y)
            dev_loss += loss.double() * y.shape[0]
            dev_correct += correct
            seen += y.shape[0]
            step = i + 1
            now = time.perf_counter()
            ask_stop = should_stop is not None and should_stop(epoch, step)
            if step < steps and (ask_stop or now - last_save >= checkpoint_every_s):
                part = {"loss_sum": float(dev_loss), "correct": int(dev_correct), "seen": seen,
                        "seconds": now - t0, "lr": lr_start}
                _check_finite(part["loss_sum"], epoch, step)
                train_seconds += now - t_session
                t_session = now
                save(epoch, step, part)
                last_save = now
                if ask_stop:
                    log(f"stopped in epoch {epoch + 1}/{cfg.epochs} after batch {step}/{steps}; checkpoint saved "
                        f"(continue with --resume)")
                    return RunOutcome(out, False, epoch, step, None)
            if now - last_progress >= progress_every_s and step < steps:
                last_progress = now
                log(f"  epoch {epoch + 1}/{cfg.epochs}  batch {step}/{steps}  "
                    f"loss {float(dev_loss) / seen:.4f}  {(now - t0) / step:.2f} s/batch")
            if ask_stop:
                stopped = True  # at the epoch's last batch: finish the epoch, then stop
        now = time.perf_counter()
        train_seconds += now - t_session
        loss_sum = float(dev_loss)
        _check_finite(loss_sum, epoch, step)
        seconds = now - t0
        rec = {"epoch": epoch + 1, "loss": loss_sum / seen, "train_error": 1.0 - int(dev_correct) / seen,
               "lr": lr_start, "lr_end": s.scheduler.get_last_lr()[0], "seconds": seconds,
               "images_per_s": seen / seconds if seconds > 0 else float("nan"), "device": dev_name}
        history.append(rec)
        epoch, step = epoch + 1, 0
        partial = {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0, "lr": s.scheduler.get_last_lr()[0]}
        save(epoch, 0, partial)
        last_save = now
        write_logs(out, history, cfg.epochs)
        eta = (cfg.epochs - epoch) * seconds
        log(epoch_line(rec, cfg.epochs) + (f"  eta {fmt_duration(eta)}" if epoch < cfg.epochs else ""))
        if stopped and epoch < cfg.epochs:
            log(f"stopped after epoch {epoch}/{cfg.epochs}; checkpoint saved (continue with --resume)")
            return RunOutcome(out, False, epoch, 0, None)

    result = _finish(cfg, out, net, data, mean, std, fingerprint, history, train_seconds, device, dev_name, s.amp,
                     n_params, log)
    return RunOutcome(out, True, epoch, 0, result)


def _check_finite(loss_sum: float, epoch: int, step: int) -> None:
    if not math.isfinite(loss_sum):
        raise TrainingDiverged(f"training diverged: the loss is {loss_sum} in epoch {epoch + 1} (batch {step}); the last "
                           "checkpoint is kept, but it may already be bad: try a lower --lr")


def _finish(cfg: RetrainConfig, out: Path, net: ArchNet, data: CifarData, mean: np.ndarray, std: np.ndarray,
            fingerprint: str, history: list[dict], train_seconds: float, device: torch.device, dev_name: str,
            amp: bool, n_params: int, log: Log) -> dict[str, Any]:
    t0 = time.perf_counter()
    test_error, test_loss = evaluate(net, data.test_images, data.test_labels, mean, std, device)
    eval_seconds = time.perf_counter() - t0
    net.to(device="cpu", memory_format=torch.contiguous_format)
    norm = {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
    save_model(out / MODEL, net, extra={"source": "retrain", "data": cfg.data, "synthetic": data.synthetic,
                                        "epochs": cfg.epochs, "test_error": test_error, "normalization": norm})
    last = history[-1]
    result = {
        "arch": cfg.arch,
        "widths": {k: int(v) for k, v in cfg.widths.items()},
        "parameters": n_params,
        "data": cfg.data,
        "synthetic": data.synthetic,
        "data_fingerprint": fingerprint,
        "train_images": int(data.train_images.shape[0]),
        "test_images": int(data.test_images.shape[0]),
        "epochs": cfg.epochs,
        "test_error": test_error,
        "test_loss": test_loss,
        "final_train_loss": last["loss"],
        "final_train_error": last["train_error"],
        "wall_time_s": train_seconds + eval_seconds,
        "device": dev_name,
        "devices_used": sorted({r["device"] for r in history}),
        "mixed_precision": amp,
        "recipe": {"optimizer": "SGD", "momentum": cfg.momentum, "nesterov": cfg.nesterov,
                   "weight_decay": cfg.weight_decay, "lr": cfg.lr, "lr_schedule": LR_SCHEDULE,
                   "batch_size": cfg.batch_size, "augmentation": AUGMENTATION, "seed": cfg.seed},
        "normalization": norm,
        "model": MODEL,
        "torch": torch.__version__,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(out / RESULT, result)
    log(f"test error {test_error:.2%} (loss {test_loss:.4f}) on {data.test_images.shape[0]} "
        f"{'synthetic ' if data.synthetic else ''}test images after {cfg.epochs} epochs, "
        f"{fmt_duration(result['wall_time_s'])}; weights in {out / MODEL}")
    return result

