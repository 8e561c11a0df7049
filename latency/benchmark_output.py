"""Parse the text printed by TFLite's `benchmark_model` (or `latency/devices/runner.py --graph`).

Formats handled (any line may carry a log prefix such as ``INFO: ``):

* TF 1.13 / 2019 nightlies, last line
  ``Average inference timings in us: Warmup: 1465.89, Init: 31758, no stats: 1035.61``
  ("no stats" is the benchmark average; the label is an artefact of those versions).
* Current releases, last line
  ``Inference timings in us: Init: 3200, First inference: 117, Warmup (avg): 42.5, Inference (avg): 41.8``
* Statistics lines ``count=891 first=1076 curr=1087 min=1009 max=1376 avg=1035.61 std=25``,
  optionally followed by `` p5=… median=… p95=…``, or ``count=50 curr=1030(all same)`` when every
  run took the same number of microseconds.

C++ streams print doubles with 6 significant digits, so large values come as ``1.23457e+06``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["BenchmarkParseError", "BenchmarkResult", "parse_benchmark_output"]

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?nan|[-+]?inf"
_SUMMARY = re.compile(r"(?:Average\s+)?[Ii]nference timings in us:\s*(?P<body>.*)$")
_SUMMARY_ITEM = re.compile(r"\s*(?P<key>[A-Za-z][A-Za-z ()]*?)\s*:\s*(?P<value>\S+?)\s*(?:,|$)")
# A statistics line *starts* with count= (after an optional log prefix); this keeps out op-profiling
# lines such as "Timings (microseconds): count=50 first=...".
_STATS_LINE = re.compile(
    r"^(?:[A-Z]+:\s*|[IWEF]\d{4}\s[^\]]*\]\s*)?count=(?P<count>\d+)(?P<rest>.*)$"
)
_STATS_ITEM = re.compile(r"(?P<key>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>" + _NUMBER + r")")
_RUN_HEADER = re.compile(r"Running benchmark for")
_INIT_MS = re.compile(r"Initialized session in\s*(?P<ms>" + _NUMBER + r")\s*ms")

_AVG_KEYS = ("Inference (avg)", "Inference", "no stats")
_WARMUP_KEYS = ("Warmup (avg)", "Warmup")

_RAW_LIMIT = 2000  # characters of raw output quoted in an error message


class BenchmarkParseError(ValueError):
    """The output holds no usable inference timing; the message quotes the raw output."""


@dataclass(frozen=True)
class BenchmarkResult:
    avg_us: float  # mean latency of one invocation in the benchmark (not warm-up) phase
    init_us: float | None = None
    warmup_avg_us: float | None = None
    first_us: float | None = None  # "First inference" of current versions; None when not printed
    count: int | None = None  # benchmark-phase invocations, when a statistics line gives it
    source: str = "summary"  # "summary" (final line) or "statistics" (fallback, see parser)

    @property
    def seconds(self) -> float:
        return self.avg_us / 1e6


def _quote(text: str) -> str:
    """The raw output for an error message: head and tail when long (the cause is usually last)."""
    if len(text) <= _RAW_LIMIT:
        return text
    half = _RAW_LIMIT // 2
    omitted = len(text) - 2 * half
    return f"{text[:half]}\n... [{omitted} characters omitted] ...\n{text[-half:]}"


def _fail(reason: str, text: str) -> BenchmarkParseError:
    return BenchmarkParseError(f"{reason}; raw benchmark output:\n{_quote(text)}")


def _to_float(value: str, what: str, text: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise _fail(f"malformed {what} value {value!r}", text) from None
    if not math.isfinite(number):
        raise _fail(f"non-finite {what} value {value!r}", text)
    return number


def _optional(value: str, what: str, text: str) -> float | None:
    """An auxiliary value (init, warm-up, first): NaN, as printed for an empty warm-up, means absent."""
    try:
        number = float(value)
    except ValueError:
        raise _fail(f"malformed {what} value {value!r}", text) from None
    return number if math.isfinite(number) else None


def _stats_blocks(lines: list[str]) -> list[tuple[int, dict[str, str], str]]:
    """Statistics lines as (index of the "Running benchmark" block they belong to, fields, line).

    Block 0 is the warm-up phase, block 1 the benchmark phase; -1 means before any header.
    """
    block = -1
    found = []
    for line in lines:
        if _RUN_HEADER.search(line):
            block += 1
            continue
        match = _STATS_LINE.match(line.strip())
        if match:
            fields = {m.group("key"): m.group("value") for m in _STATS_ITEM.finditer(match.group("rest"))}
            fields["count"] = match.group("count")
            found.append((block, fields, line))
    return found


def _stat_avg(fields: dict[str, str], line: str, text: str) -> float:
    """The mean of a statistics line; an "(all same)" line has only `curr`, which is then the mean."""
    if "avg" in fields:
        return _to_float(fields["avg"], "avg", text)
    if "curr" in fields:
        return _to_float(fields["curr"], "curr", text)
    raise _fail(f"statistics line without avg or curr: {line.strip()!r}", text)


def parse_benchmark_output(text: str) -> BenchmarkResult:
    """Extract the benchmark timing from `benchmark_model` output.

    The final summary line (``[Average ]Inference timings in us: ...``) is preferred; when several
    are present (concatenated runs) the last one wins. Only when no summary line exists does the
    parser fall back to the last ``count=... avg=...`` statistics line, and only if that line
    belongs to the *benchmark* block, i.e. it follows the second "Running benchmark for ..."
    header; the first block is the warm-up and never stands in for the benchmark (an output that
    stops after the warm-up, e.g. a crash, is an error, not a fast model). The fallback result
    has ``source="statistics"``.

    Raises BenchmarkParseError (a ValueError) when no timing can be found or a value is malformed,
    non-finite or not positive; the message includes the raw output (head and tail when long).
    """
    if not isinstance(text, str):
        raise BenchmarkParseError(f"benchmark output must be str, got {type(text).__name__}")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    stats = _stats_blocks(lines)
    bench_stats = [(fields, line) for block, fields, line in stats if block >= 1]
    warm_stats = [(fields, line) for block, fields, line in stats if block == 0]
    count = int(bench_stats[-1][0]["count"]) if bench_stats else None

    summary = None
    for line in lines:
        match = _SUMMARY.search(line)
        if match:
            summary = match.group("body")

    if summary is not None:
        items = {m.group("key").strip(): m.group("value") for m in _SUMMARY_ITEM.finditer(summary)}
        avg_key = next((k for k in _AVG_KEYS if k in items), None)
        if avg_key is None:
            raise _fail(f"summary line without an inference average: {summary.strip()!r}", text)
        avg_us = _to_float(items[avg_key], avg_key, text)
        warm_key = next((k for k in _WARMUP_KEYS if k in items), None)
        warmup = _optional(items[warm_key], warm_key, text) if warm_key else None
        init = _optional(items["Init"], "Init", text) if "Init" in items else None
        first = (
            _optional(items["First inference"], "First inference", text)
            if "First inference" in items
            else None
        )
        source = "summary"
    else:
        if not bench_stats:
            if warm_stats:
                raise _fail("only warm-up statistics found (the benchmark phase did not finish)", text)
            raise _fail("no inference timing found", text)
        fields, line = bench_stats[-1]
        avg_us = _stat_avg(fields, line, text)
        warm_fields, warm_line = warm_stats[-1] if warm_stats else ({"count": "0"}, "")
        # an empty warm-up prints just "count=0"
        warmup = _stat_avg(warm_fields, warm_line, text) if int(warm_fields["count"]) else None
        init_match = None
        for init_line in lines:
            init_match = _INIT_MS.search(init_line) or init_match
        init = _to_float(init_match.group("ms"), "init", text) * 1000.0 if init_match else None
        first = None
        source = "statistics"

    if avg_us <= 0:
        raise _fail(f"inference average must be positive, got {avg_us}", text)
    return BenchmarkResult(
        avg_us=avg_us,
        init_us=init,
        warmup_avg_us=warmup,
        first_us=first,
        count=count,
        source=source,
    )
