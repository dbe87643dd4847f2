"""The README's Python API example runs and does what it says."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
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


def test_the_readme_is_short_and_its_links_resolve():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (README.parent / target).exists(), target


def _documented_commands() -> list[str]:
    """Every ``jfb ...`` command in the bash blocks of the README and the guides (continuations joined)."""
    pages = [README, *sorted((README.parent / "docs" / "guide").glob("*.md"))]
    commands = []
    for page in pages:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
                lexer.whitespace_split = True
                for words in _split_on(list(lexer), ("&&", ";", "|", "||")):
                    if "jfb" in words and words[0] in ("jfb", "torchrun", "srun", "python", "python3"):
                        commands.append(shlex.join(words[words.index("jfb") + 1 :]))
    return commands


def _split_on(tokens: list[str], separators: tuple[str, ...]) -> list[list[str]]:
    parts: list[list[str]] = [[]]
    for token in tokens:
        if token in separators:
            parts.append([])
        else:
            parts[-1].append(token)
    return [p for p in parts if p]


def test_every_documented_command_parses():
    from jfb.cli.main import _route_workloads, build_parser

    commands = _documented_commands()
    assert len(commands) >= 12
    parser = build_parser()
    for command in commands:
        try:
            parser.parse_args(_route_workloads(shlex.split(command)))
        except SystemExit as exc:
            raise AssertionError(f"documented command does not parse: jfb {command}") from exc
