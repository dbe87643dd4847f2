"""Command-line flags generated from dataclass fields: one way to declare every option.

A field's type gives the flag's parser (``bool`` -> ``--x/--no-x``; ``tuple[int, ...]`` ->
comma-separated; ``dict`` -> ``KEY=VALUE,...`` parsed as TOML values; ``X | None`` -> X), its
metadata (:func:`jfb.settings.setting`) the help text, choices and whether it is positional.
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
import types
import typing
from collections.abc import Callable
from typing import Any


def add_flags(parser: argparse.ArgumentParser, cls: type, overlay: bool = False) -> None:
    """One flag per field of ``cls``; with ``overlay`` every default is None (meaning "not given")."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        kind = _without_none(hints[f.name])
        options: dict[str, Any] = {"help": argparse.SUPPRESS if meta.get("hidden") else meta.get("help") or None}
        if meta.get("choices"):
            options["choices"] = meta["choices"]
        if meta.get("positional") and not overlay:
            parser.add_argument(f.name, type=_parser(kind), **options)
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if overlay or required else (f.default if f.default is not dataclasses.MISSING else None)
        flag = "--" + f.name.replace("_", "-")
        if default is not None and kind is not bool and options["help"] is not argparse.SUPPRESS:
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            options["help"] = f"{options['help'] or ''} (default: {shown})".lstrip()
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default, **options)
        else:
            metavar = "KEY=VALUE,..." if typing.get_origin(kind) is dict else f.name.upper()
            parser.add_argument(
                flag,
                dest=f.name,
                type=_parser(kind),
                default=default,
                required=required and not overlay,
                metavar=None if "choices" in options else metavar,
                **options,
            )


def values_of(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` that were given (not None) on the command line."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}


def _without_none(kind: Any) -> Any:
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        rest = [k for k in typing.get_args(kind) if k is not type(None)]
        return rest[0] if len(rest) == 1 else str
    return kind


def _parser(kind: Any) -> Callable[[str], Any]:
    origin = typing.get_origin(kind)
    if origin is dict:
        return key_values
    if origin in (tuple, list):
        item = _parser(typing.get_args(kind)[0])
        return lambda text: tuple(item(part) for part in text.split(",") if part)
    return kind if kind in (int, float, str) else str


def key_values(text: str) -> dict[str, Any]:
    """``memory=3,beta=0.9`` -> ``{"memory": 3, "beta": 0.9}`` (numbers parsed as TOML would)."""
    try:
        return tomllib.loads("\n".join(text.split(","))) if text else {}
    except tomllib.TOMLDecodeError:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE,... (e.g. memory=3,beta=0.9), got {text!r}") from None
