"""Configuration files: the packaged recipes and ``.toml`` files a target names, torch-jfb 0.1's flat keys
migrated into the ``solve`` / ``eval_solve`` tables (once, where values come in), and layers of settings merged."""

from __future__ import annotations

import tomllib
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..data import DATASETS
from ..errors import JfbError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
#: the flat keys of torch-jfb 0.1 configurations and checkpoints, and where they live now
LEGACY_SOLVE_KEYS = ("solver", "tol", "max_iter", "stop_mode", "freeze_converged", "solver_options")
LEGACY_EVAL_KEYS = {"eval_tol": "tol", "eval_max_iter": "max_iter"}


def migrate_legacy_keys(values: dict[str, Any], warn_from: str | None = None) -> dict[str, Any]:
    """torch-jfb 0.1's flat solve keys (``solver``, ``tol``, ``fixed_depth``, ``eval_tol``, ...) moved into the
    ``solve`` and ``eval_solve`` tables; checkpoints are read silently, a TOML file with a warning."""
    legacy = [k for k in (*LEGACY_SOLVE_KEYS, "fixed_depth", *LEGACY_EVAL_KEYS) if k in values]
    if not legacy:
        return values
    if warn_from is not None:
        warnings.warn(
            f"{warn_from}: keys {', '.join(legacy)} are torch-jfb 0.1's; write them in the [solve] and [eval_solve] "
            'tables (fixed_depth = true is tol = "none"); see CHANGELOG.md',
            FutureWarning,
            stacklevel=3,
        )
    values = dict(values)
    for table in ("solve", "eval_solve"):
        if not isinstance(values.get(table, {}), Mapping):
            raise JfbError(f"{table} must be a table of solve options, got {values[table]!r}")
    solve = {**{k: values.pop(k) for k in LEGACY_SOLVE_KEYS if k in values}, **values.get("solve", {})}
    if values.pop("fixed_depth", False):
        solve["tol"] = None
    evaluation = {new: values.pop(old) for old, new in LEGACY_EVAL_KEYS.items() if values.get(old) is not None}
    values.pop("eval_tol", None), values.pop("eval_max_iter", None)
    return {**values, "solve": solve, "eval_solve": {**evaluation, **values.get("eval_solve", {})}}


def merge_settings(*layers: dict[str, Any]) -> dict[str, Any]:
    """Configuration values, later layers winning; the ``solve`` and ``eval_solve`` tables merged key by key."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            table = key in ("solve", "eval_solve") and isinstance(value, Mapping)
            merged[key] = {**merged.get(key, {}), **value} if table else value
    return merged


def flat_settings(values: dict[str, Any]) -> dict[str, Any]:
    """``{"solve": {"tol": 1}}`` -> ``{"solve.tol": 1}``."""
    flat = {}
    for key, value in values.items():
        if key in ("solve", "eval_solve") and isinstance(value, Mapping):
            flat |= {f"{key}.{k}": v for k, v in value.items()}
        else:
            flat[key] = value
    return flat


def packaged_recipes() -> list[str]:
    """The configurations shipped in ``jfb/configs`` (a dataset's default, and named recipes such as ``mnist-long``)."""
    return sorted(path.stem for path in CONFIG_DIR.glob("*.toml"))


def load_target(target: str) -> tuple[dict[str, Any], str]:
    """The settings a dataset name (its packaged config, if any) or a .toml file stands for, and their source."""
    path = Path(target)
    if path.suffix == ".toml":
        if not path.is_file():
            raise JfbError(f"config file {path} does not exist")
    elif target in DATASETS or target in packaged_recipes():
        path = CONFIG_DIR / f"{target}.toml"
        if not path.is_file():
            return {"dataset": target}, "options"
    else:
        choices = ", ".join(dict.fromkeys([*DATASETS, *packaged_recipes()]))
        raise JfbError(f"unknown dataset or config {target!r}; choose one of {choices} or a .toml file")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f), str(path)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise JfbError(f"{path} is not a valid TOML file ({error})") from None
