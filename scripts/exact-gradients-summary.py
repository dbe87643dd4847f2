"""Summarise ``jfb bench zoo`` runs of several seeds: per workload and engine, the metric's mean and range, the mean
ms per step and its mean ratio to the first engine (each seed's ratio taken within its own interleaved run), and
the mean number of steps whose backward linear solve missed its tolerance. Only the engines every run has are
summarised (a seed run beside more engines contributes the shared ones). ``--case givens=34,max_iter=256`` takes the
metric from one test case of each run's ``zoo-cases.csv`` instead of the workload's own (its hardest case).

Usage: python scripts/exact-gradients-summary.py OUT.csv RUN_DIR [RUN_DIR ...] [--case KEY=VALUE,...]
(each RUN_DIR holds a zoo.csv, and a zoo-cases.csv for --case)
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

from jfb.reports import csv_text


def summary(runs: list[Path], case: dict[str, str] | None = None) -> list[dict[str, object]]:
    per_run = [_run_rows(run, case) for run in runs]
    shared = set.intersection(*({(row["workload"], row["engine"]) for row in rows} for rows in per_run))
    rows = [row for rows in per_run for row in rows]
    keys = [key for key in dict.fromkeys((row["workload"], row["engine"]) for row in rows) if key in shared]
    out = []
    for workload, engine in keys:
        mine = [row for row in rows if (row["workload"], row["engine"]) == (workload, engine)]
        values = [float(row["value"]) for row in mine]
        out.append(
            {
                "workload": workload,
                "engine": engine,
                "seeds": len(mine),
                "metric": mine[0]["metric"],
                "mean": round(statistics.mean(values), 4),
                "min": round(min(values), 4),
                "max": round(max(values), 4),
                "ms_per_step": round(statistics.mean(float(row["ms_per_step"]) for row in mine), 1),
                "time_vs_first": round(statistics.mean(float(row["time_vs_first"]) for row in mine), 2),
                "backward_misses": round(statistics.mean(int(row["backward_misses"]) for row in mine), 1),
            }
        )
    return out


def _run_rows(run: Path, case: dict[str, str] | None) -> list[dict[str, str]]:
    """A run's ``zoo.csv`` rows, their metric replaced by ``case``'s accuracy when one is given."""
    rows = list(csv.DictReader((run / "zoo.csv").open()))
    if case is None:
        return rows
    cases = list(csv.DictReader((run / "zoo-cases.csv").open()))
    for row in rows:
        found = [c for c in cases if c["engine"] == row["engine"] and all(c.get(k) == v for k, v in case.items())]
        if len(found) != 1:
            raise SystemExit(f"{run}: {len(found)} test cases of {row['engine']} match {case} (need exactly one)")
        row["value"] = found[0]["accuracy"]
        row["metric"] = "accuracy at " + ", ".join(f"{k}={v}" for k, v in case.items())
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--case", help="KEY=VALUE,... : one test case of zoo-cases.csv (default: the hardest case)")
    args = parser.parse_args()
    case = dict(item.split("=", 1) for item in args.case.split(",")) if args.case else None
    rows = summary(args.runs, case)
    args.out.write_text(csv_text(rows))
    print("| workload | engine | seeds | mean | range | ms/step | vs first | bwd misses |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['workload']} | `{r['engine']}` | {r['seeds']} | {r['mean']:.3f} | {r['min']:.3f}-{r['max']:.3f} | "
            f"{r['ms_per_step']} | {r['time_vs_first']:.2f} | {r['backward_misses']} |"
        )


if __name__ == "__main__":
    main()
