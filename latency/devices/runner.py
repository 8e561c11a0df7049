#!/usr/bin/env python3
"""Time single-layer .tflite models on this device (self-contained: stdlib + numpy + a TFLite interpreter).

Uploaded as one file to a Raspberry Pi and imported by the local device; needs Python 3.7+. The
interpreter is the first importable of ``ai_edge_litert.interpreter``, ``tflite_runtime.interpreter``
and ``tensorflow.lite``.

Method (as in the thesis): one random input of the model's input shape(s) is set once; ``warmup``
untimed invocations; then ``time.perf_counter`` around a loop of ``runs`` invocations, divided by
``runs``; one interpreter thread by default. The runtime's default delegates are kept (XNNPACK on
current builds, as in ``benchmark_model``).

Command line
------------
benchmark_model-compatible mode (output in the style of the current ``benchmark_model``, ending
with ``Inference timings in us: Init: .., First inference: .., Warmup (avg): .., Inference (avg): ..``)::

    python3 runner.py --graph=model.tflite --num_runs=50 --warmup_runs=5 --num_threads=1

Unlike ``benchmark_model`` it runs exactly ``num_runs`` invocations (no minimum duration).

Batch mode: time many models in one process::

    python3 runner.py --batch SOURCE --num_runs=50 --warmup_runs=5 --num_threads=1 [--cooldown 0]

SOURCE is one of

* a directory: every ``<cell_id>.tflite`` in it (cell_id is an int when the stem is all digits,
  else the stem string), in cell_id order;
* a manifest ``*.json``: ``{"models": [{"cell_id": 7, "path": "a/7.tflite"}, ...]}`` (or just the
  list); relative paths are relative to the manifest's directory;
* ``-``: a framed stream on stdin, so a batch can be sent over one SSH channel without files:
  per model one JSON header line ``{"cell_id": 7, "size": 1234}`` followed by exactly ``size``
  bytes of the model; ends at EOF. ``encode_batch_stream()`` builds it. The whole stream is read
  before the first timing so network traffic does not overlap the measurements.

For each model, as soon as it is timed, one JSON line is printed and flushed::

    {"cell_id": 7, "seconds": 0.00123, "fastest": 0.00118, "measured_at": 1700000000.0, "temperature_c": 51.5,
     "throttled": false}

(``seconds``: mean of the timed invocations; ``fastest``: the fastest of them)

or, when that model fails (the batch goes on)::

    {"cell_id": 7, "error": "ValueError: ...", "measured_at": 1700000000.0}

``--cooldown S`` sleeps S seconds between models. ``temperature_c`` comes from the sensor file
(``--thermal-sensor``, default /sys/class/thermal/thermal_zone0/temp, millidegrees) and
``throttled`` from ``--throttle-command`` (default ``vcgencmd get_throttled``; true when bits 0-3
are set: throttled *now*), null where absent. With ``--pause-above C`` the batch waits before a
model while the sensor reads above C, until it reads below ``--resume-below`` (default C - 10),
printing ``{"event": "paused", "temperature_c": ..}`` when it starts and every second while it
waits, then ``{"event": "resumed", ..}``: a hot Pi cools down instead of timing slowly.

``--partner FILE`` (repeatable) times every model in a network context (`time_in_context`): all
the partner models are invoked before each invocation, and with
``--evict-bytes N`` N bytes are written over the caches first, and with ``--vector-us U`` U
microseconds spent on small float32 matrix products before that. ``--placements K`` loads and times
each model K times, each elsewhere in memory: the fastest invocation over all K, the mean over all
their invocations (`placed_timing`).

A model that crashes the interpreter process itself (segfault) ends the batch: the caller sees
the stream stop and a non-zero exit status.

``--info`` prints one JSON line describing the runtime (interpreter, versions, host, sensors,
the L2 cache size where sysfs tells it).

Exit status: 0 every model timed; 1 a model (or, in batch mode, at least one model) failed;
2 bad command line or unreadable batch source; 3 no TFLite interpreter could be imported;
130 interrupted (Ctrl-C, or the reader closed stdout).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import time
import zlib
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np

__all__ = [
    "EXIT_OK",
    "EXIT_MODEL_FAILED",
    "EXIT_USAGE",
    "EXIT_NO_INTERPRETER",
    "ModelSource",
    "encode_batch_stream",
    "interpreter_class",
    "random_inputs",
    "main",
    "read_sensors",
    "read_temperature",
    "read_throttled",
    "runtime_info",
    "load_model",
    "time_loaded",
    "time_loaded_stats",
    "time_model",
    "time_rotation",
]

EXIT_OK = 0
EXIT_MODEL_FAILED = 1
EXIT_USAGE = 2
EXIT_NO_INTERPRETER = 3
EXIT_INTERRUPTED = 130

ModelSource = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]"]

_THERMAL_ZONE = "/sys/class/thermal/thermal_zone0/temp"
_L2_SIZE_FILE = "/sys/devices/system/cpu/cpu0/cache/index2/size"
_PAUSE_POLL_S = 1.0  # sensor readings while paused (each also tells the caller the batch is alive)
# get_throttled bits 0-3 describe the *current* state (under-voltage, frequency capped, throttled,
# soft temperature limit); bits 16-19 only say it happened since boot, which would taint every
# later timing.
_THROTTLED_NOW_MASK = 0xF
_THROTTLE_MAX_AGE_S = 1.0  # vcgencmd costs a process spawn; its state changes slowly

# ---------------------------------------------------------------------------- interpreter


_interpreter: Optional[Tuple[Any, str, str]] = None  # (Interpreter class, runtime name, version)


def _version_of(module: Any, dist: str) -> str:
    version = getattr(module, "__version__", None)
    if version:
        return str(version)
    try:  # Python 3.8+
        from importlib import metadata

        return metadata.version(dist)
    except Exception:
        return "unknown"


def interpreter_class() -> Tuple[Any, str, str]:
    """(Interpreter class, runtime name, runtime version) of the first importable TFLite runtime.

    Raises ImportError listing why each candidate failed.
    """
    global _interpreter
    if _interpreter is not None:
        return _interpreter
    reasons = []
    try:
        import ai_edge_litert
        from ai_edge_litert.interpreter import Interpreter

        _interpreter = (Interpreter, "ai-edge-litert", _version_of(ai_edge_litert, "ai-edge-litert"))
        return _interpreter
    except (ImportError, OSError) as exc:
        reasons.append("ai_edge_litert: %s" % exc)
    try:
        import tflite_runtime
        from tflite_runtime.interpreter import Interpreter

        _interpreter = (Interpreter, "tflite-runtime", _version_of(tflite_runtime, "tflite-runtime"))
        return _interpreter
    except (ImportError, OSError) as exc:
        reasons.append("tflite_runtime: %s" % exc)
    try:
        import tensorflow as tf

        _interpreter = (tf.lite.Interpreter, "tensorflow", _version_of(tf, "tensorflow"))
        return _interpreter
    except (ImportError, OSError, AttributeError) as exc:
        reasons.append("tensorflow: %s" % exc)
    raise ImportError("no TFLite interpreter available (" + "; ".join(reasons) + ")")


def runtime_info() -> Dict[str, Any]:
    """What this runner times with, for provenance (raises ImportError without an interpreter)."""
    _, runtime, version = interpreter_class()
    temperature, throttled = read_sensors()
    return {
        "runtime": runtime,
        "runtime_version": version,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "host": socket.gethostname(),
        "temperature_c": temperature,
        "throttled": throttled,
        "l2_bytes": read_l2_bytes(),
    }


def read_l2_bytes(path: str = _L2_SIZE_FILE) -> Optional[int]:
    """Bytes of the first CPU's L2 cache ('512K' in sysfs), or None where the system does not say."""
    try:
        with open(path) as f:
            text = f.read().strip().upper()
    except OSError:
        return None
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    digits = text[:-1] if text[-1:] in "KMG" else text
    return int(digits) * scale if digits.isdigit() else None


