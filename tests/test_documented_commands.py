"""Every shell command of the README and the docs' pages (their bash blocks; the results pages record how their
numbers were measured, by the scripts they name) runs here at a tiny budget, or is listed in :data:`NOT_RUN` with
why it cannot run here and what covers it. A new command in the docs fails this test until it is one or the other.

The budget is shrunk by flags appended after the documented ones (the last value of a flag wins): a workload's
smoke size (``Workload.smoke``, a few steps), and for the benchmarks their smallest settings. Commands run in
order, page by page, in one scratch folder, so a page's sequence (train, resume, evaluate) runs as written.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from jfb.workloads import WORKLOADS

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md") if "results" not in p.parts)]

#: a pattern of each command that cannot run here: why, and what covers it
NOT_RUN = {
    r"python3 -m venv \.venv": "the quick start's set-up: .ci/run runs it from a fresh clone (tests/test_extras.py)",
    r"^pip install": "installation: .ci/run and tests/test_release.py install the package into fresh environments",
    r"--device cuda|-m cuda": "needs a GPU: scripts/device-check.sh on a lent GPU machine (tests/test_device_check.py)",
    r"^scripts/device-check\.sh": "needs a GPU: its dry run is tests/test_device_check.py",
    r"--nnodes|srun|scontrol": "several nodes or SLURM: the same code path as one node (tests/test_distributed.py)",
}


def _smoke_flags(name: str) -> list[str]:
    flags = []
    for key, value in {**WORKLOADS[name].smoke, "steps": 4}.items():
        flags += [f"--{key.replace('_', '-')}", ",".join(map(str, value)) if isinstance(value, tuple) else str(value)]
    return flags


#: flags appended to a command (by its first words) to make it take seconds
TINY = {
    **{f"train {name}": _smoke_flags(name) for name in WORKLOADS},
    "bench zoo": ["--smoke", "--steps", "4"],
    "bench generate": ["--lengths", "8", "--repeats", "1", "--long-context", "32"],
    "export mnist-default": ["--limit-test", "200"],
}


def documented_lines() -> list[tuple[str, str]]:
    """(page, command) for every command line of a bash block, continuations joined, comments dropped."""
    found = []
    for page in PAGES:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                command = line.split(" #")[0].strip()
                if command and not command.startswith("#"):
                    found.append((str(page.relative_to(ROOT)), command))
    return found


def _not_run(command: str) -> str | None:
    return next((why for pattern, why in NOT_RUN.items() if re.search(pattern, command)), None)


def _runnable(command: str) -> list[str]:
    """The argv of a ``jfb ...`` command with its tiny budget appended (the flags it does not set itself)."""
    words = shlex.split(command)
    assert words[0] == "jfb", f"a documented command that is neither run nor listed in NOT_RUN: {command}"
    tiny = next((flags for prefix, flags in TINY.items() if " ".join(words[1:3]).startswith(prefix)), [])
    pairs = [tiny[i : i + 2] if i + 1 < len(tiny) and not tiny[i + 1].startswith("--") else tiny[i : i + 1]
             for i in range(len(tiny)) if tiny[i].startswith("--")]  # fmt: skip
    extra = [word for pair in pairs if pair[0] not in words for word in pair]
    return [sys.executable, "-m", "jfb", *words[1:], *extra, "--no-progress"]


def test_every_documented_command_is_run_or_listed_with_why_not(tmp_path):
    lines = documented_lines()
    assert len(lines) >= 20
    ran = []
    for page, command in lines:
        if _not_run(command):
            continue
        argv = _runnable(command)
        done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{page}: {command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        ran.append(command)
    assert "jfb demo" in ran and len(ran) >= 8, ran
    demo = [json.loads(line) for line in (tmp_path / "runs" / "demo" / "metrics.jsonl").read_text().splitlines()]
    assert demo[-1]["test_acc"] > 99.0  # the quick start's promise, at its full (3-epoch) budget


def test_the_list_of_commands_not_run_names_no_pattern_that_matches_nothing():
    lines = [command for _, command in documented_lines()]
    assert all(any(re.search(pattern, c) for c in lines) for pattern in NOT_RUN), NOT_RUN
