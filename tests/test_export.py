"""export-tflite: a trained run converts to a .tflite that computes what PyTorch does, and the
parity check catches a model that does not."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.export import (DEFAULT_TOL, ExportError, check_parity, convert, load_run, main, sample_inputs,
                           tflite_outputs, torch_outputs)
from models.synthetic_data import write_synthetic_cifar10
from search.retrain import train
from search.retrain_config import RetrainConfig

WRN_SMALL = {"s1": 8, "s1b0": 8, "s2": 12, "s2b0": 12, "s3": 16, "s3b0": 16}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A wrn-10-1 (reduced width) trained for one epoch: trained BN statistics, non-zero biases."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a busy 2-core machine: see test_retrain
    try:
        data = write_synthetic_cifar10(tmp_path_factory.mktemp("data"), n_train=256, n_test=64, seed=1)
        cfg = RetrainConfig(arch="wrn-10-1", widths=WRN_SMALL, data="synthetic", data_dir=str(data), epochs=1,
                            batch_size=32, device="cpu")
        out = tmp_path_factory.mktemp("export") / "run"
        assert train(cfg, out, log=lambda line: None).finished
    finally:
        torch.set_num_threads(before)
    return out


def test_export_matches_pytorch(run_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "wrn.tflite"
    assert main(["--run", str(run_dir), "--out", str(out), "--measure"]) == 0
    printed = capsys.readouterr().out
    assert "argmax agrees on 8/8: OK" in printed and "latency here" in printed

    net, _, _ = load_run(run_dir)
    result = json.loads((run_dir / "result.json").read_text())
    x = sample_inputs(8, result["normalization"]["mean"], result["normalization"]["std"])
    y_torch, y_tflite = torch_outputs(net, x), tflite_outputs(out.read_bytes(), x)
    assert np.abs(y_torch - y_tflite).max() <= 1e-4
    assert np.abs(y_torch[0] - y_torch[1]).max() > 1e-2  # the images give different logits: not trivial
    assert (y_torch.argmax(1) == y_tflite.argmax(1)).all()

    summary = json.loads(out.with_suffix(".export.json").read_text())
    assert summary["arch"] == "wrn-10-1" and summary["parity"]["ok"] is True
    assert summary["parity"]["max_abs_diff"] == pytest.approx(float(np.abs(y_torch - y_tflite).max()), abs=1e-6)
    assert len(summary["latency_s"]["passes"]) == 3 and min(summary["latency_s"]["passes"]) > 0
    # the fastest invocation is never slower than a pass's mean
    assert 0 < summary["latency_s"]["fastest"] <= min(summary["latency_s"]["passes"])


def test_check_parity_flags_mismatched_outputs() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(0, 5, size=(8, 10)).astype(np.float32)
    assert check_parity(y, y.copy()).ok
    scale = float(np.abs(y).max())
    close = y.copy()
    close[3, 2] += 0.5 * DEFAULT_TOL * scale
    assert check_parity(y, close).ok
    far = y.copy()
    far[3, 2] += 2 * DEFAULT_TOL * scale
    report = check_parity(y, far)
    assert not report.ok and "MISMATCH" in report.describe()
    assert report.max_abs_diff == pytest.approx(2 * DEFAULT_TOL * scale, rel=1e-3)
    nan = y.copy()
    nan[0, 0] = np.nan
    assert not check_parity(y, nan).ok
    with pytest.raises(ExportError, match="differ in shape"):
        check_parity(y, y[:, :9])


def test_check_fails_on_a_corrupted_model(run_dir: Path, tmp_path: Path, capsys) -> None:
    net, _, _ = load_run(run_dir)
    good = convert(net)
    (tmp_path / "good.tflite").write_bytes(good)
    assert main(["--run", str(run_dir), "--check", str(tmp_path / "good.tflite")]) == 0

    # corrupt the exported weights in the file: the head's dense weights, stored as is
    w = net.unit("head").fc.weight.detach().numpy().astype("<f4")
    assert good.count(w.tobytes()) == 1, "the converter no longer stores the dense weights verbatim"
    bad = good.replace(w.tobytes(), (w * 1.5).astype("<f4").tobytes())
    (tmp_path / "bad.tflite").write_bytes(bad)
    capsys.readouterr()
    assert main(["--run", str(run_dir), "--check", str(tmp_path / "bad.tflite")]) == 1
    captured = capsys.readouterr()
    assert "MISMATCH" in captured.out and "does not compute what the PyTorch network does" in captured.err

    # a model of other weights (one convolution scaled) fails the same way
    with torch.no_grad():
        net.unit("s2b0.conv1").conv.weight.mul_(1.05)
    (tmp_path / "other.tflite").write_bytes(convert(net))
    assert main(["--run", str(run_dir), "--check", str(tmp_path / "other.tflite")]) == 1


def test_unwritable_out_is_a_clear_error(run_dir: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("")
    target = tmp_path / "file" / "model.tflite"
    assert main(["--run", str(run_dir), "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert f"export-tflite: error: cannot write {target}" in err and "choose a writable --out" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_missing_run(tmp_path: Path, capsys) -> None:
    assert main(["--run", str(tmp_path / "absent")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "unfinished").mkdir()
    assert main(["--run", str(tmp_path / "unfinished")]) == 2
    assert "has the training finished" in capsys.readouterr().err
