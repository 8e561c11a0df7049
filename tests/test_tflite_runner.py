"""The device-side runner: time_model, sensors, and both CLI modes run as a real subprocess."""
from __future__ import annotations

import ast
import functools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from latency.benchmark_output import parse_benchmark_output
from latency.devices import runner as tflite_runner
from latency.devices.runner import (
    EXIT_MODEL_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    encode_batch_stream,
    read_temperature,
    read_throttled,
    load_model,
    time_loaded,
    time_loaded_stats,
    time_model,
    time_in_context,
    time_rotation,
)

RUNNER = Path(tflite_runner.__file__).resolve()
BROKEN = b"this is not a flatbuffer" * 4


@functools.lru_cache(maxsize=None)
def build_models() -> dict[str, bytes]:
    """Tiny real single-layer models; cached so every test module converts them once."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    def convert(inp: "keras.KerasTensor", out: "keras.KerasTensor") -> bytes:
        return tf.lite.TFLiteConverter.from_keras_model(keras.Model(inp, out)).convert()

    models = {}
    # 3x3 conv at 32x32: 1 -> 1 channel (~9k MACs) vs 128 -> 128 channels (~150M MACs)
    inp = keras.Input((32, 32, 1), batch_size=1)
    models["conv_small"] = convert(inp, keras.layers.Conv2D(1, 3, padding="same")(inp))
    inp = keras.Input((32, 32, 128), batch_size=1)
    models["conv_big"] = convert(inp, keras.layers.Conv2D(128, 3, padding="same")(inp))
    inp = keras.Input((64,), batch_size=1)
    models["dense"] = convert(inp, keras.layers.Dense(10)(inp))
    return models


@pytest.fixture(scope="module")
def models() -> dict[str, bytes]:
    return build_models()


def run_runner(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    # run the file by path, as on the Pi: it must not need the project on sys.path
    return subprocess.run(
        [sys.executable, str(RUNNER), *args],
        input=stdin,
        capture_output=True,
        timeout=120,
        cwd=str(RUNNER.parents[3]),  # outside the project
    )


def json_lines(stdout: bytes) -> list[dict]:
    return [json.loads(line) for line in stdout.decode().splitlines() if line.strip()]


def test_time_model_bytes_and_path(models: dict[str, bytes], tmp_path: Path) -> None:
    for name, model in models.items():
        seconds = time_model(model)
        assert math.isfinite(seconds) and seconds > 0, name
    path = tmp_path / "dense.tflite"
    path.write_bytes(models["dense"])
    assert time_model(path, runs=10, warmup=0) > 0
    assert time_model(str(path), runs=10, warmup=1, threads=2) > 0


def test_bigger_conv_is_slower(models: dict[str, bytes]) -> None:
    small = time_model(models["conv_small"])
    big = time_model(models["conv_big"])
    # ~16000x the MACs; even a noisy machine keeps an order of magnitude between them
    assert big > 10 * small


def test_time_loaded_runs_until_the_minimum_time(models: dict[str, bytes]) -> None:
    interpreter = load_model(models["dense"])
    seconds, runs, _ = time_loaded_stats(interpreter, runs=5, warmup=1)
    assert runs == 5 and seconds > 0
    seconds, runs, _ = time_loaded_stats(interpreter, runs=5, warmup=1, min_time_s=0.01)
    assert runs > 5 and seconds * runs >= 0.01 * 0.999
    assert time_loaded(interpreter, runs=5, warmup=0) > 0


def test_time_loaded_stats_fastest_is_one_invocation(models: dict[str, bytes]) -> None:
    small, big = load_model(models["dense"]), load_model(models["conv_big"])
    seconds, runs, fastest = time_loaded_stats(small, runs=5, warmup=1, min_time_s=0.01)
    assert runs > 5 and 0 < fastest <= seconds
    # the fastest of many invocations is below their mean unless every one took the same time
    assert fastest < seconds or runs == 1
    big_seconds, _, big_fastest = time_loaded_stats(big, runs=3, warmup=1)
    assert big_fastest > 10 * fastest and big_fastest <= big_seconds


def test_time_rotation_times_every_model_in_turn(models: dict[str, bytes]) -> None:
    small, big, dense = (load_model(models[k]) for k in ("conv_small", "conv_big", "dense"))
    calls = {"small": 0}
    invoke = small.invoke

    class Counting:  # counts the rotation's invocations of one model, timing it as before
        def __getattr__(self, name: str):
            return getattr(small, name)

        def invoke(self) -> None:
            calls["small"] += 1
            invoke()

    fast_small, fast_big, fast_dense = time_rotation([Counting(), big, dense], min_time_s=0.0, min_rounds=7)
    assert calls["small"] == 1 + 7  # one untimed first invocation, then once per round
    assert 0 < fast_small and 0 < fast_dense and fast_big > 10 * fast_small
    # the same models back to back: the rotation is never faster by more than noise allows
    # for the big one, whose time is compute, not warm-up state
    alone_big = time_loaded_stats(big, runs=5, warmup=1)[2]
    assert 0.5 < fast_big / alone_big < 2.0
    longer = time_rotation([small, dense], min_time_s=0.005, min_rounds=1)
    assert len(longer) == 2 and all(v > 0 for v in longer)
    with pytest.raises(ValueError):
        time_rotation([])
    with pytest.raises(ValueError):
        time_rotation([small], min_rounds=0)


def test_time_model_rejects_bad_input(models: dict[str, bytes]) -> None:
    with pytest.raises(ValueError):
        time_model(models["dense"], runs=0)
    with pytest.raises(ValueError):
        time_model(models["dense"], warmup=-1)
    with pytest.raises(ValueError):
        time_model(models["dense"], threads=0)
    with pytest.raises(Exception):
        time_model(BROKEN)


def test_sensors_are_none_or_plausible() -> None:
    temperature = read_temperature()
    assert temperature is None or -40.0 < temperature < 150.0
    assert read_throttled() in (None, True, False)


def test_batch_directory_with_broken_model(models: dict[str, bytes], tmp_path: Path) -> None:
    (tmp_path / "10.tflite").write_bytes(models["conv_big"])
    (tmp_path / "2.tflite").write_bytes(models["conv_small"])
    (tmp_path / "5.tflite").write_bytes(BROKEN)
    (tmp_path / "7.tflite").write_bytes(models["dense"])
    (tmp_path / "notes.txt").write_text("ignored")
    proc = run_runner("--batch", str(tmp_path), "--num_runs=20", "--warmup_runs=2", "--num_threads=1")
    assert proc.returncode == EXIT_MODEL_FAILED, proc.stderr.decode()
    lines = json_lines(proc.stdout)
    assert [line["cell_id"] for line in lines] == [2, 5, 7, 10]  # numeric order
    by_id = {line["cell_id"]: line for line in lines}
    assert "error" in by_id[5] and "seconds" not in by_id[5]
    for cell in (2, 7, 10):
        line = by_id[cell]
        assert set(line) == {"cell_id", "seconds", "fastest", "measured_at", "temperature_c", "throttled"}
        assert line["seconds"] > 0 and line["measured_at"] > 0
        assert 0 < line["fastest"] <= line["seconds"]
    assert by_id[10]["seconds"] > by_id[2]["seconds"]


def test_batch_manifest_all_ok(models: dict[str, bytes], tmp_path: Path) -> None:
    sub = tmp_path / "m"
    sub.mkdir()
    (sub / "a.tflite").write_bytes(models["dense"])
    (sub / "b.tflite").write_bytes(models["conv_small"])
    manifest = tmp_path / "batch.json"
    manifest.write_text(
        json.dumps({"models": [{"cell_id": 41, "path": "m/b.tflite"}, {"cell_id": 40, "path": "m/a.tflite"}]})
    )
    proc = run_runner("--batch", str(manifest), "--num_runs", "10", "--warmup_runs", "1", "--cooldown", "0")
    assert proc.returncode == EXIT_OK, proc.stderr.decode()
    lines = json_lines(proc.stdout)
    assert [line["cell_id"] for line in lines] == [41, 40]  # manifest order
    assert all(line["seconds"] > 0 for line in lines)


def test_batch_stdin_stream(models: dict[str, bytes]) -> None:
    stream = encode_batch_stream([(1, models["dense"]), ("x", BROKEN), (3, models["conv_small"])])
    proc = run_runner("--batch", "-", "--num_runs=10", stdin=stream)
    assert proc.returncode == EXIT_MODEL_FAILED
    lines = json_lines(proc.stdout)
    assert [line["cell_id"] for line in lines] == [1, "x", 3]
    assert "error" in lines[1] and lines[0]["seconds"] > 0 and lines[2]["seconds"] > 0

    truncated = run_runner("--batch", "-", stdin=stream[:-10])
    assert truncated.returncode == EXIT_USAGE
    assert truncated.stdout == b""  # nothing timed from a batch that did not arrive whole


def test_batch_unreadable_source(tmp_path: Path) -> None:
    proc = run_runner("--batch", str(tmp_path / "missing.json"))
    assert proc.returncode == EXIT_USAGE
    assert b"cannot read batch" in proc.stderr


def test_benchmark_model_mode_round_trips_through_parser(models: dict[str, bytes], tmp_path: Path) -> None:
    graph = tmp_path / "conv.tflite"
    graph.write_bytes(models["conv_small"])
    proc = run_runner(f"--graph={graph}", "--num_runs=50", "--warmup_runs=5", "--num_threads=1")
    assert proc.returncode == EXIT_OK, proc.stderr.decode()
    text = proc.stdout.decode()
    assert "Inference timings in us: Init: " in text.splitlines()[-1]
    result = parse_benchmark_output(text)
    assert result.source == "summary"
    assert result.avg_us > 0 and result.count == 50
    assert result.init_us is not None and result.init_us > 0
    assert result.first_us is not None and result.warmup_avg_us is not None


def test_benchmark_model_mode_without_warmup(models: dict[str, bytes], tmp_path: Path) -> None:
    graph = tmp_path / "dense.tflite"
    graph.write_bytes(models["dense"])
    proc = run_runner(f"--graph={graph}", "--num_runs=20", "--warmup_runs=0")
    assert proc.returncode == EXIT_OK, proc.stderr.decode()
    result = parse_benchmark_output(proc.stdout.decode())
    assert result.avg_us > 0 and result.count == 20 and result.warmup_avg_us is None


def test_benchmark_model_mode_broken_model(tmp_path: Path) -> None:
    graph = tmp_path / "broken.tflite"
    graph.write_bytes(BROKEN)
    proc = run_runner(f"--graph={graph}")
    assert proc.returncode == EXIT_MODEL_FAILED
    assert b"ERROR" in proc.stderr


def test_cli_usage_errors() -> None:
    assert run_runner().returncode == EXIT_USAGE
    assert run_runner("--graph=x.tflite", "--num_runs=0").returncode == EXIT_USAGE


def test_info() -> None:
    proc = run_runner("--info")
    assert proc.returncode == EXIT_OK
    (info,) = json_lines(proc.stdout)
    assert info["runtime"] == "ai-edge-litert" and info["runtime_version"]


def test_runner_is_self_contained_python37() -> None:
    """The file goes alone to a Pi: Python 3.7 syntax, only stdlib + numpy at import time."""
    source = RUNNER.read_text()
    tree = ast.parse(source, feature_version=(3, 7))
    top_level = set()
    for node in tree.body:  # imports of the interpreter happen lazily inside functions
        if isinstance(node, ast.Import):
            top_level.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            top_level.add(node.module.split(".")[0])
    assert top_level - set(sys.stdlib_module_names) == {"numpy"}


def _counting(interpreter, calls: dict, key: str):
    invoke = interpreter.invoke

    class Counting:  # counts invocations, otherwise the interpreter itself
        def __getattr__(self, name: str):
            return getattr(interpreter, name)

        def invoke(self) -> None:
            calls[key] = calls.get(key, 0) + 1
            invoke()

    return Counting()


def test_time_in_context_runs_partners_before_every_invocation(models: dict[str, bytes]) -> None:
    calls: dict[str, int] = {}
    big = _counting(load_model(models["conv_big"]), calls, "big")
    partners = [_counting(load_model(models[k]), calls, k) for k in ("conv_small", "dense")]
    mean, done, fastest = time_in_context(big, partners, runs=6, warmup=2, n_partners=1, seed=3)
    assert done == 6 and calls["big"] == 8  # warm-up and timed invocations, nothing else
    assert sum(calls.get(k, 0) for k in ("conv_small", "dense")) == 8  # one partner before each
    assert len([k for k in ("conv_small", "dense") if calls.get(k)]) == 1  # the same one every time
    assert 0 < fastest <= mean
    # with the caches written over first it still times the layer: a 16,000x-MAC conv stays far
    # slower than the 1-channel one timed the same way
    small = load_model(models["conv_small"])
    _, _, big_cold = time_in_context(load_model(models["conv_big"]), partners, runs=5, warmup=1, evict_bytes=1 << 22)
    _, _, small_cold = time_in_context(small, partners, runs=5, warmup=1, evict_bytes=1 << 22)
    assert big_cold > 10 * small_cold > 0


def test_time_in_context_refuses_bad_arguments(models: dict[str, bytes]) -> None:
    conv = load_model(models["conv_small"])
    with pytest.raises(ValueError, match="partner models"):
        time_in_context(conv, [], runs=3)
    with pytest.raises(ValueError, match="runs"):
        time_in_context(conv, [load_model(models["dense"])], runs=0)


def test_partners_are_drawn_by_layer_type(models: dict[str, bytes]) -> None:
    # the same 3x3 conv at 32x32 with 1 and with 128 channels is one layer type; a dense layer is another
    small, big, dense = (load_model(models[k]) for k in ("conv_small", "conv_big", "dense"))
    assert tflite_runner.type_seed(small) == tflite_runner.type_seed(big) != tflite_runner.type_seed(dense)
    chosen = []
    for layer in (small, big):
        calls: dict[str, int] = {}
        partners = [_counting(load_model(models[k]), calls, f"{k}-{i}")
                    for i in range(3) for k in ("conv_small", "dense")]
        time_in_context(layer, partners, runs=2, warmup=0, n_partners=1)
        chosen.append(sorted(calls))
    assert chosen[0] == chosen[1] and len(chosen[0]) == 1  # both widths after the same partner


def test_acquire_spinning_takes_the_lock_only_once_it_is_free() -> None:
    import threading

    lock = threading.Lock()
    tflite_runner.acquire_spinning(lock)  # a free lock is taken at once
    events: list[str] = []

    def waiter() -> None:
        tflite_runner.acquire_spinning(lock)
        events.append("acquired")
        lock.release()

    thread = threading.Thread(target=waiter)
    thread.start()
    events.append("released")
    lock.release()
    thread.join(timeout=10)
    assert events == ["released", "acquired"] and not lock.locked()


def test_keep_busy_spins_at_least_as_long_as_asked() -> None:
    import time

    start = time.perf_counter()
    tflite_runner.keep_busy(0.01)
    assert time.perf_counter() - start >= 0.01


def test_a_core_is_spun_as_long_as_it_idled_up_to_the_ramp_up() -> None:
    assert tflite_runner.ramp_up_s(0.0) == 0.0 and tflite_runner.ramp_up_s(-1.0) == 0.0
    assert tflite_runner.ramp_up_s(0.005) == 0.005
    assert tflite_runner.ramp_up_s(5.0) == tflite_runner.RAMP_UP_S


def test_placed_timing_loads_the_model_elsewhere_each_time(models: dict[str, bytes]) -> None:
    from latency.devices.runner import load_model, placed_timing, time_loaded_stats

    loaded: list = []

    def load():
        loaded.append(load_model(models["conv_small"]))
        return loaded[-1]

    def measure(interpreter):
        return time_loaded_stats(interpreter, 7, 1)

    seconds, done, fastest = placed_timing(load, measure, 3)
    assert len(loaded) == 3 and done == 21 and 0 < fastest <= seconds
    # each load after a pad of another size: the buffers of the loads lie at different addresses
    addresses = {it.tensor(it.get_input_details()[0]["index"])().ctypes.data for it in loaded}
    assert len(addresses) >= 2
    assert placed_timing(load, measure)[1] == 7  # one placement by default
    with pytest.raises(ValueError, match="placements must be >= 1"):
        placed_timing(load, measure, 0)


def test_batch_placements(models: dict[str, bytes]) -> None:
    stream = encode_batch_stream([(1, models["dense"]), (2, models["conv_small"])])
    proc = run_runner("--batch", "-", "--num_runs=5", "--placements=3", stdin=stream)
    assert proc.returncode == EXIT_OK, proc.stderr.decode()
    lines = json_lines(proc.stdout)
    assert [line["cell_id"] for line in lines] == [1, 2] and all(0 < ln["fastest"] <= ln["seconds"] for ln in lines)
    bad = run_runner("--batch", "-", "--placements=0", stdin=stream)
    assert bad.returncode == EXIT_USAGE and b"placements>=1" in bad.stderr


def test_batch_network_context_with_vector_work(models: dict[str, bytes], tmp_path: Path) -> None:
    partner = tmp_path / "partner.tflite"
    partner.write_bytes(models["dense"])
    stream = encode_batch_stream([(1, models["conv_small"])])
    proc = run_runner("--batch", "-", "--num_runs=5", f"--partner={partner}", "--vector-us=20", stdin=stream)
    assert proc.returncode == EXIT_OK, proc.stderr.decode()
    [line] = json_lines(proc.stdout)
    assert line["cell_id"] == 1 and 0 < line["fastest"] <= line["seconds"]
    for bad in ("--vector-us=-1", "--vector-us=inf"):
        proc = run_runner("--batch", "-", f"--partner={partner}", bad, stdin=stream)
        assert proc.returncode == EXIT_USAGE and b"vector-us>=0" in proc.stderr


def test_placed_timing_counts_the_loads_at_full_speed() -> None:
    from latency.devices.runner import placed_timing_flagged

    # (mean, invocations, fastest, slow) of three loads: the slow one would win the minimum
    loads = iter([(2.0, 10, 1.5, False), (1.0, 10, 0.5, True), (3.0, 10, 2.5, False)])
    mean, done, fastest, slow = placed_timing_flagged(lambda: object(), lambda _: next(loads), 3)
    assert (mean, done, fastest, slow) == (2.5, 30, 1.5, False)
    loads = iter([(2.0, 10, 1.5, True), (1.0, 10, 0.5, True)])  # none at full speed: all of them, flagged
    assert placed_timing_flagged(lambda: object(), lambda _: next(loads), 2) == (1.5, 20, 0.5, True)
