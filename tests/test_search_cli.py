"""`prune-search` and the checkpoint format: errors, help, a killed run resumed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from models.families import get_arch
from models.torch_builder import build_torch
from search.checkpoint_io import CheckpointError, load_model, read_checkpoint, save_model
from search.cli import main
from tests.test_search_fixtures import one_thread, search_data, synthetic_dir, trained  # noqa: F401

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def base_checkpoint(trained, tmp_path):
    return save_model(tmp_path / "base.pt", trained("wrn-10-1"))


def cli_args(checkpoint, table, data_dir, out, *extra):
    return ["--checkpoint", str(checkpoint), "--table", str(table), "--algorithm", "netadapt", "--data", "synthetic",
            "--data-dir", str(data_dir), "--out", str(out), "--finetune-batches", "2", "--batch-size", "16",
            "--eval-batch-size", "200", "--torch-threads", "1", "--quiet", *extra]


def test_checkpoint_round_trip_and_refusals(tmp_path):
    arch = get_arch("mbv2-se-tiny")
    net = build_torch(arch, {"s2b1": 0, "last": 20})
    path = save_model(tmp_path / "m.pt", net, extra={"epochs": 3})
    data = read_checkpoint(path)
    assert data["arch"] == "mbv2-se-tiny" and data["widths"]["s2b1"] == 0 and data["epochs"] == 3
    back = load_model(path)
    assert back.widths == net.widths
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), back.state_dict().values()))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    torch.save({"state_dict": net.state_dict()}, tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="expected keys"):
        load_model(tmp_path / "bare.pt")
    # weights_only: a file that would run code when unpickled is refused
    torch.save({"arch": "mbv2-se-tiny", "widths": {}, "state_dict": {}, "x": Path("/")}, tmp_path / "code.pt")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_model(tmp_path / "code.pt")


def test_help_explains(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for word in ("netadapt", "fisher", "uniform", "--target", "--resume", "--jobs", "--backend", "--save-at",
                 "widths.json", "held-out"):
        assert word in text


def test_clear_errors(small_table, synthetic_dir, base_checkpoint, tmp_path, capsys):
    wrn_table, mbv2_table = small_table("wrn-10-1"), small_table("mbv2-tiny")

    def error_of(argv):
        assert main(argv) == 2
        return capsys.readouterr().err

    assert "does not exist" in error_of(cli_args(tmp_path / "nope.pt", wrn_table, synthetic_dir, tmp_path / "a",
                                                 "--target", "0.8"))
    assert "lacks layer types" in error_of(cli_args(base_checkpoint, mbv2_table, synthetic_dir, tmp_path / "b",
                                                    "--target", "0.8"))
    assert "not reachable" in error_of(cli_args(base_checkpoint, wrn_table, synthetic_dir, tmp_path / "c",
                                                "--target", "0.001"))
    assert "does not match" in error_of(cli_args(base_checkpoint, wrn_table, synthetic_dir, tmp_path / "d",
                                                 "--target", "0.8", "--arch", "wrn-16-1"))
    assert "--data-dir" in error_of(["--checkpoint", str(base_checkpoint), "--table", str(wrn_table),
                                     "--target", "0.8", "--out", str(tmp_path / "e")])
    assert "nothing to resume" in error_of(cli_args(base_checkpoint, wrn_table, synthetic_dir, tmp_path / "f",
                                                    "--target", "0.8", "--resume"))


def test_uniform_needs_no_data(small_table, base_checkpoint, tmp_path, capsys):
    out = tmp_path / "u"
    assert main(["--checkpoint", str(base_checkpoint), "--table", str(small_table("wrn-10-1")), "--target", "0.7",
                 "--algorithm", "uniform", "--out", str(out), "--quiet"]) == 0
    doc = json.loads((out / "widths.json").read_text())
    assert doc["algorithm"] == "uniform" and doc["fraction"] <= 0.7
    assert "uniform: wrn-10-1" in capsys.readouterr().out


def test_killed_run_resumes_to_the_same_result(small_table, synthetic_dir, base_checkpoint, tmp_path):
    table = small_table("wrn-10-1")
    args = ["--target", "0.75", "--init-red-fact", "10", "--seed", "2"]
    assert main(cli_args(base_checkpoint, table, synthetic_dir, tmp_path / "whole", *args)) == 0
    whole = json.loads((tmp_path / "whole" / "widths.json").read_text())
    iterations = len(json.loads((tmp_path / "whole" / "history.json").read_text()))
    assert iterations >= 2  # so the kill lands after the first checkpoint, before the end

    cut = tmp_path / "cut"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "search.cli", *cli_args(base_checkpoint, table, synthetic_dir, cut,
                                                                          *args)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (cut / "history.json").exists():  # written right after the first checkpoint
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # mid-run: after the first checkpoint, during a later iteration
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    partial = json.loads((cut / "history.json").read_text())
    assert 1 <= len(partial) < iterations

    assert main(cli_args(base_checkpoint, table, synthetic_dir, cut, *args, "--resume")) == 0
    resumed = json.loads((cut / "widths.json").read_text())
    assert resumed["finished"] and resumed["widths"] == whole["widths"]
    assert resumed["predicted_latency_s"] == whole["predicted_latency_s"]
    history = json.loads((cut / "history.json").read_text())
    assert [e["group"] for e in history] == \
           [e["group"] for e in json.loads((tmp_path / "whole" / "history.json").read_text())]


def test_groups_mean_the_same_for_every_algorithm(small_table, synthetic_dir, base_checkpoint, tmp_path, capsys):
    """--groups: only those groups are pruned, whatever the algorithm; the others keep their widths."""
    table = small_table("wrn-10-1")
    full = get_arch("wrn-10-1").full_widths()
    chosen = {"s2b0", "s3b0"}
    for algorithm in ("uniform", "netadapt", "fisher"):
        out = tmp_path / algorithm
        argv = cli_args(base_checkpoint, table, synthetic_dir, out, "--target", "0.85", "--groups", "s2b0,s3b0",
                        "--seed", "1")
        argv[argv.index("--algorithm") + 1] = algorithm
        assert main(argv) == 0, capsys.readouterr().err
        doc = json.loads((out / "widths.json").read_text())
        assert doc["fraction"] <= 0.85
        assert {g: w for g, w in doc["widths"].items() if g not in chosen} == \
               {g: w for g, w in full.items() if g not in chosen}, algorithm
        assert any(doc["widths"][g] < full[g] for g in chosen), algorithm


def test_uniform_says_when_the_groups_given_cannot_reach_the_target(small_table, base_checkpoint, tmp_path, capsys):
    argv = ["--checkpoint", str(base_checkpoint), "--table", str(small_table("wrn-10-1")), "--algorithm", "uniform",
            "--quiet", "--target", "0.05", "--groups", "s1", "--out", str(tmp_path / "far")]
    assert main(argv) == 2  # s1 alone (the first stage's stream) cannot bring wrn-10-1 to a twentieth
    assert "not reachable by scaling s1" in capsys.readouterr().err


@pytest.mark.parametrize("algorithm", ["uniform", "netadapt", "fisher"])
def test_unknown_or_fixed_groups_are_refused_before_any_work(algorithm, small_table, base_checkpoint, tmp_path,
                                                             capsys):
    data_dir = tmp_path / "data"  # synthetic data would be written here: the refusal comes first
    argv = cli_args(base_checkpoint, small_table("wrn-10-1"), data_dir, tmp_path / "run", "--target", "0.8")
    argv[argv.index("--algorithm") + 1] = algorithm
    assert main([*argv, "--groups", "s1,nosuch"]) == 2
    err = capsys.readouterr().err
    assert "wrn-10-1 has no width group 'nosuch'" in err
    assert "the prunable groups of wrn-10-1 are s1, s1b0, s2, s2b0, s3, s3b0" in err
    assert main([*argv, "--groups", "classes"]) == 2
    assert "'classes' is fixed" in capsys.readouterr().err
    assert not data_dir.exists() and not (tmp_path / "run").exists()
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--groups", ","])
    assert exc.value.code == 2 and "width group names" in capsys.readouterr().err


def test_bad_checkpoint_files_and_outs_are_named_with_what_to_do(small_table, base_checkpoint, tmp_path, capsys):
    table = small_table("wrn-10-1")

    def error_of(checkpoint, out=tmp_path / "run", *extra):
        assert main(["--checkpoint", str(checkpoint), "--table", str(table), "--target", "0.8", "--algorithm",
                     "uniform", "--out", str(out), "--quiet", *extra]) == 2
        return capsys.readouterr().err

    whole = base_checkpoint.read_bytes()
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "cut.pt").write_bytes(whole[:len(whole) // 3])
    (tmp_path / "notes.pt").write_text("these are notes\n")
    (tmp_path / "a-run").mkdir()
    for path, why in [(tmp_path / "empty.pt", "the file is empty (0 bytes)"),
                      (tmp_path / "cut.pt", "the PyTorch archive is truncated or damaged"),
                      (tmp_path / "notes.pt", "not a PyTorch file: it begins with b'these are notes\\n'")]:
        err = error_of(path)
        assert f"prune-search: error: cannot read checkpoint {path}: {why}" in err and "copy it again" in err
    assert f"checkpoint {tmp_path / 'a-run'} is a directory: give the model file" in error_of(tmp_path / "a-run")
    assert not (tmp_path / "run").exists()

    (tmp_path / "file").write_text("")
    assert f"cannot write {tmp_path / 'file' / 'run'}: {tmp_path / 'file'} is not a directory" in \
           error_of(base_checkpoint, tmp_path / "file" / "run")

    # a run whose checkpoint was damaged cannot continue: said so, naming the file
    assert main(["--checkpoint", str(base_checkpoint), "--table", str(table), "--target", "0.8", "--algorithm",
                 "uniform", "--out", str(tmp_path / "done"), "--quiet"]) == 0
    state = tmp_path / "done" / "state.pt"
    state.write_bytes(b"")
    err = error_of(base_checkpoint, tmp_path / "done", "--resume")
    assert f"cannot read the run checkpoint {state}: the file is empty (0 bytes)" in err and "another --out" in err
