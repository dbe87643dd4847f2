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

import numpy as np
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


def require_integer(name: str, value: object, minimum: int, hint: str = "") -> None:
    """ValueError unless ``value`` is an int (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}{hint}, got {value!r}")


def per_sample_norm(v: Tensor) -> Tensor:
    """2-norm over all non-batch dimensions (no copy for channels-last tensors)."""
    return torch.linalg.vector_norm(v, dim=tuple(range(1, v.dim()))) if v.dim() > 1 else v.abs()


class SampleLayout:
    """Flattens a batch to ``(batch, features)`` in its memory order, and back.

    Anderson and Broyden work on flat vectors, and norms and inner products do not depend on the
    order of the features; flattening a channels-last tensor in its own (NHWC) order is a view
    each way, so the operator keeps receiving channels-last inputs and no copy is made.
    """

    def __init__(self, like: Tensor) -> None:
        self.shape = like.shape
        self.channels_last = like.dim() == 4 and not like.is_contiguous() and like.is_contiguous(memory_format=torch.channels_last)

    def flatten(self, t: Tensor) -> Tensor:
        return (t.permute(0, 2, 3, 1) if self.channels_last else t).reshape(t.shape[0], -1)

    def unflatten(self, flat: Tensor) -> Tensor:
        if self.channels_last:
            _, channels, height, width = self.shape
            return flat.view(-1, height, width, channels).permute(0, 3, 1, 2)
        return flat.view(-1, *self.shape[1:])


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
        self.device, self.dtype, self.eps = u0.device, u0.dtype, torch.finfo(u0.dtype).eps
        self.best = u0.detach().clone() if track_best else None
        # per-sample bookkeeping on the host: a handful of length-batch vectors per iteration,
        # where a tensor op each would cost more dispatch time than the arithmetic. Only the
        # stopping measure (abs or rel) is stored; the other one is derived from the returned
        # iterates' norms in ``state`` (each stored residual belongs to the returned iterate)
        self.residual = np.full(batch, np.inf)
        self.iterations = np.full(batch, max_iter, dtype=np.int64)
        self.done_samples = np.zeros(batch, dtype=bool)
        self.lowest = np.full(batch, np.inf)
        self.lowest_abs = np.full(batch, np.inf)
        self.non_finite = False
        self.diverged = False
        self.history: Optional[list[float]] = [] if keep_history else None
        self.t_evals = 0

    @property
    def converged(self) -> Tensor:
        """Per-sample convergence as a bool tensor on the iterates' device (for masking)."""
        return torch.from_numpy(self.done_samples.copy()).to(self.device)

    @torch.no_grad()
    def update(self, u: Tensor, fu: Tensor, step: int, index: Optional[Tensor] = None) -> None:
        """Record ``fu = T(u)`` for the samples ``index`` (all when None) at iteration ``step``."""
        idx = slice(None) if index is None else index.cpu().numpy()
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):  # NaN / inf are handled below
            if self.stop_mode == "abs":  # one norm per iteration; ||T(u)|| only when divergence is suspected
                measure = abs_res = _host(per_sample_norm(fu - u))
                fu_norm = None
            else:
                abs_res, fu_norm = _host(torch.stack([per_sample_norm(fu - u), per_sample_norm(fu)]))
                measure = abs_res / (fu_norm + _EPS)
            finite = np.isfinite(measure)
            # non-finite samples are written too, so that a NaN is visible in the output
            improved = (measure < self.residual[idx]) | ~finite
            self._write_best(idx, index, improved, fu, measure)
            met = measure <= self.tol
            newly_met = met & ~self.done_samples[idx]
            if newly_met.any():
                self.iterations[idx] = np.where(newly_met, step, self.iterations[idx])
                self.done_samples[idx] = self.done_samples[idx] | met
            self.lowest[idx] = np.fmin(self.lowest[idx], measure)  # fmin skips NaN; inf never lowers it
            self.non_finite = self.non_finite or not bool(finite.all())
            self.diverged = self.diverged or self._diverging(idx, measure, abs_res, fu_norm, fu)
        if self.history is not None:
            self.history.append(float(measure.max()))

    def _diverging(self, idx, measure: np.ndarray, abs_res: np.ndarray, fu_norm: Optional[np.ndarray], fu: Tensor) -> bool:
        """Residual grown ``divergence_ratio`` times over its best, never below tol or rounding noise.

        A residual that reached exactly zero and then shows float noise has not diverged. In rel
        mode the absolute residual is watched too: iterates running off to infinity can keep a
        bounded relative residual while their absolute residual grows without bound.
        """
        floor = np.maximum(self.lowest[idx], self.tol)
        if self.stop_mode == "abs":
            if not (measure > self.divergence_ratio * floor).any():
                return False
            noise = self.eps * _host(per_sample_norm(fu))
            return bool((measure > self.divergence_ratio * np.maximum(floor, noise)).any())
        if bool((measure > self.divergence_ratio * np.maximum(floor, self.eps)).any()):
            return True
        self.lowest_abs[idx] = np.fmin(self.lowest_abs[idx], abs_res)
        abs_floor = np.maximum(self.lowest_abs[idx], 100 * self.eps * fu_norm)
        return bool((abs_res > self.divergence_ratio * abs_floor).any())

    def _write_best(self, idx, index: Optional[Tensor], improved: np.ndarray, fu: Tensor, measure: np.ndarray) -> None:
        """Keep the lowest-residual iterate per sample (or the latest one when not tracking)."""
        if self.best is None:
            self.residual[idx] = measure
            return
        self.residual[idx] = np.where(improved, measure, self.residual[idx])
        if index is None and improved.all():
            self.best = fu.detach()
            return
        mask = torch.from_numpy(improved).to(self.device)
        if index is None:
            self.best = torch.where(mask.view(-1, *([1] * (fu.dim() - 1))), fu.detach(), self.best)
        else:  # out of place: ``best`` may be a tensor the solver handed over earlier
            self.best = self.best.index_put((index[mask],), fu.detach()[mask])

    def finished(self) -> bool:
        """Whether to stop iterating: every sample converged, or a failure (agreed across processes)."""
        done = bool(self.done_samples.all()) or self.non_finite or self.diverged
        return done if self.agree is None else self.agree(done)

    def state(self, returned: Tensor) -> SolverState:
        """The solve's outcome; ``returned`` is the solver's output (``T(u)`` of each stored residual)."""
        if self.non_finite:
            status = "non_finite"
        elif self.diverged:
            status = "diverged"
        elif bool(self.done_samples.all()):
            status = "converged"
        else:
            status = "max_iter"
        with np.errstate(invalid="ignore", over="ignore"):
            scale = _host(per_sample_norm(returned.detach())) + _EPS
            abs_res, rel_res = (self.residual, self.residual / scale) if self.stop_mode == "abs" else (self.residual * scale, self.residual)
        as_tensor = lambda values: torch.from_numpy(values).to(self.device, self.dtype)  # noqa: E731
        return SolverState(
            iterations=torch.from_numpy(self.iterations).to(self.device),
            abs_residual=as_tensor(abs_res),
            rel_residual=as_tensor(rel_res),
            converged=self.converged,
            status=status,
            t_evals=self.t_evals,
            history=self.history or [],
        )


def _host(values: Tensor) -> np.ndarray:
    """Per-sample values as float64 on the host."""
    return values.double().cpu().numpy()
