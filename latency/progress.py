"""Progress and ETA of long measurements, reported as plain lines (logs and terminals alike)."""
from __future__ import annotations

import time
from typing import Callable


def _fmt_seconds(s: float) -> str:
    s = int(max(s, 0))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


class Progress:
    def __init__(self, total: int, already: int = 0, report: Callable[[str], None] | None = None,
                 every_s: float = 5.0, label: str = "measurements"):
        self.total, self.done, self.start_done = total, already, already
        self.report = report if report is not None else (lambda line: None)  # None: silent (--quiet)
        self.every_s, self.label = every_s, label
        self.t0 = self.last = time.monotonic()
        self.pass_index = 0

    def advance(self, n: int, pass_index: int = 0) -> None:
        self.done += n
        self.pass_index = pass_index
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self.report(self.line())

    def line(self) -> str:
        elapsed = time.monotonic() - self.t0
        new = self.done - self.start_done
        rate = new / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta_s = _fmt_seconds(eta) if eta == eta else "?"
        return (f"pass {self.pass_index + 1}: {self.done:,}/{self.total:,} {self.label} ({pct:.1f}%), "
                f"{rate:.1f}/s, elapsed {_fmt_seconds(elapsed)}, ETA {eta_s}")

    def finish(self) -> None:
        if self.done > self.start_done:
            self.report(self.line())
