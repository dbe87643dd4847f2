"""A release a user can install: the wheel and the sdist build, and the wheel runs in a fresh environment."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
pytest.importorskip("build")

ROOT = Path(__file__).resolve().parents[1]


def _run(*command: str, **kwargs) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def test_the_wheel_installs_into_a_fresh_venv_and_runs(tmp_path):
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "build", "--no-isolation", "--wheel", "--sdist", "--outdir", str(dist), str(ROOT))
    wheel = next(dist.glob("torch_jfb-*.whl"))
    assert next(dist.glob("torch_jfb-*.tar.gz"))
    names = zipfile.ZipFile(wheel).namelist()
    for packaged in (
        "jfb/configs/mnist.toml",
        "jfb/pretrained/index.json",
        "jfb/pretrained/lm/model.safetensors",
        "jfb/pretrained/lm/config.json",
    ):
        assert packaged in names
    assert not [n for n in names if n.startswith("tests/")]
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    # torch, numpy and tqdm come from this environment (no download); the wheel's own files from the venv
    site = Path(_run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel))
    assert _run(str(env_dir / "bin" / "jfb"), "--version").strip() == "torch-jfb 0.2.0"
    code = (
        "import torch, jfb; "
        "eq = jfb.fixed_point(lambda u, x: torch.tanh(0.5 * u + x), torch.ones(2, 3), tol=1e-6); "
        "print(jfb.__file__); print(eq.stats.status)"
    )
    where, status = _run(str(python), "-c", code, cwd=tmp_path).split()
    assert where.startswith(str(env_dir)) and status == "converged"
    # the shipped language model generates from the installed wheel (safetensors, no download)
    generated = _run(
        str(env_dir / "bin" / "jfb"), "generate", "lm", "--prompt", "import", "--max-bytes", "8", cwd=tmp_path
    )
    assert generated.startswith("--- 'import'\nimport") and "new_tokens 8" in generated
