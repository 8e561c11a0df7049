"""models.atomic_write: complete files or none, no temporary files left, clear errors."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from models.atomic_write import WriteError, atomic_path, write_bytes_atomic, write_text_atomic


def test_writes_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "dir" / "out.json"  # parents are created
    assert write_text_atomic(target, "first\n") == target
    assert target.read_text() == "first\n"
    write_bytes_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]


def test_a_failing_writer_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.pt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="writer broke"):
        with atomic_path(target) as tmp:
            tmp.write_text("half a fi")
            raise RuntimeError("writer broke")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]


def test_temporary_keeps_the_suffix(tmp_path: Path) -> None:
    # savefig chooses the format from the file name's suffix
    with atomic_path(tmp_path / "channels.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path and tmp.name.startswith(".")
        tmp.write_bytes(b"png")
    assert (tmp_path / "channels.png").read_bytes() == b"png"


def test_parent_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "runs"
    blocker.write_text("not a directory")
    with pytest.raises(WriteError, match=r"cannot write .*runs/x\.json: .*runs is not a directory; choose a writable --out"):
        write_text_atomic(blocker / "x.json", "{}")
    with pytest.raises(WriteError, match=r"cannot write .*runs/deeper/x\.json: .*; choose a writable --data-dir"):
        write_text_atomic(blocker / "deeper" / "x.json", "{}", hint="choose a writable --data-dir")


def test_error_is_an_oserror_and_a_valueerror(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(OSError):
        write_bytes_atomic(tmp_path / "f" / "x", b"")
    with pytest.raises(ValueError):
        write_bytes_atomic(tmp_path / "f" / "x", b"")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(WriteError, match=r"cannot write .*ro/out\.bin: Permission denied; choose a writable --out"):
            write_bytes_atomic(ro / "out.bin", b"x")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)