# ---------------------------------------------------------------------------- sensors


def read_temperature(sensor: str = _THERMAL_ZONE) -> Optional[float]:
    """SoC temperature in degrees Celsius from a sensor file in millidegrees, or None where absent."""
    try:
        with open(sensor) as f:
            return int(f.read().strip()) / 1000.0
    except (OSError, ValueError):
        return None


_vcgencmd: Optional[str] = None
_vcgencmd_looked_up = False


def _throttle_flags(text: str) -> Optional[bool]:
    """'throttled=0x50000' (vcgencmd) or a bare number -> throttled now (bits 0-3)."""
    lines = text.strip().splitlines()
    if not lines:
        return None
    value = lines[0].split("=", 1)[1] if "=" in lines[0] else lines[0]
    try:
        return bool(int(value.strip(), 0) & _THROTTLED_NOW_MASK)
    except ValueError:
        return None


def read_throttled(command: Optional[str] = None) -> Optional[bool]:
    """True when the Pi is under-voltage, frequency-capped or throttled *now*; None without a reading.

    `command` is a shell command printing the flags as ``vcgencmd get_throttled`` does (default:
    that, where vcgencmd is installed)."""
    global _vcgencmd, _vcgencmd_looked_up
    if command is None:
        if not _vcgencmd_looked_up:  # PATH scan once per process
            _vcgencmd = shutil.which("vcgencmd")
            _vcgencmd_looked_up = True
        if _vcgencmd is None:
            return None
        argv = [_vcgencmd, "get_throttled"]  # type: Union[List[str], str]
    else:
        argv = command
    try:
        out = subprocess.run(
            argv,
            shell=command is not None,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            timeout=5,
        ).stdout.decode("ascii", "replace")
    except (OSError, subprocess.SubprocessError):
        return None
    return _throttle_flags(out)


