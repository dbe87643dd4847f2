"""The one iteration driver: evaluates T at the points a :class:`~jfb.solvers.Solver` proposes and
owns stopping, per-sample freezing, best iterates, divergence and non-finite detection, evaluation
counts and the agreement between processes.

All per-sample bookkeeping stays in tensors on the state's device. The host learns about it only
when deciding whether to stop, once every ``check_every`` iterations (one synchronisation, two
with freezing); a fixed depth (``tol=None``) makes none inside the loop.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..state import State, StateLayout
from ..status import Status
from .base import History, SolveStats
from .options import SolveOptions

#: ``F(x, index)``: T on the flat rows ``index`` of the batch (all rows when None)
FlatOperator = Callable[[Tensor, Tensor | None], Tensor]
#: ``agree(locally_done) -> stop``: one stopping decision shared by all processes (:mod:`jfb.lockstep`)
Agreement = Callable[[bool], bool]
_EPS = 1e-12


def solve(
    f: Callable[[State, Tensor | None], State], u0: State, options: SolveOptions, agree: Agreement | None = None
) -> tuple[State, SolveStats]:
    """Fixed point of ``f(u, index)`` (T on the samples ``index``, all when None) from ``u0``."""
    layout = StateLayout(u0)

    def flat_f(x: Tensor, index: Tensor | None) -> Tensor:
        return layout.flatten(f(layout.unflatten(x), index))

    u, state = solve_flat(flat_f, layout.flatten(u0), options, agree)
    return layout.unflatten(u), state


def solve_flat(
    F: FlatOperator,
    x0: Tensor,
    options: SolveOptions,
    agree: Agreement | None = None,
    observe: Callable[[Tensor], None] | None = None,
) -> tuple[Tensor, SolveStats]:
    """:func:`solve` on states already flattened to ``(batch, features)``; differentiable through
    the iterations when called with grad enabled (no freezing; how ``unroll`` records the solve).
    ``observe(T(x))`` sees every iterate (fixed-point correction keeps some)."""
    solver = options.method
    tracker = Tracker(x0, options, track_best=solver.returns_best)
    state = solver.init(x0)
    x, fx, active = x0, x0, None
    for step in range(1, options.max_iter + 1):
        fx = F(x, None) if active is None else fx.index_copy(0, active, F(x[active], active).to(fx.dtype))
        tracker.record(x, fx, step, active)
        if observe is not None:
            observe(fx)
        if step == options.max_iter:
            break
        if tracker.checks(step):
            if tracker.finished(agree):
                break
            if options.freeze_converged:
                active = tracker.pending_rows()
        x = solver.update(state, x, fx)
    return tracker.result(x, fx)


class Tracker:
    """Per-sample residuals, convergence, best iterates and failure flags, as device tensors."""

    def __init__(self, x0: Tensor, options: SolveOptions, track_best: bool) -> None:
        batch, device = x0.shape[0], x0.device
        self.options, self.tol = options, options.tol
        self.tracking = options.tol is not None
        dtype = torch.promote_types(x0.dtype, torch.float32)
        self.eps = torch.finfo(dtype).eps
        full = lambda value: torch.full((batch,), value, dtype=dtype, device=device)  # noqa: E731
        self.residual, self.lowest, self.lowest_abs = full(torch.inf), full(torch.inf), full(torch.inf)
        self.iterations = torch.full((batch,), options.max_iter, dtype=torch.long, device=device)
        self.done = torch.zeros(batch, dtype=torch.bool, device=device)
        self.non_finite = torch.zeros((), dtype=torch.bool, device=device)
        self.diverged = torch.zeros((), dtype=torch.bool, device=device)
        self.best: Tensor | None = x0.detach() if track_best and self.tracking else None
        self.history: list[tuple[Tensor, Tensor]] | None = [] if options.keep_history else None
        self.latest = (full(torch.nan), full(torch.nan)) if options.keep_history else None
        self.t_evals = 0

    def checks(self, step: int) -> bool:
        return self.tracking and step % self.options.check_every == 0

    @torch.no_grad()
    def record(self, x: Tensor, fx: Tensor, step: int, index: Tensor | None) -> None:
        """Account for ``fx = T(x)`` at iteration ``step`` (rows ``index`` only when given)."""
        self.t_evals += 1
        if not self.tracking and self.history is None:
            return
        rows = slice(None) if index is None else index
        x, fx = (x, fx) if index is None else (x[index], fx[index])
        abs_res = torch.linalg.vector_norm(fx - x, dim=1).to(self.residual.dtype)
        fx_norm = torch.linalg.vector_norm(fx, dim=1).to(self.residual.dtype)
        rel_res = abs_res / (fx_norm + _EPS)
        if self.history is not None:
            self._remember(rows, abs_res, rel_res)
        if self.tracking:
            self._update(
                rows, index, fx, step, abs_res, fx_norm, abs_res if self.options.stop_mode == "abs" else rel_res
            )

    def _update(
        self, rows, index: Tensor | None, fx: Tensor, step: int, abs_res: Tensor, fx_norm: Tensor, measure: Tensor
    ) -> None:
        finite = torch.isfinite(measure)
        improved = (measure < self.residual[rows]) | ~finite  # a NaN is written, so that it stays visible
        if self.best is not None:
            chosen = torch.where(improved[:, None], fx.detach(), self.best[rows])
            self.best = chosen if index is None else self.best.index_put((index,), chosen)  # out of place
            self.residual[rows] = torch.where(improved, measure, self.residual[rows])
        else:
            self.residual[rows] = measure
        met = measure <= self.tol
        done = self.done[rows]
        self.iterations[rows] = torch.where(met & ~done, step, self.iterations[rows])
        self.done[rows] = done | met
        self.lowest[rows] = lowest = torch.fmin(self.lowest[rows], measure)  # fmin skips NaN
        self.non_finite |= ~finite.all()
        self.diverged |= self._diverging(rows, measure, lowest, abs_res, fx_norm)

    def _diverging(self, rows, measure: Tensor, lowest: Tensor, abs_res: Tensor, fx_norm: Tensor) -> Tensor:
        """Residual grown ``divergence_ratio`` times over its best, never below tol or rounding noise.

        A residual that reached exactly zero and then shows float noise has not diverged. In rel
        mode the absolute residual is watched too: iterates running off to infinity can keep a
        bounded relative residual while their absolute residual grows without bound.
        """
        ratio, floor = self.options.divergence_ratio, lowest.clamp_min(self.tol)
        if self.options.stop_mode == "abs":
            return (measure > ratio * torch.maximum(floor, self.eps * fx_norm)).any()
        self.lowest_abs[rows] = lowest_abs = torch.fmin(self.lowest_abs[rows], abs_res)
        relative = measure > ratio * floor.clamp_min(self.eps)
        absolute = abs_res > ratio * torch.maximum(lowest_abs, 100 * self.eps * fx_norm)
        return (relative | absolute).any()

    def _remember(self, rows, abs_res: Tensor, rel_res: Tensor) -> None:
        latest_abs, latest_rel = self.latest
        latest_abs[rows], latest_rel[rows] = abs_res, rel_res
        self.history.append((latest_abs.clone(), latest_rel.clone()))

    def finished(self, agree: Agreement | None) -> bool:
        """Every sample converged, or a failure; one host synchronisation (and an agreement)."""
        done = bool(self.done.all() | self.non_finite | self.diverged)
        return done if agree is None else agree(done)

    def pending_rows(self) -> Tensor | None:
        """Rows still to evaluate under freezing (None: all of them)."""
        pending = (~self.done).nonzero().squeeze(1)
        return None if pending.numel() == self.done.numel() else pending

    @torch.no_grad()
    def result(self, x: Tensor, fx: Tensor) -> tuple[Tensor, SolveStats]:
        """The returned point (best or latest ``T(x)``) and the solve's outcome."""
        returned = fx if self.best is None else self.best
        scale = torch.linalg.vector_norm(returned.detach(), dim=1).to(self.residual.dtype) + _EPS
        if not self.tracking:
            self.residual = torch.linalg.vector_norm((fx - x).detach(), dim=1).to(self.residual.dtype)
            self.non_finite = ~torch.isfinite(self.residual).all()
        abs_res, rel_res = (
            (self.residual, self.residual / scale)
            if self.options.stop_mode == "abs" or not self.tracking
            else (self.residual * scale, self.residual)
        )
        history = None if self.history is None else History(*(torch.stack(h) for h in zip(*self.history)))
        state = SolveStats(
            iterations=self.iterations,
            abs_residual=abs_res,
            rel_residual=rel_res,
            converged=self.done,
            status=self._status(),
            t_evals=self.t_evals,
            history=history,
        )
        return returned, state

    def _status(self) -> Status:
        flags = torch.stack(
            [self.non_finite, self.diverged, self.done.all()]
        ).tolist()  # the one synchronisation at the end
        if flags[0]:
            return Status.NON_FINITE
        if flags[1]:
            return Status.DIVERGED
        if not self.tracking:
            return Status.FIXED_DEPTH
        return Status.CONVERGED if flags[2] else Status.MAX_ITER
