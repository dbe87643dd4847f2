"""Typed settings of the library functions behind each command.

Each command's options are one dataclass whose fields carry their help text (and, where a plain
type does not say it, choices or a positional flag); :mod:`jfb.cli` generates the flags from them.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, field, fields
from typing import Any

from .errors import JfbError, unknown_name

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


#: the largest integer a setting takes: a value beyond it is a typo or an overflow, never a plan
LARGEST_INTEGER = 2**31 - 1


def check_types(settings: Any, skip: tuple[str, ...] = ()) -> None:
    """JfbError naming the first field of the dataclass ``settings`` whose value is not of its annotated type
    (before any comparison); the fields in ``skip`` check themselves."""
    hints = typing.get_type_hints(type(settings))
    for f in fields(settings):
        value, hint = getattr(settings, f.name), hints[f.name]
        if f.name in skip or _of_type(value, hint):
            continue
        raise JfbError(f"{f.name} must be {_type_words(hint)}, got {value!r}")


def check_ranges(settings: Any, checks: list[tuple[bool, str, str]]) -> None:
    """JfbError for the first ``(holds, field, what is allowed)`` that does not hold: ``NAME must be ..., got ...``."""
    for holds, name, requirement in checks:
        if not holds:
            raise JfbError(f"{name} must be {requirement}, got {getattr(settings, name)!r}")


def check_choices(settings: Any, choices: list[tuple[str, Sequence[str]]]) -> None:
    """JfbError for the first ``(field, allowed names)`` whose value is not one of them, with a did-you-mean."""
    for name, allowed in choices:
        if getattr(settings, name) not in allowed:
            raise unknown_name(name, getattr(settings, name), allowed)


def _of_type(value: Any, hint: Any) -> bool:
    kinds = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        return type(None) in kinds
    return any(_of_kind(value, kind) for kind in kinds)


def _of_kind(value: Any, kind: Any) -> bool:
    if isinstance(value, bool) or kind is bool:
        return kind is bool and isinstance(value, bool)
    if isinstance(value, int) and kind in (int, float):
        return abs(value) <= LARGEST_INTEGER
    if kind is float:
        return isinstance(value, float)
    if typing.get_origin(kind) is tuple:
        item_kind = (typing.get_args(kind) or (str,))[0]
        return isinstance(value, (tuple, list)) and all(_of_kind(item, item_kind) for item in value)
    return isinstance(value, kind)


def _type_words(hint: Any) -> str:
    words = {bool: "true or false", int: f"an integer (at most {LARGEST_INTEGER})", float: "a number", str: "a string"}
    kinds = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    named = [words.get(kind, _list_words(kind)) for kind in kinds if kind is not type(None)]
    return " or ".join(named) + (' or "none"' if type(None) in kinds else "")


def _list_words(kind: Any) -> str:
    item = (typing.get_args(kind) or (str,))[0]
    return {str: "a list of names", int: "a list of integers", float: "a list of numbers"}.get(item, "a list")
