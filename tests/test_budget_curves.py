"""Test-time compute curves: one line per problem size in numeric order, and the zoo's per-engine figures redrawn
from its CSV (numbers read back as text)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from jfb.benchmarks.zoo import plot_zoo_cases
from jfb.workloads import get_workload

plt = pytest.importorskip("matplotlib.pyplot")
ROOT = Path(__file__).resolve().parent.parent


def _cases() -> list[dict[str, str]]:
    """Zoo cases as ``zoo-cases.csv`` holds them: mazes and chains (which draws no curves), text cells."""
    rows = [
        {"workload": "mazes", "engine": engine, "cells": str(cells), "max_iter": str(budget), "length": ""}
        | {"accuracy": str(round(cells / (cells + budget), 3)), "iterations": str(budget)}
        for engine in ("jfb", "ift")
        for cells in (12, 4, 8)
        for budget in (30, 60)
    ]
    return [*rows, {"workload": "chains", "engine": "jfb", "cells": "", "max_iter": "", "length": "20"}]


def test_curves_draw_one_line_per_size_in_numeric_order():
    curves = get_workload("mazes").curves
    fig, ax = plt.subplots()
    curves.draw(ax, [{"cells": c, "max_iter": b, "accuracy": b / 100} for c in (12, 4, 8) for b in (30, 60, 120)])
    assert [line.get_label() for line in ax.lines] == ["4 cells a side", "8 cells a side", "12 cells a side"]
    assert list(ax.lines[0].get_xdata()) == [30, 60, 120] and ax.get_xscale() == "log"
    assert [tick.get_text() for tick in ax.get_xticklabels()] == ["30", "60", "120"]  # the budgets, not powers of 10
    plt.close(fig)


def test_zoo_figures_are_drawn_per_workload_with_curves_from_the_csv(tmp_path, monkeypatch):
    panels: list[tuple[str, list[str]]] = []
    original = plt.Figure.savefig

    def record(fig, path, **kwargs):
        panels.append((Path(path).name, [ax.get_title() for ax in fig.axes]))
        lines = fig.axes[0].lines
        assert [line.get_label() for line in lines] == ["4 cells a side", "8 cells a side", "12 cells a side"]
        assert list(lines[2].get_ydata()) == [0.286, 0.167]  # the 12-cell line: numbers, not text
        return original(fig, path, **kwargs)

    monkeypatch.setattr(plt.Figure, "savefig", record)
    written = plot_zoo_cases(tmp_path, _cases())
    assert written == [tmp_path / "zoo-mazes.png"] and panels == [("zoo-mazes.png", ["jfb", "ift"])]
    assert written[0].read_bytes()[:4] == b"\x89PNG"


def test_the_script_redraws_a_zoo_folders_plots(tmp_path):
    with (tmp_path / "zoo-cases.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(_cases()[0]))
        writer.writeheader()
        writer.writerows(_cases())
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "zoo-plot.py"), str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(tmp_path / "zoo-mazes.png")]
    assert (tmp_path / "zoo-mazes.png").stat().st_size > 1000
