"""Each extra installs what the command that documents it needs: a fresh virtual environment with torch and
only ``.[EXTRA]``, then that command (the documentation site for ``.[docs]``, a training's curves for ``.[plot]``,
its TensorBoard events for ``.[tensorboard]``, an ONNX file run in ONNX Runtime for ``.[deploy]``).

torch is installed once, into an environment the others borrow it from (a ``.pth`` file pointing at its
site-packages, where pip sees it installed), so each extra's environment holds the package, its core
dependencies and that extra only. The packages come from the package index this machine installs from, as in
``.ci/run``; where torch cannot be installed the tests skip, saying so (never in CI).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train", "mnist", "--limit-train", "200", "--limit-test", "100", "--batch-size", "100", "--epochs", "1"]
TRAIN += ["--solver", "picard", "--tol", "none", "--max-iter", "2", "--depth-start", "none", "--no-progress"]


def _run(*command: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=900, **kwargs)


def _site(python: Path) -> Path:
    return Path(_run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())


@pytest.fixture(scope="module")
def torch_site(tmp_path_factory) -> Path:
    """The site-packages of an environment holding torch 2.13.0 (and what torch needs) only."""
    env = tmp_path_factory.mktemp("torch-env")
    venv.create(env, with_pip=True)
    installed = _run(str(env / "bin" / "python"), "-m", "pip", "install", "-q", "torch==2.13.0")
    if installed.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"torch could not be installed into a fresh environment: {installed.stderr[-2000:]}")
        pytest.skip("torch==2.13.0 could not be installed from the package index here")
    return _site(env / "bin" / "python")


def _with_extra(tmp_path: Path, torch_site: Path, extra: str) -> Path:
    """A fresh environment with torch (borrowed), this package and ``.[extra]``: its bin folder."""
    env = tmp_path / f"env-{extra}"
    venv.create(env, with_pip=True)
    (_site(env / "bin" / "python") / "borrowed-torch.pth").write_text(f"{torch_site}\n")
    installed = _run(str(env / "bin" / "python"), "-m", "pip", "install", "-q", "-e", f"{ROOT}[{extra}]")
    assert installed.returncode == 0, installed.stderr[-3000:]
    return env / "bin"


def test_the_docs_extra_builds_the_site(tmp_path, torch_site):
    bin_ = _with_extra(tmp_path, torch_site, "docs")
    built = _run(str(bin_ / "mkdocs"), "build", "--strict", "-d", str(tmp_path / "site"), cwd=ROOT)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-4000:]
    assert (tmp_path / "site" / "tutorials" / "diagnosing" / "index.html").is_file()


def test_the_plot_extra_draws_a_trainings_curves(tmp_path, torch_site):
    bin_ = _with_extra(tmp_path, torch_site, "plot")
    trained = _run(str(bin_ / "jfb"), *TRAIN, "--out", str(tmp_path / "run"))
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000


def test_the_tensorboard_extra_writes_a_trainings_events(tmp_path, torch_site):
    bin_ = _with_extra(tmp_path, torch_site, "tensorboard")
    trained = _run(str(bin_ / "jfb"), *TRAIN, "--out", str(tmp_path / "run"))
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert list((tmp_path / "run").rglob("events.out.tfevents.*")), sorted(p.name for p in (tmp_path / "run").iterdir())
    missing = _run(str(bin_ / "python"), "-c", "import matplotlib")  # the extras stay apart: no matplotlib here
    assert missing.returncode != 0 and sys.executable != str(bin_ / "python")


def test_the_deploy_extra_exports_a_model_that_onnx_runtime_runs(tmp_path, torch_site):
    bin_ = _with_extra(tmp_path, torch_site, "deploy")
    out = tmp_path / "mnist.onnx"
    exported = _run(str(bin_ / "jfb"), "export", "mnist-default", "--limit-test", "500", "--out", str(out), "--json")
    assert exported.returncode == 0, exported.stderr[-3000:]
    summary = json.loads(exported.stdout.strip().splitlines()[-1])
    assert summary["test_images"] == 500 and summary["agreement"] == 1.0
    assert summary["exported_test_acc"] == summary["eager_test_acc"] and out.stat().st_size > 10_000
