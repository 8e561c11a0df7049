"""Worker processes that live no longer than their parent and leave Ctrl-C to it.

A spawned worker blocks reading its task pipe, whose write end it holds itself (a
multiprocessing queue pickles both ends), so a parent killed with SIGKILL never gives it an
end of file: it would idle on, holding its memory and multiprocessing's resource tracker,
for as long as nobody kills it. `exit_with_parent` ends it within a fraction of a second.

A terminal sends Ctrl-C's SIGINT to every process of the foreground group, workers included.
Only the parent should act on it (finish the batches in flight, save them, stop); a worker
that raised KeyboardInterrupt would print its traceback and break the pool under the parent.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from typing import Iterator

__all__ = ["PARENT_POLL_S", "exit_with_parent", "ignore_terminal_interrupt", "spawning_without_sigint"]

#: how often a worker checks that its parent still lives (the portable path); a check is a
#: system call, too rare to disturb a timing
PARENT_POLL_S = 0.25

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _kill_on_parent_death() -> bool:
    """Asks Linux to SIGKILL this process when its parent dies; False where that is not possible.
    The kernel ties this to the parent *thread* that spawned us: call it only where that thread
    lives as long as the parent process (see `exit_with_parent`)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int) -> None:
    # an orphan is adopted by init or a subreaper: its parent pid changes, never back
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_S)
    os._exit(1)  # nothing to clean up: the parent, who wanted the results, is gone


def exit_with_parent(parent_pid: int, kernel_signal: bool = True) -> None:
    """Makes this process end when `parent_pid` (its parent at spawn) is gone: at once through
    the kernel where `kernel_signal` allows it (Linux, spawned from a thread that lives as long
    as the parent, such as its main thread), else within `PARENT_POLL_S` by a watchdog thread.
    A parent already gone before this call ends the process here."""
    if kernel_signal:
        _kill_on_parent_death()
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="exit-with-parent", daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the kernel was told to watch it
        os._exit(1)


def ignore_terminal_interrupt() -> None:
    """Ignores SIGINT in this (worker) process: the parent coordinates the stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def spawning_without_sigint() -> Iterator[None]:
    """Runs the body (which may spawn worker processes) with SIGINT ignored, so that a worker
    starts ignoring it (an ignored signal stays ignored across exec, and Python keeps it so):
    a Ctrl-C while a worker imports its modules, before its initializer, reaches only the
    parent. Only the main thread may change signal handlers; elsewhere the body runs as it is.
    A SIGINT arriving during the body itself (microseconds, a spawn's fork and exec) is lost."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
