"""The settings of a training run (`RetrainConfig`), its errors, and the device it runs on."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from models.arch import WidthError, load_widths
from models.families import get_arch


class RetrainError(ValueError):
    """A training run that cannot start or go on (bad settings, nothing to resume, ...)."""


class TrainingDiverged(RetrainError):
    """The loss became NaN or infinite."""


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

