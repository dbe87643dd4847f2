"""Matplotlib, headless, or None when it is not installed (plots are optional extras)."""
from __future__ import annotations

from typing import Any, Optional


def pyplot() -> Optional[Any]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt
