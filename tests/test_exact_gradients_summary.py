"""The seed summary behind the exact-gradients tables: only the engines every seed ran, the mean ratio of each
seed's own interleaved run, and a metric taken from one test case on request."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from modules import from_file

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "exact-gradients-summary.py"
ZOO = ["workload", "engine", "metric", "value", "ms_per_step", "backward_misses", "time_vs_first"]


def _write(path: Path, rows: list[dict[str, object]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _run(folder: Path, engines: dict[str, tuple[float, float, float]]) -> Path:
    """A zoo run: per engine (hardest-case accuracy, ms per step, accuracy at givens=34), JFB first."""
    folder.mkdir()
    first = engines["jfb"][1]
    zoo = [
        dict(zip(ZOO, ["sudoku", name, "hardest_accuracy", hard, ms, 7, round(ms / first, 3)], strict=True))
        for name, (hard, ms, _) in engines.items()
    ]
    cases = [
        {"workload": "sudoku", "engine": name, "givens": givens, "max_iter": 256, "accuracy": value, "iterations": 9}
        for name, (hard, _, easy) in engines.items()
        for givens, value in ((34, easy), (26, hard))
    ]
    _write(folder / "zoo.csv", zoo)
    _write(folder / "zoo-cases.csv", cases)
    return folder


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    seed0 = {"jfb": (0.0, 100.0, 0.15), "unroll": (0.2, 230.0, 0.85), "ift": (0.02, 330.0, 0.58)}
    seed1 = {"jfb": (0.0, 110.0, 0.25), "ift": (0.04, 330.0, 0.62)}
    return [_run(tmp_path / "seed0", seed0), _run(tmp_path / "seed1", seed1)]


def _module():
    return from_file(SCRIPT)


def test_only_the_engines_of_every_seed_are_summarised_with_each_seeds_own_ratio(runs):
    rows = _module().summary(runs)
    assert [r["engine"] for r in rows] == ["jfb", "ift"]  # unroll ran beside seed 0 only
    ift = rows[1]
    assert ift["seeds"] == 2 and ift["mean"] == pytest.approx(0.03) and (ift["min"], ift["max"]) == (0.02, 0.04)
    assert ift["ms_per_step"] == 330.0 and ift["time_vs_first"] == pytest.approx((3.3 + 3.0) / 2, abs=0.01)


def test_a_named_test_case_gives_the_metric(runs, tmp_path):
    out = tmp_path / "summary.csv"
    command = [sys.executable, str(SCRIPT), str(out), *map(str, runs), "--case", "givens=34,max_iter=256"]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(out.open()))
    assert [(r["engine"], float(r["mean"])) for r in rows] == [("jfb", 0.2), ("ift", 0.6)]
    assert rows[0]["metric"] == "accuracy at givens=34, max_iter=256"
    assert "| sudoku | `ift` | 2 | 0.600 | 0.580-0.620 | 330.0 |" in done.stdout


def test_a_case_that_does_not_name_one_test_case_is_refused(runs):
    with pytest.raises(SystemExit, match=r"2 test cases of jfb match \{'max_iter': '256'\} \(need exactly one\)"):
        _module().summary(runs, {"max_iter": "256"})