_throttle_cache: Tuple[float, Optional[bool]] = (-math.inf, None)


def read_sensors(sensor: str = _THERMAL_ZONE,
                 throttle_command: Optional[str] = None) -> Tuple[Optional[float], Optional[bool]]:
    """(temperature_c, throttled) for a timing that just finished.

    The throttled flag is re-read at most once a second: vcgencmd spawns a process, which would
    cost more than a small layer's whole timing.
    """
    global _throttle_cache
    now = time.monotonic()
    if now - _throttle_cache[0] >= _THROTTLE_MAX_AGE_S:
        _throttle_cache = (now, read_throttled(throttle_command))
    return read_temperature(sensor), _throttle_cache[1]


def wait_until_cool(sensor: str, pause_above: Optional[float], resume_below: Optional[float],
                    note: Callable[[Dict[str, Any]], None], poll_s: float = _PAUSE_POLL_S) -> bool:
    """Before a model: while the sensor reads above `pause_above`, wait until it reads below
    `resume_below` (default 10 degrees less), calling `note` with a "paused" event at the start
    and after every reading, and a "resumed" one at the end. No limit: the caller decides how
    long a pause may last (it sees the events). True when it paused."""
    temperature = read_temperature(sensor)
    if pause_above is None or temperature is None or temperature <= pause_above:
        return False
    resume = resume_below if resume_below is not None else pause_above - 10.0
    started = time.monotonic()
    while temperature is not None and temperature >= resume:
        note({"event": "paused", "temperature_c": temperature})
        time.sleep(poll_s)
        temperature = read_temperature(sensor)
    note({"event": "resumed", "temperature_c": temperature, "paused_s": time.monotonic() - started})
    return True


# ---------------------------------------------------------------------------- timing

# Random inputs by (shape, dtype): tables time many cells with the same input shape, and drawing
# a large random tensor costs milliseconds. set_tensor copies, so sharing is safe.
_INPUT_CACHE: "OrderedDict[Tuple[Tuple[int, ...], str], np.ndarray]" = OrderedDict()
_INPUT_CACHE_SIZE = 16
_rng = np.random.RandomState(0)  # RandomState: numpy on older Pi images lacks default_rng


def _random_input(shape: Tuple[int, ...], dtype: Any) -> np.ndarray:
    dtype = np.dtype(dtype)
    key = (shape, dtype.str)
    cached = _INPUT_CACHE.get(key)
    if cached is not None:
        _INPUT_CACHE.move_to_end(key)
        return cached
    if dtype.kind == "f":
        value = (_rng.random_sample(shape) * 2.0 - 1.0).astype(dtype)
    elif dtype.kind == "b":
        value = _rng.randint(0, 2, size=shape).astype(dtype)
    elif dtype.kind in "iu" and dtype.itemsize == 1:
        info = np.iinfo(dtype)
        value = _rng.randint(int(info.min), int(info.max) + 1, size=shape).astype(dtype)
    elif dtype.kind in "iu":
        # like benchmark_model: small values, so index-like inputs stay in range
        value = _rng.randint(0, 100, size=shape).astype(dtype)
    else:
        raise ValueError("unsupported input dtype %s" % dtype)
    _INPUT_CACHE[key] = value
    if len(_INPUT_CACHE) > _INPUT_CACHE_SIZE:
        _INPUT_CACHE.popitem(last=False)
    return value


def _load(model: ModelSource, threads: int) -> Any:
    """An interpreter with tensors allocated and random inputs set."""
    if threads < 1:
        raise ValueError("threads must be >= 1, got %r" % (threads,))
    cls, _, _ = interpreter_class()
    if isinstance(model, (bytes, bytearray, memoryview)):
        interpreter = cls(model_content=bytes(model), num_threads=threads)
    else:
        interpreter = cls(model_path=os.fspath(model), num_threads=threads)
    interpreter.allocate_tensors()
    for index, value in random_inputs(interpreter):
        interpreter.set_tensor(index, value)
    return interpreter


def random_inputs(interpreter: Any) -> List[Tuple[int, np.ndarray]]:
    """(tensor index, random value) for every input of an interpreter: what a timing writes
    before an invocation (the values cached by shape and dtype)."""
    return [(d["index"], _random_input(tuple(int(x) for x in d["shape"]), d["dtype"]))
            for d in interpreter.get_input_details()]


#: a core that sat idle for 50 ms ran its next half millisecond of work 1.65x slower (power and
#: frequency states; docs/measuring.md §5); 20 ms of spinning restored its speed
RAMP_UP_S = 0.02


