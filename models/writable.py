"""Checking that an output can be written before any work is spent on it.

A command that converts, trains or measures for minutes and only then finds that its `--out`
lies under a file, or on a read-only file system, has wasted those minutes. This check creates
nothing: it finds the nearest existing directory the output would be created in and asks
whether it may be written (root passes permission bits, but not a read-only mount).
"""
from __future__ import annotations

import os
from pathlib import Path

from .atomic_write import DEFAULT_HINT, WriteError

__all__ = ["check_writable"]


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(path: str | Path, hint: str = DEFAULT_HINT, directory: bool = False) -> None:
    """Raises a WriteError "cannot write PATH: WHY; HINT" when the file `path` (with
    `directory`, a directory to create or write files into) could not be written."""
    path = Path(path)
    suffix = f"; {hint}" if hint else ""
    if path.is_dir() and not directory:
        raise WriteError(f"cannot write {path}: it is a directory{suffix}")
    if path.exists() and not path.is_dir() and directory:
        raise WriteError(f"cannot write {path}: it is a file, not a directory{suffix}")
    where = _nearest_existing(path if directory else path.parent)
    if not where.is_dir():
        raise WriteError(f"cannot write {path}: {where} is not a directory{suffix}")
    if not os.access(where, os.W_OK | os.X_OK):
        try:
            read_only = bool(os.statvfs(where).f_flag & os.ST_RDONLY)
        except (OSError, AttributeError):  # no statvfs on this platform
            read_only = False
        why = "a read-only file system" if read_only else "permission denied"
        raise WriteError(f"cannot write {path}: {where} is not writable ({why}){suffix}")
