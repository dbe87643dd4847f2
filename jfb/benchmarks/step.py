"""``jfb bench step``: milliseconds per training step, ours vs the hand-written floor.

The paper's MNIST model, batch 100 by default, a fixed depth of exactly K forward iterations
(Picard, ``tol=None``, checked). For each K and backward mode, our step (ImplicitClassifier
forward, loss, backward, Adam step) and the floor's (:mod:`jfb.benchmarks.floor`) run
alternately on their own copies of the same model, so machine noise hits both; the ratio is
of the medians of ``repeats`` timed steps after ``warmup`` untimed ones. Both run on the same
device, under the same autocast precision and, with ``compile``, with the same modules compiled
(the embedding, the operator and the head); on a GPU each timed step ends with a synchronisation.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import JfbError
from ..files import prepare_run_dir
from ..models import build_model
from ..precision import autocast, check_precision
from ..reports import Report, markdown_table, write_report
from ..settings import setting
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


def _our_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor, setting: StepSetting
) -> torch.Tensor:
    with setting.autocast():
        loss = nn.functional.cross_entropy(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _timed(step: Callable[[], object], setting: StepSetting) -> float:
    started = time.perf_counter()
    step()
    setting.synchronize()
    return time.perf_counter() - started


def compare_steps(
    iterations: int,
    backward: str,
    batch: int,
    repeats: int,
    warmup: int,
    seed: int = 0,
    setting: StepSetting = StepSetting(),
) -> dict:
    """Median ms per step for ours and the floor, interleaved step by step."""
    torch.manual_seed(seed)
    # "ignore": the timing is the point; ift's linear solve on an untrained model may miss its tolerance within
    # its cap (the forward depth K), which used to stop the benchmark with a FixedPointError traceback at K=10
    ours = build_model(
        "mnist", solver="picard", backward=backward, tol=None, max_iter=iterations, on_failure="ignore"
    ).to(setting.device)
    floor = copy.deepcopy(ours)
    if setting.compile:
        compile_parts(ours), compile_parts(floor)
    images = torch.randn(batch, 1, 28, 28, device=setting.device)
    labels = torch.randint(0, 10, (batch,), device=setting.device)
    our_opt, floor_opt = torch.optim.Adam(ours.parameters(), 1e-3), torch.optim.Adam(floor.parameters(), 1e-3)
    ours.train(), floor.train()
    run_ours = lambda: _our_step(ours, our_opt, images, labels, setting)  # noqa: E731

    def run_floor() -> torch.Tensor:
        with setting.autocast():
            return floor_step(floor.embedding, floor.operator, floor.head, floor_opt, images, labels, iterations)

    times: dict[str, list[float]] = {"ours": [], "floor": []}
    for i in range(warmup + repeats):
        pair = (("ours", run_ours), ("floor", run_floor)) if i % 2 == 0 else (("floor", run_floor), ("ours", run_ours))
        for name, step in pair:
            elapsed = _timed(step, setting)
            if i >= warmup:
                times[name].append(elapsed)
    stats = ours.implicit.last_stats
    if stats.forward.t_evals != iterations or stats.status != "fixed_depth":
        raise RuntimeError(
            f"expected a fixed depth of {iterations} forward iterations, ran {stats.forward.t_evals} ({stats.status})"
        )
    ours_ms, floor_ms = 1000 * statistics.median(times["ours"]), 1000 * statistics.median(times["floor"])
    return {
        "K": iterations,
        "backward": backward,
        "batch": batch,
        "device": setting.device,
        "precision": setting.precision,
        "compile": setting.compile,
        "repeats": repeats,
        "ours_ms": ours_ms,
        "floor_ms": floor_ms,
        "ratio": ours_ms / floor_ms,
    }


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


def step_table(settings: StepBenchSettings, log=print) -> Report:
    out = prepare_run_dir(Path(settings.out))
    rows = []
    for precision in settings.precisions:
        setting_ = StepSetting(settings.device, precision, settings.compile)
        for k in settings.ks:
            for mode in settings.methods:
                row = compare_steps(k, mode, settings.batch_size, settings.repeats, settings.warmup, setting=setting_)
                log(json.dumps(row))
                rows.append(row)
    headers = ["device", "precision", "compile", "K", "backward", "ours (ms)", "floor (ms)", "ours / floor"]
    cells = [
        [
            r["device"],
            r["precision"],
            "yes" if r["compile"] else "no",
            r["K"],
            r["backward"],
            f"{r['ours_ms']:.1f}",
            f"{r['floor_ms']:.1f}",
            f"{r['ratio']:.3f}",
        ]
        for r in rows
    ]
    footer = (
        f"\nbatch {settings.batch_size}, medians of {settings.repeats} steps after {settings.warmup} warm-up "
        f"steps, {torch.get_num_threads()} CPU threads\n"
    )
    return write_report(out, "step", rows, markdown_table(headers, cells) + footer)
