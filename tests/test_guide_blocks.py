"""Every Python block of the guides runs as pasted: each page's blocks in order, in a fresh interpreter."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

GUIDES = sorted((Path(__file__).resolve().parents[1] / "docs" / "guide").glob("*.md"))
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text())


def test_the_guides_have_python_blocks():
    assert sum(len(_blocks(page)) for page in GUIDES) >= 3


@pytest.mark.parametrize("page", [p for p in GUIDES if _blocks(p)], ids=lambda p: p.name)
def test_every_python_block_of_a_guide_runs_as_pasted(page: Path):
    code = "\n".join(_blocks(page))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
