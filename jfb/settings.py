"""Typed settings of the library functions behind each command.

Each command's options are one dataclass whose fields carry their help text (and, where a plain
type does not say it, choices or a positional flag); :mod:`jfb.cli` generates the flags from them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import MISSING, field
from typing import Any

#: how TOML files and command lines write None where a setting takes it (``tol = "none"``: a fixed depth)
NONE = "none"


def setting(
    default: Any = MISSING,
    help: str = "",
    *,
    positional: bool = False,
    choices: Sequence[str] | None = None,
    hidden: bool = False,
    default_factory: Callable[[], Any] | Any = MISSING,
    flags_of: type | None = None,
    prefix: str = "",
) -> Any:
    """A dataclass field with its command-line help; no default makes it required, ``hidden`` keeps it out of --help.

    ``flags_of``: the field holds the settings of another dataclass (``TrainConfig.solve`` holds a
    ``SolveOptions``); its fields become flags of their own, named ``--{prefix}{field}``.
    """
    metadata = {
        "help": help,
        "positional": positional,
        "choices": tuple(choices) if choices else None,
        "hidden": hidden,
        "flags_of": flags_of,
        "prefix": prefix,
    }
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)
