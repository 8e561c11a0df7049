"""A training run's directory: its files, the checkpointed training state, the logs, and the
checks that a resume continues the same run on the same data.

    checkpoint.pt  the training state (weights, optimiser, scheduler, scaler, RNG, epoch, log)
    model.pt       the trained weights in the `search.checkpoint_io` format
    result.json    test error, epochs, wall time, device, parameters, widths, data
    log.jsonl      one JSON object per epoch (loss, train error, lr, time)
    train.log      the same, one readable line per epoch

Every file is replaced atomically (`models.atomic_write`): readers never see half a file.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from models.atomic_write import write_text_atomic
from models.datasets import CifarData
from .checkpoint_io import read_checkpoint
from .retrain_config import RetrainConfig, RetrainError
from .unreadable import why_unreadable

STATE_VERSION = 1
CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
RESULT = "result.json"
LOG_JSONL = "log.jsonl"
LOG_TEXT = "train.log"
RUN_FILES = (CHECKPOINT, MODEL, RESULT, LOG_JSONL, LOG_TEXT)


def data_fingerprint(data: CifarData) -> str:
    """Identifies the data a run trained on, so a resume cannot silently switch data sets."""
    h = hashlib.sha1()
    for arr in (data.train_images, data.train_labels, data.test_images, data.test_labels):
        h.update(str(arr.shape).encode())
        h.update(np.ascontiguousarray(arr).data)
    return h.hexdigest()


def write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1) + "\n")


def read_state(out: str | Path) -> dict[str, Any]:
    """The training state saved in run directory `out` (plain data, weights_only load)."""
    path = Path(out) / CHECKPOINT
    if not path.is_file():
        where = f"{out} does not exist" if not Path(out).exists() else f"no {CHECKPOINT} in {out}"
        raise RetrainError(f"nothing to resume: {where} (start the run without --resume)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # many exception types for a damaged file; all mean "unreadable"
        raise RetrainError(f"cannot read the training checkpoint {path}: {why_unreadable(path, exc)}; the run "
                           "cannot continue from it: start afresh with another --out") from exc
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        found = state.get("version") if isinstance(state, dict) else type(state).__name__
        raise RetrainError(f"{path} is not a retrain checkpoint of version {STATE_VERSION} (found {found!r})")
    return state


def config_from_state(state: Mapping[str, Any]) -> RetrainConfig:
    return RetrainConfig(**state["config"])


def check_fresh_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise RetrainError(f"--out {out} is a file, not a directory")
    held = [name for name in RUN_FILES if (out / name).exists()]
    if held:
        raise RetrainError(f"{out} already holds a training run ({', '.join(held)}); pass --resume to continue it "
                           "or choose another --out")


def check_same_run(state: Mapping[str, Any], cfg: RetrainConfig, fingerprint: str, out: Path) -> None:
    saved = config_from_state(state).run_settings()
    now = cfg.run_settings()
    diff = [f"{k}: run has {saved[k]!r}, now {now[k]!r}" for k in now if saved.get(k) != now[k]]
    if diff:
        hint = " (the cosine schedule depends on the total number of epochs)" if saved["epochs"] != now["epochs"] else ""
        raise RetrainError(f"cannot resume {out} with different settings{hint}: " + "; ".join(diff))
    if state["data_fingerprint"] != fingerprint:
        raise RetrainError(f"cannot resume {out}: the data in {cfg.data_dir} are not the data the run trained on "
                           "(fingerprint differs)")


def epoch_line(rec: Mapping[str, Any], epochs: int) -> str:
    return (f"epoch {rec['epoch']:>{len(str(epochs))}}/{epochs}  loss {rec['loss']:.4f}  "
            f"train error {rec['train_error']:6.2%}  lr {rec['lr']:.4g}  {rec['seconds']:.1f}s  "
            f"({rec['images_per_s']:.0f} img/s, {rec['device']})")


def write_logs(out: Path, log: list[dict], epochs: int) -> None:
    # rewritten whole from the checkpoint's log: always consistent with the saved state
    write_text_atomic(out / LOG_JSONL, "".join(json.dumps(r) + "\n" for r in log))
    write_text_atomic(out / LOG_TEXT, "".join(epoch_line(r, epochs) + "\n" for r in log))


def fmt_duration(seconds: float) -> str:
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


def run_complete(out: str | Path) -> bool:
    """The run's result.json and model.pt are there and readable (a resume writes a damaged one
    again from the checkpoint, which holds the final weights)."""
    try:
        json.loads((Path(out) / RESULT).read_text())
        read_checkpoint(Path(out) / MODEL)
    except (OSError, ValueError):  # a CheckpointError and a JSONDecodeError are ValueErrors
        return False
    return True
