"""docs/api.md lists every public name of the core."""

from __future__ import annotations

import re
from pathlib import Path

import jfb
import jfb.backward
import jfb.looped
import jfb.nn
import jfb.solvers

API = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()


def test_every_exported_name_is_documented():
    missing = [
        f"{module.__name__}.{name}"
        for module in (jfb, jfb.solvers, jfb.backward, jfb.nn, jfb.looped)
        for name in module.__all__
        if not re.search(rf"\b{name}\b", API)
    ]
    assert not missing, missing


def test_the_documented_top_level_names_exist():
    for name in (
        "ImplicitLayer",
        "SolveOptions",
        "Status",
        "JfbError",
        "register_solver",
        "register_backward",
        "solve",
        "IFT",
    ):
        assert f"jfb.{name}" in API and hasattr(jfb, name)
