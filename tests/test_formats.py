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


#: the spread of the fixtures' runs across CPU kinds, measured and recorded with the CPU that measured it
CROSS_CPU = json.loads((FIXTURES / "cross-cpu.json").read_text())


def _equal(a, b) -> bool:
    """Nested state (dicts, lists, tensors, numbers) equal value for value, tensors bit for bit."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.slow
def test_a_fixture_resumes_its_exact_state_and_ends_within_the_cross_cpu_spread(tmp_path, version):
    """What holds on every CPU: the run continues from the recorded position with the recorded weights, optimiser
    state, schedule and RNG, exactly; after its last epoch its weights are within the spread measured across CPU
    kinds (cross-cpu.json) of an uninterrupted run here. Bit for bit only where both epochs ran on one CPU kind
    (the fixtures' first epochs ran on an AVX-512 CPU; tests/test_resume.py checks a resume on one machine)."""
    shutil.copytree(FIXTURES / version, tmp_path / "resumed")
    saved = load_checkpoint(tmp_path / "resumed" / "last.pt")
    config = TrainConfig.from_dict(saved["config"], source="fixture")
    run = setup_run(config, tmp_path / "resumed", resume=True, progress=False, log=quiet)
    assert (run.position.epoch, run.position.step) == (1, 0)  # resumed, not restarted
    assert torch.equal(torch.get_rng_state(), saved["rng"]) and _equal(run.model.state_dict(), saved["model"])
    assert _equal(run.optimizer.state_dict()["state"], saved["optimizer"]["state"])
    assert run.scheduler.last_epoch == saved["scheduler"]["last_epoch"] > 0
    fit(run)
    train(config, tmp_path / "whole", progress=False, log=quiet)
    resumed, whole = (load_checkpoint(tmp_path / d / "last.pt")["model"] for d in ("resumed", "whole"))
    assert resumed.keys() == whole.keys()
    tensors = [k for k in whole if whole[k].is_floating_point() and whole[k].numel() > 1]
    spread = max(float((resumed[k] - whole[k]).double().norm() / whole[k].double().norm()) for k in tensors)
    assert spread <= CROSS_CPU["tolerance"], f"{spread:.3g} (measured across CPU kinds: {CROSS_CPU['by_capability']})"


def test_a_file_of_a_newer_format_is_refused_naming_the_version(tmp_path):
    path = tmp_path / "future.pt"
    buffer = io.BytesIO()
    torch.save({"format": "torch-jfb/9", "model": {}}, buffer)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(JfbError, match=r"written by a newer torch-jfb \(format torch-jfb/9\); this version reads"):
        load_checkpoint(path)
