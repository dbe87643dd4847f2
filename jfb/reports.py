"""What every experiment and benchmark hands back: rows, a Markdown table, and the files written.

:func:`write_report` writes ``NAME.csv`` and ``NAME.md`` (and ``NAME.png`` through a plotting
function when matplotlib is installed) into one folder; the command line prints the Markdown and,
with ``--json``, the report's :meth:`Report.to_json`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .files import atomic_write_text

Row = dict[str, Any]
MISSING_MATPLOTLIB = "matplotlib is not installed, so no plot was drawn (pip install 'torch-jfb[plot]')"


@dataclass
class Report:
    rows: list[Row]
    markdown: str
    out_dir: Path | None = None
    files: list[Path] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)  # headline numbers besides the rows
    notes: list[str] = field(default_factory=list)  # printed after the table (e.g. a missing plot)

    def text(self) -> str:
        """The Markdown table, notes, and where the files are."""
        lines = [self.markdown.rstrip("\n"), *self.notes]
        if self.out_dir is not None:
            lines.append(
                f"(table, CSV{' and plot' if any(f.suffix == '.png' for f in self.files) else ''} in {self.out_dir})"
            )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {**self.summary, "rows": self.rows, "out": str(self.out_dir), "files": [str(f) for f in self.files]}


def csv_text(rows: Sequence[Row]) -> str:
    """CSV with the columns in first-seen order."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def markdown_table(headers: Sequence[str], cells: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def key_value_table(values: dict[str, Any], number_format: str = ".4g") -> str:
    """A two-column ``quantity | value`` table (floats formatted with ``number_format``)."""
    cells = [(k, format(v, number_format) if isinstance(v, float) else v) for k, v in values.items()]
    return markdown_table(["quantity", "value"], cells)


def pyplot() -> Any | None:
    """Headless matplotlib.pyplot, or None when matplotlib is not installed (plots are an optional extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Lay ``fig`` out, write it to ``path`` (PNG, 100 dpi) and close it (pyplot keeps open figures alive)."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot().close(fig)


def write_report(
    out_dir: Path,
    name: str,
    rows: list[Row],
    markdown: str,
    plot: Callable[[Any, Path], None] | None = None,
    summary: dict[str, Any] | None = None,
) -> Report:
    """Write ``name``.csv/.md (and ``name``.png with ``plot(pyplot, path)``) into ``out_dir``."""
    out_dir = Path(out_dir)
    report = Report(rows, markdown, out_dir, summary=dict(summary or {}))
    for suffix, text in ((".csv", csv_text(rows)), (".md", markdown)):
        atomic_write_text(out_dir / f"{name}{suffix}", text)
        report.files.append(out_dir / f"{name}{suffix}")
    if plot is not None:
        plt = pyplot()
        if plt is None:
            report.notes.append(MISSING_MATPLOTLIB)
        else:
            plot(plt, out_dir / f"{name}.png")
            report.files.append(out_dir / f"{name}.png")
    return report
