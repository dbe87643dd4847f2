"""Command-line flags generated from dataclass fields: one way to declare every option.

A field's type gives the flag's parser (``bool`` -> ``--x/--no-x``; ``tuple[int, ...]`` ->
comma-separated; ``dict`` -> ``KEY=VALUE,...`` parsed as TOML values; ``X | None`` -> X), its
metadata (:func:`jfb.settings.setting`) the help text, choices and whether it is positional. A field
that holds another dataclass's settings (``flags_of``) gets one flag per field of that class, named
``--{prefix}{field}``; there ``none`` stands for None (``--tol none``: a fixed depth).
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from ..settings import NONE


def add_flags(parser: argparse.ArgumentParser, cls: type, overlay: bool = False) -> None:
    """One flag per field of ``cls``; with ``overlay`` every default is None (meaning "not given")."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if meta.get("flags_of"):
            _add_nested_flags(parser, f, meta["flags_of"], meta.get("prefix", ""))
            continue
        kind = _without_none(hints[f.name])
        options: dict[str, Any] = {"help": argparse.SUPPRESS if meta.get("hidden") else _help(meta)}
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
            metavar = "KEY=VALUE,..." if typing.get_origin(kind) in (dict, Mapping) else f.name.upper()
            nullable = overlay and type(None) in typing.get_args(hints[f.name])  # "none" clears the target's value
            parser.add_argument(
                flag,
                dest=f.name,
                type=_nullable(_parser(kind)) if nullable else _parser(kind),
                default=default,
                required=required and not overlay,
                metavar=None if "choices" in options else metavar + (f"|{NONE}" if nullable else ""),
                **options,
            )


def _add_nested_flags(parser: argparse.ArgumentParser, holder: dataclasses.Field, cls: type, prefix: str) -> None:
    """``--{prefix}{field}`` for every field of ``cls``, stored as ``{holder}.{field}``; always an overlay."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        kind, nullable = _without_none(hints[f.name]), type(None) in typing.get_args(hints[f.name])
        label = holder.metadata.get("help")
        text = f"{label}: {_help(f.metadata)}" if label else _help(f.metadata)
        options: dict[str, Any] = {"dest": f"{holder.name}.{f.name}", "default": None, "help": text}
        flag = "--" + (prefix + f.name).replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
            continue
        parse = _parser(kind)
        if typing.get_origin(kind) in (dict, Mapping):
            options["metavar"] = "KEY=VALUE,..."
        elif f.metadata.get("choices"):
            options["choices"] = f.metadata["choices"]
        else:
            options["metavar"] = f.name.upper() + (f"|{NONE}" if nullable else "")
        parser.add_argument(flag, type=_nullable(parse) if nullable else parse, **options)


def _nullable(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse``, but ``none`` stays the marker :data:`jfb.settings.NONE` (None itself means "not given")."""
    return lambda text: NONE if text.lower() == NONE else parse(text)


def _help(metadata: Any) -> str | None:
    """The field's help text for argparse (which formats it with %: a literal % is written %%)."""
    return (metadata.get("help") or "").replace("%", "%%") or None


def values_of(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` that were given (not None) on the command line; nested settings as a dict each."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        nested = f.metadata.get("flags_of")
        if nested is None:
            if getattr(args, f.name, None) is not None:
                values[f.name] = getattr(args, f.name)
            continue
        given = {g.name: getattr(args, f"{f.name}.{g.name}", None) for g in dataclasses.fields(nested) if g.init}
        if any(v is not None for v in given.values()):
            values[f.name] = {k: v for k, v in given.items() if v is not None}
    return values


def _without_none(kind: Any) -> Any:
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        rest = [k for k in typing.get_args(kind) if k is not type(None)]
        return rest[0] if len(rest) == 1 else str
    return kind


def _parser(kind: Any) -> Callable[[str], Any]:
    origin = typing.get_origin(kind)
    if origin in (dict, Mapping):
        return key_values
    if origin in (tuple, list):
        item = _parser(typing.get_args(kind)[0])
        return lambda text: tuple(item(part) for part in text.split(",") if part)
    return kind if kind in (int, float, str) else str


def parse_value(kind: Any, text: str) -> Any:
    """``text`` read as a flag of type ``kind`` reads it (``none`` for an optional one)."""
    inner = _without_none(kind)
    if inner is not kind and text.lower() == "none":
        return None
    return _parser(inner)(text)


def key_values(text: str) -> dict[str, Any]:
    """``memory=3,beta=0.9`` -> ``{"memory": 3, "beta": 0.9}`` (numbers parsed as TOML would)."""
    try:
        return tomllib.loads("\n".join(text.split(","))) if text else {}
    except tomllib.TOMLDecodeError:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE,... (e.g. memory=3,beta=0.9), got {text!r}") from None
