"""``jfb bench overhead``: what an iteration of ``jfb.fixed_point`` costs against a bare Python loop of the same T.

The problem ``u = tanh(W u + x)`` (``||W|| = 0.5``) at several sizes: ``dim x batch``. Four ways, one call of each
per round (interleaved), medians: ``jfb.fixed_point`` to a tolerance (Picard, abs), the same solve at a fixed depth
(``tol=None``), a hand-written loop that checks every sample's residual each iteration and stops at the tolerance
(the least work a tolerance-based solve does), and a bare loop of the same number of iterations without any check.
Each way's time is divided by the solve's iteration count: the cost of an iteration, the call's own set-up included.
Then the cost of one more iteration without the set-up: the slope of each way's time between two depths.
Only the public API is used, so the same file measures any version of the library side by side.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import jfb

from ..files import prepare_run_dir
from ..reports import Report, markdown_table, write_report
from ..settings import setting

WAYS = ("fixed_point", "fixed_depth", "checked_loop", "bare_loop")
MARGINAL_WAYS = ("fixed_point", "fixed_depth", "bare_loop")


@dataclass(frozen=True)
class OverheadBenchSettings:
    out: str = setting("runs/bench-overhead", "output folder")
    sizes: tuple[str, ...] = setting(("10x1", "10x64", "512x256"), "problem sizes DIMxBATCH, comma-separated")
    tol: float = setting(1e-6, "the tolerance of the solves (abs residual per sample)")
    repeats: int = setting(30, "rounds of one call of each way (interleaved; medians)")
    calls: int = setting(20, "calls per timing (short calls are timed in groups)")
    depths: tuple[int, ...] = setting((10, 60), "two depths whose time difference gives one more iteration's cost")

    def __post_init__(self) -> None:
        if len(self.depths) != 2 or not 0 < self.depths[0] < self.depths[1]:
            raise jfb.JfbError(f"--depths: two increasing positive depths, e.g. 10,60; got {self.depths}")


def median_ms_interleaved(calls: dict[str, Callable[[], Any]], repeats: int, group: int = 1) -> dict[str, float]:
    """Median ms of each call (timed ``group`` calls at a time), one timing of each per round after a warm-up round."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(repeats + 1):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(group):
                call()
            if round_:
                samples[name].append(1e3 * (time.perf_counter() - start) / group)
    return {name: statistics.median(values) for name, values in samples.items()}


def tanh_problem(dim: int, batch: int) -> tuple[Callable, torch.Tensor]:
    """``T(u, x) = tanh(W u + x)`` with ``||W|| = 0.5`` and ``batch`` inputs ``x``, seeded."""
    generator = torch.Generator().manual_seed(0)
    W = 0.5 * torch.linalg.qr(torch.randn(dim, dim, generator=generator))[0]
    x = torch.randn(batch, dim, generator=generator)

    def T(u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(u @ W.T + x)

    return T, x


def _ways(T: Callable, x: torch.Tensor, tol: float, iterations: int) -> dict[str, Callable[[], Any]]:
    def checked_loop() -> torch.Tensor:
        u = torch.zeros_like(x)
        for _ in range(100):
            u, previous = T(u, x), u
            if bool(torch.linalg.vector_norm(u - previous, dim=1).max() <= tol):
                break
        return u

    def bare_loop() -> torch.Tensor:
        u = torch.zeros_like(x)
        for _ in range(iterations):
            u = T(u, x)
        return u

    return {
        "fixed_point": lambda: jfb.fixed_point(T, x, solver="picard", tol=tol, max_iter=100, stop_mode="abs"),
        "fixed_depth": lambda: jfb.fixed_point(T, x, solver="picard", tol=None, max_iter=iterations),
        "checked_loop": checked_loop,
        "bare_loop": bare_loop,
    }


def _size_rows(size: str, settings: OverheadBenchSettings, log) -> list[dict[str, Any]]:
    dim, batch = (int(part) for part in size.split("x"))
    T, x = tanh_problem(dim, batch)
    with torch.no_grad():
        solved = jfb.fixed_point(T, x, solver="picard", tol=settings.tol, max_iter=100, stop_mode="abs")
        evaluations = solved.stats.t_evals
        group = max(1, settings.calls if dim * batch <= 4096 else 1)
        ms = median_ms_interleaved(_ways(T, x, settings.tol, evaluations), settings.repeats, group)
    rows = []
    for way in WAYS:
        per_iteration = 1e3 * ms[way] / evaluations
        ratio = ms[way] / ms["bare_loop"]
        rows.append(dict(size=size, way=way, iterations=evaluations, us_per_iteration=per_iteration, vs_bare=ratio))
        log(f"{size}, {way}: {per_iteration:.1f} us per iteration ({ratio:.2f}x a bare loop)")
    return rows + _marginal_rows(size, T, x, settings, group, log)


def _marginal_rows(size: str, T: Callable, x: torch.Tensor, settings: OverheadBenchSettings, group: int, log):
    """The cost of one more iteration, the call's set-up left out: the slope of the time between two depths, with
    the tolerance checked every iteration and never met (``fixed_point``), at a fixed depth, and in a bare loop."""
    short, long = settings.depths
    calls = {}
    for depth in (short, long):
        ways = _ways(T, x, settings.tol, depth)
        calls[f"fixed_point {depth}"] = lambda depth=depth: jfb.fixed_point(
            T, x, solver="picard", tol=1e-30, max_iter=depth, stop_mode="abs", on_failure="ignore"
        )
        calls[f"fixed_depth {depth}"], calls[f"bare_loop {depth}"] = ways["fixed_depth"], ways["bare_loop"]
    with torch.no_grad():
        ms = median_ms_interleaved(calls, settings.repeats, group)
    slope = {way: 1e3 * (ms[f"{way} {long}"] - ms[f"{way} {short}"]) / (long - short) for way in MARGINAL_WAYS}
    rows = []
    for way in MARGINAL_WAYS:
        ratio = slope[way] / slope["bare_loop"]
        name, span = f"{way}, one more iteration", f"{short}-{long}"
        rows.append(dict(size=size, way=name, iterations=span, us_per_iteration=slope[way], vs_bare=ratio))
        log(f"{size}, {name}: {slope[way]:.1f} us ({ratio:.2f}x a bare loop's)")
    return rows


def overhead_table(settings: OverheadBenchSettings, log=print) -> Report:
    for size in settings.sizes:
        parts = size.split("x")
        if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise jfb.JfbError(f"--sizes: each size is DIMxBATCH with positive integers, e.g. 10x1, got {size!r}")
    out = prepare_run_dir(Path(settings.out))
    rows = [row for size in settings.sizes for row in _size_rows(size, settings, log)]
    cells = [
        [r["size"], r["way"], r["iterations"], f"{r['us_per_iteration']:.1f}", f"{r['vs_bare']:.2f}"] for r in rows
    ]
    text = markdown_table(["dim x batch", "way", "T evaluations", "us per iteration (median)", "x bare loop"], cells)
    text += (
        f"\ntol {settings.tol:g}; medians of {settings.repeats} interleaved rounds; 'one more iteration': the time "
        f"difference between depths {settings.depths[0]} and {settings.depths[1]}, per iteration\n"
    )
    return write_report(out, "overhead", rows, text)
