"""The one iteration driver: evaluates T at the points a :class:`~jfb.solvers.Solver` proposes and
owns stopping, per-sample freezing, best iterates, divergence and non-finite detection, evaluation
counts and the agreement between processes.

All per-sample bookkeeping stays in tensors on the state's device (:class:`Tracker`; on small CPU batches in
Python numbers, :class:`~jfb.solvers.host_tracker.HostTracker`). The host learns about it only when deciding
whether to stop, once every ``check_every`` iterations (one synchronisation, two with freezing); a fixed depth
(``tol=None``) makes none inside the loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..state import State, StateLayout
from ..status import Status
from .base import History, SolveStats
from .host_tracker import HostTracker, host_trackable
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
    peel: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, SolveStats]:
    """:func:`solve` on states already flattened to ``(batch, features)``; differentiable through
    the iterations when called with grad enabled (no freezing; how ``unroll`` records the solve).
    ``observe(T(x))`` sees every iterate (fixed-point correction keeps some). ``peel``: inside torch.func
    transforms, the bookkeeping reads the plain values under the iterates (:class:`jfb.transforms.Boundary`)."""
    solver, host = options.method, peel is None and host_trackable(x0, options)
    tracker = HostTracker(x0, options, solver.returns_best) if host else Tracker(x0, options, solver.returns_best, peel)
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
    """Per-sample residuals, convergence, best iterates and failure flags, as device tensors.

    A sample has converged once its lowest residual so far (``lowest``) met the tolerance; ``elapsed``
    counts, per sample, the T evaluations before that. Divergence and non-finite values are watched through
    one running scalar, ``excess``: the largest ``residual - divergence_ratio * floor`` seen (``floor``: the
    sample's lowest residual so far, never below tol or rounding noise). It is NaN or +inf once a residual
    was, and > 0 once one diverged; one comparison per check reads both. An iteration's bookkeeping stays a
    handful of small tensor operations: in abs mode with a check every iteration, the rounding-noise part of
    the floor (a norm of ``T(u)``) is computed only when the excess without it is positive, since adding
    it can only lower the excess.
    """

    def __init__(
        self, x0: Tensor, options: SolveOptions, track_best: bool, peel: Callable[[Tensor], Tensor] | None = None
    ) -> None:
        self.peel = peel or (lambda t: t)
        x0 = self.peel(x0)
        batch, device = x0.shape[0], x0.device
        self.options, self.tol = options, options.tol
        self.tracking = options.tol is not None
        self.ratio = options.divergence_ratio
        dtype = torch.promote_types(x0.dtype, torch.float32)
        self.eps = torch.finfo(dtype).eps
        self.cast = x0.dtype != dtype
        self.lazy_noise = options.stop_mode == "abs" and options.check_every == 1 and not options.keep_history
        # constants as tensors: an operation with a Python number costs more than one with a tensor
        self.tol_tensor = torch.tensor(self.tol if self.tracking else 0.0, dtype=dtype, device=device)
        self.eps_tensor = torch.tensor(self.eps, dtype=dtype, device=device)
        full = lambda value: torch.full((batch,), value, dtype=dtype, device=device)  # noqa: E731
        self.residual, self.lowest, self.lowest_abs = full(torch.inf), full(torch.inf), full(torch.inf)
        # the highest lowest residual and the excess, side by side: the stop decision reads both in one transfer
        self.scalars = torch.tensor([torch.inf, -torch.finfo(dtype).max], dtype=dtype, device=device)
        self.highest, self.excess = self.scalars[0], self.scalars[1]
        self.elapsed = torch.zeros(batch, dtype=torch.long, device=device)
        self.pending = torch.zeros(batch, dtype=torch.long, device=device)  # written by each record
        self.last_step = 0
        self.last: tuple[Any, Tensor, Tensor] | None = None  # rows, measure and T(x) of the latest record
        self.non_finite_end: Tensor | None = None  # a fixed depth: read from the last residual
        self.best: Tensor | None = x0.detach() if track_best and self.tracking else None
        self.history: list[tuple[Tensor, Tensor]] | None = [] if options.keep_history else None
        self.latest = (full(torch.nan), full(torch.nan)) if options.keep_history else None
        self.t_evals = 0

    def count(self) -> None:
        """An evaluation of T whose residual is not measured (the first half of a coupled reversible step)."""
        self.t_evals += 1

    def checks(self, step: int) -> bool:
        return self.tracking and step % self.options.check_every == 0

    @property
    def done(self) -> Tensor:
        """Each sample's convergence: its lowest residual met the tolerance (NaN residuals never do)."""
        return torch.le(self.lowest, self.tol_tensor)

    def record(self, x: Tensor, fx: Tensor, step: int, index: Tensor | None) -> None:
        """Account for ``fx = T(x)`` at iteration ``step`` (rows ``index`` only when given)."""
        self.t_evals += 1
        if not self.tracking and self.history is None:
            return
        x, fx = self.peel(x), self.peel(fx)
        if torch.is_grad_enabled():  # a solve recorded for unroll: the bookkeeping records nothing
            with torch.no_grad():
                return self._record(x, fx, step, index)
        self._record(x, fx, step, index)

    def _record(self, x: Tensor, fx: Tensor, step: int, index: Tensor | None) -> None:
        rows = slice(None) if index is None else index
        x, fx = (x, fx) if index is None else (x[index], fx[index])
        abs_res = self._cast(torch.linalg.vector_norm(fx - x, dim=1))
        fx_norm = None if self.lazy_noise else self._cast(torch.linalg.vector_norm(fx, dim=1))
        rel_mode = self.options.stop_mode == "rel"
        rel_res = abs_res / (fx_norm + _EPS) if rel_mode or self.history is not None else abs_res
        if self.history is not None:
            self._remember(rows, abs_res, rel_res)
        if self.tracking:
            measure = rel_res if rel_mode else abs_res
            self._update(rows, index, fx, step, measure)
            self._watch(rows, measure, abs_res, fx_norm)
            self.last = (rows, measure, fx)

    def _cast(self, norms: Tensor) -> Tensor:
        return norms.to(self.residual.dtype) if self.cast else norms

    def _update(self, rows, index: Tensor | None, fx: Tensor, step: int, measure: Tensor) -> None:
        """Best iterate, residual, lowest residual, and the evaluations of the samples not yet converged."""
        if self.best is not None:
            improved = (measure < self.residual[rows]) | ~torch.isfinite(measure)  # a NaN is written: it stays visible
            chosen = torch.where(improved[:, None], fx.detach(), self.best[rows])
            self.best = chosen if index is None else self.best.index_put((index,), chosen)  # out of place
            self.residual[rows] = torch.where(improved, measure, self.residual[rows])
        elif index is None:
            self.residual = measure
        else:
            self.residual[rows] = measure
        stride, self.last_step = step - self.last_step, step
        if index is None:
            pending = torch.gt(self.lowest, self.tol_tensor, out=self.pending)
            if stride == 1:  # cheaper without an alpha (measured)
                self.elapsed.add_(pending)
            else:
                self.elapsed.add_(pending, alpha=stride)
            torch.fmin(self.lowest, measure, out=self.lowest)  # fmin skips NaN
        else:
            lowest = self.lowest[rows]
            self.elapsed[rows] += torch.gt(lowest, self.tol_tensor) * stride
            self.lowest[rows] = torch.fmin(lowest, measure)

    def _watch(self, rows, measure: Tensor, abs_res: Tensor, fx_norm: Tensor | None) -> None:
        """Raise ``excess`` by this iteration's largest ``residual - ratio * floor``.

        The floor is the lowest residual so far, never below tol or rounding noise: a residual that reached
        exactly zero and then shows float noise has not diverged (without ``fx_norm``, the noise is left
        out until :meth:`_settle`). In rel mode the absolute residual is watched too: iterates running off
        to infinity can keep a bounded relative residual while their absolute residual grows without bound.
        """
        lowest = self.lowest if isinstance(rows, slice) else self.lowest[rows]
        if self.options.stop_mode == "abs":
            excess = self._abs_excess(lowest, measure, fx_norm)
            if fx_norm is None:  # lazy: every iteration is checked, so this one's excess is the running maximum
                torch.amax(excess, dim=0, out=self.excess)
            else:
                torch.maximum(self.excess, excess.max(), out=self.excess)
            return
        floor = lowest.clamp_min(max(self.tol, self.eps))
        if isinstance(rows, slice):
            lowest_abs = torch.fmin(self.lowest_abs, abs_res, out=self.lowest_abs)
        else:
            self.lowest_abs[rows] = lowest_abs = torch.fmin(self.lowest_abs[rows], abs_res)
        abs_floor = torch.maximum(lowest_abs, torch.mul(fx_norm, self.eps_tensor * 100))
        worst = torch.maximum(
            torch.sub(measure, floor, alpha=self.ratio).max(), torch.sub(abs_res, abs_floor, alpha=self.ratio).max()
        )
        torch.maximum(self.excess, worst, out=self.excess)

    @torch.no_grad()  # called from finished, where an unrolled solve records its graph
    def _settle(self) -> None:
        """The latest iteration's excess with the rounding noise in its floor (lazy mode, excess > 0 or NaN).

        Every earlier iteration was checked (one check per iteration) and found <= 0, so this iteration's
        value is the running maximum."""
        rows, measure, fx = self.last
        fx_norm = self._cast(torch.linalg.vector_norm(fx, dim=1))
        torch.amax(self._abs_excess(self.lowest[rows], measure, fx_norm), dim=0, out=self.excess)

    def _abs_excess(self, lowest: Tensor, measure: Tensor, fx_norm: Tensor | None) -> Tensor:
        """Per sample, ``residual - ratio * floor`` in abs mode: the floor is the lowest residual, at least tol,
        and at least the rounding noise ``eps * ||T(u)||`` when ``fx_norm`` is given."""
        floor = lowest.clamp_min(self.tol)
        if fx_norm is not None:
            floor = torch.maximum(floor, torch.mul(fx_norm, self.eps_tensor))
        return torch.sub(measure, floor, alpha=self.ratio)

    def _remember(self, rows, abs_res: Tensor, rel_res: Tensor) -> None:
        latest_abs, latest_rel = self.latest
        latest_abs[rows], latest_rel[rows] = abs_res, rel_res
        self.history.append((latest_abs.clone(), latest_rel.clone()))

    def _outcome(self) -> tuple[bool, bool, bool]:
        """(every sample converged, some residual non-finite, some diverged): one host synchronisation,
        and a second one only in lazy mode when the first shows a positive or non-finite excess."""
        torch.amax(self.lowest, dim=0, out=self.highest)
        highest, excess = self.scalars.tolist()
        if self.lazy_noise and not excess <= 0 and self.last is not None:
            self._settle()
            excess = self.excess.item()
        non_finite = math.isnan(excess) or excess == math.inf
        return highest <= self.tol, non_finite, excess > 0

    def finished(self, agree: Agreement | None) -> bool:
        """Every sample converged, or a failure; one host synchronisation (and an agreement)."""
        converged, non_finite, diverged = self._outcome()
        done = converged or non_finite or diverged
        return done if agree is None else agree(done)

    def pending_rows(self) -> Tensor | None:
        """Rows still to evaluate under freezing (None: all of them)."""
        pending = torch.gt(self.lowest, self.tol_tensor).nonzero().squeeze(1)
        return None if pending.numel() == self.lowest.numel() else pending

    def result(self, x: Tensor, fx: Tensor) -> tuple[Tensor, SolveStats]:
        """The returned point (best or latest ``T(x)``) and the solve's outcome."""
        with torch.no_grad():  # (a block, not a decorator: dynamo traces it without a graph break)
            return self._result(x, fx)

    def _result(self, x: Tensor, fx: Tensor) -> tuple[Tensor, SolveStats]:
        returned = fx if self.best is None else self.best
        scale = torch.linalg.vector_norm(self.peel(returned), dim=1).to(self.residual.dtype) + _EPS
        if not self.tracking:
            self.residual = torch.linalg.vector_norm(self.peel(fx - x), dim=1).to(self.residual.dtype)
            self.non_finite_end = ~torch.isfinite(self.residual).all()
        abs_res, rel_res = (
            (self.residual, self.residual / scale)
            if self.options.stop_mode == "abs" or not self.tracking
            else (self.residual * scale, self.residual)
        )
        history = None if self.history is None else History(*(torch.stack(h) for h in zip(*self.history)))
        done = self.done
        state = SolveStats(
            iterations=torch.where(done, self.elapsed, self.options.max_iter),
            abs_residual=abs_res,
            rel_residual=rel_res,
            converged=done,
            status=self._status(),
            t_evals=self.t_evals,
            history=history,
        )
        return returned, state

    def _capturing(self) -> bool:
        return self.residual.is_cuda and torch.cuda.is_current_stream_capturing()

    def _status(self) -> Status:
        if not self.tracking:  # traced (torch.compile, torch.export) or captured (a CUDA graph): no read; a NaN
            if torch.compiler.is_compiling() or self._capturing():  # shows in the output itself
                return Status.FIXED_DEPTH
            return Status.NON_FINITE if bool(self.non_finite_end) else Status.FIXED_DEPTH
        return Status.of_outcome(*self._outcome())  # the one synchronisation at the end
