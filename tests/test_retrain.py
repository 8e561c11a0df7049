"""retrain: training lowers the loss, an interrupted run resumes to the same weights, the CLI's
errors. Tiny networks on a small synthetic CIFAR-10-format set, on CPU."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.batches import channel_mean_std, normalize
from models.datasets import open_dataset
from models.families import get_arch
from models.synthetic_data import write_synthetic_cifar10
from models.torch_builder import build_torch
from search.checkpoint_io import load_model, read_checkpoint
from search.cli_retrain import main
from search.retrain import StopRequest, train
from search.retrain_config import RetrainConfig, RetrainError
from search.retrain_run_dir import CHECKPOINT, LOG_JSONL, LOG_TEXT, MODEL, RESULT, read_state

# reduced widths: a few seconds per epoch on one core
WRN_SMALL = {"s1": 8, "s1b0": 8, "s2": 12, "s2b0": 12, "s3": 16, "s3b0": 16}
MBV2_SMALL = {"stem": 6, "s1": 6, "s1b0": 8, "s2": 8, "s2b0": 12, "s2b1": 8, "s3": 10, "s3b0": 16, "s3b1": 12,
              "last": 16}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # on a busy 2-core machine, intra-op threads fighting other processes are 10x slower
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_synthetic_cifar10(tmp_path_factory.mktemp("synthetic"), n_train=512, n_test=128, seed=0)


def widths_file(tmp_path: Path, widths: dict, arch: str | None = None, name: str = "widths.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"arch": arch, "widths": widths} if arch else widths))
    return path


def cli(*args: object) -> int:
    return main([str(a) for a in args])


def batch_loss(net: torch.nn.Module, data_dir: Path) -> float:
    """Cross-entropy on all 512 training images (unaugmented) with batch statistics, so a fresh
    and a trained network are measured the same way."""
    data = open_dataset("synthetic", data_dir)
    mean, std = channel_mean_std(data.train_images)
    x = normalize(torch.from_numpy(data.train_images), torch.from_numpy(mean), torch.from_numpy(std))
    net.train()
    with torch.no_grad():
        return float(F.cross_entropy(net(x), torch.from_numpy(data.train_labels)))


def test_one_epoch_lowers_the_loss(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "run"
    rc = cli("--arch", "wrn-10-1", "--widths", widths_file(tmp_path, WRN_SMALL), "--data", "synthetic",
             "--data-dir", data_dir, "--epochs", 1, "--batch-size", 16, "--out", out, "--torch-device", "cpu")
    assert rc == 0
    torch.manual_seed(0)  # the run's seed: the very initialisation it started from
    fresh = build_torch(get_arch("wrn-10-1"), WRN_SMALL)
    trained = load_model(out / MODEL)  # the prune-search --checkpoint format
    assert trained.widths == get_arch("wrn-10-1").validate(WRN_SMALL)
    before, after = batch_loss(fresh, data_dir), batch_loss(trained, data_dir)
    assert after < 0.85 * before, (before, after)

    result = json.loads((out / RESULT).read_text())
    assert result["arch"] == "wrn-10-1" and result["widths"] == WRN_SMALL
    assert result["epochs"] == 1 and result["data"] == "synthetic" and result["synthetic"] is True
    assert result["parameters"] == sum(p.numel() for p in trained.parameters())
    assert 0.0 <= result["test_error"] < 0.9  # better than chance (0.9) after one epoch
    assert result["wall_time_s"] > 0 and result["device"].startswith("cpu")
    assert result["recipe"]["nesterov"] is True and result["recipe"]["weight_decay"] == 1e-4
    log = [json.loads(line) for line in (out / LOG_JSONL).read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1]
    assert {"loss", "train_error", "lr", "seconds"} <= set(log[0]) and log[0]["lr"] == pytest.approx(0.1)
    assert log[0]["lr_end"] == pytest.approx(0.0, abs=1e-12)  # cosine to 0 over the one epoch
    assert (out / LOG_TEXT).read_text().startswith("epoch 1/1")
    meta = read_checkpoint(out / MODEL)
    assert meta["arch"] == "wrn-10-1" and meta["test_error"] == result["test_error"]


def _same_weights(a: Path, b: Path) -> None:
    sa, sb = read_checkpoint(a)["state_dict"], read_checkpoint(b)["state_dict"]
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, f"weights differ in {different[:5]}"


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, data_dir: Path) -> tuple[RetrainConfig, Path]:
    """An uninterrupted 2-epoch run of mbv2-tiny (dropout: the global RNG matters)."""
    cfg = RetrainConfig(arch="mbv2-tiny", widths=MBV2_SMALL, data="synthetic", data_dir=str(data_dir), epochs=2,
                        batch_size=64, device="cpu", seed=3)
    out = tmp_path_factory.mktemp("reference") / "run"
    outcome = train(cfg, out, log=lambda line: None)
    assert outcome.finished and outcome.epoch == 2
    return cfg, out


def test_resume_after_an_epoch_gives_the_same_weights(tmp_path: Path, reference_run) -> None:
    cfg, ref = reference_run
    out = tmp_path / "run"
    steps = 512 // 64
    outcome = train(cfg, out, should_stop=lambda epoch, step: epoch == 0 and step == steps, log=lambda line: None)
    assert not outcome.finished and (outcome.epoch, outcome.step) == (1, 0)
    state = read_state(out)
    assert (state["epoch"], state["step"]) == (1, 0) and len(state["log"]) == 1
    assert not (out / MODEL).exists() and not (out / RESULT).exists()

    assert cli("--out", out, "--resume") == 0  # settings come from the checkpoint
    _same_weights(out / MODEL, ref / MODEL)
    log = [json.loads(line) for line in (out / LOG_JSONL).read_text().splitlines()]
    ref_log = [json.loads(line) for line in (ref / LOG_JSONL).read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]  # continued at epoch 2, nothing repeated
    assert [r["loss"] for r in log] == [r["loss"] for r in ref_log]
    assert json.loads((out / RESULT).read_text())["test_error"] == json.loads((ref / RESULT).read_text())["test_error"]


def test_resume_inside_an_epoch_gives_the_same_weights(tmp_path: Path, reference_run) -> None:
    cfg, ref = reference_run
    out = tmp_path / "run"
    outcome = train(cfg, out, should_stop=lambda epoch, step: epoch == 1 and step == 3, log=lambda line: None)
    assert not outcome.finished and (outcome.epoch, outcome.step) == (1, 3)
    outcome = train(cfg, out, resume=True, log=lambda line: None)
    assert outcome.finished
    _same_weights(out / MODEL, ref / MODEL)
    log = [json.loads(line) for line in (out / LOG_JSONL).read_text().splitlines()]
    ref_log = [json.loads(line) for line in (ref / LOG_JSONL).read_text().splitlines()]
    assert [(r["epoch"], r["loss"], r["train_error"]) for r in log] == \
        [(r["epoch"], r["loss"], r["train_error"]) for r in ref_log]


def test_sigterm_stops_after_the_batch_with_a_checkpoint(tmp_path: Path, data_dir: Path) -> None:
    cfg = RetrainConfig(arch="wrn-10-1", widths=WRN_SMALL, data="synthetic", data_dir=str(data_dir), epochs=1,
                        batch_size=128, device="cpu")
    stop = StopRequest(log=lambda line: None)
    handler_before = signal.getsignal(signal.SIGTERM)

    def should_stop(epoch: int, step: int) -> bool:
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # what `kill` or a batch scheduler sends
        return stop(epoch, step)

    with stop.installed():
        outcome = train(cfg, tmp_path / "run", should_stop=should_stop, log=lambda line: None)
    assert signal.getsignal(signal.SIGTERM) is handler_before
    assert stop.requested and not outcome.finished and (outcome.epoch, outcome.step) == (0, 2)
    assert read_state(tmp_path / "run")["step"] == 2


def test_resume_of_a_finished_run_changes_nothing(reference_run, capsys) -> None:
    _, ref = reference_run
    before = (ref / MODEL).read_bytes()
    assert cli("--out", ref, "--resume") == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (ref / MODEL).read_bytes() == before


# -- errors ------------------------------------------------------------------------------------
def run_args(data_dir: Path | str, out: Path, *extra: object) -> list[object]:
    return ["--arch", "wrn-10-1", "--data", "synthetic", "--data-dir", data_dir, "--epochs", 1, "--out", out,
            "--torch-device", "cpu", *extra]


def error_of(capsys, *args: object) -> str:
    rc = cli(*args)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("retrain: error: ")
    return err


def test_missing_data_dir(tmp_path: Path, capsys) -> None:
    err = error_of(capsys, *run_args(tmp_path / "no-such-dir", tmp_path / "run"))
    # synthetic data are generated: the error says how, not where to download CIFAR-10
    assert "does not exist" in err and "write_synthetic_cifar10" in err
    assert not (tmp_path / "run" / CHECKPOINT).exists()


def test_data_of_the_other_kind(tmp_path: Path, data_dir: Path, capsys) -> None:
    args = run_args(data_dir, tmp_path / "run")
    args[args.index("synthetic")] = "cifar10"
    assert "holds 'synthetic' data" in error_of(capsys, *args)


def test_widths_file_for_another_arch(tmp_path: Path, data_dir: Path, capsys) -> None:
    # every group name here exists in wrn-10-1 too: only the file's "arch" tells them apart
    tagged = widths_file(tmp_path, {"s1": 6, "s1b0": 6}, arch="mbv2-tiny")
    err = error_of(capsys, *run_args(data_dir, tmp_path / "run", "--widths", tagged))
    assert "is for architecture 'mbv2-tiny', not 'wrn-10-1'" in err
    untagged = widths_file(tmp_path, MBV2_SMALL, name="mbv2.json")
    assert "unknown width group 'stem'" in error_of(capsys, *run_args(data_dir, tmp_path / "run", "--widths", untagged))
    assert "cannot read widths file" in error_of(capsys, *run_args(data_dir, tmp_path / "run", "--widths",
                                                                    tmp_path / "missing.json"))


def test_out_dir_holding_another_run(reference_run, data_dir: Path, capsys) -> None:
    _, ref = reference_run
    before = (ref / MODEL).read_bytes()
    err = error_of(capsys, *run_args(data_dir, ref))
    assert "already holds a training run" in err and "--resume" in err
    assert (ref / MODEL).read_bytes() == before


def test_out_dir_that_cannot_be_created(tmp_path: Path, data_dir: Path, capsys) -> None:
    (tmp_path / "file").write_text("")
    err = error_of(capsys, *run_args(data_dir, tmp_path / "file" / "run"))
    assert f"cannot write {tmp_path / 'file' / 'run'}" in err and "choose a writable --out" in err


def test_resume_with_nothing_to_resume(tmp_path: Path, capsys) -> None:
    assert "nothing to resume" in error_of(capsys, "--out", tmp_path / "absent", "--resume")
    (tmp_path / "empty").mkdir()
    assert "nothing to resume" in error_of(capsys, "--out", tmp_path / "empty", "--resume")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / CHECKPOINT).write_bytes(b"not a checkpoint")
    assert "cannot read the training checkpoint" in error_of(capsys, "--out", tmp_path / "bad", "--resume")


def test_resume_with_other_settings(reference_run, capsys) -> None:
    _, ref = reference_run
    assert "lr: run has 0.1, now 0.05" in error_of(capsys, "--out", ref, "--resume", "--lr", 0.05)
    err = error_of(capsys, "--out", ref, "--resume", "--epochs", 3)
    assert "epochs: run has 2, now 3" in err and "cosine" in err
    assert "arch: run has 'mbv2-tiny', now 'wrn-10-1'" in error_of(capsys, "--out", ref, "--resume", "--arch",
                                                                   "wrn-10-1")


def test_missing_required_options(tmp_path: Path, capsys) -> None:
    err = error_of(capsys, "--out", tmp_path / "run", "--arch", "wrn-10-1")
    assert "--data, --data-dir required" in err


def test_unknown_arch_and_cuda_without_cuda(tmp_path: Path, data_dir: Path, capsys) -> None:
    args = run_args(data_dir, tmp_path / "run")
    args[args.index("wrn-10-1")] = "resnet-50"
    assert "unknown architecture 'resnet-50'" in error_of(capsys, *args)
    if torch.cuda.is_available():
        return
    args = run_args(data_dir, tmp_path / "run")
    args[args.index("cpu")] = "cuda"
    assert "no CUDA device" in error_of(capsys, *args)


def test_config_checks() -> None:
    with pytest.raises(RetrainError, match="epochs must be >= 1"):
        RetrainConfig(arch="wrn-10-1", data="synthetic", data_dir=".", epochs=0)
    with pytest.raises(RetrainError, match="above its full width"):
        RetrainConfig(arch="wrn-10-1", data="synthetic", data_dir=".", widths={"s1": 99})
