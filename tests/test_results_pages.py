"""Results pages quote their committed files: every number of a page's table is the one in its CSV."""

from __future__ import annotations

import csv
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def _table_rows(page: Path) -> list[list[str]]:
    rows = []
    for line in page.read_text().splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_the_workloads_table_is_zoo_csv():
    page_rows = {(r[0], r[1]): r for r in _table_rows(RESULTS / "workloads" / "README.md") if len(r) == 9}
    measured = list(csv.DictReader((RESULTS / "workloads" / "zoo.csv").open()))
    assert len(measured) == 15
    for row in measured:
        cells = page_rows[row["workload"], row["engine"]]
        for cell, key, decimals in (
            (3, "value", 3),
            (4, "ms_per_step", 1),
            (5, "time_vs_first", 2),
            (7, "saved_mib", 1),
        ):
            assert _rounded_from(cells[cell], row[key], decimals), (row["workload"], row["engine"], key)
        assert float(cells[8]) == float(row["final_train_loss"])


def _rounded_from(shown: str, measured: str, decimals: int) -> bool:
    """``shown`` is ``measured`` rounded to ``decimals`` places (either way at a tie)."""
    return abs(float(shown) - float(measured)) <= 0.5 * 10**-decimals + 1e-9
