"""The jfb command line: training, evaluation, checkpoints, errors (run in-process, small MNIST subsets)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from training import config_of

from jfb.cli.main import main
from jfb.train import load_checkpoint

# measured: 1 epoch on 3000 images reaches 89.3% on 1000 test images (90.0% validation); with
# lr 1e-9 (no learning) 6.5%, so a zero or wrong gradient stays far below the 70% threshold
SMALL = ["--epochs", "1", "--limit-train", "3000", "--limit-test", "1000", "--no-progress", "--json"]


def _json_line(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    assert main(["train", "mnist", "--out", str(run_dir), *SMALL]) == 0
    return run_dir


def test_one_epoch_on_a_subset_learns(trained_run):
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1
    record = records[0]
    assert record["test_acc"] >= 65.0 and record["val_acc"] >= 65.0  # 69-72% measured (1 or 2 threads)
    assert record["backward"] == "jfb" and record["j_matvecs"] == 0
    assert 1 <= record["train_forward_iters_mean"] <= 50
    header = (trained_run / "metrics.csv").read_text().splitlines()[0].split(",")
    for column in (
        "train_loss",
        "train_acc",
        "val_acc",
        "test_acc",
        "epoch_time_s",
        "samples_per_s",
        "train_forward_iters_max",
    ):
        assert column in header
    assert (trained_run / "last.pt").is_file() and (trained_run / "best.pt").is_file()
    assert (trained_run / "curves.png").stat().st_size > 1000


def test_eval_reproduces_the_recorded_test_accuracy(trained_run, capsys):
    capsys.readouterr()
    assert main(["eval", str(trained_run / "last.pt"), "--limit-test", "1000", "--no-progress", "--json"]) == 0
    result = _json_line(capsys)
    recorded = json.loads((trained_run / "metrics.jsonl").read_text().splitlines()[-1])["test_acc"]
    assert result["test_acc"] == pytest.approx(recorded, abs=1e-9)
    assert result["samples"] == 1000


def test_checkpoint_holds_everything_for_resumption(trained_run):
    checkpoint = load_checkpoint(trained_run / "last.pt")
    for key in ("config", "model", "optimizer", "scheduler", "position", "rng", "records", "best_val_acc"):
        assert key in checkpoint
    assert checkpoint["position"]["epoch"] == 1 and checkpoint["position"]["step"] == 0


def test_resume_of_a_finished_run_reports_the_same_and_trains_no_more(trained_run, capsys):
    before = (trained_run / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main(["train", "mnist", "--out", str(trained_run), "--resume", *SMALL]) == 0
    result = _json_line(capsys)
    assert (trained_run / "metrics.jsonl").read_text() == before
    assert result["epochs"] == 1 and result["test_acc_last"] == json.loads(before.splitlines()[-1])["test_acc"]


def test_resume_with_other_options_is_refused_naming_each_one(trained_run, capsys):
    assert main(["train", "mnist", "--out", str(trained_run), "--resume", *SMALL, "--lr", "0.1"]) == 2
    assert "written with other options (lr 0.004 -> 0.1); resume with the options" in capsys.readouterr().err
    argv = ["train", "mnist", "--out", str(trained_run), "--resume", *SMALL, "--epochs", "3", "--eval-tol", "1e-3"]
    assert main(argv) == 2
    assert "(epochs 1 -> 3; eval_solve.tol None -> 0.001)" in capsys.readouterr().err.splitlines()[-1]


def test_unknown_names_and_bad_values_exit_2_with_one_line(capsys, tmp_path):
    cases = [
        (["train", "imagenet"], "unknown dataset or config 'imagenet'; choose one of mnist, svhn, cifar10"),
        (
            ["train", "mnist", "--solver", "newton", "--out", str(tmp_path / "a")],
            "unknown solver 'newton'; choose one of picard, anderson, broyden",
        ),
        (["train", "mnist", "--tol", "-1", "--out", str(tmp_path / "b")], "tol must be a number > 0, or None"),
        (
            ["train", "mnist", "--tol", "1e-3", "--out", str(tmp_path / "e")],
            'depth_start needs a fixed training depth, solve.tol = "none" (--tol none)',
        ),
        (
            ["train", "mnist", "--solver", "anderson", "--solver-options", "m=3", "--out", str(tmp_path / "f")],
            "unknown option of solver 'anderson' 'm'; choose one of memory, beta, ridge",
        ),
        (
            ["train", "mnist", "--max-iter", "0", "--out", str(tmp_path / "c")],
            "max_iter must be an integer >= 1, got 0",
        ),
        (["train", "mnist", "--backward", "adjoint", "--out", str(tmp_path / "d")], "unknown backward mode 'adjoint'"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # refused before any run dir was made


def test_a_real_bug_keeps_its_traceback(monkeypatch, tmp_path):
    import jfb.experiments.toy as toy

    def broken():
        raise ValueError("an internal bug, not bad input")

    monkeypatch.setattr(toy, "ToyOperator", broken)
    with pytest.raises(ValueError, match="internal bug"):
        main(["toy", "--steps", "1", "--out", str(tmp_path)])


def test_unknown_config_key_suggests_the_closest(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text('dataset = "mnist"\nmax_iters = 10\n')
    assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 2
    assert "unknown key 'max_iters'; did you mean 'max_iter' in the [solve] table" in capsys.readouterr().err
    config.write_text('dataset = "mnist"\n[solve]\nmax_iters = 10\n')
    assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 2
    assert "unknown option of [solve] 'max_iters'; choose one of solver, tol, max_iter" in capsys.readouterr().err


class _Marker:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_malicious_pickles_never_run(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "torch-jfb/1", "net_state_dict": _Marker(str(marker)), "model": _Marker(str(marker))}, evil)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "last.pt").write_bytes(evil.read_bytes())
    for argv in (
        ["eval", str(evil)],
        ["import-reference", str(evil), "--out", str(tmp_path / "out.pt"), "--dataset", "mnist"],
        ["train", "mnist", "--out", str(run_dir), "--resume", "--limit-train", "100", "--no-progress"],
        ["diagnose", str(evil), "--out", str(tmp_path / "diagnose")],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "evil.pt" in err or "last.pt" in err
    assert not marker.exists()


def test_truncated_checkpoint_gives_a_clear_error(trained_run, tmp_path, capsys):
    broken = tmp_path / "broken.pt"
    broken.write_bytes((trained_run / "last.pt").read_bytes()[:5000])
    assert main(["eval", str(broken)]) == 2
    assert f"{broken}: cannot load checkpoint safely" in capsys.readouterr().err


def test_unwritable_run_dir_is_a_one_line_error_from_cli_and_api(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["train", "mnist", "--out", str(blocker / "run"), "--limit-train", "100"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"run dir {blocker / 'run'} is not writable" in err and len(err.splitlines()) == 1
    from jfb.train import train

    with pytest.raises(ValueError, match="is not writable"):
        train(config_of(limit_train=100), blocker / "run", progress=False, log=lambda m: None)


def test_bad_values_leave_nothing_written(tmp_path, capsys):
    for argv in (["--tol", "-1"], ["--max-iter", "0"], ["--lr", "0"], ["--checkpoint-every", "-1"]):
        assert main(["train", "mnist", "--out", str(tmp_path / "run"), *argv]) == 2
        assert not (tmp_path / "run").exists(), argv
    assert "checkpoint_every must be an integer >= 0, got -1" in capsys.readouterr().err


def test_a_failed_checkpoint_write_keeps_the_previous_good_one(tmp_path, monkeypatch):
    from jfb.train import save_checkpoint

    path = tmp_path / "last.pt"
    save_checkpoint(path, {"value": torch.tensor([1.0])})

    def crash_mid_write(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"value": torch.tensor([2.0])})
    monkeypatch.undo()
    assert load_checkpoint(path)["value"].item() == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_bench_solvers_on_a_trained_checkpoint(trained_run, tmp_path, capsys):
    capsys.readouterr()
    argv = [
        "bench",
        "solvers",
        str(trained_run / "last.pt"),
        "--batches",
        "2",
        "--batch-size",
        "50",
        "--out",
        str(tmp_path),
        "--json",
    ]
    assert main(argv) == 0
    rows = {r["solver"]: r for r in _json_line(capsys)["rows"]}
    assert list(rows) == ["picard", "anderson", "broyden"]
    for row in rows.values():
        assert row["converged_share"] == 1.0 and row["batches"] == 2
    assert rows["anderson"]["t_evals_mean"] < rows["picard"]["t_evals_mean"]
    assert rows["picard"]["t_evals_vs_first"] == 1.0
    assert "| anderson |" in (tmp_path / "solvers.md").read_text()


def test_bench_inference_measures_each_depth_on_validation_and_test(trained_run, tmp_path, capsys):
    argv = ["bench", "inference", str(trained_run / "last.pt"), "--depths", "4,2", "--repeats", "1", "--json"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    rows = _json_line(capsys)["rows"]
    assert [(r["depth"], r["val_iters_mean"], r["test_iters_mean"]) for r in rows] == [(4, 4.0, 4.0), (2, 2.0, 2.0)]
    assert rows[0]["test_speedup"] == 1.0 and "| 2 |" in (tmp_path / "inference.md").read_text()
    for row in rows:  # each depth's accuracy is what `jfb eval` measures at that depth and precision
        flags = ["--max-iter", str(row["depth"]), "--precision", row["precision"]]  # not the checkpoint's "auto"
        assert main(["eval", str(trained_run / "last.pt"), *flags, "--json"]) == 0
        assert _json_line(capsys)["test_acc"] == row["test_acc"]
    assert rows[0]["val_acc"] > 50  # the trained model, not chance


def test_eval_max_iter_sets_the_evaluation_depth(trained_run, capsys):
    assert main(["eval", str(trained_run / "last.pt"), "--max-iter", "3", "--limit-test", "200", "--json"]) == 0
    result = _json_line(capsys)
    assert result["max_iter"] == 3 and result["forward_iters_mean"] == 3.0
