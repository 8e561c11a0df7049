"""`export-tflite`: a trained network as a float32 .tflite file, checked against PyTorch.

    export-tflite --run runs/NAME [--out model.tflite] [--measure]
    export-tflite --run runs/NAME --check other.tflite     # verify an existing file

The run's model.pt (the `search.checkpoint_io` format; `--run` may also name a .pt file) is
copied into the Keras builder's model and converted. The TFLite model then runs on sample
inputs (random images, normalised as the run's training data were) next to the PyTorch
network; the largest logit difference, scaled by the logit magnitude, must stay within a
tolerance, else the command fails (exit 1) and no file is written. `--measure` times the
exported model on this machine with LiteRT (3 passes of 50 runs after 5 warm-up, each at full
speed; the fastest invocation, as `latency-report` measures networks, and each pass's mean).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from latency.quiet import add_verbose_flag, quiet_runtime

from .atomic_write import WriteError, write_bytes_atomic, write_text_atomic
from .torch_builder import ArchNet
from .writable import check_writable

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE = 0, 1, 2
DEFAULT_TOL = 1e-4
DEFAULT_SAMPLES = 8
MODEL_FILE = "model.pt"


class ExportError(ValueError):
    """A run or model file that cannot be exported."""


@dataclass(frozen=True)
class ParityReport:
    samples: int
    max_abs_diff: float
    logit_scale: float  # max |PyTorch logit|, at least 1
    tolerance: float  # on max_abs_diff / logit_scale
    argmax_agree: int

    @property
    def relative_diff(self) -> float:
        return self.max_abs_diff / self.logit_scale

    @property
    def ok(self) -> bool:
        return self.relative_diff <= self.tolerance  # NaN compares false: a NaN output fails

    def describe(self) -> str:
        verdict = "OK" if self.ok else "MISMATCH"
        return (f"TFLite vs PyTorch on {self.samples} sample images: max |diff| {self.max_abs_diff:.3g} "
                f"(logits up to {self.logit_scale:.3g}; relative {self.relative_diff:.3g}, tolerance "
                f"{self.tolerance:g}), argmax agrees on {self.argmax_agree}/{self.samples}: {verdict}")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "relative_diff": self.relative_diff, "ok": self.ok}


def check_parity(torch_out: np.ndarray, tflite_out: np.ndarray, tol: float = DEFAULT_TOL) -> ParityReport:
    """Compares logits (samples, classes). The difference is scaled by the largest |logit|
    (at least 1): float32 rounding grows with the logits' size, so a large-logit trained
    network is held to the same relative standard as a small one."""
    a = np.asarray(torch_out, dtype=np.float64)
    b = np.asarray(tflite_out, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ExportError(f"outputs differ in shape: PyTorch {a.shape}, TFLite {b.shape}")
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    scale = max(1.0, float(np.max(np.abs(a)))) if a.size else 1.0
    agree = int(np.sum(np.argmax(a, 1) == np.argmax(b, 1)))
    return ParityReport(a.shape[0], diff, scale, tol, agree)


def sample_inputs(n: int, mean: Sequence[float], std: Sequence[float], seed: int = 0, size: int = 32) -> np.ndarray:
    """`n` random 8-bit images normalised like the training data: NCHW float32."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, size=(n, 3, size, size)).astype(np.float32) / 255.0
    m = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return ((img - m) / s).astype(np.float32)


def torch_outputs(net: ArchNet, x_nchw: np.ndarray) -> np.ndarray:
    import torch

    net.eval()
    with torch.no_grad():
        return net(torch.from_numpy(x_nchw)).numpy()


def tflite_outputs(model: bytes, x_nchw: np.ndarray) -> np.ndarray:
    """Runs the .tflite model (batch 1, NHWC) on every image, with the runtime's default
    delegates: the interpreter that times it."""
    from latency.devices.runner import interpreter_class
    from latency.quiet import absorb_runtime_banner

    absorb_runtime_banner()
    cls, _, _ = interpreter_class()
    it = cls(model_content=bytes(model), num_threads=1)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    want = (1, x_nchw.shape[2], x_nchw.shape[3], x_nchw.shape[1])
    if tuple(int(d) for d in inp["shape"]) != want:
        raise ExportError(f"the .tflite model takes input {tuple(inp['shape'])}, expected {want}")
    rows = []
    for i in range(x_nchw.shape[0]):
        it.set_tensor(inp["index"], np.ascontiguousarray(x_nchw[i:i + 1].transpose(0, 2, 3, 1)))
        it.invoke()
        rows.append(np.array(it.get_tensor(out["index"])[0]))
    return np.stack(rows)


def load_run(run: str | Path) -> tuple[ArchNet, dict[str, Any], Path]:
    """(network, checkpoint metadata, model file) of a run directory or a model .pt file."""
    from search.checkpoint_io import CheckpointError, load_model, read_checkpoint

    run = Path(run)
    path = run / MODEL_FILE if run.is_dir() else run
    if not path.exists():
        hint = " (has the training finished? retrain writes it at the end)" if run.is_dir() else ""
        raise ExportError(f"no trained model: {path} does not exist{hint}")
    try:
        meta = {k: v for k, v in read_checkpoint(path).items() if k != "state_dict"}
        net = load_model(path)
    except CheckpointError as exc:
        raise ExportError(str(exc)) from exc
    net.eval()
    return net, meta, path


