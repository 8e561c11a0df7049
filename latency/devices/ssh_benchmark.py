"""The benchmark_model timer of an SSH device: it needs a POSIX shell and the binary, nothing else.

A batch's models go up as plain files, each over its own SSH channel as ``cat > <tag>/<id>.tflite``
(a few at a time); then one shell loop runs ``benchmark_model --graph=...`` per model and prints
each result between delimiter lines, with the temperature and the throttle flags read right
after it::

    __begin 17
    <the last 64 KiB of benchmark_model's output, stdout and stderr>
    __status 0
    __temp 48312
    __throttled throttled=0x0
    __end 17

With a pause limit (`latency.devices.thermal`) the loop first waits while the sensor reads above
it, printing ``__paused <millidegrees>`` every second and ``__resumed <millidegrees>`` at the end.
The output is parsed by `parse_benchmark_output`; no timing found is a DeviceError quoting it.
"""
from __future__ import annotations

import asyncio
import math
import shlex
import time
from typing import Any, Callable

from ..benchmark_output import BenchmarkParseError, parse_benchmark_output
from .base import DeviceError, ModelJob, Timing
from .ssh_connection import RemoteCall, Transient, run_command, tail
from .thermal import PAUSE_POLL_S, PauseWatch, ThermalLimits, millidegrees, parse_temperature, parse_throttled, timed_hot

#: models uploaded at once (OpenSSH allows 10 sessions per connection by default)
UPLOAD_CONCURRENCY = 4
#: output kept per model: the timing summary is its last line
OUTPUT_TAIL_BYTES = 64 * 1024


async def upload_models(conn: Any, who: str, work_dir: str, tag: str, batch: list[ModelJob], timeout_s: float) -> int:
    """Writes every model to ``<work_dir>/<tag>/<cell_id>.tflite`` with `cat`; returns the bytes sent."""
    directory = f"{shlex.quote(work_dir)}/{shlex.quote(tag)}"
    made = await run_command(conn, f"mkdir -p {directory}", timeout_s, who)
    if made.status != 0:
        raise DeviceError(f"{who}: cannot create {work_dir}/{tag} on the device: {tail(made.stderr)}")
    gate = asyncio.Semaphore(UPLOAD_CONCURRENCY)

    async def one(job: ModelJob) -> None:
        async with gate:
            call = await RemoteCall.start(conn, f"cat > {directory}/{int(job.cell_id)}.tflite", who, stdin=job.model)
            try:
                await asyncio.wait_for(call.read_pid(), timeout_s)
                done = await asyncio.wait_for(call.finish(), timeout_s)
            except asyncio.TimeoutError:
                await call.kill()
                raise Transient(f"uploading model {job.cell_id} took more than call_timeout_s={timeout_s:g} s") from None
            finally:
                call.close()
        if done.status is None:
            raise Transient(f"the connection dropped while uploading model {job.cell_id}")
        if done.status != 0:
            raise DeviceError(f"{who}: cannot write model {job.cell_id} into {work_dir}/{tag} on the device "
                              f"(status {done.status}; is its disk full?): {tail(done.stderr)}")

    await asyncio.gather(*(one(job) for job in batch))
    return sum(len(job.model) for job in batch)


