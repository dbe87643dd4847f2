"""The driver's bookkeeping for small batches on the CPU, in Python numbers.

On a problem of a few samples an iteration of T costs a few microseconds, and each small tensor
operation of :class:`~jfb.solvers.driver.Tracker`'s per-sample bookkeeping costs about as much as T.
Here an iteration computes the residuals (two tensor operations), reads them (one ``tolist``, where the
device tracker reads its two scalars anyway) and keeps the rest in Python floats: the same outcome,
decisions and statistics as the device tracker (``tests/test_host_tracker.py`` runs both on the same
solves), at a fraction of the cost. The driver picks it only where a host read is free: a CPU tensor, a
batch of at most :data:`HOST_BATCH` samples, a fixed depth or a check every iteration in abs mode, no history,
outside ``torch.compile`` and ``torch.func`` transforms.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..status import Status
from .base import SolveStats
from .options import SolveOptions

#: the largest batch kept on the host. Measured (scripts/host-batch-threshold.py; docs/results/performance.md): a
#: tolerance solve of 10- and 100-dimensional problems took 0.45x the device tracker's time at 1 sample, 0.51-0.62x at
#: 8-16, 0.68-0.79x at 64, 0.83-0.90x at 128 and 1.05-1.08x at 256 (2-core AVX2-only EPYC); 64 keeps a margin for
#: CPU kinds whose Python is slower against their tensor operations
HOST_BATCH = 64
_EPS = 1e-12


def host_trackable(x0: Tensor, options: SolveOptions) -> bool:
    """Whether a solve from ``x0`` with these options may keep its bookkeeping on the host."""
    if torch.compiler.is_compiling():  # first: comparing a traced batch size would specialise the program to it
        return False
    kept = options.tol is None or (options.stop_mode == "abs" and options.check_every == 1)  # (a fixed depth: none)
    return kept and x0.device.type == "cpu" and not options.keep_history and x0.shape[0] <= HOST_BATCH


class HostTracker:
    """:class:`~jfb.solvers.driver.Tracker`'s interface and semantics (its docstring says them), in Python
    numbers: the lowest residuals, evaluations before convergence and the divergence excess per sample."""

    def __init__(self, x0: Tensor, options: SolveOptions, track_best: bool) -> None:
        self.batch = batch = x0.shape[0]
        self.max_iter, self.ratio = options.max_iter, options.divergence_ratio
        wide = x0.dtype == torch.float64  # (the device tracker's dtype: the state's, at least float32)
        self.dtype, self.numpy_dtype = (torch.float64, np.float64) if wide else (torch.float32, np.float32)
        self.eps = float(np.finfo(self.numpy_dtype).eps)
        self.tracking = options.tol is not None  # (a fixed depth measures the last step's residual only)
        self.tol = float(self.numpy_dtype(options.tol)) if self.tracking else 0.0  # compared as the device tracker does
        self.residual, self.lowest = [math.inf] * batch, [math.inf] * batch
        self.elapsed = [0] * batch
        self.excess = -math.inf
        self.best: Tensor | None = x0.detach() if track_best and self.tracking else None
        self.last: tuple[list[int] | None, list[float], Tensor] | None = None
        self.last_step, self.t_evals = 0, 0

    def checks(self, step: int) -> bool:
        return self.tracking

    def record(self, x: Tensor, fx: Tensor, step: int, index: Tensor | None) -> None:
        """Account for ``fx = T(x)`` at iteration ``step`` (rows ``index`` only when given)."""
        self.t_evals += 1
        if not self.tracking:
            return
        if torch.is_grad_enabled():  # a solve recorded for unroll: the bookkeeping records nothing
            x, fx = x.detach(), fx.detach()
        if index is None:
            rows, single = None, self.batch == 1
        else:
            rows, x, fx = index.tolist(), x[index], fx[index]
            single = len(rows) == 1
        measure = _norms(fx, x, single)
        if self.best is not None:
            self._keep_best(rows, index, fx, measure)
        stride, self.last_step = step - self.last_step, step
        tol, ratio, lowest, elapsed, excess = self.tol, self.ratio, self.lowest, self.elapsed, -math.inf
        residual = self.residual if self.best is None else None  # (with best iterates: written by _keep_best)
        for value, i in zip(measure, range(len(measure)) if rows is None else rows):
            if residual is not None:
                residual[i] = value
            if lowest[i] > tol:
                elapsed[i] += stride
            if value < lowest[i]:  # (False for NaN: the lowest residual skips it)
                lowest[i] = value
            gap = value - ratio * (lowest[i] if lowest[i] > tol else tol)
            if gap > excess or gap != gap:  # the largest gap; a NaN one stays
                excess = gap
        self.excess = excess  # every iteration is checked: this one's is the running maximum
        self.last = (rows, measure, fx)

    def _keep_best(self, rows: list[int] | None, index: Tensor | None, fx: Tensor, measure: list[float]) -> None:
        places = range(len(measure)) if rows is None else rows
        improved = [m < self.residual[i] or not math.isfinite(m) for m, i in zip(measure, places)]
        for m, i, better in zip(measure, places, improved):
            if better:
                self.residual[i] = m
        if index is None and all(improved):
            self.best = fx.detach()
            return
        mask = torch.tensor(improved, device=fx.device)[:, None]
        chosen = torch.where(mask, fx.detach(), self.best if index is None else self.best[index])
        self.best = chosen if index is None else self.best.index_put((index,), chosen)

    def _settle(self) -> None:
        """The latest iteration's excess with the rounding noise ``eps * ||T(u)||`` in its floor."""
        rows, measure, fx = self.last
        with torch.no_grad():
            norms = torch.linalg.vector_norm(fx, dim=1).tolist()
        excess = -math.inf
        for value, i, norm in zip(measure, range(len(measure)) if rows is None else rows, norms):
            gap = value - self.ratio * max(self.lowest[i], self.tol, norm * self.eps)
            if gap > excess or gap != gap:
                excess = gap
        self.excess = excess

    def _outcome(self) -> tuple[bool, bool, bool]:
        """(every sample converged, some residual non-finite, some diverged)."""
        if not self.excess <= 0 and self.last is not None:
            self._settle()
        excess = self.excess
        return max(self.lowest) <= self.tol, math.isnan(excess) or excess == math.inf, excess > 0

    def finished(self, agree: Any) -> bool:
        if self.excess <= 0:  # (the common case, every iteration: no failure, nothing to settle)
            done = max(self.lowest) <= self.tol
        else:
            converged, non_finite, diverged = self._outcome()
            done = converged or non_finite or diverged
        return done if agree is None else agree(done)

    def pending_rows(self) -> Tensor | None:
        pending = [i for i, lowest in enumerate(self.lowest) if lowest > self.tol]
        return None if len(pending) == len(self.lowest) else torch.from_numpy(np.array(pending, dtype=np.int64))

    def result(self, x: Tensor, fx: Tensor) -> tuple[Tensor, SolveStats]:
        """The returned point (best or latest ``T(x)``) and the solve's outcome."""
        returned = fx if self.best is None else self.best
        measured = returned
        if torch.is_grad_enabled():  # (an unrolled solve: the norms are no part of its graph)
            measured, fx, x = returned.detach(), fx.detach(), x.detach()
        scale = _norms(measured)
        if not self.tracking:
            self.residual = _norms(fx, x)
        done = [lowest <= self.tol for lowest in self.lowest]
        stats = SolveStats(  # (tensors made through numpy: torch.tensor of a list costs several times more)
            iterations=_tensor([e if d else self.max_iter for e, d in zip(self.elapsed, done)], np.int64),
            abs_residual=_tensor(self.residual, self.numpy_dtype),
            rel_residual=_tensor([r / (s + _EPS) for r, s in zip(self.residual, scale)], self.numpy_dtype),
            converged=_tensor(done, np.bool_),
            status=Status.of_outcome(*self._outcome()) if self.tracking else self._depth_status(),
            t_evals=self.t_evals,
        )
        return returned, stats

    def _depth_status(self) -> Status:
        finite = all(math.isfinite(r) for r in self.residual)
        return Status.FIXED_DEPTH if finite else Status.NON_FINITE


def _norms(a: Tensor, b: Tensor | None = None, single: bool | None = None) -> list[float]:
    """The rows' norms of ``a - b`` (of ``a`` without ``b``): one operation and one read for a single row."""
    if single if single is not None else a.shape[0] == 1:
        return [(torch.linalg.vector_norm(a) if b is None else torch.dist(a, b)).item()]
    return torch.linalg.vector_norm(a if b is None else a - b, dim=1).tolist()


def _tensor(values: list, dtype: type) -> Tensor:
    return torch.from_numpy(np.array(values, dtype=dtype))