def ramp_up_s(idle_s: float) -> float:
    """How long to spin after an idle spell of `idle_s` before timing: as long as it idled, at
    most `RAMP_UP_S` (a short spell barely slows the core, and most of them are short)."""
    return min(max(idle_s, 0.0), RAMP_UP_S)


def keep_busy(seconds: float) -> None:
    """Spins for `seconds`, so that the core is at full speed when the timing starts."""
    clock = time.perf_counter
    end = clock() + seconds
    while clock() < end:
        pass


def placed_timing(load: Callable[[], Any], measure: Callable[[Any], Tuple[float, int, float]],
                  placements: int = 1, rng: Optional[random.Random] = None) -> Tuple[float, int, float]:
    """(mean seconds over every timed invocation, invocations, seconds of the fastest) of a model
    loaded and timed `placements` times, each load after a buffer of random size was taken from
    the heap, so that its weights and buffers lie elsewhere in memory each time.

    Where they lie moves a small 1x1 conv by up to 1.4x with everything else unchanged; a network
    runs its layers at about the luckiest places, so a cell keeps its fastest over several
    (docs/measuring.md section 7). `measure(interpreter)` times one load."""
    mean, done, fastest, _ = placed_timing_flagged(load, lambda interpreter: (*measure(interpreter), False),
                                                   placements, rng)
    return mean, done, fastest


def placed_timing_flagged(load: Callable[[], Any], measure: Callable[[Any], Tuple[float, int, float, bool]],
                          placements: int = 1,
                          rng: Optional[random.Random] = None) -> Tuple[float, int, float, bool]:
    """`placed_timing` where `measure` also says whether the machine ran slow around a load:
    only the loads timed at full speed make the mean and the fastest, and the result is flagged
    slow (from every load) when none was; the invocations are those of every load."""
    if placements < 1:
        raise ValueError("placements must be >= 1, got %r" % (placements,))
    rng = rng or random.Random()
    loads = []
    for _ in range(placements):
        pad = bytearray(rng.randrange(64, 65536)) if placements > 1 else None
        interpreter = load()
        loads.append(measure(interpreter))
        del interpreter, pad
    fast = [x for x in loads if not x[3]]
    kept = fast or loads
    counted = sum(n for _, n, _, _ in kept)
    # the invocations timed are all the loads' (what the timing cost); the figures are the kept ones'
    return (sum(seconds * n for seconds, n, _, _ in kept) / counted, sum(n for _, n, _, _ in loads),
            min(best for _, _, best, _ in kept), not fast)


def acquire_spinning(lock: Any) -> None:
    """Takes `lock` without letting this core go idle while it waits (a blocked wait would let
    the core slow down, and the model timed next would pay for it)."""
    while not lock.acquire(False):
        pass


def _timed_loop(invoke: Callable[[], None], runs: int, stamps: Optional[List[float]]) -> float:
    """Seconds for `runs` invocations; with `stamps`, also records the clock after each one."""
    clock = time.perf_counter
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside the loop would be charged to the model
    try:
        if stamps is None:
            start = clock()
            for _ in range(runs):
                invoke()
            return clock() - start
        start = clock()
        stamps.append(start)
        for _ in range(runs):
            invoke()
            stamps.append(clock())
        return stamps[-1] - start
    finally:
        if gc_was_enabled:
            gc.enable()


def _check_counts(runs: int, warmup: int) -> None:
    if runs < 1:
        raise ValueError("runs must be >= 1, got %r" % (runs,))
    if warmup < 0:
        raise ValueError("warmup must be >= 0, got %r" % (warmup,))


def load_model(model: ModelSource, threads: int = 1) -> Any:
    """An interpreter for a .tflite model (bytes or a path), tensors allocated, random inputs set:
    everything before the first invocation. Raises on a model the interpreter rejects."""
    return _load(model, threads)


def time_loaded(interpreter: Any, runs: int = 50, warmup: int = 5, min_time_s: float = 0.0) -> float:
    """Mean seconds per invocation of a loaded interpreter: `warmup` untimed invocations, then
    perf_counter around `runs` invocations divided by `runs` (more, see `time_loaded_stats`)."""
    return time_loaded_stats(interpreter, runs, warmup, min_time_s)[0]


def _fastest_gap(stamps: List[float]) -> float:
    return min(b - a for a, b in zip(stamps, stamps[1:]))


