"""The product's own lines, without TensorFlow's and LiteRT's log chatter (unless --verbose).

Three kinds of chatter, three remedies:

* TensorFlow's C++ logging (start-up notices, the converter's ``W0000 ...`` and ``I0000 ...``
  lines, "All log messages before absl::InitializeLog()") reads its level from the environment
  once, when TensorFlow is first imported: `quiet_runtime` sets it at the start of every
  command, before any heavy import. The environment also reaches spawned worker processes.
  One notice ignores that level: "oneDNN custom operations are on", printed twice per process
  on CPUs with AVX512-VNNI or -BF16, where TensorFlow turns oneDNN on by itself. The product
  executes no TensorFlow kernels worth accelerating (TensorFlow only converts), so oneDNN stays
  off in every mode (`TF_ENABLE_ONEDNN_OPTS=0`, unless the environment says otherwise).
* Python-level warnings of TensorFlow (``WARNING:absl:...``) go through the ``absl`` logger,
  which `quiet_runtime` limits to errors with a filter (Keras resets the logger's level).
* What no setting silences (the converter's prints, LiteRT's "Created TensorFlow Lite XNNPACK
  delegate" banner, both written straight to file descriptors 1 and 2) is captured around the
  call by `captured_output` and shown only when the call fails.

With --verbose nothing is captured and TensorFlow logs everything.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
import tempfile
import threading
from typing import Iterator

VERBOSE_ENV = "NETADAPT_LUT_VERBOSE"  # "1": show the runtimes' own lines (inherited by workers)
VERBOSE_HELP = "show TensorFlow's own log lines"
# 2 = errors only: TensorFlow's C++ logging (TF_CPP_*) and any glog-based library
_QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "GLOG_minloglevel": "2"}
_VERBOSE_ENV = {"TF_CPP_MIN_LOG_LEVEL": "0", "GLOG_minloglevel": "0"}
_ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"

_capture_lock = threading.RLock()  # file descriptors are per process: one capture at a time
_banner_absorbed = False


class _ErrorsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


_ABSL_FILTER = _ErrorsOnly()


def add_verbose_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The --verbose flag every command has."""
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)


def quiet_runtime(verbose: bool = False) -> None:
    """Sets the runtimes' log levels for this process and the processes it starts. Call it at
    the start of a command, before TensorFlow is imported (it cannot change TensorFlow's C++
    level afterwards). A level already set in the environment is kept unless `verbose`."""
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    os.environ.setdefault(_ONEDNN_ENV, "0")
    with contextlib.suppress(ImportError):  # absl makes its "absl" logger (an ABSLLogger) on import
        import absl.logging  # noqa: F401
    if verbose:
        os.environ.update(_VERBOSE_ENV)
        logging.getLogger("absl").removeFilter(_ABSL_FILTER)
        return
    for name, value in _QUIET_ENV.items():
        os.environ.setdefault(name, value)
    logging.getLogger("absl").addFilter(_ABSL_FILTER)  # added once: filters are a set


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


@contextlib.contextmanager
def captured_output(what: str) -> Iterator[None]:
    """Runs the body with file descriptors 1 and 2 (and Python's sys.stdout) sent to a temporary
    file, so that native code's prints are caught too. If the body raises, what it printed is
    written to stderr before the exception goes on; otherwise it is dropped. With --verbose
    nothing is captured. `what` names the call in the replay ("converting the model")."""
    if is_verbose():
        yield
        return
    with _capture_lock, tempfile.TemporaryFile() as sink:
        _flush_std()
        try:
            saved = (os.dup(1), os.dup(2))
        except OSError:  # no standard descriptors to redirect (a detached process)
            yield
            return
        python_out = io.StringIO()
        failed = True
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            with contextlib.redirect_stdout(python_out):
                yield
            failed = False
        finally:
            _flush_std()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            if failed:
                sink.seek(0)
                text = (sink.read().decode("utf-8", "replace") + python_out.getvalue()).rstrip()
                if text:
                    print(f"--- output while {what} (it failed) ---\n{text}\n--- end of that output ---",
                          file=sys.stderr, flush=True)


def absorb_runtime_banner() -> None:
    """LiteRT writes "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." to fd 2 the first
    time a process creates an interpreter, whatever the log level; creating a first one on a
    one-op model under capture takes that line. Once per process; nothing with --verbose."""
    global _banner_absorbed
    if _banner_absorbed or is_verbose():
        return
    _banner_absorbed = True
    from latency.devices.runner import interpreter_class

    with captured_output("loading the TFLite runtime"):
        try:
            cls, _, _ = interpreter_class()
            interpreter = cls(model_content=one_op_model(), num_threads=1)
            interpreter.allocate_tensors()
        except Exception:  # noqa: BLE001 - the first real model reports what is wrong
            pass


def one_op_model() -> bytes:
    """A valid .tflite of one ADD (y = x + x, x of shape (1,)), built without TensorFlow."""
    import flatbuffers

    try:
        from ai_edge_litert import schema_py_generated as fb
    except ImportError:  # pragma: no cover - installs with TensorFlow's copy only
        from tensorflow.lite.python import schema_py_generated as fb  # type: ignore[no-redef]

    def tensor(name: bytes):
        t = fb.TensorT()
        t.shape, t.type, t.buffer, t.name = [1], fb.TensorType.FLOAT32, 0, name
        return t

    op = fb.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 0], [1]
    op.builtinOptionsType, op.builtinOptions = fb.BuiltinOptions.AddOptions, fb.AddOptionsT()
    graph = fb.SubGraphT()
    graph.tensors, graph.inputs, graph.outputs, graph.operators = [tensor(b"x"), tensor(b"y")], [0], [1], [op]
    code = fb.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = fb.BuiltinOperator.ADD, fb.BuiltinOperator.ADD, 1
    model = fb.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, [code], [graph], [fb.BufferT()]
    builder = flatbuffers.Builder(256)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
