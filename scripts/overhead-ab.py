#!/usr/bin/env python3
"""The cost of an iteration at two commits, side by side: ``jfb bench overhead``'s measurement (public API only, so
the same file runs against either) from a worktree of BASE and from this checkout, alternating, ROUNDS times each.

usage: scripts/overhead-ab.py BASE_COMMIT OUT [ROUNDS]

Writes OUT/base-R/ and OUT/head-R/ (each run's overhead.csv) and OUT/ab.csv: per size and way, the median over the
rounds of each side's microseconds per iteration and of its ratio to the bare loop measured in the same run.
"""

from __future__ import annotations

import csv
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = "from jfb.benchmarks.overhead import OverheadBenchSettings as S, overhead_table as t; t(S(out={out!r}))"


def _run(tree: Path, out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run([sys.executable, "-c", BENCH.format(out=str(out))], cwd=tree, env=env, check=True)


def _combine(out: Path, rounds: int) -> None:
    values: dict[tuple[str, str, str], dict[str, list[float]]] = {}
    for side in ("base", "head"):
        for r in range(1, rounds + 1):
            for row in csv.DictReader((out / f"{side}-{r}" / "overhead.csv").open()):
                cell = values.setdefault((row["size"], row["way"], side), {"us": [], "ratio": []})
                cell["us"].append(float(row["us_per_iteration"]))
                cell["ratio"].append(float(row["vs_bare"]))
    with (out / "ab.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["size", "way", "side", "us_per_iteration", "vs_bare", "rounds"])
        for (size, way, side), cell in values.items():
            us, ratio = statistics.median(cell["us"]), statistics.median(cell["ratio"])
            writer.writerow([size, way, side, f"{us:.2f}", f"{ratio:.3f}", len(cell["us"])])


def main() -> None:
    base, out, rounds = sys.argv[1], Path(sys.argv[2]).resolve(), int(sys.argv[3]) if len(sys.argv) > 3 else 3
    out.mkdir(parents=True, exist_ok=True)
    tree = Path(tempfile.mkdtemp()) / "base"
    subprocess.run(["git", "worktree", "add", "-q", "--detach", str(tree), base], cwd=ROOT, check=True)
    try:
        shutil.copy(ROOT / "jfb" / "benchmarks" / "overhead.py", tree / "jfb" / "benchmarks" / "overhead.py")
        for r in range(1, rounds + 1):
            _run(tree, out / f"base-{r}")
            _run(ROOT, out / f"head-{r}")
        _combine(out, rounds)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
