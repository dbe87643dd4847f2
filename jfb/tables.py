"""CSV text from a list of dict rows (columns in first-seen order)."""
from __future__ import annotations

import csv
import io
from typing import Any


def csv_text(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
