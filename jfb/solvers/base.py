"""Shared pieces of the fixed-point solvers: the result state, residuals and stopping.

Every solver has the signature ``solve(f, u0, *, tol, max_iter, ...) -> (u, SolverState)`` where
``f(u, index)`` evaluates T on the samples ``index`` of the batch (``index=None`` means all of
them).  Residuals are per sample: ``||T(u_k) - u_k||`` with the norm over all non-batch
dimensions, and the relative residual divides it by ``||T(u_k)||``. With ``agree`` (data-parallel
training with collectives inside T, see :mod:`jfb.lockstep`) all processes stop together.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor

Operator = Callable[[Tensor, Optional[Tensor]], Tensor]
#: ``agree(locally_done) -> stop``: turns this process's stopping decision into one shared by
#: all processes (see :mod:`jfb.lockstep`); called exactly once per iteration when given
Agreement = Callable[[bool], bool]

STATUSES = ("converged", "max_iter", "diverged", "non_finite")
STOP_MODES = ("abs", "rel")
_EPS = 1e-12


@dataclass
class SolverState:
    """What a forward solve did.

    ``iterations[i]`` is the number of T evaluations after which sample ``i`` first met the
    tolerance (``max_iter`` when it never did).  ``status`` is the worst outcome over the batch,
    in the order non_finite > diverged > max_iter > converged.
    """

    iterations: Tensor
    abs_residual: Tensor
    rel_residual: Tensor
    converged: Tensor
    status: str
    t_evals: int
    history: list[float] = field(default_factory=list)

    @property
    def max_iterations(self) -> int:
        return int(self.iterations.max()) if self.iterations.numel() else 0


def per_sample_norm(v: Tensor) -> Tensor:
    return v.reshape(v.shape[0], -1).norm(dim=1)


class ResidualTracker:
    """Per-sample bookkeeping shared by all solvers: residuals, convergence, the best iterate.

    Keeps, for every sample, the iterate with the smallest residual seen so far, so a solver
    that oscillates (Anderson, Broyden) never returns a worse point than one it already had.
    """

    def __init__(
        self,
        u0: Tensor,
        tol: float,
        max_iter: int,
        stop_mode: str,
        divergence_ratio: float,
        keep_history: bool,
        track_best: bool = True,
        agree: Optional[Agreement] = None,
    ) -> None:
        batch = u0.shape[0]
        self.tol, self.max_iter, self.stop_mode = tol, max_iter, stop_mode
        self.divergence_ratio = divergence_ratio
        self.agree = agree
        self.best = u0.detach().clone() if track_best else None
        device = u0.device
        self.abs_residual = torch.full((batch,), float("inf"), device=device, dtype=u0.dtype)
        self.rel_residual = self.abs_residual.clone()
        self.iterations = torch.full((batch,), max_iter, device=device, dtype=torch.long)
        self.converged = torch.zeros(batch, dtype=torch.bool, device=device)
        self.lowest = self.abs_residual.clone()
        self.lowest_abs = self.abs_residual.clone()
        self.non_finite = False
        self.diverged = False
        self.history: Optional[list[float]] = [] if keep_history else None
        self.t_evals = 0

    @torch.no_grad()
    def update(self, u: Tensor, fu: Tensor, step: int, index: Optional[Tensor] = None) -> Tensor:
        """Record ``fu = T(u)`` for the samples ``index`` (all when None) at iteration ``step``.

        Returns the per-sample residual that the stopping rule uses, for those samples.
        """
        abs_res = per_sample_norm(fu - u)
        fu_norm = per_sample_norm(fu)
        rel_res = abs_res / (fu_norm + _EPS)
        measure = abs_res if self.stop_mode == "abs" else rel_res
        idx = index if index is not None else slice(None)
        finite = torch.isfinite(measure)
        # non-finite samples are written too, so that a NaN is visible in the output
        improved = (measure < self._stored(idx)) | ~finite
        self._write_best(idx, improved, fu, abs_res, rel_res)
        newly = (measure <= self.tol) & ~self.converged[idx]
        self.iterations[idx] = torch.where(newly, torch.full_like(self.iterations[idx], step), self.iterations[idx])
        self.converged[idx] = self.converged[idx] | (measure <= self.tol)
        self.lowest[idx] = torch.minimum(self.lowest[idx], torch.where(finite, measure, self.lowest[idx]))
        self.non_finite = self.non_finite or not bool(finite.all())
        # relative to the best residual so far, but never below tol or rounding noise: a residual
        # that reached exactly zero and then shows float noise has not diverged
        noise = torch.finfo(fu.dtype).eps * (fu_norm if self.stop_mode == "abs" else torch.ones_like(fu_norm))
        floor = torch.maximum(self.lowest[idx].clamp_min(self.tol), noise)
        self.diverged = self.diverged or bool((measure > self.divergence_ratio * floor).any())
        if self.stop_mode == "rel":
            # iterates running off to infinity can keep a bounded relative residual; their absolute
            # residual grows without bound (floored at rounding noise)
            self.lowest_abs[idx] = torch.minimum(self.lowest_abs[idx], torch.where(finite, abs_res, self.lowest_abs[idx]))
            abs_floor = torch.maximum(self.lowest_abs[idx], 100 * torch.finfo(fu.dtype).eps * fu_norm)
            self.diverged = self.diverged or bool((abs_res > self.divergence_ratio * abs_floor).any())
        if self.history is not None:
            self.history.append(float(measure.max()))
        return measure

    def _stored(self, idx) -> Tensor:
        return self.abs_residual[idx] if self.stop_mode == "abs" else self.rel_residual[idx]

    def _write_best(self, idx, improved: Tensor, fu: Tensor, abs_res: Tensor, rel_res: Tensor) -> None:
        """Keep the lowest-residual iterate per sample (or the latest one when not tracking)."""
        if self.best is None:
            self.abs_residual[idx] = abs_res
            self.rel_residual[idx] = rel_res
            return
        if isinstance(idx, slice):
            mask = improved.view(-1, *([1] * (fu.dim() - 1)))
            self.best = torch.where(mask, fu.detach(), self.best)
            self.abs_residual = torch.where(improved, abs_res, self.abs_residual)
            self.rel_residual = torch.where(improved, rel_res, self.rel_residual)
            return
        rows = idx[improved]
        self.best[rows] = fu.detach()[improved]
        self.abs_residual[rows] = abs_res[improved]
        self.rel_residual[rows] = rel_res[improved]

    def finished(self) -> bool:
        """Whether to stop iterating: every sample converged, or a failure (agreed across processes)."""
        done = bool(self.converged.all()) or self.non_finite or self.diverged
        return done if self.agree is None else self.agree(done)

    def state(self) -> SolverState:
        if self.non_finite:
            status = "non_finite"
        elif self.diverged:
            status = "diverged"
        elif bool(self.converged.all()):
            status = "converged"
        else:
            status = "max_iter"
        return SolverState(
            iterations=self.iterations,
            abs_residual=self.abs_residual,
            rel_residual=self.rel_residual,
            converged=self.converged,
            status=status,
            t_evals=self.t_evals,
            history=self.history or [],
        )
