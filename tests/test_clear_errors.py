"""Bad files and unwritable outputs: each is an error naming the file, what is wrong with it and
what to do, before any work is spent, and never a traceback. Real files: empty, truncated,
text, a directory; real unwritable places: a path under a regular file, a read-only tmpfs."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from models.export import main as export_main
from models.families import get_arch
from models.synthetic_data import write_synthetic_cifar10
from models.torch_builder import build_torch
from search.checkpoint_io import CheckpointError, read_checkpoint, save_model
from search.cli_retrain import main as retrain_main
from search.retrain import train
from search.retrain_config import RetrainConfig
from search.retrain_run_dir import CHECKPOINT, MODEL, RESULT
from search.unreadable import why_unreadable

WRN_SMALL = {"s1": 8, "s1b0": 8, "s2": 12, "s2b0": 12, "s3": 16, "s3b0": 16}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_synthetic_cifar10(tmp_path_factory.mktemp("data"), n_train=128, n_test=32, seed=1)


@pytest.fixture
def finished_run(tmp_path: Path, data_dir: Path) -> Path:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a busy 2-core machine
    try:
        cfg = RetrainConfig(arch="wrn-10-1", widths=WRN_SMALL, data="synthetic", data_dir=str(data_dir), epochs=1,
                            batch_size=32, device="cpu")
        assert train(cfg, tmp_path / "run", log=lambda line: None).finished
    finally:
        torch.set_num_threads(before)
    return tmp_path / "run"


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    """A real model file, and the ways a file named like one can be wrong."""
    d = tmp_path_factory.mktemp("bad")
    good = save_model(d / "good.pt", build_torch(get_arch("wrn-10-1"), WRN_SMALL))
    whole = good.read_bytes()
    (d / "empty.pt").write_bytes(b"")
    (d / "truncated.pt").write_bytes(whole[: len(whole) // 2])
    (d / "text.pt").write_text("weights: none\n")
    (d / "run").mkdir()
    (d / "run" / "model.pt").write_bytes(whole)
    torch.save({"arch": "wrn-10-1", "widths": {}, "state_dict": {}, "where": Path("/")}, d / "code.pt")
    return {p.stem: p for p in d.iterdir()}


def _read_error(path: Path) -> str:
    with pytest.raises(CheckpointError) as exc:
        read_checkpoint(path)
    return str(exc.value)


def test_a_bad_checkpoint_says_which_file_what_is_wrong_and_what_to_do(bad_files) -> None:
    f = bad_files
    expected = {
        "empty": "the file is empty (0 bytes)",
        "truncated": "the PyTorch archive is truncated or damaged",
        "text": "not a PyTorch file: it begins with b'weights: none\\n'",
        "code": "it holds Python objects other than plain data",
    }
    for name, why in expected.items():
        err = _read_error(f[name])
        assert err.startswith(f"cannot read checkpoint {f[name]}: {why}"), err
        assert err.endswith("use the model.pt that retrain or prune-search wrote, or copy it again"), err
    assert _read_error(f["run"]) == f"checkpoint {f['run']} is a directory: give the model file (such as " \
                                    f"{f['run'] / 'model.pt'})"
    assert "is not a regular file" in _read_error(Path("/dev/null"))
    assert read_checkpoint(f["good"])["arch"] == "wrn-10-1"


def test_why_unreadable_reads_the_file_not_the_exception(bad_files, tmp_path: Path) -> None:
    # whatever torch raised, an empty file is an empty file
    assert why_unreadable(bad_files["empty"], EOFError()) == "the file is empty (0 bytes)"
    gone = tmp_path / "gone.pt"
    assert why_unreadable(gone, FileNotFoundError(2, "No such file or directory")) == "No such file or directory"


# -- retrain ------------------------------------------------------------------------------------
def _retrain_error(capsys, *args: object) -> str:
    rc = retrain_main([str(a) for a in args])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("retrain: error: ") and "Traceback" not in err
    return err


def test_retrain_synthetic_data_missing_says_how_it_is_made(tmp_path: Path, capsys) -> None:
    base = ["--arch", "wrn-10-1", "--data", "synthetic", "--epochs", 1, "--out", tmp_path / "run"]
    err = _retrain_error(capsys, *base, "--data-dir", tmp_path / "MISSING")
    assert f"synthetic dataset directory {tmp_path / 'MISSING'} does not exist" in err
    assert "generated, not downloaded" in err and "write_synthetic_cifar10" in err and "download" not in \
        err.replace("not downloaded", "")
    (tmp_path / "empty").mkdir()
    err = _retrain_error(capsys, *base, "--data-dir", tmp_path / "empty")
    assert f"synthetic dataset directory {tmp_path / 'empty'} holds no batches.meta" in err
    assert not (tmp_path / "run").exists()


def test_resume_rewrites_a_damaged_model_from_the_checkpoint(finished_run: Path, capsys) -> None:
    """Nothing lost: the checkpoint holds the final weights, so a damaged model.pt (or
    result.json) is written again instead of being reported as a finished run."""
    good = read_checkpoint(finished_run / MODEL)
    (finished_run / MODEL).write_bytes(b"")
    assert retrain_main(["--out", str(finished_run), "--resume", "--torch-threads", "1"]) == 0
    out = capsys.readouterr().out
    assert f"its {MODEL} or {RESULT} is missing or unreadable: writing them again from {CHECKPOINT}" in out
    again = read_checkpoint(finished_run / MODEL)
    assert all(torch.equal(good["state_dict"][k], again["state_dict"][k]) for k in good["state_dict"])
    assert retrain_main(["--out", str(finished_run), "--resume"]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_resume_of_a_damaged_training_checkpoint(finished_run: Path, capsys) -> None:
    path = finished_run / CHECKPOINT
    path.write_bytes(path.read_bytes()[:300])
    err = _retrain_error(capsys, "--out", finished_run, "--resume")
    assert f"cannot read the training checkpoint {path}: the PyTorch archive is truncated or damaged (300 bytes)" \
           in err and "start afresh with another --out" in err


@pytest.fixture
def read_only_dir(tmp_path: Path):
    """A directory on a real read-only file system (a tmpfs mounted read-only; needs root)."""
    where = tmp_path / "ro"
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(where)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a read-only tmpfs needs root")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_retrain_refuses_an_out_it_cannot_write_before_loading_data(tmp_path: Path, data_dir: Path, capsys) -> None:
    (tmp_path / "file").write_text("")
    base = ["--arch", "wrn-10-1", "--data", "synthetic", "--data-dir", data_dir, "--epochs", 1]
    err = _retrain_error(capsys, *base, "--out", tmp_path / "file" / "run")
    assert err.startswith(f"retrain: error: cannot write {tmp_path / 'file' / 'run'}: {tmp_path / 'file'} is not a "
                          "directory; choose a writable --out")
    assert "cannot write" in _retrain_error(capsys, *base, "--out", tmp_path / "file")


def test_retrain_refuses_a_read_only_out(read_only_dir: Path, data_dir: Path, capsys) -> None:
    err = _retrain_error(capsys, "--arch", "wrn-10-1", "--data", "synthetic", "--data-dir", data_dir, "--epochs", 1,
                         "--out", read_only_dir / "run")
    assert f"cannot write {read_only_dir / 'run'}: {read_only_dir} is not writable (a read-only file system)" in err


# -- export-tflite ------------------------------------------------------------------------------
def _export_error(capsys, *args: object) -> str:
    assert export_main([str(a) for a in args]) == 2
    captured = capsys.readouterr()
    assert "converting" not in captured.out  # refused before the conversion
    assert "Traceback" not in captured.err
    return captured.err


def test_export_refuses_an_out_it_cannot_write_before_converting(bad_files, tmp_path: Path, capsys) -> None:
    model = bad_files["good"]
    (tmp_path / "file").write_text("")
    target = tmp_path / "file" / "x.tflite"
    assert f"export-tflite: error: cannot write {target}: {tmp_path / 'file'} is not a directory" in \
           _export_error(capsys, "--run", model, "--out", target)
    assert f"cannot write {tmp_path}: it is a directory" in _export_error(capsys, "--run", model, "--out", tmp_path)
    assert "cannot read checkpoint" in _export_error(capsys, "--run", bad_files["empty"])


def test_export_refuses_a_read_only_out(bad_files, read_only_dir: Path, capsys) -> None:
    target = read_only_dir / "sub" / "x.tflite"
    assert f"cannot write {target}: {read_only_dir} is not writable (a read-only file system)" in \
           _export_error(capsys, "--run", bad_files["good"], "--out", target)
