"""Imports point one way: the core never loads models, data, train, cli or experiments."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "jfb"
CORE = [
    "layer.py",
    "equilibrium.py",
    "failures.py",
    "binding.py",
    "registry.py",
    "deprecation.py",
    "frozen.py",
    "contraction.py",
    "safe_load.py",
    "solvers",
    "backward",
    "looped",
]
SHARED = ["files.py", "reports.py", "settings.py", "state.py", "status.py", "errors.py"]  # helpers any room may use
OUTER = ("models", "data", "train", "workloads", "cli", "experiments", "benchmarks")


def _relative_imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            names.append((node.module or "").split(".")[0])
    return names


def test_core_modules_do_not_import_outer_layers():
    for entry in CORE + SHARED:
        for path in [PACKAGE / entry] if entry.endswith(".py") else sorted((PACKAGE / entry).glob("*.py")):
            bad = [m for m in _relative_imports(path) if m in OUTER]
            assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


def test_data_knows_no_model():
    for path in sorted((PACKAGE / "data").glob("*.py")):
        assert not [m for m in _relative_imports(path) if m in ("models", "train", "cli", "layer")], path


def test_import_jfb_stays_light():
    code = "import sys, jfb; print(sorted(m for m in sys.modules if m.startswith('jfb.')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for outer in OUTER:
        assert f"'jfb.{outer}" not in loaded


def test_import_jfb_needs_torch_and_numpy_only():
    """Beyond what torch and numpy load themselves (torch imports tqdm when it is installed), ``import jfb``
    loads no third-party package."""
    code = (
        "import sys, numpy, torch; before = {m.split('.')[0] for m in sys.modules}; import jfb; "
        "print(sorted({m.split('.')[0] for m in sys.modules} - before - set(sys.stdlib_module_names) - {'jfb'}))"
    )
    added = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert added == "[]"


def test_workloads_sit_below_the_commands_and_benchmarks():
    for path in sorted((PACKAGE / "workloads").glob("*.py")):
        bad = [m for m in _relative_imports(path) if m in ("cli", "experiments", "benchmarks")]
        assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


def test_torchdeq_is_imported_in_one_place_only_and_lazily():
    """torchdeq is for side-by-side benchmarks, never a dependency: one module, inside a function."""
    importers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            module = node.module or "" if isinstance(node, ast.ImportFrom) and not node.level else ""
            if any(n.startswith("torchdeq") for n in names) or module.startswith("torchdeq"):
                importers.append((path.relative_to(PACKAGE).as_posix(), node.col_offset))
    assert importers == [("benchmarks/torchdeq_engine.py", 8)]  # indented: inside a function


def _module_imports() -> dict[str, set[str]]:
    """``jfb.a.b -> {jfb modules it imports at module level}`` (imports inside functions are lazy on purpose)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = parts[:-1]
        found = graph.setdefault(name, set())
        for node in ast.parse(path.read_text()).body:
            nodes = [node, *getattr(node, "body", [])] if isinstance(node, ast.If) else [node]  # TYPE_CHECKING blocks
            for item in nodes:
                if isinstance(item, ast.ImportFrom) and item.level:
                    base = package[: len(package) - item.level + 1]
                    target = ".".join([*base, *([item.module] if item.module else [])])
                    found.update({target} | {f"{target}.{a.name}" for a in item.names})
    return {name: {t for t in targets if t in graph and t != name} for name, targets in graph.items()}


def test_no_import_circle_in_the_package():
    graph = _module_imports()
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1 and not name.startswith(target + "."):  # a package's own __init__ is no circle
                cycle = trail[trail.index(target) :] if target in trail else [target, name]
                raise AssertionError(f"import circle: {' -> '.join([*cycle, target])}")
            if target not in state:
                visit(target, [*trail, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_modules_and_functions_stay_short():
    """No module of the package over 300 lines, no function over 60."""
    long_modules, long_functions = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > 300:
            long_modules.append(path.relative_to(PACKAGE).as_posix())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 60:
                long_functions.append(f"{path.relative_to(PACKAGE).as_posix()}:{node.name}")
    assert not long_modules and not long_functions, (long_modules, long_functions)
