"""One spelling of solve settings: TOML tables and flags generated from SolveOptions; every flag explained."""

from __future__ import annotations

import argparse
import warnings
from dataclasses import fields

import pytest
from training import SMALL, config_of, quiet

import jfb
from jfb.cli.flags import values_of
from jfb.cli.main import build_parser
from jfb.cli.train_settings import TrainSettings
from jfb.train import TrainConfig, fit, setup_run

#: a value other than the default for every SolveOptions field, as TOML writes it and as a flag does
EVERY_FIELD = {
    "solver": ("broyden", "broyden"),
    "tol": ("1e-3", "1e-3"),
    "max_iter": ("7", "7"),
    "stop_mode": ('"abs"', "abs"),
    "freeze_converged": ("true", None),
    "divergence_ratio": ("100.0", "100.0"),
    "check_every": ("3", "3"),
    "keep_history": ("true", None),
    "solver_options": ("{ memory = 4 }", "memory=4"),
}
EXPECTED = dict(
    solver="broyden",
    tol=1e-3,
    max_iter=7,
    stop_mode="abs",
    freeze_converged=True,
    divergence_ratio=100.0,
    check_every=3,
    keep_history=True,
    solver_options={"memory": 4},
)


def _toml_value(name: str) -> str:
    value = EVERY_FIELD[name][0]
    return f'"{value}"' if name == "solver" else value


def _flags(prefix: str) -> list[str]:
    flags = []
    for name, (_, flag_value) in EVERY_FIELD.items():
        flag = "--" + (prefix + name).replace("_", "-")
        flags += [flag] if flag_value is None else [flag, flag_value]
    return flags


def _options_of(options: jfb.SolveOptions) -> dict:
    return {f.name: getattr(options, f.name) for f in fields(options) if f.init}


def test_every_solve_option_is_set_from_toml_tables(tmp_path):
    assert set(EVERY_FIELD) == {f.name for f in fields(jfb.SolveOptions) if f.init}
    lines = "\n".join(f"{name} = {_toml_value(name)}" for name in EVERY_FIELD)
    path = tmp_path / "every.toml"
    path.write_text(
        f'dataset = "mnist"\n[solve]\n{lines}\n[eval_solve]\n{lines.replace("max_iter = 7", "max_iter = 9")}\n'
    )
    config = TrainSettings(str(path)).config({})
    assert _options_of(config.solve) == EXPECTED
    assert _options_of(config.evaluation_options()) == {**EXPECTED, "max_iter": 9}


def test_every_solve_option_is_set_from_a_flag_training_and_evaluation():
    args = build_parser().parse_args(["train", "mnist", *_flags(""), *_flags("eval_"), "--eval-max-iter", "9"])
    overrides = values_of(args, TrainConfig)
    config = TrainSettings("mnist").config({**overrides, "depth_start": "none"})
    assert _options_of(config.solve) == EXPECTED
    assert _options_of(config.evaluation_options()) == {**EXPECTED, "max_iter": 9}


def test_tol_none_is_a_fixed_depth_in_toml_and_on_the_command_line(tmp_path):
    argv = ["train", "mnist", "--tol", "1e-3", "--eval-tol", "none", "--depth-start", "none"]
    overrides = values_of(build_parser().parse_args(argv), TrainConfig)
    assert overrides["solve"] == {"tol": 1e-3} and overrides["eval_solve"] == {"tol": "none"}
    assert TrainSettings("mnist").config(overrides).depth_start is None  # --depth-start none: the schedule off
    path = tmp_path / "fixed.toml"
    path.write_text('[solve]\nsolver = "picard"\ntol = "none"\nmax_iter = 5\n')
    config = TrainSettings(str(path)).config(overrides={"eval_solve": {"tol": 1e-4}})
    assert config.solve.fixed_depth and config.solve.max_iter == 5 and config.evaluation_options().tol == 1e-4


def test_every_flag_of_every_command_has_a_help_text():
    def parsers(parser: argparse.ArgumentParser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)

    missing = [
        f"{parser.prog} {action.option_strings or action.dest}"
        for parser in parsers(build_parser())
        for action in parser._actions
        if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))
        and action.help != argparse.SUPPRESS
        and not (action.help or "").strip()
    ]
    assert not missing, missing


def test_the_flat_keys_of_0_1_still_load_checkpoints_silently_and_toml_files_with_a_warning(tmp_path):
    old = dict(dataset="mnist", solver="picard", fixed_depth=True, max_iter=8, eval_max_iter=6, stop_mode="rel")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = TrainConfig.from_dict(old, source="runs/x/last.pt")
    assert (config.solve.solver, config.solve.tol, config.solve.max_iter) == ("picard", None, 8)
    assert config.evaluation_options().max_iter == 6 and config.differences(old) == []
    path = tmp_path / "old.toml"
    path.write_text('solver = "picard"\nfixed_depth = true\nmax_iter = 8\n')
    with pytest.warns(FutureWarning, match=r"keys solver, max_iter, fixed_depth are torch-jfb 0.1's.*\[solve\]"):
        assert TrainSettings(str(path)).config({}).solve.fixed_depth


def test_a_depth_schedule_reaches_the_layer_per_call_and_never_rewrites_its_options(tmp_path):
    config = config_of(**{**SMALL, "limit_train": 200}, epochs=2, max_iter=4, depth_start=2)
    run = setup_run(config, tmp_path, progress=False, log=quiet)
    before = run.model.implicit.options
    fit(run)
    assert run.model.implicit.options is before and before.max_iter == 4
    assert [r.train_forward_iters_mean for r in run.metrics.records] == [2.0, 4.0]


def test_the_version_is_one_number_printed_by_jfb_version(capsys):
    import tomllib
    from pathlib import Path

    from jfb.cli.main import main

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["version"] == jfb.__version__
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"torch-jfb {jfb.__version__}"
    assert f"## {jfb.__version__} " in (Path(__file__).resolve().parents[1] / "CHANGELOG.md").read_text()
