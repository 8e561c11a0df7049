"""A table file survives anything: kills at chosen moments, read-only storage, a full disk,
two builds at once. Real builds (subprocesses), real SIGKILLs, real SQLite files; the kills
come from `NETADAPT_KILL_AT` (`latency.store.kill_point`)."""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_tables import ROOT, cli

FAST = ["--device", "local", "--arch", "wrn-10-1", "--grid", "step:8", "--passes", "1", "--runs", "3",
        "--warmup", "0", "--context", "alone", "--min-time-ms", "0", "--placements", "1", "--quiet"]


def _rows(path: Path, sql: str) -> list[tuple]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def _build(out: Path, *extra: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    if env:
        full = dict(os.environ, PYTHONPATH=str(ROOT), **env)
        return subprocess.run([sys.executable, "-m", "latency.cli_build", *FAST, *extra, "--out", str(out)],
                              capture_output=True, text=True, env=full, cwd=ROOT)
    return cli("-m", "latency.cli_build", *FAST, *extra, "--out", str(out), check=check)


def _assert_whole(out: Path) -> None:
    """Every cell once per pass, every type with cells, aggregates for every type's full range."""
    n_cells = _rows(out, "select count(*) from cells")[0][0]
    # the one pass; a cell timed while the machine read slow may have extra ones (latency.retime)
    pairs = _rows(out, "select cell_id, pass_index from measurements where pass_index = 0")
    assert len(pairs) == len(set(pairs)) == n_cells
    assert _rows(out, "select count(*) from layer_types where key not in (select type_key from cells)")[0][0] == 0
    assert _rows(out, "select count(distinct type_key) from aggregates")[0][0] == \
        _rows(out, "select count(*) from layer_types")[0][0]


def test_a_kill_between_a_type_and_its_cells_leaves_a_table_that_finishes(tmp_path: Path) -> None:
    out = tmp_path / "t.sqlite"
    p = _build(out, env={"NETADAPT_KILL_AT": "after-type-row"})
    assert p.returncode == -9
    # the type row and its cells are one transaction: the kill left neither
    assert _rows(out, "select count(*) from layer_types")[0][0] == 0
    _build(out)
    _assert_whole(out)


def test_a_type_an_older_version_left_without_cells_is_repaired(tmp_path: Path) -> None:
    out = tmp_path / "t.sqlite"
    p = _build(out, env={"NETADAPT_KILL_AT": "after-measurements"})
    assert p.returncode == -9
    key = _rows(out, "select key from layer_types order by key limit 1")[0][0]
    with sqlite3.connect(out) as db:  # as a kill between two commits of that version left it
        db.execute("delete from measurements where cell_id in (select id from cells where type_key = ?)", [key])
        db.execute("delete from cells where type_key = ?", [key])
    assert _rows(out, "select status from runs") == [("running",)]  # the killed build's run
    _build(out)
    _assert_whole(out)
    # the killed build's run and the one that finished the cells (then its check networks' run)
    # (and one more per round of extra passes, where every pass of a check network was kept slow)
    statuses = [r[0] for r in _rows(out, "select status from runs order by id")]
    assert statuses[:3] == ["interrupted", "finished", "finished"] and set(statuses[3:]) <= {"finished"}
    assert _rows(out, "select count(distinct run_id) from build_networks where pass_index < 10") == [(1,)]
    assert len(statuses) == 3 + _rows(out, "select count(distinct run_id) from build_networks "
                                           "where pass_index >= 10")[0][0]


def test_a_rederive_killed_midway_keeps_the_previous_aggregates(tmp_path: Path) -> None:
    out = tmp_path / "t.sqlite"
    _build(out)
    before = _rows(out, "select type_key, c_in, c_out, smoothed from aggregates order by 1, 2, 3")
    p = _build(out, "--sigma", "2", env={"NETADAPT_KILL_AT": "after-aggregates-delete"})
    assert p.returncode == -9
    assert _rows(out, "select type_key, c_in, c_out, smoothed from aggregates order by 1, 2, 3") == before
    cli("-m", "latency.cli_predict", "--table", str(out), "--arch", "wrn-10-1")


def test_a_second_build_on_the_same_file_is_refused_at_once(tmp_path: Path) -> None:
    out = tmp_path / "t.sqlite"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    first = subprocess.Popen([sys.executable, "-m", "latency.cli_build", *FAST, "--runs", "300", "--out", str(out)],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and first.poll() is None:
            if out.exists() and _count(out) > 0:
                break
            time.sleep(0.05)
        assert first.poll() is None, first.communicate()
        second = _build(out, "--runs", "300", check=False)
        assert second.returncode == 2
        assert f"another build (pid {first.pid}, host " in second.stderr and "is writing" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr
    _assert_whole(out)


def _count(out: Path) -> int:
    try:
        return _rows(out, "select count(*) from measurements")[0][0]
    except sqlite3.Error:
        return 0


def test_sigma_must_be_finite(tmp_path: Path) -> None:
    p = _build(tmp_path / "t.sqlite", "--sigma", "nan", check=False)
    assert p.returncode == 2 and "--sigma must be a finite number" in p.stderr
    assert not (tmp_path / "t.sqlite").exists()


def test_readers_change_nothing(small_table, tmp_path: Path) -> None:
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    p = cli("-m", "latency.cli_predict", "--table", str(empty), "--arch", "wrn-10-1", check=False)
    assert p.returncode == 2 and empty.read_bytes() == b""
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as db:
        db.execute("create table t (a)")
    before = foreign.read_bytes()
    p = cli("-m", "latency.cli_predict", "--table", str(foreign), "--arch", "wrn-10-1", check=False)
    assert p.returncode == 2 and "not a latency table" in p.stderr
    assert foreign.read_bytes() == before  # still in rollback-journal mode, nothing written
    table = tmp_path / "t.sqlite"
    shutil.copy(small_table("wrn-10-1"), table)
    before = table.read_bytes()
    cli("-m", "latency.cli_predict", "--table", str(table), "--arch", "wrn-10-1")
    assert table.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "empty.sqlite", "foreign.sqlite", "t.sqlite"]


def _mount_tmpfs(where: Path, *options: str) -> bool:
    where.mkdir(exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(where)],
                          capture_output=True).returncode == 0