def time_loaded_stats(interpreter: Any, runs: int = 50, warmup: int = 5,
                      min_time_s: float = 0.0) -> Tuple[float, int, float]:
    """(mean seconds per invocation, invocations timed, seconds of the fastest invocation).

    When `runs` invocations take less than `min_time_s`, as many more are timed as make up the
    difference (benchmark_model's --min_secs), so that a tiny model is timed long enough for
    the clock and the jitter. The clock is read after every invocation, so the mean is the
    same loop's; the fastest one is the model's undisturbed time: on a shared machine other
    work only ever slows an invocation down, and in phases lasting seconds, which a mean of
    passes cannot average away."""
    _check_counts(runs, warmup)
    invoke = interpreter.invoke
    for _ in range(warmup):
        invoke()
    stamps = []  # type: List[float]
    total = _timed_loop(invoke, runs, stamps)
    fastest = _fastest_gap(stamps)
    done = runs
    while 0 < total < min_time_s:  # a loop: the first runs are often the slowest
        more = max(1, int(math.ceil(done * (min_time_s / total - 1.0))))
        stamps = []
        total += _timed_loop(invoke, more, stamps)
        fastest = min(fastest, _fastest_gap(stamps))
        done += more
    seconds = total / done
    if not (seconds > 0 and math.isfinite(seconds) and 0 < fastest <= seconds):
        raise RuntimeError("implausible timing %r s (fastest invocation %r s)" % (seconds, fastest))
    return seconds, done, fastest


def time_rotation(interpreters: List[Any], min_time_s: float = 0.005, min_rounds: int = 10,
                  seed: int = 0, set_input: bool = True) -> List[float]:
    """Seconds of the fastest invocation of each interpreter when they take turns.

    Every round invokes each interpreter once, in a fresh random order (a function of `seed`),
    the clock read around each invocation alone; with `set_input` its input is written again
    just before, as the layer before it in a network would have. Rounds go on until
    `min_rounds` are done and every interpreter was timed `min_time_s` on average. Unlike
    `time_loaded_stats`, a model never runs right after itself: its weights, code and buffers
    are as warm as the other models leave them (`python -m tools.context_cost`)."""
    if not interpreters:
        raise ValueError("time_rotation needs at least one interpreter")
    if min_rounds < 1 or min_time_s < 0:
        raise ValueError("min_rounds must be >= 1 and min_time_s >= 0")
    feeds = []
    for interpreter in interpreters:
        inputs = random_inputs(interpreter)
        feeds.append((interpreter.invoke, interpreter.set_tensor, inputs))
        interpreter.invoke()  # first invocations allocate and pack; not part of any round
    order = list(range(len(feeds)))
    rng = random.Random(seed)
    fastest = [math.inf] * len(feeds)
    clock = time.perf_counter
    spent, rounds = 0.0, 0
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        while rounds < min_rounds or spent < min_time_s * len(feeds):
            rng.shuffle(order)
            for i in order:
                invoke, set_tensor, inputs = feeds[i]
                if set_input:
                    for index, value in inputs:
                        set_tensor(index, value)
                start = clock()
                invoke()
                seconds = clock() - start
                spent += seconds
                if seconds < fastest[i]:
                    fastest[i] = seconds
            rounds += 1
    finally:
        if gc_was_enabled:
            gc.enable()
    if not all(0 < f < math.inf for f in fastest):
        raise RuntimeError("implausible rotation timings %r" % (fastest,))
    return fastest


_EVICT_BUFFERS = {}  # type: Dict[int, np.ndarray]


