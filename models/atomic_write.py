"""Writing a file so that readers never see half of it: the one way every output is written.

The data go to a temporary file in the target's directory (so the final rename stays on one
file system), are flushed to disk, and the temporary file is renamed over the target with
`os.replace`, which is atomic. A crash or an error leaves the old file (or none) under the final
name and no temporary file behind. A directory that cannot be written is reported as a
`WriteError` naming the file, not as a bare PermissionError.
"""
from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Iterator

__all__ = ["DEFAULT_HINT", "WriteError", "atomic_path", "write_bytes_atomic", "write_text_atomic"]

DEFAULT_HINT = "choose a writable --out"


class WriteError(OSError, ValueError):
    """A file that could not be written (no permission, read-only or full file system, ...).

    An OSError, so handlers of file-system errors catch it; a ValueError, so command-line
    handlers of bad input catch it too."""


def _temp_path(path: Path) -> Path:
    # Hidden, per process and thread, and with the target's suffix (writers such as
    # matplotlib's savefig pick the file format from it).
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_native_id()}{path.suffix}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _describe(exc: OSError) -> str:
    return exc.strerror or str(exc)


@contextlib.contextmanager
def atomic_path(path: str | Path, hint: str = DEFAULT_HINT) -> Iterator[Path]:
    """A temporary path for a writer that takes a file name (`torch.save`, `savefig`, ...);
    when the block ends without an error it is renamed to `path`, else removed.

        with atomic_path(out / "state.pt") as tmp:
            torch.save(state, tmp)

    The parent directories are created. An OSError while writing is raised as a WriteError
    naming `path`, with `hint` (what the user can do) appended."""
    path = Path(path)
    tmp = _temp_path(path)
    suffix = f"; {hint}" if hint else ""
    if path.parent.exists() and not path.parent.is_dir():
        raise WriteError(f"cannot write {path}: {path.parent} is not a directory{suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if isinstance(exc, WriteError):
            raise
        raise WriteError(f"cannot write {path}: {_describe(exc)}{suffix}") from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()  # still there only if something failed
    _fsync_dir(path.parent)


def write_bytes_atomic(path: str | Path, data: bytes | bytearray | memoryview, hint: str = DEFAULT_HINT) -> Path:
    """Writes `data` to `path` atomically (see `atomic_path`); returns the path."""
    with atomic_path(path, hint) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str, hint: str = DEFAULT_HINT) -> Path:
    """Writes `text` (UTF-8) to `path` atomically (see `atomic_path`); returns the path."""
    return write_bytes_atomic(path, text.encode("utf-8"), hint)
