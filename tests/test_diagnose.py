"""`jfb diagnose` on a briefly trained checkpoint."""

from __future__ import annotations

import json

import pytest
from training import config_of

from jfb.cli.main import main
from jfb.train import train

pytestmark = pytest.mark.slow


def test_diagnose_reports_descent_and_neumann_convergence(tmp_path, capsys):
    train(
        config_of(epochs=1, limit_train=500, limit_test=100, max_iter=20),
        tmp_path / "run",
        progress=False,
        log=lambda m: None,
    )
    capsys.readouterr()
    assert (
        main(
            ["diagnose", str(tmp_path / "run" / "last.pt"), "--batches", "1", "--out", str(tmp_path / "diag"), "--json"]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # measured at this budget: descent on the batch, cosine 0.87 with the implicit direction, contraction 1.01
    assert summary["batches"] == 1 and summary["descent_share"] == 1.0
    assert 0.5 < summary["cosine_mean"] <= 1.0 and 0.5 < summary["contraction_mean"] < 2.0
    # more Neumann terms approach the (tightly solved) implicit gradient
    assert summary["neumann_8_rel_error"] < summary["neumann_2_rel_error"] < summary["neumann_0_rel_error"]
    assert (tmp_path / "diag" / "diagnose.md").is_file() and (tmp_path / "diag" / "diagnose.jsonl").is_file()
