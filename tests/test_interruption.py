"""A build interrupted however it is leaves nothing behind and loses nothing: real `build-tables`
subprocesses, real signals, real worker processes found through /proc, the real SQLite file
read read-only while the build writes it."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_tables import ROOT

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds processes through /proc")

# one load per cell: these tests are about processes and files, not placements
BUILD = ["--device", "local", "--arch", "wrn-10-1", "--grid", "step:8", "--passes", "2", "--runs", "200",
         "--warmup", "1", "--context", "alone", "--min-time-ms", "0", "--placements", "1"]
#: how long a build may take to start its worker and commit a first batch on a busy 2-core machine
#: (it converts every layer type's template first)
STARTUP_S = 600.0
#: how long processes may take to end after their build was killed
GONE_S = 20.0


def _start(out: Path, log: Path, **popen) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(log, "wb") as err:  # a file, not a pipe: nobody must drain it for the build to go on
        return subprocess.Popen([sys.executable, "-m", "latency.cli_build", *BUILD, "--out", str(out)], cwd=ROOT,
                                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, **popen)


def _stat(pid: int) -> tuple[str, int, str] | None:
    """(state, parent pid, start time) of a live process, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces
    return fields[0], int(fields[1]), fields[19]


def _children(pid: int) -> dict[int, str]:
    """{pid: start time} of the live processes whose parent is `pid` and whose command line
    mentions multiprocessing (its spawned worker and resource tracker)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if stat and stat[1] == pid and stat[0] != "Z" and b"multiprocessing" in cmdline:
            found[int(entry.name)] = stat[2]
    return found


def _alive(pid: int, started: str) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z" and stat[2] == started  # a zombie has ended; a new start is pid reuse


def _measurements(out: Path) -> int:
    if not out.exists():
        return 0
    try:
        db = sqlite3.connect(f"file:{out}?mode=ro", uri=True, timeout=1.0)
        try:
            return db.execute("select count(*) from measurements").fetchone()[0]
        finally:
            db.close()
    except sqlite3.OperationalError:  # not created yet, or busy this instant
        return 0


def _wait_measuring(build: subprocess.Popen, out: Path, log: Path) -> dict[int, str]:
    """Waits until the build has a worker and a resource tracker, and committed measurements;
    returns those processes."""
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if build.poll() is not None:
            pytest.fail(f"the build ended ({build.returncode}) before it was interrupted:\n{log.read_text()}")
        children = _children(build.pid)
        if len(children) >= 2 and _measurements(out) > 0:
            return children
        time.sleep(0.2)
    build.kill()
    pytest.fail(f"no worker and no measurement within {STARTUP_S:.0f} s:\n{log.read_text()}")


def _wait_gone(processes: dict[int, str], within_s: float) -> list[int]:
    """The processes of `processes` still alive after `within_s` (none as soon as they are gone)."""
    deadline = time.monotonic() + within_s
    while True:
        left = [pid for pid, started in processes.items() if _alive(pid, started)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def _describe(pids: list[int]) -> str:
    lines = []
    for pid in pids:
        try:
            lines.append(f"{pid}: {Path(f'/proc/{pid}/cmdline').read_bytes().replace(bytes(1), b' ')[:120]!r}")
        except OSError:
            pass
    return "; ".join(lines)


def test_killed_build_leaves_no_worker_behind(tmp_path: Path) -> None:
    """SIGKILL gives the build no chance to stop its workers: they must notice on their own."""
    out, log = tmp_path / "t.sqlite", tmp_path / "stderr.txt"
    build = _start(out, log)
    try:
        children = _wait_measuring(build, out, log)
    finally:
        build.send_signal(signal.SIGKILL)
        build.wait()
    left = _wait_gone(children, GONE_S)
    for pid in left:  # don't leave them to the next test either
        os.kill(pid, signal.SIGKILL)
    assert not left, f"still running {GONE_S:.0f} s after their build was killed: {_describe(left)}"


def test_ctrl_c_stops_cleanly_and_the_same_command_finishes(tmp_path: Path) -> None:
    """A terminal's Ctrl-C sends SIGINT to the whole process group: the build saves what is
    finished and says so, with no traceback from it or its workers; the table then finishes."""
    out, log = tmp_path / "t.sqlite", tmp_path / "stderr.txt"
    build = _start(out, log, start_new_session=True)  # its own group, as a terminal's foreground job
    try:
        children = _wait_measuring(build, out, log)
        os.killpg(build.pid, signal.SIGINT)
        code = build.wait(timeout=STARTUP_S)
    finally:
        if build.poll() is None:
            os.killpg(build.pid, signal.SIGKILL)
            build.wait()
    stderr = log.read_text()
    assert code == 130, stderr
    assert "interrupted: every finished batch is saved in" in stderr
    for bad in ("Traceback", "KeyboardInterrupt", "Task exception was never retrieved"):
        assert bad not in stderr, stderr
    assert not _wait_gone(children, GONE_S), "the worker outlived an interrupted build"
    saved = _measurements(out)
    assert saved > 0

    again = _start(out, tmp_path / "again.txt")
    assert again.wait(timeout=STARTUP_S) == 0, (tmp_path / "again.txt").read_text()
    db = sqlite3.connect(f"file:{out}?mode=ro", uri=True)
    try:
        cells = db.execute("select count(*) from cells").fetchone()[0]
        # passes 0 and 1; a cell whose both passes read slow has an extra one (latency.retime)
        pairs = db.execute("select cell_id, pass_index from measurements where pass_index < 2").fetchall()
    finally:
        db.close()
    assert len(pairs) == len(set(pairs)) == 2 * cells  # every (cell, pass) exactly once
    assert {pass_index for _, pass_index in pairs} == {0, 1}


# -- the local device on its own ------------------------------------------------------------------
def _workers_of(pid: int) -> dict[int, str]:
    return {p: s for p, s in _children(pid).items()
            if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()}


def test_a_worker_ignores_sigint_and_goes_on_timing() -> None:
    """Ctrl-C reaches the workers too; they leave it to the parent and stay usable."""
    import asyncio

    from latency.devices.base import ModelJob, TimingSettings
    from latency.devices.local import LocalDevice
    from tests.test_tflite_runner import build_models

    model = build_models()["dense"]

    async def scenario() -> tuple[set[int], set[int], int]:
        before = set(_workers_of(os.getpid()))
        device = LocalDevice(settings=TimingSettings(runs=5, warmup=1))
        await device.start()
        try:
            workers = set(_workers_of(os.getpid())) - before
            for pid in workers:
                os.kill(pid, signal.SIGINT)
            timings = await device.measure([ModelJob(1, model), ModelJob(2, model)])
            return workers, set(_workers_of(os.getpid())) - before, len(timings)
        finally:
            await device.close()

    workers, after, timed = asyncio.run(scenario())
    assert len(workers) == 1 and after == workers and timed == 2  # the same worker timed them


WATCHED_BY_THREAD = """
import asyncio, sys, threading
from latency.devices.local import LocalDevice

