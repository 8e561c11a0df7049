"""Commands print the product's lines, not TensorFlow's or LiteRT's log chatter (unless
--verbose), and every command's help reads as written."""
from __future__ import annotations

import asyncio
import importlib
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from latency import quiet

ROOT = Path(__file__).resolve().parents[1]

# what the runtimes print on their own, seen in the commands' output before they were quieted
CHATTER = [
    r"All log messages before absl::InitializeLog",
    r"(?m)^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+\.cc:\d+\]",  # absl C++ log lines (I0000 ..., W0000 ...)
    r"tf_tfl_flatbuffer_helpers",
    r"oneDNN custom operations",
    r"This TensorFlow binary is optimized",
    r"Created TensorFlow Lite XNNPACK delegate",
    r"Please consider providing the trackable_obj",
    r"WARNING:absl:",
    r"Saved artifact at",
]


def _chatter(text: str) -> list[str]:
    return [p for p in CHATTER if re.search(p, text)]


def _user_env() -> dict[str, str]:
    """The environment of a user's shell: none of the log settings the test process may hold."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "GLOG_minloglevel", "TF_ENABLE_ONEDNN_OPTS", quiet.VERBOSE_ENV)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _run(args: list[str], timeout: float = 240) -> tuple[int, str, str]:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=_user_env(), capture_output=True, text=True,
                          timeout=timeout)
    return done.returncode, done.stdout, done.stderr


def _commands() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("command", sorted(_commands()))
def test_help_renders_as_written(command: str, capsys) -> None:
    module, function = _commands()[command].split(":")
    main = getattr(importlib.import_module(module), function)
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: {command} ")
    assert "%%" not in text and "%(" not in text
    assert re.search(r"--verbose\s+show TensorFlow's own log lines", text)


def test_describe_arch_converts_quietly_and_verbose_shows_tensorflow() -> None:
    rc, out, err = _run(["-m", "models.cli", "--arch", "wrn-10-1"])
    assert rc == 0, err
    assert "wrn-10-1: 17 layers" in out and ".tflite (float32, batch 1):" in out
    assert _chatter(out + err) == []
    assert err == ""

    rc, out, err = _run(["-m", "models.cli", "--arch", "wrn-10-1", "--verbose"])
    assert rc == 0, err
    assert ".tflite (float32, batch 1):" in out
    assert "tf_tfl_flatbuffer_helpers" in err  # the converter's own lines, shown on request


def test_a_measuring_tool_converts_and_times_quietly() -> None:
    """A tool in tools/ converts with Keras and creates interpreters, as the commands do."""
    rc, out, err = _run(["-m", "tools.timing_conditions", "--arch", "wrn-10-1", "--seconds", "1"])
    assert rc == 0, err
    assert "slow phases over 1 s:" in out, out
    assert _chatter(out + err) == []


def test_python_warnings_stay_quiet_after_keras_resets_the_logger() -> None:
    """Keras sets absl's logger level during a conversion; absl warnings (the converter's
    "trackable_obj" one) still stay out of a quiet command's output, and come with --verbose."""
    script = """
from latency.quiet import quiet_runtime
quiet_runtime(verbose=False)
import keras
from absl import logging
from models.keras_builder import convert_keras
x = keras.Input((4, 4, 3), batch_size=1)
convert_keras(keras.Model(x, keras.layers.Conv2D(2, 3)(x)))
logging.warning("hidden: trackable_obj (test)")
print("converted", flush=True)
quiet_runtime(verbose=True)
logging.warning("shown: trackable_obj (test)")
"""
    rc, out, err = _run(["-c", script])
    assert rc == 0, err
    assert out.strip() == "converted"
    assert "hidden" not in err and "shown: trackable_obj (test)" in err
    assert _chatter(out + err.replace("WARNING:absl:shown: trackable_obj (test)", "")) == []


def test_local_device_workers_start_quietly(capfd, monkeypatch) -> None:
    """Spawned workers inherit fd 2: LiteRT's start-up banner comes only with --verbose."""
    from latency.devices.base import ModelJob, TimingSettings
    from latency.devices.local import LocalDevice

    async def time_one() -> float:
        device = LocalDevice(settings=TimingSettings(runs=3, warmup=1))
        await device.start()
        try:
            (timing,) = await device.measure([ModelJob(0, quiet.one_op_model())])
        finally:
            await device.close()
        return timing.seconds

    monkeypatch.delenv(quiet.VERBOSE_ENV, raising=False)
    assert asyncio.run(time_one()) > 0
    assert "XNNPACK delegate" not in capfd.readouterr().err

    monkeypatch.setenv(quiet.VERBOSE_ENV, "1")
    assert asyncio.run(time_one()) > 0
    assert "Created TensorFlow Lite XNNPACK delegate" in capfd.readouterr().err


def test_captured_output_is_shown_only_when_the_call_fails(capfd, monkeypatch) -> None:
    monkeypatch.delenv(quiet.VERBOSE_ENV, raising=False)
    with quiet.captured_output("a quiet call"):
        os.write(2, b"native noise\n")
        os.write(1, b"native print\n")
        print("python print")
    print("after", flush=True)
    captured = capfd.readouterr()
    assert captured.out == "after\n" and captured.err == ""

    with pytest.raises(RuntimeError, match="converter broke"):
        with quiet.captured_output("converting the model"):
            os.write(2, b"the reason it broke\n")
            raise RuntimeError("converter broke")
    err = capfd.readouterr().err
    assert "while converting the model (it failed)" in err and "the reason it broke" in err

    monkeypatch.setenv(quiet.VERBOSE_ENV, "1")
    with quiet.captured_output("a verbose call"):
        os.write(2, b"shown as it happens\n")
    assert capfd.readouterr().err == "shown as it happens\n"
