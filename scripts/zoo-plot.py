"""Redraw the plots of a ``jfb bench zoo`` run from its ``zoo-cases.csv``: ``zoo-WORKLOAD.png`` for each workload
with test-time compute curves, one panel per engine (what the zoo draws itself; for runs made before it drew them).

Usage: python scripts/zoo-plot.py ZOO_DIR
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from jfb.benchmarks.zoo import plot_zoo_cases


def main() -> None:
    folder = Path(sys.argv[1])
    with (folder / "zoo-cases.csv").open(newline="") as handle:
        cases = list(csv.DictReader(handle))
    for path in plot_zoo_cases(folder, cases):
        print(path)


if __name__ == "__main__":
    main()
