"""`jfb compare` at a tiny scale: one run per method, J mat-vec counts per their formula."""

from __future__ import annotations

import json

import pytest

from jfb.cli.main import main
from jfb.train import load_checkpoint

pytestmark = pytest.mark.slow


def test_compare_counts_and_outputs(tmp_path, capsys):
    argv = [
        "compare",
        "mnist",
        "--methods",
        "jfb,neumann:2,ift:cg",
        "--epochs",
        "1",
        "--limit-train",
        "300",
        "--limit-test",
        "100",
        "--max-iter",
        "10",
        "--out",
        str(tmp_path),
        "--no-progress",
        "--json",
    ]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = {r["method"]: r for r in result["rows"]}
    batches = 3  # 300 images, batch 100
    assert rows["jfb"]["j_matvecs_per_epoch"] == 0
    assert rows["neumann:2"]["j_matvecs_per_epoch"] == 2 * batches
    # CG: 2 products per iteration + 1 set-up per batch, at most max_iter (= forward max_iter) iterations
    assert batches * 3 <= rows["ift:cg"]["j_matvecs_per_epoch"] <= batches * (2 * 10 + 1)
    assert rows["ift:cg"]["latent_batch_norm"] is False and rows["jfb"]["latent_batch_norm"] is True
    assert result["budget"] == {"epochs": 1, "limit_train": 300, "limit_test": 100}
    table = (tmp_path / "compare.md").read_text()
    assert "| neumann:2 |" in table and (tmp_path / "compare.png").is_file() and (tmp_path / "compare.csv").is_file()


def test_compare_solvers_anderson_needs_fewer_iterations_than_picard(tmp_path, capsys):
    argv = [
        "compare",
        "mnist",
        "--vary",
        "solver",
        "--methods",
        "picard,anderson",
        "--epochs",
        "1",
        "--limit-train",
        "300",
        "--limit-test",
        "100",
        "--tol",
        "1e-3",
        "--out",
        str(tmp_path),
        "--no-progress",
        "--json",
    ]
    assert main(argv) == 0
    rows = {r["method"]: r for r in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]}
    # measured at this scale: Picard 12.9, Anderson 8.0 forward iterations per batch
    assert rows["anderson"]["forward_iters_mean"] < 0.8 * rows["picard"]["forward_iters_mean"]
    assert "time vs picard" in (tmp_path / "compare.md").read_text()
    # the comparison's own solve settings, not the packaged training config's fixed depth of 8
    config = load_checkpoint(tmp_path / "picard" / "last.pt")["config"]
    solve = config["solve"]
    assert (solve["max_iter"], config["batch_size"], solve["stop_mode"], solve["tol"]) == (50, 100, "rel", 1e-3)
    assert config["depth_start"] is None


def test_paper_setting_runs_the_authors_jacobian_based_configuration(tmp_path, capsys):
    argv = [
        "compare",
        "mnist",
        "--paper-setting",
        "--epochs",
        "1",
        "--limit-train",
        "300",
        "--limit-test",
        "100",
        "--out",
        str(tmp_path),
        "--no-progress",
        "--json",
    ]
    assert main(argv) == 0
    rows = {r["method"]: r for r in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]}
    assert list(rows) == ["jfb", "ift:cg"]
    ift = load_checkpoint(tmp_path / "ift-cg" / "last.pt")["config"]
    jfb_run = load_checkpoint(tmp_path / "jfb" / "last.pt")["config"]
    assert (ift["latent_batch_norm"], ift["lipschitz_rescale"], ift["backward"]) == (
        False,
        True,
        "ift:cg:tol=0.1:max_iter=50",
    )
    assert (jfb_run["latent_batch_norm"], jfb_run["lipschitz_rescale"]) == (True, False)
    for config in (ift, jfb_run):
        solve = config["solve"]
        assert (config["gamma"], config["lr"], config["weight_decay"], solve["tol"], solve["max_iter"]) == (
            0.5,
            2e-4,
            1e-6,
            0.1,
            50,
        )
    assert rows["ift:cg"]["backward_converged_share"] >= 0.9  # CG meets its loose tolerance
    assert rows["ift:cg"]["j_matvecs_per_epoch"] > 0 and rows["jfb"]["j_matvecs_per_epoch"] == 0
