"""The ``jfb`` command line: train, eval, import-reference, demo, compare, diagnose, toy, bench memory.

Every command accepts ``--json`` and then prints one final JSON line with its results.
Bad options print a one-line error and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any, Optional

from ..train.checkpoint import prepare_run_dir

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
DEMO_EPOCHS = 3  # of the packaged MNIST config
DEFAULT_COMPARE_METHODS = "jfb,ift:cg,neumann:1,neumann:2,neumann:4"


class CliError(Exception):
    """A user error of the command line itself: printed as one line, exit status 2 (like :class:`jfb.JfbError`)."""


def _config_from_target(target: str) -> tuple[dict[str, Any], str]:
    """The settings a dataset name or a .toml file stands for, and where they came from."""
    from ..data import DATASETS

    path = Path(target)
    if path.suffix == ".toml":
        if not path.is_file():
            raise CliError(f"config file {path} does not exist")
        with open(path, "rb") as f:
            return tomllib.load(f), str(path)
    if target in DATASETS:
        packaged = CONFIG_DIR / f"{target}.toml"
        if packaged.is_file():
            with open(packaged, "rb") as f:
                return tomllib.load(f), str(packaged)
        return {"dataset": target}, "options"
    raise CliError(f"unknown dataset or config {target!r}; choose one of {', '.join(DATASETS)} or a .toml file")


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    from ..train.config import TrainConfig

    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        elif str(f.type).startswith("dict"):
            parser.add_argument(flag, dest=f.name, type=_key_values, default=None, metavar="KEY=VALUE,...")
        else:
            kind = {"int": int, "float": float, "Optional[int]": int, "Optional[float]": float}.get(str(f.type), str)
            parser.add_argument(flag, dest=f.name, type=kind, default=None, metavar=f.name.upper())


def _key_values(text: str) -> dict[str, Any]:
    """``memory=3,beta=0.9`` -> ``{"memory": 3, "beta": 0.9}`` (numbers parsed as TOML would)."""
    try:
        return tomllib.loads("\n".join(text.split(","))) if text else {}
    except tomllib.TOMLDecodeError:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE,... (e.g. memory=3,beta=0.9), got {text!r}") from None


def _train_config(args: argparse.Namespace, target: str):
    from ..train.config import TrainConfig

    values, source = _config_from_target(target)
    for f in fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            values[f.name] = value
    config = TrainConfig.from_dict(values, source=source)
    if config.fixed_depth and getattr(args, "tol", None) is not None:
        raise CliError(f"--tol has no effect: {source} trains at a fixed depth (fixed_depth = true); add --no-fixed-depth "
                       "to solve to a tolerance, or --eval-tol for evaluation")
    return config


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from ..train import train

    config = _train_config(args, args.target)
    run_dir = prepare_run_dir(Path(args.out or f"runs/{config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"))
    return train(config, run_dir, resume=args.resume, progress=not args.no_progress, log=_logger(args))


def cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    from ..train import TrainConfig, train

    settings, source = _config_from_target("mnist")
    limit = {"limit_train": args.limit_train} if args.limit_train else {}
    config = TrainConfig.from_dict({**settings, "epochs": DEMO_EPOCHS, **limit}, source=source)
    run_dir = prepare_run_dir(Path(args.out))
    log = _logger(args)
    log(f"demo: {config.epochs} epochs of JFB training on MNIST (run dir {run_dir})")
    return train(config, run_dir, progress=not args.no_progress, log=log)


def cmd_eval(args: argparse.Namespace) -> dict[str, Any]:
    from ..data import load_splits
    from ..train import evaluate, input_normalizer, restore_model

    overrides = {name: getattr(args, name) for name in ("tol", "max_iter", "solver", "batch_size", "limit_test", "data_dir", "device")
                 if getattr(args, name) is not None}
    if args.tol is not None:
        overrides["eval_tol"] = args.tol
    model, config = restore_model(Path(args.checkpoint), overrides)
    _, _, test = load_splits(config.dataset, config.data_dir, seed=config.seed)
    test = test.subset(config.limit_test)
    result = evaluate(model, test, config, input_normalizer(config), progress=not args.no_progress, desc="test")
    summary = {
        "checkpoint": args.checkpoint,
        "samples": len(test),
        "test_acc": result["eval_acc"],
        "test_loss": result["eval_loss"],
        "forward_iters_mean": result["eval_forward_iters_mean"],
        "forward_iters_max": result["eval_forward_iters_max"],
        "tol": config.solve_options(evaluation=True).tol,  # None: a fixed depth of max_iter
        "solver": config.solver,
    }
    _logger(args)(f"test accuracy {summary['test_acc']:.2f}% (loss {summary['test_loss']:.4f}) on {len(test)} images, "
                  f"{summary['forward_iters_mean']:.1f} forward iterations on average (max {summary['forward_iters_max']})")
    return summary


def cmd_import_reference(args: argparse.Namespace) -> dict[str, Any]:
    from ..models.reference import REFERENCE_DATASETS, as_explicit, load_reference
    from ..train import TrainConfig, save_checkpoint

    arch, state, info = load_reference(args.path, args.dataset)
    kind = args.model or info["kind"]
    # evaluation solves to a tight tolerance (Anderson, rel 1e-4); an explicit twin is T once from u = 0, then S
    config = TrainConfig(dataset=REFERENCE_DATASETS[arch], arch=arch, model=kind, explicit_depth=1, solver="anderson",
                         tol=1e-4, stop_mode="rel", max_iter=100)
    save_checkpoint(Path(args.out), {"config": config.to_dict(), "model": as_explicit(state) if kind == "explicit" else state,
                                     "imported_from": info["source"]})
    _logger(args)(f"converted {args.path} ({kind} {arch}, reported test accuracy {info['reported_test_accuracy']}) to {args.out}")
    return {"architecture": arch, "out": args.out, **info, "kind": kind}


def cmd_toy(args: argparse.Namespace) -> dict[str, Any]:
    from ..experiments.toy import run_toy

    out = prepare_run_dir(Path(args.out))
    result = run_toy(out, steps=args.steps, seed=args.seed, progress=not args.no_progress)
    _logger(args)((out / "toy.md").read_text() + f"(table, CSV and plot in {out})")
    return result


def cmd_compare(args: argparse.Namespace) -> dict[str, Any]:
    from ..experiments.compare import COMPARISON_SOLVE, PAPER_SETTING, run_compare

    base = {**_config_from_target(args.target)[0], **(PAPER_SETTING if args.paper_setting else COMPARISON_SOLVE)}
    for name in ("epochs", "limit_train", "limit_test", "max_iter", "seed", "batch_size", "tol"):
        if getattr(args, name) is not None:
            base[name] = getattr(args, name)
    out = prepare_run_dir(Path(args.out))
    methods = (args.methods or ("jfb,ift:cg" if args.paper_setting else DEFAULT_COMPARE_METHODS)).split(",")
    rows = run_compare(base, methods, out, ift_batch_norm=args.ift_batch_norm, progress=not args.no_progress, log=_logger(args),
                       field=args.vary, paper_setting=args.paper_setting)
    reduced = {k: base[k] for k in ("epochs", "limit_train", "limit_test") if base.get(k) is not None}
    _logger(args)((out / "compare.md").read_text() + (f"budget reduced from the paper's runs: {reduced}" if reduced else ""))
    return {"rows": rows, "out": str(out), "budget": reduced}


def cmd_diagnose(args: argparse.Namespace) -> dict[str, Any]:
    from ..experiments.diagnose import diagnose

    out = prepare_run_dir(Path(args.out))
    summary = diagnose(Path(args.checkpoint), out, n_batches=args.batches, log=_logger(args))
    _logger(args)((out / "diagnose.md").read_text())
    return summary


def cmd_bench_memory(args: argparse.Namespace) -> dict[str, Any]:
    from ..benchmarks.memory import memory_table

    out = prepare_run_dir(Path(args.out))
    depths = [int(d) for d in args.depths.split(",")]
    modes = args.methods.split(",")
    rows = memory_table(out, depths, modes, args.model, args.batch_size, log=_logger(args), device=args.device)
    _logger(args)((out / "memory.md").read_text())
    return {"rows": rows, "out": str(out)}


def cmd_bench_step(args: argparse.Namespace) -> dict[str, Any]:
    from ..benchmarks.step import StepSetting, step_table

    out = prepare_run_dir(Path(args.out))
    ks = [int(k) for k in args.ks.split(",")]
    settings = tuple(StepSetting(args.device, precision, args.compile) for precision in args.precision.split(","))
    rows = step_table(out, ks, args.methods.split(","), args.batch_size, args.repeats, args.warmup, log=_logger(args), settings=settings)
    _logger(args)((out / "step.md").read_text())
    return {"rows": rows, "out": str(out)}


def cmd_bench_epoch(args: argparse.Namespace) -> dict[str, Any]:
    from ..benchmarks.epoch import epoch_table

    config = _train_config(args, args.target)
    out = prepare_run_dir(Path(args.out))
    rows = epoch_table(config, args.samples, args.precision.split(","), out, log=_logger(args))
    _logger(args)((out / "epoch.md").read_text())
    return {"rows": rows, "out": str(out)}


def cmd_bench_solvers(args: argparse.Namespace) -> dict[str, Any]:
    from ..benchmarks.solvers import solver_table

    out = prepare_run_dir(Path(args.out))
    rows = solver_table(Path(args.checkpoint), out, args.solvers.split(","), args.tol, args.stop_mode, args.max_iter,
                        args.batches, args.batch_size, log=_logger(args))
    _logger(args)((out / "solvers.md").read_text())
    return {"rows": rows, "out": str(out)}


def _logger(args: argparse.Namespace):
    def log(message: str) -> None:
        print(message, file=sys.stderr if args.json else sys.stdout, flush=True)

    return log


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jfb", description="Implicit networks trained with Jacobian-free backpropagation.")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="print one final JSON line with the results")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        return p

    p = command("train", "Train an implicit (or explicit) network on a dataset or a TOML config.")
    p.add_argument("target", help="mnist, svhn, cifar10, or a .toml config file")
    p.add_argument("--out", help="run dir (default runs/DATASET-TIME)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    _add_train_options(p)
    p.set_defaults(run=cmd_train)

    p = command("eval", "Test accuracy of a checkpoint.")
    p.add_argument("checkpoint")
    p.add_argument("--tol", type=float)
    p.add_argument("--max-iter", type=int, dest="max_iter")
    p.add_argument("--solver")
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--limit-test", type=int, dest="limit_test")
    p.add_argument("--data-dir", dest="data_dir")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: the device the checkpoint was trained on")
    p.set_defaults(run=cmd_eval)

    p = command("import-reference", "Convert a checkpoint published by the paper's authors (no pickled code runs).")
    p.add_argument("path")
    p.add_argument("--out", required=True)
    p.add_argument("--dataset", choices=["mnist", "svhn", "cifar10"], help="needed when the file name does not say")
    p.add_argument("--model", choices=["implicit", "explicit"], help="default: explicit when the file name says 'Explicit'")
    p.set_defaults(run=cmd_import_reference)

    p = command("toy", "Learn T for the paper's toy problem y = d + y^5 by JFB and compare with the true solution.")
    p.add_argument("--out", default="runs/toy")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_toy)

    p = command("compare", "Train the same model from the same seed with each backward mode (the paper's Table 2).")
    p.add_argument("target", help="mnist, svhn, cifar10, or a .toml config file")
    p.add_argument("--methods", help=f"the values of --vary to compare (default {DEFAULT_COMPARE_METHODS}; jfb,ift:cg with --paper-setting)")
    p.add_argument("--paper-setting", action="store_true", dest="paper_setting",
                   help="the authors' Jacobian-based MNIST setting for every row; ift rows without latent BN, with the Lipschitz "
                        "rescale and CG to a relative tolerance of 0.1")
    p.add_argument("--vary", default="backward", choices=["backward", "solver"], help="compare backward modes (default) or forward solvers")
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--ift-batch-norm", action="store_true", help="keep latent BatchNorm in the ift runs too")
    for name, kind in (("epochs", int), ("limit_train", int), ("limit_test", int), ("max_iter", int), ("seed", int), ("batch_size", int), ("tol", float)):
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind)
    p.set_defaults(run=cmd_compare)

    p = command("diagnose", "Contraction factor at u*, JFB vs true gradient (descent), Neumann-k errors, on test batches.")
    p.add_argument("checkpoint")
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--out", default="runs/diagnose")
    p.set_defaults(run=cmd_diagnose)

    bench = sub.add_parser("bench", help="Benchmarks.").add_subparsers(dest="bench", required=True)

    def bench_command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = bench.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="print one final JSON line with the results")
        p.add_argument("--no-progress", action="store_true", help=argparse.SUPPRESS)
        return p

    p = bench_command("memory", "Peak memory of a training step vs forward depth (fresh process per point).")
    p.add_argument("--out", default="runs/bench-memory")
    p.add_argument("--depths", default="10,50,100,200,500")
    p.add_argument("--methods", default="jfb,ift:cg,neumann:4,unroll")
    p.add_argument("--model", default="mnist", choices=["mnist", "elementwise"])
    p.add_argument("--batch-size", type=int, default=100, dest="batch_size")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cpu: resident memory; cuda: GPU memory")
    p.set_defaults(run=cmd_bench_memory)

    p = bench_command("step", "ms per training step vs a hand-written PyTorch floor, interleaved, medians.")
    p.add_argument("--out", default="runs/bench-step")
    p.add_argument("--ks", default="10,40", help="forward iterations per step")
    p.add_argument("--methods", default="jfb,neumann:2,ift:cg,unroll")
    p.add_argument("--batch-size", type=int, default=100, dest="batch_size")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu", help="cpu or cuda (ours and the floor run on the same device)")
    p.add_argument("--precision", default="fp32", help="autocast precisions to time, comma-separated: fp32, bf16, fp16")
    p.add_argument("--compile", action="store_true", help="torch.compile the embedding, operator and head (ours and the floor)")
    p.set_defaults(run=cmd_bench_step)

    p = bench_command("epoch", "One training epoch on synthetic data of a dataset's shape (time only; e.g. CIFAR-10 offline).")
    p.add_argument("target", help="mnist, svhn, cifar10, or a .toml config file")
    p.add_argument("--out", default="runs/bench-epoch")
    p.add_argument("--samples", type=int, default=50_000, help="random images in the epoch")
    p.add_argument("--precision", default="fp32", help="autocast precisions to time, comma-separated: fp32, bf16, fp16")
    _add_train_options(p)
    p.set_defaults(run=cmd_bench_epoch)

    p = bench_command("solvers", "T evaluations and time for each forward solver to reach tol on a trained model.")
    p.add_argument("checkpoint")
    p.add_argument("--out", default="runs/bench-solvers")
    p.add_argument("--solvers", default="picard,anderson,broyden")
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--stop-mode", default="rel", choices=["abs", "rel"], dest="stop_mode")
    p.add_argument("--max-iter", type=int, default=200, dest="max_iter")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=100, dest="batch_size")
    p.set_defaults(run=cmd_bench_solvers)

    p = command("demo", "Train the MNIST implicit network with JFB for a few minutes and report test accuracy.")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--limit-train", type=int, dest="limit_train", help=argparse.SUPPRESS)
    p.set_defaults(run=cmd_demo)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..errors import JfbError
    from ..train.loop import TrainingStopped

    try:
        result = args.run(args)
    except (CliError, JfbError, FileNotFoundError) as exc:
        print(f"jfb {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except TrainingStopped as exc:
        print(f"jfb {args.command}: training stopped: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
    return 0
