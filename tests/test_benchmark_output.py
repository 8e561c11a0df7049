"""Parsing benchmark_model output of every version the project meets."""
from __future__ import annotations

from pathlib import Path

import pytest

from latency.benchmark_output import BenchmarkParseError, BenchmarkResult, parse_benchmark_output

DATA = Path(__file__).parent / "data"

CURRENT = """\
INFO: STARTING!
INFO: Num threads: [1]
INFO: Graph: [conv.tflite]
INFO: Loaded model conv.tflite
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
INFO: Initialized session in 3.2ms.
INFO: Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=11292 first=117 curr=35 min=34 max=167 avg=42.5 std=9 p5=35 median=38 p95=61

INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=23466 first=43 curr=41 min=33 max=189 avg=41.8 std=10 p5=34 median=38 p95=59

INFO: Inference timings in us: Init: 3200, First inference: 117, Warmup (avg): 42.5, Inference (avg): 41.8
INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the numbers with a grain of salt.
INFO: Memory footprint delta from the start of the process (MB): init=2.6 overall=3.2
"""


@pytest.mark.parametrize(
    "name, avg, init, warmup, count",
    [
        ("tflite-1.13.1-armhf.txt", 1035.61, 31758, 1465.89, 891),
        ("tflite-nightly-2019-armhf.txt", 1439.83, 9897, 1186.2, 683),
    ],
)
def test_shared_samples(name: str, avg: float, init: float, warmup: float, count: int) -> None:
    result = parse_benchmark_output((DATA / name).read_text())
    assert result == BenchmarkResult(
        avg_us=avg, init_us=init, warmup_avg_us=warmup, first_us=None, count=count, source="summary"
    )
    assert result.seconds == pytest.approx(avg / 1e6)


@pytest.mark.parametrize("name, avg", [("tflite-1.13.1-armhf.txt", 1035.61), ("tflite-nightly-2019-armhf.txt", 1439.83)])
def test_samples_without_summary_fall_back_to_benchmark_block(name: str, avg: float) -> None:
    text = "\n".join(
        line for line in (DATA / name).read_text().splitlines() if "inference timings" not in line
    )
    result = parse_benchmark_output(text)
    assert result.source == "statistics"
    assert result.avg_us == avg  # the benchmark block, not the warm-up block above it
    assert result.init_us == pytest.approx({1035.61: 31758, 1439.83: 9897}[avg])


def test_current_format() -> None:
    result = parse_benchmark_output(CURRENT)
    assert result == BenchmarkResult(
        avg_us=41.8, init_us=3200, warmup_avg_us=42.5, first_us=117, count=23466, source="summary"
    )


def test_current_summary_line_alone_and_scientific_notation() -> None:
    line = "Inference timings in us: Init: 31758, First inference: 5978, Warmup (avg): 1465.89, Inference (avg): 1.23457e+06"
    result = parse_benchmark_output(line)
    assert result.avg_us == pytest.approx(1234570.0) and result.first_us == 5978
    assert result.count is None
    assert result.seconds == pytest.approx(1.23457)


def test_percentile_statistics_fallback() -> None:
    text = CURRENT.split("INFO: Inference timings")[0]
    result = parse_benchmark_output(text)
    assert result.source == "statistics"
    assert (result.avg_us, result.warmup_avg_us, result.count) == (41.8, 42.5, 23466)
    assert result.init_us == pytest.approx(3200)


@pytest.mark.parametrize("same", ["(all same)", " (all same)"])
def test_all_same_statistics(same: str) -> None:
    text = (
        "Running benchmark for at least 1 iterations and at least 0.5 seconds\n"
        f"count=3 curr=20{same}\n\n"
        "Running benchmark for at least 50 iterations and at least 1 seconds\n"
        f"count=50 curr=17{same}\n"
    )
    result = parse_benchmark_output(text)
    assert (result.avg_us, result.warmup_avg_us, result.count) == (17, 20, 50)
    assert result.first_us is None


def test_all_same_block_with_summary() -> None:
    text = (
        "INFO: Running benchmark for at least 5 iterations\nINFO: count=5 curr=2(all same)\n"
        "INFO: Running benchmark for at least 50 iterations\nINFO: count=50 curr=1(all same)\n"
        "INFO: Inference timings in us: Init: 990, First inference: 2, Warmup (avg): 2.1, Inference (avg): 1.34\n"
    )
    result = parse_benchmark_output(text)
    assert (result.avg_us, result.count) == (1.34, 50)  # the summary's precise mean wins


def test_empty_warmup_is_absent_not_zero() -> None:
    text = (
        "INFO: Running benchmark for at least 0 iterations\nINFO: count=0\n"
        "INFO: Running benchmark for at least 50 iterations\nINFO: count=50 first=3 curr=1 min=1 max=3 avg=1.5 std=0\n"
        "INFO: Inference timings in us: Init: 990, First inference: 3, Warmup (avg): nan, Inference (avg): 1.52\n"
    )
    assert parse_benchmark_output(text).warmup_avg_us is None
    assert parse_benchmark_output(text.rsplit("INFO: Inference", 1)[0]).warmup_avg_us is None


def test_op_profiling_lines_are_not_statistics() -> None:
    text = (
        "Running benchmark for at least 1 iterations\ncount=3 first=9 curr=8 min=8 max=9 avg=8.3 std=0\n"
        "Running benchmark for at least 50 iterations\ncount=50 first=7 curr=7 min=6 max=9 avg=7.1 std=0\n"
        "Timings (microseconds): count=50 first=900 curr=900 min=900 max=900 avg=900 std=0\n"
    )
    assert parse_benchmark_output(text).avg_us == 7.1


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "no inference timing"),
        ("ERROR: Could not open 'model.tflite'.\nFailed to initialize the interpreter\n", "no inference timing"),
        (
            "Running benchmark for at least 1 iterations and at least 0.5 seconds\n"
            "count=314 first=5978 curr=1030 min=1009 max=5978 avg=1465.89 std=528\n"
            "Segmentation fault\n",
            "only warm-up",
        ),
        ("Inference timings in us: Init: 3200, First inference: 117, Warmup (avg): 42.5, Inference (avg): abc", "malformed"),
        ("Inference timings in us: Init: 3200, First inference: 117, Warmup (avg): 42.5, Inference (avg): nan", "non-finite"),
        ("Inference timings in us: Init: 3200, First inference: 0, Warmup (avg): 0, Inference (avg): 0", "positive"),
        ("Average inference timings in us: Warmup: 1465.89, Init: 31758", "without an inference average"),
    ],
)
def test_malformed_or_missing_raises_with_raw_text(text: str, reason: str) -> None:
    with pytest.raises(BenchmarkParseError, match=reason) as info:
        parse_benchmark_output(text)
    assert isinstance(info.value, ValueError)
    assert text.strip() in str(info.value)


def test_long_raw_output_is_truncated_keeping_head_and_tail() -> None:
    text = "HEAD-MARKER\n" + "noise line\n" * 5000 + "ERROR: the real cause\n"
    with pytest.raises(BenchmarkParseError) as info:
        parse_benchmark_output(text)
    message = str(info.value)
    assert "HEAD-MARKER" in message and "ERROR: the real cause" in message
    assert "characters omitted" in message and len(message) < 3000


def test_not_a_string() -> None:
    with pytest.raises(BenchmarkParseError):
        parse_benchmark_output(b"Inference timings in us: Inference (avg): 1")  # type: ignore[arg-type]
