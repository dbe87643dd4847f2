"""``jfb bench step``: milliseconds per training step, ours vs the hand-written floor.

The paper's MNIST model, batch 100 by default, exactly K forward iterations (Picard, checked). For each K
and backward mode, our step (the training engine's :class:`~jfb.train.engine.Training` step, the one every
training takes: ImplicitClassifier forward, loss, backward, Adam step) runs along each path
asked for, the operator given as the ``nn.Module`` or as a plain function calling it, the solve at a fixed
depth (``tol=None``) or at a tolerance never met (the residual bookkeeping at every iteration), and the
floor's step (:mod:`jfb.benchmarks.floor`) beside them, each on its own copy of the same model. Every round
times each of them once, in a new random order, so load on a shared machine hits all alike; ratios are of
the medians of ``repeats`` rounds after ``warmup`` untimed ones. A tolerance path has a second floor of its
own, the hand-written loop of a tolerance-based solve (residuals and a stop check after every application).
All run on the same device, under the same autocast precision and, with ``compile``, with the same modules
compiled (the embedding, the operator and the head); on a GPU each timed step ends with a synchronisation.
"""

from __future__ import annotations

import copy
import json
import random
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import jfb

from ..errors import JfbError, unknown_name
from ..files import prepare_run_dir
from ..models import build_model
from ..precision import autocast, check_precision
from ..reports import Report, markdown_table, write_report
from ..settings import setting
from ..train.engine import StepSettings, Training
from ..train.setup import compile_parts
from .floor import floor_step


@dataclass(frozen=True)
class StepSetting:
    """Where and how a step runs: ``device`` (cpu, cuda), autocast ``precision`` (fp32, bf16, fp16), ``compile``."""

    device: str = "cpu"
    precision: str = "fp32"
    compile: bool = False

    def __post_init__(self) -> None:
        check_precision(self.precision, self.device)
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise JfbError(f"device {self.device!r} asked for, but torch.cuda.is_available() is False")

    def autocast(self) -> AbstractContextManager:
        return autocast(self.device, self.precision)

    def synchronize(self) -> None:
        if torch.device(self.device).type == "cuda":
            torch.cuda.synchronize()


#: how the operator reaches the layer: the ``nn.Module`` itself, or a plain function calling it
OPERATOR_FORMS = ("module", "function")
#: how the solve stops: a fixed depth of K (``tol=None``), or a tolerance never met, so that the residual
#: bookkeeping runs at every one of the K iterations (``tol=1e-30``)
SOLVE_KINDS = ("fixed", "tolerance")
NEVER_MET = 1e-30


@dataclass(frozen=True)
class StepPath:
    """One way through the library: the operator's form and the solve's kind."""

    operator: str = "module"
    solve: str = "fixed"

    @property
    def name(self) -> str:
        return f"{self.operator}, {self.solve}"


def _our_model(base: nn.Module, path: StepPath, iterations: int, backward: str) -> nn.Module:
    """A copy of ``base`` whose implicit layer takes ``path``; a function operator's module stays registered on
    the model (as ``function_of``), so the optimiser and ``.to()`` reach its parameters."""
    model = copy.deepcopy(base)
    tol = None if path.solve == "fixed" else NEVER_MET
    options = jfb.SolveOptions(solver="picard", tol=tol, max_iter=iterations)
    operator = model.operator
    if path.operator == "function":
        model.function_of = operator
        operator = lambda u, x: model.function_of(u, x)  # noqa: E731
    model.implicit = jfb.ImplicitLayer(operator, backward, options=options, on_failure="ignore")
    return model


#: the engine's settings for a timed step: Adam at a constant rate, no clipping (the floor's step)
TIMED_STEP = StepSettings(optimizer="adam", schedule="constant", clip=0.0, preempt_signals=())


def _our_training(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, setting: StepSetting) -> Training:
    """The engine's step object (what every training runs) on ``model``, the same batch every step."""

    def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, float]:
        with setting.autocast():
            value = nn.functional.cross_entropy(model(batch[0]), batch[1])
        return value, float(model.implicit.last_stats.forward.t_evals)

    return Training(model, lambda index: (images, labels), loss, 2**31 - 1, 1e-3, TIMED_STEP)


def _timed(step: Callable[[], object], setting: StepSetting) -> float:
    started = time.perf_counter()
    step()
    setting.synchronize()
    return time.perf_counter() - started


def _check_depth(model: nn.Module, path: StepPath, iterations: int) -> None:
    stats = model.implicit.last_stats
    expected = "fixed_depth" if path.solve == "fixed" else "max_iter"
    if stats.forward.t_evals != iterations or stats.status != expected:
        raise RuntimeError(
            f"{path.name}: expected {iterations} forward iterations ({expected}), "
            f"ran {stats.forward.t_evals} ({stats.status})"
        )


