"""Typed settings of the library functions behind each command.

Each command's options are one dataclass whose fields carry their help text (and, where a plain
type does not say it, choices or a positional flag); :mod:`jfb.cli` generates the flags from them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import MISSING, field
from typing import Any


def setting(
    default: Any = MISSING,
    help: str = "",
    *,
    positional: bool = False,
    choices: Sequence[str] | None = None,
    hidden: bool = False,
) -> Any:
    """A dataclass field with its command-line help; no default makes it required, ``hidden`` keeps it out of --help."""
    metadata = {
        "help": help,
        "positional": positional,
        "choices": tuple(choices) if choices else None,
        "hidden": hidden,
    }
    return field(default=default, metadata=metadata)
