"""Check networks: whole networks timed when a table is built, and again with every report.

A table's cells can be right while whole networks cost more (or less) than their sum: on a
shared host whose neighbours evict the last-level cache, a network's weights come from further
away than any cell's did, and how much further moves with the neighbours
(docs/measuring.md, "The device then and now"). The check cells of a report
(`latency.host_check`) cannot see that. So `build-tables` ends by timing a few whole networks
(the full network, then at half width) as a report times networks, stores them in the table
file (`build_networks`) and says how the table predicts them: a table that misses whole
networks on its own device says so before any report. A report times them again with its
networks and says how far whole networks moved since the build.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from models.arch import Arch
from .host_check import MOVED_PCT, Moves
from .metrics import TARGETS
from .networks import Network

#: check networks build-tables times by default
CHECK_NETWORKS = 2
#: their width factors, in the order they are taken
CHECK_FACTORS = (1.0, 0.5)


def check_networks(arch: Arch, k: int = CHECK_NETWORKS) -> list[Network]:
    """The first `k` check networks of `arch`: the full network, then every group at half its
    width (labelled as `sample_networks` labels its uniform scalings)."""
    if not 0 <= k <= len(CHECK_FACTORS):
        raise ValueError(f"the number of check networks must be between 0 and {len(CHECK_FACTORS)}, got {k}")
    out = []
    for f in CHECK_FACTORS[:k]:
        widths = arch.validate({g.name: max(1, round(g.full * f)) for g in arch.prunable_groups})
        out.append(Network("full" if f == 1.0 else f"uniform-{f:.2f}", widths, "uniform"))
    return out


@dataclass(frozen=True)
class BuildCheck:
    """One check network as the build left it: the table's prediction and the device's timing."""

    label: str
    predicted_s: float
    measured_s: float
    all_slow: bool = False  # every pass was kept although the machine never read fast around it

    @property
    def error_pct(self) -> float:
        return 100.0 * (self.predicted_s / self.measured_s - 1.0)

    def line(self) -> str:
        return (f"check network {self.label}: predicted {self.predicted_s * 1e3:.3f} ms, measured "
                f"{self.measured_s * 1e3:.3f} ms ({self.error_pct:+.1f} %"
                + ("; every pass timed while this machine ran slow, so it says more about the machine than "
                   "about the table" if self.all_slow else "") + ")")


def build_check_lines(checks: Sequence[BuildCheck]) -> list[str]:
    """What build-tables prints of its check networks; a warning when one misses by more than
    the worst error the product aims at."""
    lines = [c.line() for c in checks]
    # a network timed only while the machine ran slow tells nothing of the table
    worst = max((c for c in checks if not c.all_slow), key=lambda c: abs(c.error_pct), default=None)
    if worst is not None and abs(worst.error_pct) > TARGETS["max_ape"]:
        way = "slower" if worst.error_pct < 0 else "faster"
        lines.append(f"warning: the table misses whole networks on this device by more than {TARGETS['max_ape']:g} % "
                     f"({worst.label}: {worst.error_pct:+.1f} %, the network {way} than the table says): the "
                     "device's speed may have moved during the build (a shared host's neighbours; build again "
                     "in a steadier hour), or networks here cost other than the sum of their cells; a "
                     "latency-report times the layers again with its networks and tells which "
                     "(docs/measuring.md, 'The device then and now')")
    return lines


@dataclass(frozen=True)
class NetworkCheck(Moves):
    """The check networks' values at the build (then) and timed with a report's networks (now)."""

    labels: tuple[str, ...]
    then_s: tuple[float, ...]
    now_s: tuple[float, ...]

    def __post_init__(self) -> None:
        self._validate(self.labels, "network")

    def sentence(self) -> str:
        moves = ", ".join(f"{label} {m:+.1f} %" for label, m in zip(self.labels, self.moves_pct))
        line = f"network check: the build's check networks timed again with the networks ran {moves}"
        if self.moved:
            line += (f"; whole networks run more than {MOVED_PCT:g} % {'slower' if self.drift_pct > 0 else 'faster'} "
                     "than during the build, and the errors below carry that move")
        return line

    def to_json(self) -> dict:
        return {"drift_pct": self.drift_pct, "moved": self.moved, "limit_pct": MOVED_PCT,
                "networks": [{"label": label, "then_s": t, "now_s": n, "move_pct": m}
                             for label, t, n, m in zip(self.labels, self.then_s, self.now_s, self.moves_pct)]}


def network_check(labels: dict[str, str], then: dict[str, float], now: dict[str, float]) -> NetworkCheck | None:
    """The check of the networks `labels` (key -> label) with a value both then and now; None if none has."""
    both = sorted((k for k in labels if k in then and k in now), key=lambda k: -then[k])  # the full one first
    if not both:
        return None
    return NetworkCheck(tuple(labels[k] for k in both), tuple(then[k] for k in both), tuple(now[k] for k in both))