def normalization_of(meta: dict[str, Any], path: Path) -> tuple[list[float], list[float], str]:
    """The training normalisation stored with the model, else that of the run's result.json,
    else zero mean / unit std (the inputs are then just scaled random images)."""
    def usable(norm: Any) -> bool:
        return isinstance(norm, dict) and len(norm.get("mean", ())) == 3 and len(norm.get("std", ())) == 3

    norm = meta.get("normalization")
    if usable(norm):
        return list(norm["mean"]), list(norm["std"]), path.name
    result = path.parent / "result.json"
    try:
        norm = json.loads(result.read_text()).get("normalization") if result.is_file() else None
    except (OSError, json.JSONDecodeError, AttributeError):
        norm = None
    if usable(norm):
        return list(norm["mean"]), list(norm["std"]), result.name
    return [0.0] * 3, [1.0] * 3, "none stored: raw [0, 1] images"


def convert(net: ArchNet) -> bytes:
    from .keras_builder import to_tflite

    # the converter prints its progress on stdout; keep the command's output readable
    with contextlib.redirect_stdout(io.StringIO()):
        return to_tflite(net.arch, net.widths, net, signature=True)  # a deployable model


def measure(model: bytes, passes: int = 3, runs: int = 50, warmup: int = 5,
            threads: int = 1) -> tuple[list[float], float]:
    """(seconds per inference of each pass, the mean of its `runs` runs; the fastest invocation of
    all passes), each pass a fresh load timed at full speed as `latency-report` times networks
    (`latency.devices.speed_gate`): on a shared machine in a slow phase a mean says more about the
    machine than about the model."""
    from latency.devices.runner import load_model, time_loaded_stats
    from latency.devices.speed_gate import SpeedGate, sentinel_model, sentinel_reader

    gate = SpeedGate(sentinel_reader(load_model(sentinel_model(), threads)))
    means, fastest = [], float("inf")
    for _ in range(passes):
        interpreter = load_model(model, threads)
        mean, _, best = gate.timed(lambda: time_loaded_stats(interpreter, runs, warmup))
        means.append(mean)
        fastest = min(fastest, best)
    return means, fastest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="export-tflite",
        description="Export a trained network (a retrain run or a model .pt) to float32 TFLite and check that "
        "TFLite and PyTorch agree on sample images.",
    )
    p.add_argument("--run", required=True, help="run directory (its model.pt) or a model .pt file")
    p.add_argument("--out", help="output .tflite (default: model.tflite next to the model file)")
    p.add_argument("--check", metavar="TFLITE", help="do not export: check this existing .tflite against the run")
    p.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help=f"sample images (default {DEFAULT_SAMPLES})")
    p.add_argument("--tol", type=float, default=DEFAULT_TOL,
                   help=f"tolerance on max |logit diff| / max(1, max |logit|) (default {DEFAULT_TOL:g})")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample images")
    p.add_argument("--measure", action="store_true", help="time the model here (LiteRT, 1 thread, 3 x 50 runs at full speed; prints the fastest "
                   "invocation, as latency-report measures networks, and each pass's mean)")
    add_verbose_flag(p)
    args = p.parse_args(argv)
    quiet_runtime(args.verbose)
    if args.samples < 1 or not args.tol > 0:
        p.error("--samples must be >= 1 and --tol > 0")
    if args.check and args.out:
        p.error("--check verifies an existing file; it writes nothing, so --out does not apply")
    try:
        if args.out:  # before any work: loading and converting take a while
            check_writable(args.out)
        net, meta, model_path = load_run(args.run)
        if not args.check and not args.out:
            check_writable(model_path.parent / "model.tflite", hint="choose a writable --out")
        if args.check:
            try:
                flatbuffer = Path(args.check).read_bytes()
            except OSError as exc:
                raise ExportError(f"cannot read {args.check}: {exc.strerror}") from exc
        else:
            print(f"converting {net.arch.name} from {model_path} ...", flush=True)
            flatbuffer = convert(net)
    except (ExportError, WriteError) as exc:
        print(f"export-tflite: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    mean, std, norm_source = normalization_of(meta, model_path)
    x = sample_inputs(args.samples, mean, std, args.seed, net.arch.input_size)
    try:
        report = check_parity(torch_outputs(net, x), tflite_outputs(flatbuffer, x), args.tol)
    except (ExportError, ValueError, RuntimeError) as exc:  # e.g. a model the interpreter rejects
        print(f"export-tflite: error: cannot run the TFLite model: {exc}", file=sys.stderr)
        return EXIT_MISMATCH
    print(report.describe() + f" [normalisation: {norm_source}]", flush=True)
    if not report.ok:
        what = args.check or "the exported model"
        print(f"export-tflite: error: {what} does not compute what the PyTorch network does"
              f"{'' if args.check else '; nothing written'}", file=sys.stderr)
        return EXIT_MISMATCH
    summary: dict[str, Any] = {"arch": net.arch.name, "widths": net.widths, "model": str(model_path.name),
                               "parity": report.as_dict(), "bytes": len(flatbuffer)}
    target = Path(args.check) if args.check else Path(args.out) if args.out else model_path.parent / "model.tflite"
    if not args.check:
        try:
            write_bytes_atomic(target, flatbuffer)
        except WriteError as exc:
            print(f"export-tflite: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        print(f"wrote {target} ({len(flatbuffer):,} bytes)")
    if args.measure:
        seconds, fastest = measure(flatbuffer)
        summary["latency_s"] = {"passes": seconds, "mean": statistics.fmean(seconds), "fastest": fastest, "runs": 50,
                                "warmup": 5, "threads": 1, "speed_gate": True}
        # the fastest invocation is what a table and latency-report give on this machine
        print(f"latency here (LiteRT, 1 thread, timed at full speed): fastest {fastest * 1e3:.3f} ms, as "
              "latency-report measures networks; means of 3 x 50 runs "
              + ", ".join(f"{s * 1e3:.3f}" for s in seconds) + " ms", flush=True)
    if not args.check:
        write_text_atomic(target.with_suffix(".export.json"), json.dumps(summary, indent=1) + "\n")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