@pytest.fixture
def small_fs(tmp_path: Path):
    """A real 1 MB filesystem (tmpfs; needs root to mount)."""
    where = tmp_path / "fs"
    if not _mount_tmpfs(where, "size=1m"):
        pytest.skip("mounting a small tmpfs needs root")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_table_on_read_only_storage_predicts(small_table, small_fs: Path) -> None:
    assert subprocess.run(["mount", "-o", "remount,size=16m", str(small_fs)], capture_output=True).returncode == 0
    shutil.copy(small_table("wrn-10-1"), small_fs / "t.sqlite")
    assert subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], capture_output=True).returncode == 0
    p = cli("-m", "latency.cli_predict", "--table", str(small_fs / "t.sqlite"), "--arch", "wrn-10-1")
    assert "ms" in p.stdout


def test_a_full_disk_loses_nothing_and_the_build_continues(small_fs: Path) -> None:
    # room for the table's templates (about 0.4 MB) and a few batches, not for the whole build
    assert subprocess.run(["mount", "-o", "remount,size=1536k", str(small_fs)], capture_output=True).returncode == 0
    out = small_fs / "t.sqlite"
    p = _build(out, check=False)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "disk is full" in p.stderr and str(out) in p.stderr and "Traceback" not in p.stderr
    kept = set(_rows(out, "select cell_id, pass_index, seconds from measurements"))
    assert kept  # every batch committed before the disk filled is there
    assert subprocess.run(["mount", "-o", "remount,size=16m", str(small_fs)], capture_output=True).returncode == 0
    _build(out)
    _assert_whole(out)
    assert kept <= set(_rows(out, "select cell_id, pass_index, seconds from measurements"))


def test_a_report_that_cannot_be_written_fails_before_measuring(small_table, tmp_path: Path) -> None:
    table = tmp_path / "t.sqlite"
    shutil.copy(small_table("wrn-10-1"), table)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    p = cli("-m", "latency.cli_report", "--table", str(table), "--device", "local", "--arch", "wrn-10-1",
            "--sample", "2", "--passes", "1", "--out", str(blocker / "rep"), check=False)
    assert p.returncode == 2 and "cannot write the report into" in p.stderr and "--out" in p.stderr
    assert "Traceback" not in p.stderr
    assert _rows(table, "select count(*) from whole_networks")[0][0] == 0  # no device time was spent


def test_a_failed_ssh_start_leaves_no_table_a_local_build_would_continue(tmp_path: Path) -> None:
    import socket

    from tests.sshd_fixture import write_devices_file

    with socket.socket() as s:  # a port nothing listens on: the connection is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    devices = write_devices_file(tmp_path / "devices.toml", {"pi": {
        "host": "127.0.0.1", "port": port, "known_hosts": str(tmp_path / "known_hosts"), "retries": 0}})
    (tmp_path / "known_hosts").write_text("")
    out = tmp_path / "t.sqlite"
    p = cli("-m", "latency.cli_build", "--device", "pi", "--devices-file", str(devices), "--arch", "wrn-10-1",
            "--grid", "step:8", "--passes", "1", "--quiet", "--out", str(out), check=False)
    assert p.returncode == 2 and "no device could start" in p.stderr and "Traceback" not in p.stderr
    assert not out.exists()  # no skeleton with the SSH device's recipe
    # a table an SSH device did start is refused by a local build, naming why
    from latency.recipe import TableRecipe
    from latency.store import TableStore

    TableStore.create_or_open(out, "wrn-10-1", TableRecipe(device_kind="ssh", grid_step=8, passes=1)).close()
    p = _build(out, check=False)
    assert p.returncode == 2 and "timed on SSH devices, not on the local CPU" in p.stderr
