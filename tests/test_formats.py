"""Checkpoint formats stay readable: a fixture of every format the code has written loads, evaluates and resumes.

``tests/fixtures/checkpoints/torch-jfb-N/last.pt`` is epoch 1 of 2 of a tiny MNIST run written by the version
that wrote format N (``make_fixture.py`` there; /1 by commit e9dde56^, /2 by 59fae9d, /3 by torch-jfb 0.2).
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from training import quiet

from jfb.errors import JfbError
from jfb.train import EvalSettings, TrainConfig, evaluate_checkpoint, fit, load_checkpoint, setup_run, train
from jfb.train.checkpoint import FORMAT, FORMATS

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "checkpoints"
VERSIONS = [f"torch-jfb-{n}" for n in (1, 2, 3)]


def test_there_is_a_fixture_of_every_format():
    assert [f"torch-jfb-{v.split('/')[1]}" for v in FORMATS] == VERSIONS and FORMAT == "torch-jfb/3"


@pytest.mark.parametrize("version", VERSIONS)
def test_a_fixture_loads_and_evaluates_to_the_accuracy_it_recorded(version):
    checkpoint = load_checkpoint(FIXTURES / version / "last.pt")
    assert checkpoint["format"] == version.replace("torch-jfb-", "torch-jfb/")
    config = TrainConfig.from_dict(checkpoint["config"], source="fixture")
    assert (config.solve.solver, config.solve.tol, config.solve.max_iter) == ("picard", None, 3)
    recorded = json.loads((FIXTURES / version / "metrics.jsonl").read_text().splitlines()[-1])
    result = evaluate_checkpoint(EvalSettings(str(FIXTURES / version / "last.pt")), progress=False, log=quiet)
    assert result["test_acc"] == recorded["test_acc"] and result["samples"] == 100


@pytest.mark.parametrize("version", VERSIONS)
def test_a_fixture_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path, version):
    shutil.copytree(FIXTURES / version, tmp_path / "resumed")
    config = TrainConfig.from_dict(load_checkpoint(tmp_path / "resumed" / "last.pt")["config"], source="fixture")
    run = setup_run(config, tmp_path / "resumed", resume=True, progress=False, log=quiet)
    assert (run.position.epoch, run.position.step) == (1, 0)  # resumed, not restarted
    fit(run)
    train(config, tmp_path / "whole", progress=False, log=quiet)
    resumed, whole = (load_checkpoint(tmp_path / d / "last.pt")["model"] for d in ("resumed", "whole"))
    assert resumed.keys() == whole.keys() and all(torch.equal(resumed[k], whole[k]) for k in whole)


def test_a_file_of_a_newer_format_is_refused_naming_the_version(tmp_path):
    path = tmp_path / "future.pt"
    buffer = io.BytesIO()
    torch.save({"format": "torch-jfb/9", "model": {}}, buffer)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(JfbError, match=r"written by a newer torch-jfb \(format torch-jfb/9\); this version reads"):
        load_checkpoint(path)