def compare_steps(
    iterations: int,
    backward: str,
    batch: int,
    repeats: int,
    warmup: int,
    seed: int = 0,
    setting: StepSetting = StepSetting(),
    paths: tuple[StepPath, ...] = (StepPath(),),
) -> list[dict]:
    """Median ms per step for each path and the floor: one step of each per round, in a shuffled order."""
    torch.manual_seed(seed)
    base = build_model("mnist", solver="picard", backward=backward, tol=None, max_iter=iterations)
    base = base.to(setting.device).train()
    floor_tols = {
        "floor": None,
        **({"tolerance floor": NEVER_MET} if any(p.solve == "tolerance" for p in paths) else {}),
    }
    floors = {name: copy.deepcopy(base) for name in floor_tols}
    models = {path: _our_model(base, path, iterations, backward) for path in paths}
    if setting.compile:
        for model in (*floors.values(), *models.values()):
            compile_parts(model)
    images = torch.randn(batch, 1, 28, 28, device=setting.device)
    labels = torch.randint(0, 10, (batch,), device=setting.device)
    steps: dict[object, Callable[[], object]] = {
        name: _floor_runner(floors[name], images, labels, iterations, tol, setting) for name, tol in floor_tols.items()
    }
    for path, model in models.items():
        training = _our_training(model, images, labels, setting)
        steps[path] = lambda training=training: training.step(training.next_step)
    times = _interleaved(steps, warmup, repeats, random.Random(seed), setting)
    ms = {name: 1000 * statistics.median(values) for name, values in times.items()}
    rows = []
    for path, model in models.items():
        _check_depth(model, path, iterations)
        own_floor_ms = ms["tolerance floor" if path.solve == "tolerance" else "floor"]
        rows.append(
            {
                "K": iterations,
                "backward": backward,
                "operator": path.operator,
                "solve": path.solve,
                "batch": batch,
                "device": setting.device,
                "precision": setting.precision,
                "compile": setting.compile,
                "repeats": repeats,
                "ours_ms": ms[path],
                "floor_ms": ms["floor"],
                "ratio": ms[path] / ms["floor"],
                "own_floor_ms": own_floor_ms,
                "ratio_own_floor": ms[path] / own_floor_ms,
            }
        )
    return rows


def _floor_runner(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    iterations: int,
    tol: float | None,
    setting: StepSetting,
) -> Callable[[], torch.Tensor]:
    """The hand-written step on its own copy of the model: a fixed depth, or a tolerance-based solve (``tol``)."""
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)

    def run() -> torch.Tensor:
        with setting.autocast():
            return floor_step(model.embedding, model.operator, model.head, optimizer, images, labels, iterations, tol)

    return run


def _interleaved(
    steps: dict[object, Callable[[], object]], warmup: int, repeats: int, rng: random.Random, setting: StepSetting
) -> dict[object, list[float]]:
    """Every step once per round, in a new random order each round (load on a shared machine hits all alike);
    the first ``warmup`` rounds are not timed."""
    times: dict[object, list[float]] = {name: [] for name in steps}
    for round_ in range(warmup + repeats):
        order = list(steps)
        rng.shuffle(order)
        for name in order:
            elapsed = _timed(steps[name], setting)
            if round_ >= warmup:
                times[name].append(elapsed)
    return times


@dataclass(frozen=True)
class StepBenchSettings:
    out: str = setting("runs/bench-step", "output folder")
    ks: tuple[int, ...] = setting((10, 40), "forward iterations per step, comma-separated")
    methods: tuple[str, ...] = setting(("jfb", "neumann:2", "ift:cg", "unroll"), "backward modes, comma-separated")
    batch_size: int = setting(100, "images per step")
    repeats: int = setting(30, "timed steps per point")
    warmup: int = setting(3, "untimed steps first")
    device: str = setting("cpu", "ours and the floor run on the same device", choices=("cpu", "cuda"))
    precisions: tuple[str, ...] = setting(("fp32",), "autocast precisions to time, comma-separated: fp32, bf16, fp16")
    compile: bool = setting(False, "torch.compile the embedding, operator and head (ours and the floor)")
    operators: tuple[str, ...] = setting(("module",), "operator forms, comma-separated: module, function")
    solves: tuple[str, ...] = setting(
        ("fixed",), "solve kinds, comma-separated: fixed (depth K), tolerance (a tolerance never met, K deep)"
    )

    def __post_init__(self) -> None:
        for name, allowed in (("operators", OPERATOR_FORMS), ("solves", SOLVE_KINDS)):
            for value in getattr(self, name):
                if value not in allowed:
                    raise unknown_name(name[:-1], value, allowed)

    def paths(self) -> tuple[StepPath, ...]:
        return tuple(StepPath(operator, solve) for operator in self.operators for solve in self.solves)


def step_table(settings: StepBenchSettings, log=print) -> Report:
    out = prepare_run_dir(Path(settings.out))
    rows = []
    for precision in settings.precisions:
        setting_ = StepSetting(settings.device, precision, settings.compile)
        for k in settings.ks:
            for mode in settings.methods:
                for row in compare_steps(
                    k,
                    mode,
                    settings.batch_size,
                    settings.repeats,
                    settings.warmup,
                    setting=setting_,
                    paths=settings.paths(),
                ):
                    log(json.dumps(row))
                    rows.append(row)
    headers = ["device", "precision", "compile", "K", "backward", "operator", "solve", "ours (ms)", "floor (ms)"]
    headers += ["ours / floor", "ours / its own floor"]
    cells = [
        [
            r["device"],
            r["precision"],
            "yes" if r["compile"] else "no",
            r["K"],
            r["backward"],
            r["operator"],
            r["solve"],
            f"{r['ours_ms']:.1f}",
            f"{r['floor_ms']:.1f}",
            f"{r['ratio']:.3f}",
            f"{r['ratio_own_floor']:.3f}",
        ]
        for r in rows
    ]
    footer = (
        f"\nbatch {settings.batch_size}, medians of {settings.repeats} steps after {settings.warmup} warm-up "
        f"rounds (each round times every path and the floors once, in a shuffled order), "
        f"{torch.get_num_threads()} CPU threads. Its own floor: the hand-written fixed-depth loop for a fixed "
        f"depth; for a tolerance, the hand-written loop that computes every sample's residual and checks the "
        f"tolerance after each application (one host synchronisation)\n"
    )
    return write_report(out, "step", rows, markdown_table(headers, cells) + footer)