def timing_script(work_dir: str, tag: str, cell_ids: list[int], binary: str, flags: tuple[str, ...], runs: int,
                  warmup: int, threads: int, limits: ThermalLimits, cooldown_s: float = 0.0) -> str:
    """The shell loop that times a batch's uploaded models in order (see the module docstring)."""
    q = shlex.quote
    extra = " ".join(q(f) for f in flags)
    lines = [
        f"cd {q(work_dir)} || exit 97",
        f"s={q(limits.sensor)}",
        'temp() { cat "$s" 2>/dev/null; }',
        f"flags() {{ {limits.throttle_command} 2>/dev/null; }}",
        f"o={q(tag)}/.out",
        "first=1",
        f"for id in {' '.join(str(int(c)) for c in cell_ids)}; do",
    ]
    if cooldown_s > 0:
        lines.append(f'  [ -n "$first" ] || sleep {cooldown_s:g}')
    lines.append("  first=")
    if limits.paces:
        hi, lo = millidegrees(limits.pause_above_c), millidegrees(limits.resume_c)
        number = 'case "$t" in ""|*[!0-9]*) false;; esac'  # no reading (or a negative one): no pause
        lines += [
            "  t=$(temp)",
            f'  if {number} && [ "$t" -gt {hi} ]; then',
            f'    while {number} && [ "$t" -ge {lo} ]; do echo "__paused $t"; sleep {PAUSE_POLL_S:g}; t=$(temp); done',
            '    echo "__resumed $t"',
            "  fi",
        ]
    lines += [
        '  echo "__begin $id"',
        f'  {q(binary)} --graph={q(tag)}/"$id".tflite --num_runs={runs} --warmup_runs={warmup} '
        f'--num_threads={threads} {extra} >"$o" 2>&1',
        "  st=$?",
        f'  tail -c {OUTPUT_TAIL_BYTES} "$o"; echo',
        '  echo "__status $st"',
        '  echo "__temp $(temp)"',
        '  echo "__throttled $(flags)"',
        '  echo "__end $id"',
        "done",
    ]
    return "\n".join(lines)


def _timing(who: str, job: ModelJob, fields: dict[str, str], output: list[str], limits: ThermalLimits) -> Timing:
    raw = "\n".join(output)
    status = fields.get("status", "")
    if status != "0":
        raise DeviceError(f"{who}: cell {job.cell_id}: benchmark_model exited with status {status or 'unknown'}"
                          f"{' (not found: check benchmark_model in the profile)' if status == '127' else ''}; "
                          f"raw output:\n{raw.strip()[-2000:]}")
    try:
        parsed = parse_benchmark_output(raw)
    except BenchmarkParseError as exc:
        raise DeviceError(f"{who}: cell {job.cell_id}: {exc}") from None
    seconds = parsed.seconds
    if not (seconds > 0 and math.isfinite(seconds)):
        raise DeviceError(f"{who}: cell {job.cell_id}: implausible timing {seconds!r}: {raw[-500:]}")
    temperature = parse_temperature(fields.get("temp", ""))
    throttled = parse_throttled(fields.get("throttled", ""))
    return Timing(cell_id=job.cell_id, seconds=seconds, measured_at=time.time(), temperature_c=temperature,
                  throttled=timed_hot(limits, temperature, throttled))


async def read_timings(call: RemoteCall, who: str, batch: list[ModelJob], timeout_s: float, limits: ThermalLimits,
                       watch: PauseWatch, stopped: Callable[[int], Any]) -> list[Timing]:
    """The timings the loop prints, in batch order; a pause's lines keep the deadline (`timeout_s`
    per line) from running out. `stopped(done)` is awaited when the output ends early."""
    timings: list[Timing] = []
    for job in batch:
        begun, fields, output = False, {}, []
        while True:
            line = await asyncio.wait_for(call.readline(), timeout_s)
            if not line:
                return await stopped(len(timings))
            text = line.decode("utf-8", "replace").rstrip("\n")
            key, _, value = text.partition(" ")
            if key == "__paused":
                watch.paused(parse_temperature(value))
            elif key == "__resumed":
                watch.resumed(parse_temperature(value))
            elif key == "__begin":
                if value.strip() != str(job.cell_id):
                    raise DeviceError(f"{who}: expected cell {job.cell_id}, the timing loop began {value!r}")
                begun = True
            elif key == "__end":
                break
            elif begun and key in ("__status", "__temp", "__throttled"):
                fields[key[2:]] = value.strip()
            elif begun:
                output.append(text)
        timings.append(_timing(who, job, fields, output, limits))
    return timings
