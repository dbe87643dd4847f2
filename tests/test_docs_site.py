"""The documentation site: `mkdocs build --strict` (every warning an error) runs its tutorials and builds the
API reference from the docstrings."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from modules import from_file

pytest.importorskip("mkdocs")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built once, strictly, for the tests of this module."""
    site = tmp_path_factory.mktemp("docs") / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return site


@pytest.mark.slow
def test_the_site_builds_strictly_and_runs_its_tutorials(site):
    tutorial = (site / "tutorials" / "first-layer" / "index.html").read_text()
    assert "status: converged" in tutorial and "status: diverged" in tutorial  # outputs of the executed code
    assert "cosine(JFB, exact) = 0.9" in tutorial
    choosing = (site / "tutorials" / "choosing" / "index.html").read_text()
    assert "neumann:8" in choosing and "saved MiB" in choosing  # the measured table, made at build time
    diagnosing = (site / "tutorials" / "diagnosing" / "index.html").read_text()
    assert "<svg" in diagnosing and "penalty weight 1.0" in diagnosing  # the residual plot, drawn at build time
    own = (site / "tutorials" / "own-model" / "index.html").read_text()
    assert "warm start:" in own and "state dtype torch.float32" in own
    reference = (site / "reference" / "core" / "index.html").read_text()
    for name in ("jfb.ImplicitLayer", "jfb.fixed_point", "jfb.SolveOptions"):
        assert name in reference
    assert (site / "results" / "workloads" / "zoo-prefix-sums.png").is_file()


def _docs_check():
    return from_file(ROOT / "scripts" / "docs_check.py")


def test_link_checker_finds_broken_links_missing_anchors_and_images(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "index.html").write_text(
        '<a href="a/">ok</a><a href="a/#here">ok</a><a href="a/#nowhere">bad</a><img src="x.png"><a href="/a/">ok</a>'
    )
    (tmp_path / "a" / "index.html").write_text('<h2 id="here">h</h2><a href="https://example.org">out</a>')
    pages, links, anchors, problems = _docs_check().check_links(tmp_path)
    assert (pages, links, anchors) == (2, 5, 2)
    assert sorted(p.split(" -> ")[1] for p in problems) == ["no element #nowhere", "no file"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_the_browser_check_sees_console_errors_and_passes_on_the_site(site, tmp_path):
    check = _docs_check()
    (tmp_path / "bad.html").write_text('<script>console.error("boom"); missingFunction();</script>')
    server, port = check._serve(tmp_path)
    try:
        messages = check.open_in_browser(shutil.which("chromium"), f"http://127.0.0.1:{port}/bad.html", None)
    finally:
        server.shutdown()
    assert any("boom" in m for m in messages) and any("missingFunction" in m for m in messages)
    assert check.main(["--site", str(site), "--screenshots", str(tmp_path / "shots")]) == 0
    assert len(list((tmp_path / "shots").glob("*.png"))) == 4


def test_every_public_name_has_a_reference_entry():
    import jfb
    import jfb.looped
    import jfb.nn

    pages = "".join(p.read_text() for p in (ROOT / "docs" / "reference").glob("*.md"))
    modules = {"backward", "contraction", "looped", "nn", "solvers"}  # documented through their names
    missing = [n for n in jfb.__all__ if n not in modules and f"::: jfb.{n}\n" not in pages]
    missing += [n for n in jfb.nn.__all__ if f"::: jfb.nn.{n}\n" not in pages]
    missing += [n for n in jfb.looped.__all__ if n != "OTHER_SAMPLE" and f"::: jfb.looped.{n}\n" not in pages]
    assert not missing
