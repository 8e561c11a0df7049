"""Why a torch file could not be read, in words a user can act on.

`torch.load` reports a damaged file in its own terms: an empty file is an EOFError with no
message, a text file a KeyError of one byte's value, a truncated archive a paragraph about
miniz. The file itself says more: its size and first bytes.
"""
from __future__ import annotations

import errno
import pickle
import re
from pathlib import Path

__all__ = ["why_unreadable"]

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
PICKLE_MAGIC = b"\x80"  # the legacy format: a pickle (protocol 2 and up)


def _weights_only_reason(exc: BaseException) -> str | None:
    """The unpickler's own sentence when torch refused a non-plain-data object, else None."""
    text = str(exc)
    if not (isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in text):
        return None
    found = re.search(r"WeightsUnpickler error: ([^\n]*?\.)(?: |$)", text)
    detail = f" ({found.group(1)})" if found else ""
    return ("it holds Python objects other than plain data (tensors, numbers, strings, lists, dicts), which are "
            f"never loaded from a file because loading them could run code{detail}")


def why_unreadable(path: str | Path, exc: BaseException) -> str:
    """What is wrong with the file at `path` that `torch.load` failed on with `exc`."""
    path = Path(path)
    if isinstance(exc, OSError) and exc.errno == errno.EIO:  # the disk, not the file's content
        return exc.strerror
    try:  # also what a permission problem says; torch's own OSErrors ("Invalid argument") say little
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as err:
        return err.strerror or str(err)
    if size == 0:
        return "the file is empty (0 bytes)"
    if not head.startswith((ZIP_MAGIC, PICKLE_MAGIC)):
        return f"not a PyTorch file: it begins with {head!r}"
    plain_data = _weights_only_reason(exc)
    if plain_data:
        return plain_data
    if head.startswith(ZIP_MAGIC):
        return f"the PyTorch archive is truncated or damaged ({size:,} bytes)"
    return f"the file ({size:,} bytes, PyTorch's legacy format) is truncated or damaged"