def _evict_buffer(nbytes: int) -> np.ndarray:
    """A buffer written before every timed invocation; kept, so its pages fault in only once."""
    buf = _EVICT_BUFFERS.get(nbytes)
    if buf is None:
        for k in [k for k in _EVICT_BUFFERS if k >= 0]:
            del _EVICT_BUFFERS[k]
        buf = _EVICT_BUFFERS[nbytes] = np.ones(max(1, nbytes // 8))
    return buf


def _read_buffer(nbytes: int) -> np.ndarray:
    """A buffer read (never written) before every timed invocation: its lines stay clean."""
    key = -nbytes  # beside the evict buffer, which is written
    buf = _EVICT_BUFFERS.get(key)
    if buf is None:
        for k in [k for k in _EVICT_BUFFERS if k < 0]:
            del _EVICT_BUFFERS[k]
        buf = _EVICT_BUFFERS[key] = np.ones(max(1, nbytes // 8))
    return buf


_VECTOR_OPERANDS = []  # type: List[np.ndarray]


def _vector_work(seconds: float, clock: Callable[[], float]) -> None:
    """`seconds` of 64x64 float32 matrix products: dense work on the widest vector units, on
    operands that stay in L1 (3 x 16 KB), so the caches keep what the timed layer left there."""
    if not _VECTOR_OPERANDS:
        rng = np.random.default_rng(0)
        _VECTOR_OPERANDS.extend(rng.random((64, 64), dtype=np.float32) for _ in range(3))
    a, b, out = _VECTOR_OPERANDS
    until = clock() + seconds
    while clock() < until:
        np.dot(a, b, out=out)


def type_seed(interpreter: Any) -> int:
    """A seed that is the same for every model of one layer type whatever its channel counts:
    from the spatial sizes of its input and output and the number of its tensors."""
    ins, outs = interpreter.get_input_details(), interpreter.get_output_details()
    spatial = [tuple(int(x) for x in d["shape"][1:-1]) for d in ins + outs]
    return zlib.crc32(repr((spatial, len(ins), len(interpreter.get_tensor_details()))).encode())


def time_in_context(interpreter: Any, partners: List[Any], runs: int = 50, warmup: int = 2,
                    evict_bytes: int = 0, seed: Optional[int] = None,
                    n_partners: int = 3, gap_s: float = 0.0, read_bytes: int = 0,
                    vector_s: float = 0.0) -> Tuple[float, int, float]:
    """(mean seconds per invocation, invocations timed, seconds of the fastest) of a layer timed
    as it runs inside a network rather than back to back.

    Before every invocation `n_partners` other models (the same ones each time, drawn from
    `partners` with `seed`) are invoked, so the runtime's code and state are as other layers
    leave them; its input is written again, as the layer before it would. The draw moves a
    small layer by up to 20 %, so by default it is seeded by the layer's type (`type_seed`):
    every cell of a type, and the exact cells a report times, run after the same partners, and
    interpolation between neighbouring cells sees no change of context (docs/measuring.md §7). With `evict_bytes`
    (twice the L2 cache, for a network whose weights exceed it) that many bytes are written
    first and the output buffer touched after them: the layer's weights come from beyond L2, as
    when the rest of such a network ran in between, while its activations stay warm. With
    `gap_s`, that long is spent spinning (touching no memory) before each of them: how long a
    layer's data waits between two uses inside a network (`tools.idle_cost`). With `read_bytes`,
    that many bytes are read first and never written: clean lines, as a network's read-only
    weights leave the caches (`tools.idle_cost --read-mb`). With `vector_s`, that long is spent
    on small float32 matrix products (the CPU's widest vector units, in cache) before each
    invocation, as the heavy layers before it in a network leave the core
    (`tools.vector_warmth`)."""
    _check_counts(runs, warmup)
    if not partners and n_partners > 0:
        raise ValueError("time_in_context needs partner models (other layers) to run in between")
    seed = type_seed(interpreter) if seed is None else seed
    chosen = [p.invoke for p in random.Random(seed).sample(partners, min(n_partners, len(partners)))]
    inputs = random_inputs(interpreter)
    output = interpreter.tensor(interpreter.get_output_details()[0]["index"]) if evict_bytes else None
    buf = _evict_buffer(evict_bytes) if evict_bytes else None
    read = _read_buffer(read_bytes).sum if read_bytes else None
    invoke, set_tensor, clock = interpreter.invoke, interpreter.set_tensor, time.perf_counter
    total, fastest = 0.0, math.inf
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(warmup + runs):
            if gap_s > 0:
                until = clock() + gap_s
                while clock() < until:
                    pass
            if vector_s > 0:
                _vector_work(vector_s, clock)
            if buf is not None:
                np.add(buf, 1.0, out=buf)
            if read is not None:
                read()
            for partner in chosen:
                partner()
            for index, value in inputs:
                set_tensor(index, value)
            if output is not None:
                output()[...] = 0
            start = clock()
            invoke()
            seconds = clock() - start
            if i >= warmup:
                total += seconds
                fastest = min(fastest, seconds)
    finally:
        if gc_was_enabled:
            gc.enable()
    mean = total / runs
    if not (mean > 0 and math.isfinite(mean) and 0 < fastest <= mean):
        raise RuntimeError("implausible timing %r s (fastest invocation %r s)" % (mean, fastest))
    return mean, runs, fastest


def time_model(model: ModelSource, runs: int = 50, warmup: int = 5, threads: int = 1) -> float:
    """Mean seconds per invocation of a .tflite model (bytes or a path).

    Random input set once, `warmup` untimed invocations, then perf_counter around `runs`
    invocations divided by `runs`. Raises on a model the interpreter rejects.
    """
    _check_counts(runs, warmup)
    return time_loaded(_load(model, threads), runs, warmup)


# ---------------------------------------------------------------------------- benchmark_model mode


def _log(message: str = "") -> None:
    # current benchmark_model prefixes every line with its log level
    sys.stdout.write("INFO: " + message + "\n")


def _stat_line(values_us: List[int]) -> str:
    """A statistics line as benchmark_model's Stat::OutputToStream prints it (integer us)."""
    if not values_us:
        return "count=0"
    count = len(values_us)
    low, high = min(values_us), max(values_us)
    if low == high:
        return "count=%d curr=%d%s" % (count, values_us[-1], "(all same)" if count > 1 else "")
    avg = sum(values_us) / count
    std = int(math.sqrt(max(sum(v * v for v in values_us) / count - avg * avg, 0.0)))
    ordered = sorted(values_us)

    def pct(p: float) -> int:
        return ordered[min(count - 1, int(p / 100.0 * count))]

    return "count=%d first=%d curr=%d min=%d max=%d avg=%g std=%d p5=%d median=%d p95=%d" % (
        count, values_us[0], values_us[-1], low, high, avg, std, pct(5), pct(50), pct(95),
    )


def _run_benchmark_mode(graph: str, runs: int, warmup: int, threads: int) -> int:
    _check_counts(runs, warmup)
    _log("STARTING!")
    _log("Log parameter values verbosely: [0]")
    _log("Min num runs: [%d]" % runs)
    _log("Min warmup runs: [%d]" % warmup)
    _log("Num threads: [%d]" % threads)
    _log("Graph: [%s]" % graph)
    started = time.perf_counter()
    with open(graph, "rb") as f:
        model = f.read()
    _log("Loaded model %s" % graph)
    _log("The input model file size (MB): %g" % (len(model) / 1e6))
    interpreter = _load(model, threads)
    init_us = (time.perf_counter() - started) * 1e6
    _log("Initialized session in %gms." % (init_us / 1000.0))
    invoke = interpreter.invoke

    warm_stamps: List[float] = []
    _log("Running benchmark for at least %d iterations and at least 0 seconds" % warmup)
    _timed_loop(invoke, warmup, warm_stamps)
    warm_us = [int(round((b - a) * 1e6)) for a, b in zip(warm_stamps, warm_stamps[1:])]
    _log(_stat_line(warm_us))
    _log()

    stamps: List[float] = []
    _log("Running benchmark for at least %d iterations and at least 0 seconds" % runs)
    total = _timed_loop(invoke, runs, stamps)
    run_us = [int(round((b - a) * 1e6)) for a, b in zip(stamps, stamps[1:])]
    _log(_stat_line(run_us))
    _log()

    # the average is the loop total over runs, exactly as in time_model (not the rounded run list)
    avg_us = total / runs * 1e6
    first_us = warm_us[0] if warm_us else run_us[0]
    warm_avg = (
        (warm_stamps[-1] - warm_stamps[0]) / warmup * 1e6 if warmup else float("nan")
    )
    _log(
        "Inference timings in us: Init: %d, First inference: %d, Warmup (avg): %g, Inference (avg): %g"
        % (int(round(init_us)), first_us, warm_avg, avg_us)
    )
    sys.stdout.flush()
    return EXIT_OK


# ---------------------------------------------------------------------------- batch mode


def _cell_id_from_stem(stem: str) -> Union[int, str]:
    return int(stem) if stem.isdigit() else stem


def _id_order(cell_id: Any) -> Tuple[int, Any]:
    return (0, cell_id) if isinstance(cell_id, int) else (1, str(cell_id))


def encode_batch_stream(items: Iterable[Tuple[Any, bytes]]) -> bytes:
    """The stdin stream for ``--batch -`` from (cell_id, model bytes) pairs."""
    parts = []
    for cell_id, model in items:
        header = json.dumps({"cell_id": cell_id, "size": len(model)}, separators=(",", ":"))
        parts.append(header.encode("utf-8") + b"\n")
        parts.append(bytes(model))
    return b"".join(parts)


def _read_stream(stream: Any) -> List[Tuple[Any, bytes]]:
    items = []
    while True:
        header = stream.readline()
        if not header:
            return items
        if not header.strip():
            continue
        meta = json.loads(header.decode("utf-8"))
        size = int(meta["size"])
        model = stream.read(size)
        if len(model) != size:
            raise ValueError(
                "stream ended inside model %r (%d of %d bytes)" % (meta["cell_id"], len(model), size)
            )
        items.append((meta["cell_id"], model))


def _batch_items(source: str) -> Iterator[Tuple[Any, ModelSource]]:
    """(cell_id, bytes or path) in batch order; raises ValueError/OSError on an unreadable source."""
    if source == "-":
        return iter(_read_stream(sys.stdin.buffer))
    if os.path.isdir(source):
        found = []
        for name in os.listdir(source):
            stem, ext = os.path.splitext(name)
            if ext == ".tflite":
                found.append((_cell_id_from_stem(stem), os.path.join(source, name)))
        found.sort(key=lambda item: _id_order(item[0]))
        return iter(found)
    with open(source) as f:
        manifest = json.load(f)
    entries = manifest["models"] if isinstance(manifest, dict) else manifest
    base = os.path.dirname(os.path.abspath(source))
    items = []
    for entry in entries:
        items.append((entry["cell_id"], os.path.join(base, entry["path"])))
    return iter(items)


def _emit(record: Dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record, separators=(", ", ": ")) + "\n")
    sys.stdout.flush()  # a caller streaming over SSH sees each result as it comes


def _load_partners(paths: List[str], threads: int) -> List[Any]:
    partners = []
    for path in paths:
        interpreter = _load(path, threads)
        interpreter.invoke()  # first invocations allocate and pack; not part of any timing
        partners.append(interpreter)
    return partners


def _run_batch_mode(source: str, args: argparse.Namespace) -> int:
    runs, warmup, threads = args.num_runs, args.warmup_runs, args.num_threads
    _check_counts(runs, warmup)
    try:
        items = list(_batch_items(source))
        partners = _load_partners(args.partner, threads)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        sys.stderr.write("tflite_runner: cannot read batch %s: %s: %s\n" % (source, type(exc).__name__, exc))
        return EXIT_USAGE
    failed = 0
    for position, (cell_id, model) in enumerate(items):
        if position and args.cooldown > 0:
            time.sleep(args.cooldown)
        if wait_until_cool(args.thermal_sensor, args.pause_above, args.resume_below, _emit) or \
                position == 0 or args.cooldown > 0:
            keep_busy(RAMP_UP_S)  # after reading the batch, a pause or a cooldown the core idled
        try:
            if partners:
                def measure(interpreter):
                    return time_in_context(interpreter, partners, runs, warmup, args.evict_bytes,
                                           vector_s=args.vector_us / 1e6)
            else:
                def measure(interpreter):
                    return time_loaded_stats(interpreter, runs, warmup)
            seconds, _, fastest = placed_timing(lambda: _load(model, threads), measure, args.placements)
        except Exception as exc:  # one bad model must not end the batch
            failed += 1
            message = ("%s: %s" % (type(exc).__name__, exc))[:1000]
            _emit({"cell_id": cell_id, "error": message, "measured_at": time.time()})
            continue
        measured_at = time.time()
        temperature, throttled = read_sensors(args.thermal_sensor, args.throttle_command)
        _emit(
            {
                "cell_id": cell_id,
                "seconds": seconds,
                "fastest": fastest,
                "measured_at": measured_at,
                "temperature_c": temperature,
                "throttled": throttled,
            }
        )
    return EXIT_MODEL_FAILED if failed else EXIT_OK


# ---------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Time .tflite models (benchmark_model-compatible or batch mode).",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--graph", help="one model; prints benchmark_model-style output")
    mode.add_argument("--batch", help="directory of <cell_id>.tflite, manifest .json, or - (stdin)")
    mode.add_argument("--info", action="store_true", help="print the runtime description as JSON")
    parser.add_argument("--num_runs", type=int, default=50)
    parser.add_argument("--warmup_runs", type=int, default=5)
    parser.add_argument("--num_threads", type=int, default=1)
    parser.add_argument("--cooldown", type=float, default=0.0, help="seconds between models (batch)")
    parser.add_argument("--thermal-sensor", default=_THERMAL_ZONE, help="temperature file, millidegrees")
    parser.add_argument("--throttle-command", help="prints the throttle flags (default: vcgencmd get_throttled)")
    parser.add_argument("--pause-above", type=float, help="wait before a model while hotter (degrees C)")
    parser.add_argument("--resume-below", type=float, help="a pause ends below this (default: pause-above - 10)")
    parser.add_argument("--partner", action="append", default=[], help="network context: a partner model (batch)")
    parser.add_argument("--evict-bytes", type=int, default=0, help="network context: bytes written over the caches")
    parser.add_argument("--vector-us", type=float, default=0.0,
                        help="network context: microseconds of float32 matrix products before each invocation")
    parser.add_argument("--placements", type=int, default=1,
                        help="loads of each model, each elsewhere in memory; the fastest kept (1)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the CLI; returns the exit status (see module docstring)."""
    args = _parser().parse_args(argv)
    if args.num_runs < 1 or args.warmup_runs < 0 or args.num_threads < 1 or args.cooldown < 0 or \
            args.evict_bytes < 0 or args.placements < 1 or not 0 <= args.vector_us < math.inf:
        sys.stderr.write("tflite_runner: need num_runs>=1, warmup_runs>=0, num_threads>=1, cooldown>=0, "
                         "evict_bytes>=0, placements>=1, vector-us>=0\n")
        return EXIT_USAGE
    try:
        interpreter_class()
    except ImportError as exc:
        sys.stderr.write("tflite_runner: %s\n" % exc)
        return EXIT_NO_INTERPRETER
    try:
        if args.info:
            _emit(runtime_info())
            return EXIT_OK
        if args.batch is not None:
            return _run_batch_mode(args.batch, args)
        try:
            return _run_benchmark_mode(args.graph, args.num_runs, args.warmup_runs, args.num_threads)
        except Exception as exc:
            sys.stdout.flush()
            sys.stderr.write("ERROR: %s: %s\n" % (type(exc).__name__, exc))
            return EXIT_MODEL_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (SSH dropped); nothing left to report to
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