async def hold():
    device = LocalDevice()
    await device.start()
    print("started", flush=True)
    await asyncio.sleep(3600)

if __name__ == "__main__":
    # an event loop in another thread than the main one: the kernel's parent-death signal would
    # follow that thread, so the workers rely on their watchdog. (The main thread waits: the
    # process pool takes no work once it has ended.)
    loop_thread = threading.Thread(target=asyncio.run, args=(hold(),))
    loop_thread.start()
    loop_thread.join()
"""


def test_workers_of_a_device_run_from_another_thread_end_with_their_parent(tmp_path: Path) -> None:
    script = tmp_path / "hold.py"
    script.write_text(WATCHED_BY_THREAD)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as err:  # not a pipe: a worker left behind would hold it open
        holder = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                  stderr=err, text=True)
    try:
        assert holder.stdout.readline() == "started\n", log.read_text()
        children = _children(holder.pid)
        assert len(children) == 2  # the worker and the resource tracker
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    left = _wait_gone(children, GONE_S)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"still running {GONE_S:.0f} s after their parent was killed: {_describe(left)}"


@pytest.mark.parametrize("module", ["latency.cli_build", "latency.cli_report"])
def test_a_command_imports_no_numerical_library_before_it_handles_ctrl_c(module: str) -> None:
    """`python -m latency.cli_build` runs the module's top level before `main` catches Ctrl-C: a
    heavy import there (scipy takes about a second) is a window in which Ctrl-C prints a traceback."""
    probe = (f"import sys, {module}; "
             "print(sorted(m for m in ('numpy', 'scipy', 'tensorflow', 'torch', 'ai_edge_litert') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_ctrl_c_while_the_build_starts_is_clean(tmp_path: Path) -> None:
    """Before the build handles Ctrl-C itself (importing its modules): no traceback either."""
    out, log = tmp_path / "t.sqlite", tmp_path / "stderr.txt"
    build = _start(out, log, start_new_session=True)
    try:
        time.sleep(1.0)  # where this lands varies; every moment must end cleanly
        os.killpg(build.pid, signal.SIGINT)
        code = build.wait(timeout=STARTUP_S)
    finally:
        if build.poll() is None:
            os.killpg(build.pid, signal.SIGKILL)
            build.wait()
    stderr = log.read_text()
    # -SIGINT: under `python -m`, CPython ends by SIGINT once a KeyboardInterrupt went through
    # code run from a string (a dataclass's generated __init__, say), even when caught
    assert code in (130, -signal.SIGINT), stderr
    assert "interrupted: every finished batch is saved" in stderr
    for bad in ("Traceback", "KeyboardInterrupt", "Task exception was never retrieved"):
        assert bad not in stderr, stderr
