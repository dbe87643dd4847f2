"""Summarise ``jfb bench zoo`` runs of several seeds: per workload and engine, the metric's mean and range, the mean
ms per step and its mean ratio to the first engine (each seed's ratio taken within its own interleaved run), and
the mean number of steps whose backward linear solve missed its tolerance.

Usage: python scripts/exact-gradients-summary.py OUT.csv RUN_DIR [RUN_DIR ...]   (each RUN_DIR holds a zoo.csv)
"""

from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path

from jfb.reports import csv_text


def summary(runs: list[Path]) -> list[dict[str, object]]:
    rows = [row for run in runs for row in csv.DictReader((run / "zoo.csv").open())]
    keys = list(dict.fromkeys((row["workload"], row["engine"]) for row in rows))
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


def main() -> None:
    rows = summary([Path(arg) for arg in sys.argv[2:]])
    Path(sys.argv[1]).write_text(csv_text(rows))
    print("| workload | engine | seeds | mean | range | ms/step | vs first | bwd misses |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['workload']} | `{r['engine']}` | {r['seeds']} | {r['mean']:.3f} | {r['min']:.3f}-{r['max']:.3f} | "
            f"{r['ms_per_step']} | {r['time_vs_first']:.2f} | {r['backward_misses']} |"
        )


if __name__ == "__main__":
    main()
