"""Training a network from random initialisation: the unpruned base network that
`prune-search --checkpoint` starts from, and pruned networks retrained from scratch.

The recipe is the thesis's (Table 3.2): SGD with Nesterov momentum 0.9, weight decay 1e-4 on
every parameter, batch 128, learning rate 0.1 decayed to 0 by a cosine **per iteration** (the
rate changes after every batch, so it does not depend on where epochs end), cross-entropy.
Images are normalised with the training set's per-channel statistics and augmented by
reflect-pad 4, random 32x32 crop and horizontal flip (`models.batches.make_loader`).
On CUDA the forward pass runs under float16 autocast with a GradScaler; on CPU in float32.

A run directory holds

    checkpoint.pt  the training state (weights, optimiser, scheduler, scaler, RNG, epoch,
                   log), replaced atomically after every epoch, every few minutes inside an
                   epoch and when the run is asked to stop (Ctrl-C / SIGTERM); --resume reads it
    model.pt       the trained weights in the `search.checkpoint_io` format
    result.json    test error, epochs, wall time, device, parameters, widths, data
    log.jsonl      one JSON object per epoch (loss, train error, lr, time)
    train.log      the same, one readable line per epoch

A resumed run repeats an uninterrupted one exactly on CPU: the batch order and augmentation
are drawn per (seed, epoch) by the loader, and the global RNG (dropout) is saved and restored.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from models.arch import WidthError, load_widths
from models.batches import channel_mean_std, make_loader
from models.datasets import CifarData, open_dataset
from models.families import get_arch
from models.torch_builder import ArchNet, build_torch, count_parameters
from .checkpoint_io import atomic_torch_save, save_model

STATE_VERSION = 1
CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
RESULT = "result.json"
LOG_JSONL = "log.jsonl"
LOG_TEXT = "train.log"
RUN_FILES = (CHECKPOINT, MODEL, RESULT, LOG_JSONL, LOG_TEXT)
LR_SCHEDULE = "cosine decay to 0, updated every iteration"
AUGMENTATION = "reflect-pad 4, random 32x32 crop, horizontal flip p=0.5"
EVAL_BATCH = 500

# scaler.step skips the optimiser step when float16 gradients overflow (the first steps of a
# run, while the loss scale settles); the scheduler's "step order" warning that follows is expected
warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")

Log = Callable[[str], None]
StopCheck = Callable[[int, int], bool]  # (epoch index, batches done in it) -> stop now?


class RetrainError(ValueError):
    """A training run that cannot start or go on (bad settings, nothing to resume, ...)."""


class TrainingDiverged(RetrainError):
    """The loss became NaN or infinite."""


def stdout_log(line: str) -> None:
    print(line, flush=True)


# -- settings ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RetrainConfig:
    """Everything that defines a training run. `data_dir` and `device` may change on resume
    (the data are identified by their fingerprint instead); every other field may not."""

    arch: str
    data: str
    data_dir: str
    widths: Mapping[str, int] = field(default_factory=dict)  # {} = full width
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        try:
            arch = get_arch(self.arch)
            widths = arch.validate(dict(self.widths))
        except (ValueError, WidthError) as exc:
            raise RetrainError(str(exc)) from exc
        object.__setattr__(self, "arch", arch.name)
        object.__setattr__(self, "widths", widths)  # complete: every prunable group named
        if self.epochs < 1:
            raise RetrainError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise RetrainError(f"batch size must be >= 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise RetrainError(f"learning rate must be a positive number, got {self.lr}")
        if self.momentum < 0 or self.weight_decay < 0:
            raise RetrainError("momentum and weight decay must be >= 0")
        if self.device not in ("auto", "cpu", "cuda"):
            raise RetrainError(f"device must be auto, cpu or cuda, got {self.device!r}")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["widths"] = {k: int(v) for k, v in self.widths.items()}
        return d

    def run_settings(self) -> dict[str, Any]:
        """The fields a resume must not change."""
        d = self.as_dict()
        del d["data_dir"], d["device"]
        return d


def read_widths_file(arch_name: str, path: str | Path) -> dict[str, int]:
    """A width assignment file (`{group: n}` or a search's widths.json); a file that names
    another architecture is refused rather than applied to groups that happen to share names."""
    arch = get_arch(arch_name)
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise WidthError(f"cannot read widths file {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise WidthError(f"{path}: not valid JSON ({exc})") from exc
    if isinstance(data, dict) and isinstance(data.get("arch"), str) and data["arch"] != arch.name:
        raise WidthError(f"widths file {path} is for architecture {data['arch']!r}, not {arch.name!r}")
    return load_widths(arch, path)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RetrainError("--torch-device cuda was asked for, but PyTorch sees no CUDA device (use --torch-device auto or cpu)")
    if name not in ("cpu", "cuda"):
        raise RetrainError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    n = torch.get_num_threads()
    return f"cpu ({n} thread{'' if n == 1 else 's'})"


def data_fingerprint(data: CifarData) -> str:
    """Identifies the data a run trained on, so a resume cannot silently switch data sets."""
    h = hashlib.sha1()
    for arr in (data.train_images, data.train_labels, data.test_images, data.test_labels):
        h.update(str(arr.shape).encode())
        h.update(np.ascontiguousarray(arr).data)
    return h.hexdigest()


# -- one training step -------------------------------------------------------------------------
@dataclass
class TrainSetup:
    net: ArchNet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    device: torch.device
    amp: bool  # float16 autocast + loss scaling (CUDA only)

    @property
    def memory_format(self) -> torch.memory_format:
        # channels-last lets cuDNN use tensor-core kernels under float16
        return torch.channels_last if self.device.type == "cuda" else torch.contiguous_format


def make_setup(net: ArchNet, cfg: RetrainConfig, steps_per_epoch: int, device: torch.device) -> TrainSetup:
    amp = device.type == "cuda"
    fmt = torch.channels_last if amp else torch.contiguous_format
    net.to(device=device, memory_format=fmt)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                          weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch, eta_min=0.0)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return TrainSetup(net, opt, sched, scaler, device, amp)


def train_step(s: TrainSetup, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on a batch; returns (mean loss, number correct) as device tensors (no
    host synchronisation: the caller reads them when it prints)."""
    x = x.to(s.device, non_blocking=True, memory_format=s.memory_format)
    y = y.to(s.device, non_blocking=True)
    with torch.autocast(s.device.type, dtype=torch.float16, enabled=s.amp):
        out = s.net(x)
        loss = F.cross_entropy(out, y)
    s.optimizer.zero_grad(set_to_none=True)
    s.scaler.scale(loss).backward()
    s.scaler.step(s.optimizer)
    s.scaler.update()
    s.scheduler.step()
    return loss.detach(), (out.detach().argmax(1) == y).sum()


@torch.no_grad()
def evaluate(net: ArchNet, images: np.ndarray, labels: np.ndarray, mean: np.ndarray, std: np.ndarray,
             device: torch.device | None = None, batch_size: int = EVAL_BATCH) -> tuple[float, float]:
    """(top-1 error, mean cross-entropy) in eval mode, without augmentation."""
    device = device or next(net.parameters()).device
    amp = device.type == "cuda"
    fmt = torch.channels_last if amp else torch.contiguous_format
    was_training = net.training
    net.eval()
    wrong = torch.zeros((), dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for x, y in make_loader(images, labels, batch_size, False, mean, std):
        x = x.to(device, memory_format=fmt)
        y = y.to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            out = net(x)
        loss_sum += F.cross_entropy(out.float(), y, reduction="sum").double()
        wrong += (out.argmax(1) != y).sum()
    net.train(was_training)
    n = int(labels.shape[0])
    return int(wrong) / n, float(loss_sum) / n


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


# -- the run directory -------------------------------------------------------------------------
def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)  # atomic: readers never see half a file


def _write_json(path: Path, obj: Any) -> None:
    _write_text(path, json.dumps(obj, indent=1) + "\n")


def read_state(out: str | Path) -> dict[str, Any]:
    """The training state saved in run directory `out` (plain data, weights_only load)."""
    path = Path(out) / CHECKPOINT
    if not path.is_file():
        where = f"{out} does not exist" if not Path(out).exists() else f"no {CHECKPOINT} in {out}"
        raise RetrainError(f"nothing to resume: {where} (start the run without --resume)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # many exception types for a damaged file; all mean "unreadable"
        raise RetrainError(f"cannot read the training checkpoint {path}: {exc}") from exc
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        found = state.get("version") if isinstance(state, dict) else type(state).__name__
        raise RetrainError(f"{path} is not a retrain checkpoint of version {STATE_VERSION} (found {found!r})")
    return state


def config_from_state(state: Mapping[str, Any]) -> RetrainConfig:
    return RetrainConfig(**state["config"])


def _check_fresh_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise RetrainError(f"--out {out} is a file, not a directory")
    held = [name for name in RUN_FILES if (out / name).exists()]
    if held:
        raise RetrainError(f"{out} already holds a training run ({', '.join(held)}); pass --resume to continue it "
                           "or choose another --out")


def _check_same_run(state: Mapping[str, Any], cfg: RetrainConfig, fingerprint: str, out: Path) -> None:
    saved = config_from_state(state).run_settings()
    now = cfg.run_settings()
    diff = [f"{k}: run has {saved[k]!r}, now {now[k]!r}" for k in now if saved.get(k) != now[k]]
    if diff:
        hint = " (the cosine schedule depends on the total number of epochs)" if saved["epochs"] != now["epochs"] else ""
        raise RetrainError(f"cannot resume {out} with different settings{hint}: " + "; ".join(diff))
    if state["data_fingerprint"] != fingerprint:
        raise RetrainError(f"cannot resume {out}: the data in {cfg.data_dir} are not the data the run trained on "
                           "(fingerprint differs)")


def _epoch_line(rec: Mapping[str, Any], epochs: int) -> str:
    return (f"epoch {rec['epoch']:>{len(str(epochs))}}/{epochs}  loss {rec['loss']:.4f}  "
            f"train error {rec['train_error']:6.2%}  lr {rec['lr']:.4g}  {rec['seconds']:.1f}s  "
            f"({rec['images_per_s']:.0f} img/s, {rec['device']})")


def _write_logs(out: Path, log: list[dict], epochs: int) -> None:
    # rewritten whole from the checkpoint's log: always consistent with the saved state
    _write_text(out / LOG_JSONL, "".join(json.dumps(r) + "\n" for r in log))
    _write_text(out / LOG_TEXT, "".join(_epoch_line(r, epochs) + "\n" for r in log))


def _fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


@dataclass
class RunOutcome:
    out: Path
    finished: bool
    epoch: int  # completed epochs
    step: int  # batches done in the epoch after those (0 at an epoch boundary)
    result: dict[str, Any] | None  # result.json when finished


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
        _check_fresh_dir(out)
        state = None
    data = open_dataset(cfg.data, cfg.data_dir)
    fingerprint = data_fingerprint(data)
    if state is not None:
        _check_same_run(state, cfg, fingerprint, out)
    out.mkdir(parents=True, exist_ok=True)

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
        _write_logs(out, history, cfg.epochs)

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
        _write_logs(out, history, cfg.epochs)
        eta = (cfg.epochs - epoch) * seconds
        log(_epoch_line(rec, cfg.epochs) + (f"  eta {_fmt_duration(eta)}" if epoch < cfg.epochs else ""))
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
    _write_json(out / RESULT, result)
    log(f"test error {test_error:.2%} (loss {test_loss:.4f}) on {data.test_images.shape[0]} "
        f"{'synthetic ' if data.synthetic else ''}test images after {cfg.epochs} epochs, "
        f"{_fmt_duration(result['wall_time_s'])}; weights in {out / MODEL}")
    return result


def run_complete(out: str | Path) -> bool:
    return (Path(out) / RESULT).is_file() and (Path(out) / MODEL).is_file()
