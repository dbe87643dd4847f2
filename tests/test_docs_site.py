"""The documentation site: `mkdocs build --strict` (every warning an error) runs its tutorials and builds the
API reference from the docstrings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
pytest.importorskip("mkdocs")

ROOT = Path(__file__).resolve().parents[1]


def test_the_site_builds_strictly_and_runs_its_tutorials(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    tutorial = (site / "tutorials" / "first-layer" / "index.html").read_text()
    assert "status: converged" in tutorial and "status: diverged" in tutorial  # outputs of the executed code
    assert "cosine(JFB, exact) = 0.9" in tutorial
    reference = (site / "reference" / "core" / "index.html").read_text()
    for name in ("jfb.ImplicitLayer", "jfb.fixed_point", "jfb.SolveOptions"):
        assert name in reference
    assert (site / "results" / "workloads" / "zoo-prefix-sums.png").is_file()
