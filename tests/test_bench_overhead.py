"""``jfb bench overhead``: the ways it times solve the same problem with the same number of evaluations of T."""

from __future__ import annotations

import csv

import pytest
import torch

import jfb
from jfb.benchmarks.overhead import (
    MARGINAL_WAYS,
    WAYS,
    OverheadBenchSettings,
    _ways,
    median_ms_interleaved,
    overhead_table,
    tanh_problem,
)


def test_every_way_computes_the_same_fixed_point_in_as_many_evaluations():
    T, x = tanh_problem(10, 3)
    with torch.no_grad():
        solved = jfb.fixed_point(T, x, solver="picard", tol=1e-6, max_iter=100, stop_mode="abs")
        evaluations = solved.stats.t_evals
        ways = _ways(T, x, 1e-6, evaluations)
        results = {name: call() for name, call in ways.items()}
    values = {name: r.value if isinstance(r, jfb.Equilibrium) else r for name, r in results.items()}
    for name in WAYS:
        assert torch.allclose(values[name], solved.value, atol=1e-6), name
    assert results["fixed_depth"].stats.t_evals == evaluations == int(solved.stats.iterations.max())


def test_interleaved_timing_warms_up_once_and_times_each_call_in_groups():
    counts = {"a": 0, "b": 0}
    ms = median_ms_interleaved({k: (lambda k=k: counts.__setitem__(k, counts[k] + 1)) for k in counts}, 4, group=3)
    assert counts == {"a": 15, "b": 15} and set(ms) == {"a", "b"} and all(v >= 0 for v in ms.values())


def test_the_report_has_every_way_of_every_size_against_its_own_bare_loop(tmp_path):
    settings = OverheadBenchSettings(out=str(tmp_path / "o"), sizes=("10x1", "6x3"), repeats=2, calls=1, depths=(2, 5))
    report = overhead_table(settings, log=lambda *_: None)
    rows = list(csv.DictReader((tmp_path / "o" / "overhead.csv").open()))
    ways = [*WAYS, *(f"{w}, one more iteration" for w in MARGINAL_WAYS)]
    assert [(r["size"], r["way"]) for r in rows] == [(s, w) for s in ("10x1", "6x3") for w in ways]
    assert all(float(r["vs_bare"]) == 1.0 for r in rows if r["way"].startswith("bare_loop"))
    assert {r["iterations"] for r in rows if r["size"] == "10x1" and "more" in r["way"]} == {"2-5"}
    assert len({r["iterations"] for r in rows if r["size"] == "10x1" and "more" not in r["way"]}) == 1
    assert "| 10x1 | fixed_point |" in report.markdown


@pytest.mark.parametrize("depths", [(5,), (5, 5), (0, 3), (6, 2)])
def test_depths_that_give_no_slope_are_refused(depths):
    with pytest.raises(jfb.JfbError, match="--depths"):
        OverheadBenchSettings(depths=depths)


@pytest.mark.parametrize("size", ["10", "0x3", "ax2", "3x4x5"])
def test_a_malformed_size_is_refused_in_one_line_before_any_work(size, tmp_path):
    with pytest.raises(jfb.JfbError, match="DIMxBATCH"):
        overhead_table(OverheadBenchSettings(out=str(tmp_path / "o"), sizes=(size,)))
    assert not (tmp_path / "o").exists()
