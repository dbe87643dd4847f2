"""The README's Python API example runs and does what it says."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_api_example_runs():
    code = re.search(r"## Python API\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert len(code.strip().splitlines()) <= 10
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()) as out:
        exec(compile(code, "README.md", "exec"), namespace)
    assert out.getvalue().startswith("converged")
    assert namespace["x"].grad is not None and namespace["s"].j_matvecs == 0


def test_quick_start_commands_are_the_ones_ci_runs():
    text = README.read_text()
    assert "pip install torch==2.13.0 && pip install -e . && jfb demo" in text
    setup = (
        "pip install torch==2.13.0 && pip install -e '.[test]' && pip install --no-deps torchdeq && python -m pytest -q"
    )
    assert setup in text
    ci = (README.parent / ".ci" / "run").read_text()
    steps = ("pip install -q torch==2.13.0", "pip install -q -e '.[test]'", "pip install -q --no-deps torchdeq")
    for step in (*steps, "python -m pytest -q"):
        assert step in ci
