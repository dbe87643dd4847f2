"""Linear solvers for the IFT system ``(I - J^T) w = b``, on the whole batch as one vector.

The batch is treated as one system because an operator with batch statistics (BatchNorm in
training mode) couples the samples. A :class:`LinearSolver` gets the counted Jacobian products
(``vjp(v) = J^T v``, ``jvp(v) = J v``), returns ``(w, LinearSolveInfo)`` and stops when
``||b - (I - J^T) w|| <= tol * ||b||``. Built in, by name: ``fixed_point``, ``cg``, ``gmres``; add one with
:func:`jfb.register_linear_solver` and use it by name in ``ift:NAME`` and ``auto:linear_solver=NAME``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar, Protocol

import torch
from torch import Tensor

from ..errors import JfbError
from ..registry import Registry
from ..solvers.base import require_integer
from ..status import Status
from ..transforms import scalar

MatVec = Callable[[Tensor], Tensor]


#: the fixed-point iteration has made no progress when its residual has not halved in this many iterations
STALL_ITERATIONS = 10


@dataclass
class LinearSolveInfo:
    iterations: int
    relative_residual: float
    status: Status  # converged, max_iter, non_finite, or diverged (a fixed-point iteration that made no progress)
    #: the solver that finished the solve after the first one gave up (the fixed-point iteration's GMRES)
    fallback: str = ""


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum()


def _info(iterations: int, residual_norm: Tensor, b_norm: Tensor, tol: float) -> LinearSolveInfo:
    rel = scalar(residual_norm / b_norm) if scalar(b_norm) > 0 else 0.0
    if rel != rel or rel == float("inf"):
        return LinearSolveInfo(iterations, rel, Status.NON_FINITE)
    return LinearSolveInfo(iterations, rel, Status.CONVERGED if rel <= tol else Status.MAX_ITER)


def cg_normal(
    A: MatVec, At: MatVec, b: Tensor, tol: float, max_iter: int, w0: Tensor | None = None
) -> tuple[Tensor, LinearSolveInfo]:
    """Conjugate gradient on the normal equations ``A^T A w = A^T b`` (CGNR), as in the paper.

    Products: one ``A^T`` to start, then one ``A`` and one ``A^T`` per iteration (one ``A`` more from ``w0``).
    """
    w = torch.zeros_like(b) if w0 is None else w0
    r = b.clone() if w0 is None else b - A(w0)
    b_norm = b.norm()
    s = At(r)
    p = s
    s_sq = _dot(s, s)
    iterations = 0
    while iterations < max_iter and scalar(r.norm()) > tol * scalar(b_norm):
        q = A(p)
        alpha = s_sq / _dot(q, q)
        w = w + alpha * p
        r = r - alpha * q
        iterations += 1
        if scalar(r.norm()) <= tol * scalar(b_norm) or iterations == max_iter:
            break
        s = At(r)
        s_sq_new = _dot(s, s)
        p = s + (s_sq_new / s_sq) * p
        s_sq = s_sq_new
    return w, _info(iterations, r.norm(), b_norm, tol)


def fixed_point(
    Jt: MatVec, b: Tensor, tol: float, max_iter: int, w0: Tensor | None = None, stall: int | None = None
) -> tuple[Tensor, LinearSolveInfo]:
    """Iterate ``w <- J^T w + b`` from ``w0`` (default ``b``, one free step from 0); converges when the spectral radius
    of J is below 1.

    One ``J^T`` product per iteration; ``w_{k+1} - w_k`` is exactly the residual of ``w_k``. Returns the
    last iterate while the residuals keep falling, else the iterate of the smallest residual seen: where
    the iteration diverges (J's spectral radius reaches 1, as a DEQ that learns to carry information
    across a whole sequence does) the last iterate would be a gradient of arbitrary size. With ``stall``, it
    stops (status ``diverged``) once ``stall`` iterations have not halved the first residual.
    """
    w = b.clone() if w0 is None else w0
    b_norm = b.norm()
    res_norm, best, best_norm, first = b_norm, w, float("inf"), None
    iterations = 0
    while iterations < max_iter:
        w_next = Jt(w) + b
        res_norm = (w_next - w).norm()
        res = scalar(res_norm)
        first = res if first is None else first
        if res < best_norm:
            best, best_norm = w, res
        w = w_next
        iterations += 1
        if res <= tol * scalar(b_norm):
            break
        if stall is not None and iterations >= stall and not best_norm <= 0.5 * first:
            return best, LinearSolveInfo(iterations, best_norm / max(scalar(b_norm), 1e-300), Status.DIVERGED)
    if not scalar(res_norm) <= best_norm:  # the residuals rose at the end, or overflowed (NaN): the best iterate seen
        return best, _info(iterations, torch.tensor(best_norm, dtype=b_norm.dtype), b_norm, tol)
    return w, _info(iterations, res_norm, b_norm, tol)


def fixed_point_per_sample(
    Jt: MatVec, b: Tensor, tol: float, max_iter: int, w0: Tensor | None = None
) -> tuple[Tensor, LinearSolveInfo]:
    """:func:`fixed_point` with each sample's (row's) own tolerance, relative to its part of ``b``, and its own best
    iterate: a sample whose iteration diverges keeps an early iterate while the others run on (as torchdeq's
    backward solve does). Stops when every sample met its tolerance."""
    w = b.clone() if w0 is None else w0
    rows = b.shape[0]
    b_rows = b.reshape(rows, -1).norm(dim=1)
    best, best_res, shape = w, torch.full_like(b_rows, float("inf")), (rows, *[1] * (b.dim() - 1))
    iterations, better = 0, None
    while iterations < max_iter:
        w_next = Jt(w) + b
        res = (w_next - w).reshape(rows, -1).norm(dim=1)
        better = res < best_res
        best, best_res = torch.where(better.reshape(shape), w, best), torch.where(better, res, best_res)
        w, iterations = w_next, iterations + 1
        if bool((best_res <= tol * b_rows).all()):
            break
    if better is not None:  # a sample whose residuals still fell at the end: its last iterate, one step further
        best = torch.where(better.reshape(shape), w, best)
    return best, _info(iterations, best_res.norm(), b_rows.norm(), tol)


def gmres(
    A: MatVec, b: Tensor, tol: float, max_iter: int, restart: int = 30, w0: Tensor | None = None
) -> tuple[Tensor, LinearSolveInfo]:
    """Restarted GMRES from ``w0`` (default 0); one ``A`` product per Arnoldi step plus one per cycle for the true
    residual (and one for the first, from ``w0``)."""
    w = torch.zeros_like(b) if w0 is None else w0
    b_norm = b.norm()
    r = b.clone() if w0 is None else b - A(w0)
    iterations = 0
    while iterations < max_iter and scalar(r.norm()) > tol * scalar(b_norm):
        correction, used = _gmres_cycle(A, r, min(restart, max_iter - iterations), tol * scalar(b_norm))
        w = w + correction
        iterations += used
        r = b - A(w)
    return w, _info(iterations, r.norm(), b_norm, tol)


def _gmres_cycle(A: MatVec, r: Tensor, steps: int, abs_tol: float) -> tuple[Tensor, int]:
    """One Arnoldi cycle from residual ``r``; returns the correction to ``w`` and the steps used."""
    beta = r.norm()
    basis = [r / beta]
    H = torch.zeros(steps + 1, steps, dtype=r.dtype, device=r.device)
    k = 0
    for k in range(steps):
        v = A(basis[k])
        for i, q in enumerate(basis):
            H[i, k] = _dot(v, q)
            v = v - H[i, k] * q
        H[k + 1, k] = v.norm()
        e1 = torch.zeros(k + 2, dtype=r.dtype, device=r.device)
        e1[0] = beta
        y = torch.linalg.lstsq(H[: k + 2, : k + 1], e1[:, None]).solution[:, 0]
        residual = (H[: k + 2, : k + 1] @ y - e1).norm()
        if scalar(H[k + 1, k]) <= 1e-14 * scalar(beta) or scalar(residual) <= abs_tol or k == steps - 1:
            break
        basis.append(v / H[k + 1, k])
    return sum(y[i] * basis[i] for i in range(k + 1)), k + 1


class JacobianMatVecs(Protocol):
    """The products a linear solver may use (:class:`jfb.backward.jacobian.JacobianProducts`)."""

    def vjp(self, v: Tensor) -> Tensor: ...

    def jvp(self, v: Tensor) -> Tensor: ...


class LinearSolver:
    """Solves ``(I - J^T) w = b``; subclasses set ``name`` and implement :meth:`solve`.

    ``solve(products, b, tol, max_iter, w0=None)``: ``w0`` is an initial guess (a warm start, SHINE's estimate), passed
    only to a solver whose ``takes_initial_guess`` flag is set."""

    name: ClassVar[str] = ""
    takes_initial_guess: ClassVar[bool] = False

    def solve(
        self, products: JacobianMatVecs, b: Tensor, tol: float, max_iter: int, w0: Tensor | None = None
    ) -> tuple[Tensor, LinearSolveInfo]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name or type(self).__name__


class FixedPointIteration(LinearSolver):
    """``w <- J^T w + b``: one ``J^T`` product per iteration; needs a spectral radius of J below 1.

    ``fallback="gmres"``: when the iteration makes no progress (its first residual not halved in
    :data:`STALL_ITERATIONS` iterations: an eigenvalue of J on or outside the unit circle) GMRES finishes the solve
    from its best iterate with the iterations left. Off by default (``"none"``: the best iterate, reported as
    missed): where J is not a contraction the truncated series trains better than the linear system's solution
    (measured on the language-model workload, docs/results/exact-gradients.md), although for a well-posed system
    such as ``u = cos(u) + pi/2`` (J = -1) the solution is the right derivative. ``per_sample=True``: each
    sample's own tolerance and best iterate (:func:`fixed_point_per_sample`; for operators that do not couple the
    samples)."""

    name = "fixed_point"
    takes_initial_guess = True

    def __init__(self, fallback: str = "none", per_sample: bool = False) -> None:
        if fallback not in ("gmres", "none"):
            raise JfbError(f"fixed_point fallback must be 'gmres' or 'none', got {fallback!r}")
        if per_sample and fallback != "none":
            raise JfbError("fixed_point: per_sample=1 takes no fallback")
        self.fallback, self.per_sample = fallback, bool(per_sample)

    def solve(
        self, products: JacobianMatVecs, b: Tensor, tol: float, max_iter: int, w0: Tensor | None = None
    ) -> tuple[Tensor, LinearSolveInfo]:
        if self.per_sample:
            return fixed_point_per_sample(products.vjp, b, tol, max_iter, w0)
        stall = STALL_ITERATIONS if self.fallback == "gmres" else None
        w, info = fixed_point(products.vjp, b, tol, max_iter, w0, stall)
        if info.status != Status.DIVERGED:  # (only a stall check, the fallback's, reports diverged)
            return w, info
        start = w if bool(torch.isfinite(w).all()) else None
        left = max(max_iter - info.iterations, 1)
        w, rest = gmres(lambda v: v - products.vjp(v), b, tol, left, 30, start)
        return w, replace(rest, iterations=info.iterations + rest.iterations, fallback="gmres")

    def __repr__(self) -> str:
        return (
            self.name
            + ("" if self.fallback == "none" else f":fallback={self.fallback}")
            + (":per_sample=1" if self.per_sample else "")
        )


class NormalCG(LinearSolver):
    """Conjugate gradient on the normal equations (the paper's choice): ``J`` and ``J^T`` products."""

    name = "cg"
    takes_initial_guess = True

    def solve(
        self, products: JacobianMatVecs, b: Tensor, tol: float, max_iter: int, w0: Tensor | None = None
    ) -> tuple[Tensor, LinearSolveInfo]:
        return cg_normal(lambda v: v - products.vjp(v), lambda v: v - products.jvp(v), b, tol, max_iter, w0)


class GMRES(LinearSolver):
    """Restarted GMRES (``restart`` Krylov vectors kept): needs no contraction; ``J^T`` products only."""

    name = "gmres"
    takes_initial_guess = True

    def __init__(self, restart: int = 30) -> None:
        require_integer("gmres restart", restart, 1)
        self.restart = restart

    def solve(
        self, products: JacobianMatVecs, b: Tensor, tol: float, max_iter: int, w0: Tensor | None = None
    ) -> tuple[Tensor, LinearSolveInfo]:
        return gmres(lambda v: v - products.vjp(v), b, tol, max_iter, self.restart, w0)

    def __repr__(self) -> str:
        return self.name + ("" if self.restart == 30 else f":restart={self.restart}")


LINEAR_SOLVERS: Registry[LinearSolver] = Registry("IFT linear solver", LinearSolver)


def register_linear_solver(
    name: str, factory: Callable[..., LinearSolver], usage: str = "", *, replace: bool = False
) -> None:
    """Make ``factory(**options) -> LinearSolver`` usable by ``ift:NAME`` and ``auto:linear_solver=NAME``."""
    LINEAR_SOLVERS.register(name, factory, usage, replace=replace)


register_linear_solver("cg", NormalCG)
register_linear_solver("fixed_point", FixedPointIteration, "fixed_point[:fallback=gmres|none][:per_sample=1]")
register_linear_solver("gmres", GMRES, "gmres[:restart=N]")
