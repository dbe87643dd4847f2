"""What the library raises and warns.

:class:`JfbError` is the one type for bad input (options, shapes, files): the CLI prints it as one
line and exits with status 2. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Container, Iterable


class JfbError(ValueError):
    """Bad input: an invalid option, a shape mismatch, an unreadable or untrusted file."""


class StorageError(RuntimeError):
    """A file could not be written (a full disk, a quota, a vanished folder): training stops with exit
    status 1, and the files written before are intact (every write goes to a temporary file first)."""


class FixedPointError(RuntimeError):
    """Raised (with ``on_failure="raise"``) when a forward solve diverges, produces non-finite values or
    stops at ``max_iter`` without meeting its tolerance, or a backward linear solve misses its tolerance."""


class ConvergenceWarning(RuntimeWarning):
    """Warned (with ``on_failure="warn"``) in the cases :class:`FixedPointError` is raised for; a tolerance not
    reached is warned once per layer and call site (a training run is told once, not every step)."""


def unknown_name(kind: str, name: object, choices: Iterable[str]) -> JfbError:
    """``unknown KIND 'NAME'; choose one of A, B`` with the closest choice suggested."""
    choices = list(choices)
    close = difflib.get_close_matches(str(name), choices, n=1) or [c for c in choices if str(name).startswith(c)][:1]
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return JfbError(f"unknown {kind} {name!r}; choose one of {', '.join(choices)}{hint}")


def check_new_name(kind: str, name: object, registry: Container[str], replace: bool) -> None:
    """JfbError unless ``name`` can be registered as a ``kind``: a non-empty string without ':'
    (names are followed by ``:options`` in specs), not taken unless ``replace``."""
    if not isinstance(name, str) or not name or ":" in name:
        raise JfbError(f"a {kind} name must be a non-empty string without ':', got {name!r}")
    if name in registry and not replace:
        raise JfbError(f"a {kind} named {name!r} is registered already; pass replace=True to replace it")
