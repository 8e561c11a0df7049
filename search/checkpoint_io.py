"""The one model checkpoint format that the search and the retrain command share.

A checkpoint is a torch file holding plain data only:
`{"arch": name, "widths": {group: channels}, "state_dict": {...}}` (plus optional extra
plain-data keys). It is read with `torch.load(weights_only=True)`, so opening a checkpoint
never executes code from it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from models.arch import WidthError
from models.atomic_write import atomic_path
from models.families import get_arch
from models.torch_builder import ArchNet, build_torch
from .unreadable import why_unreadable

FORMAT_KEYS = ("arch", "widths", "state_dict")


class CheckpointError(ValueError):
    """A model checkpoint that is missing, unreadable or not in the expected format."""


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """`torch.save` through `models.atomic_write`: a crash never leaves a half-written file
    under the final name."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def model_payload(net: ArchNet, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = dict(extra or {})
    payload.update({
        "arch": net.arch.name,
        "widths": {k: int(v) for k, v in net.widths.items()},
        # detached copies: the caller may keep training the module after saving
        "state_dict": {k: v.detach().clone() for k, v in net.state_dict().items()},
    })
    return payload


def save_model(path: str | Path, net: ArchNet, extra: Mapping[str, Any] | None = None) -> Path:
    """Saves `net` (architecture name, width assignment, weights) atomically; `extra` adds
    plain-data keys (numbers, strings, lists, dicts, tensors)."""
    path = Path(path)
    atomic_torch_save(model_payload(net, extra), path)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dictionary, checked for the three format keys."""
    path = Path(path)
    if path.is_dir():
        inside = f" (such as {path / 'model.pt'})" if (path / "model.pt").is_file() else ""
        raise CheckpointError(f"checkpoint {path} is a directory: give the model file{inside}")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a regular file: give the model file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file; all mean "unreadable"
        raise CheckpointError(f"cannot read checkpoint {path}: {why_unreadable(path, exc)}; use the model.pt "
                              "that retrain or prune-search wrote, or copy it again") from exc
    if not isinstance(data, dict) or any(k not in data for k in FORMAT_KEYS):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(
            f"checkpoint {path} is not a netadapt-lut model file: expected keys {list(FORMAT_KEYS)}, found {found}"
        )
    return data


def load_model(path: str | Path) -> ArchNet:
    """The network saved by `save_model`, with its weights loaded (in train mode)."""
    data = read_checkpoint(path)
    try:
        arch = get_arch(str(data["arch"]))
        net = build_torch(arch, data["widths"])
    except (ValueError, WidthError) as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from exc
    try:
        net.load_state_dict(data["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path}: weights do not fit {arch.name} at its widths: {exc}") from exc
    return net
