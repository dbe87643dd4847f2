"""One way to extend the library: solvers, backward modes and IFT linear solvers are objects registered by name.

Each kind has one :class:`Registry`. An object is given as an instance, or by name with its options as
keywords or in the same spec string everywhere (TOML, the command line, Python)::

    "anderson:memory=3"        "ift:cg:tol=1e-8:max_iter=100"        "gmres:restart=20"

Parts without ``=`` are positional arguments, ``key=value`` parts keywords; values are read as int, then
float, then kept as text. Names and options are checked against the factory's signature when the object is
built, with the same did-you-mean errors for every kind.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .errors import JfbError, check_new_name, unknown_name

Item = TypeVar("Item")


class Registry(Generic[Item]):
    """Factories of one kind of object (``kind``: how errors name it), each an instance of ``base``."""

    def __init__(self, kind: str, base: type[Item]) -> None:
        self.kind, self.base = kind, base
        self._factories: dict[str, tuple[Callable[..., Item], str]] = {}
        self.version = 0  # counts registrations: what a cache of built objects keys on

    def register(self, name: str, factory: Callable[..., Item], usage: str = "", *, replace: bool = False) -> None:
        """Make ``factory(*args, **options)`` available as ``"name[:arg...][:key=value...]"``.

        ``usage`` is how the name is written in error messages (default: the bare name).
        """
        check_new_name(self.kind, name, self._factories, replace)
        if not callable(factory):
            raise JfbError(f"a {self.kind} factory must be callable (a class or a function), got {factory!r}")
        self._factories[name] = (factory, usage or name)
        self.version += 1

    def names(self) -> tuple[str, ...]:
        return tuple(self._factories)

    def usages(self, where: Callable[[Callable[..., Item]], bool] | None = None) -> tuple[str, ...]:
        """How each registered name is written, e.g. ``neumann:K``; with ``where``, of the factories it accepts."""
        return tuple(usage for factory, usage in self._factories.values() if where is None or where(factory))

    def build(self, spec: str | Item, **options: Any) -> Item:
        """The object ``spec`` names (an instance is returned as it is); JfbError for bad names or options."""
        if isinstance(spec, self.base):
            if options:
                raise JfbError(f"options {sorted(options)} apply to a {self.kind} given by name, not to {spec!r}")
            return spec
        if not isinstance(spec, str):
            raise unknown_name(self.kind, spec, self.usages())
        name, args, keywords = parse_spec(spec)
        if name not in self._factories:
            raise unknown_name(self.kind, name, self.usages())
        factory, usage = self._factories[name]
        keywords |= options
        _check_signature(f"{self.kind} {name!r}", factory, args, keywords, usage)
        try:
            return factory(*args, **keywords)
        except TypeError as error:
            raise JfbError(f"bad {self.kind} {spec!r} ({error}); write it as {usage}") from None
        except JfbError as error:
            raise JfbError(f"bad {self.kind} {spec!r}: {error}") from None


def parse_spec(spec: str) -> tuple[str, list[Any], dict[str, Any]]:
    """``"ift:cg:tol=1e-8"`` -> ``("ift", ["cg"], {"tol": 1e-8})``."""
    name, *parts = spec.split(":")
    args = [parse_value(part) for part in parts if "=" not in part]
    keywords = {key: parse_value(value) for key, _, value in (part.partition("=") for part in parts if "=" in part)}
    return name, args, keywords


def parse_value(text: str) -> Any:
    """``text`` as the number it spells (``"12"``: 12, ``"1e-8"``: 1e-8), else the text itself."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _check_signature(what: str, factory: Callable, args: list[Any], keywords: dict[str, Any], usage: str) -> None:
    """Unknown keywords (with the closest valid one) and too many positional arguments, before the call."""
    try:
        parameters = _parameters(factory)
    except TypeError:  # an unhashable callable object
        parameters = _parameters.__wrapped__(factory)
    if parameters is None:  # a builtin without a signature: the call itself will say
        return
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return
    valid = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in keywords:
        if key not in valid:
            if not valid:
                raise JfbError(f"{what} takes no options, got {key!r}")
            raise unknown_name(f"option of {what}", key, valid)
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(args) > len(positional) and not any(p.kind is p.VAR_POSITIONAL for p in parameters):
        raise JfbError(f"{what} takes at most {len(positional)} positional options, got {args}; write it as {usage}")


@functools.lru_cache(maxsize=256)
def _parameters(factory: Callable) -> tuple[inspect.Parameter, ...] | None:
    """The factory's parameters, read once: ``inspect.signature`` costs more than a small solve's iterations."""
    try:
        return tuple(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        return None
