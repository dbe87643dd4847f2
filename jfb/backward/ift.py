"""Jacobian-based gradient via the implicit function theorem."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..errors import JfbError
from ..solvers.base import require_integer, require_number
from ..transforms import (
    TRANSFORMS,
    InnerLayers,
    active,
    derivative_levels,
    differentiated_check,
    forward_over_reverse,
    reverse_detached,
)
from .base import BackwardMode, BackwardStats, FixedPointMap, GradientOverride, tensors_with_grad
from .jacobian import JacobianProducts, TransposedProducts, with_products
from .linear import LINEAR_SOLVERS, LinearSolver

#: chosen by measurement (README, "Backward modes"): the fixed-point iteration w <- J^T w + g was the
#: fastest per step on the MNIST model and on a conv DEQ (0.37x and 0.31x of CG's time; CG also hit
#: its cap on the conv DEQ), keeps memory constant in the number of iterations (GMRES, which met the
#: tolerance on both, stores up to 30 Krylov vectors), and needs only J^T products, so it also runs
#: under torch.compile (CG's J products need double backward). Select "ift:gmres" for a Jacobian
#: with eigenvalues near 1, where the fixed-point iteration stalls; a missed tolerance is reported.
DEFAULT_LINEAR_SOLVER = "fixed_point"


class IFT(BackwardMode):
    """Solve ``(I - J^T) w = dl/du*`` and backpropagate ``w`` through one application of T.

    ``linear_solver``: ``fixed_point`` (default: ``w <- J^T w + g``), ``gmres``, ``cg`` (conjugate
    gradient on the normal equations, the paper's choice), a name added with
    :func:`jfb.register_linear_solver` or a :class:`~jfb.backward.linear.LinearSolver` instance; further
    keywords are its options (``"ift:gmres:restart=20"``). ``tol`` is relative to ``||dl/du*||``.
    ``max_iter=None`` means "the forward solve's max_iter" (the paper's setting), read at every call, so it
    follows later changes of the layer's options. A solve that misses ``tol`` follows the layer's
    ``on_failure``. The Jacobian is taken at the layer's output ``T(u*)`` rather than at ``u*`` (as torchdeq does;
    the two coincide at a fixed point): where the forward solve stops short, as at a fixed training depth, the
    gradient then belongs to the point the layer reports (on the language-model workload: 2.963 bits per byte
    against 3.079 at ``u*``, docs/results/exact-gradients.md). ``warm_start=True`` starts each backward solve
    from the previous call's solution when it has the same shape (a layer keeps its mode, so the previous call is
    the layer's; calls under torch.func transforms and second derivatives start cold). ``tol_end`` with
    ``tol_solves=N`` is a tolerance schedule, loose early and tight late: the k-th gradient solve of this mode
    (one per training step for a layer called once a step) uses ``tol * (tol_end / tol) ** (min(k, N) / N)``,
    ``tol`` at the first and ``tol_end`` from the N-th on; other solves (tangents, second derivatives) use the
    current one. By name: ``"ift"``, ``"ift:cg"``, ``"ift:cg:tol=1e-8:max_iter=100"``,
    ``"ift:anderson:warm_start=1"``, ``"ift:tol=1e-2:tol_end=1e-6:tol_solves=600"``.
    """

    supports_second_order = True
    transforms = frozenset(TRANSFORMS)
    lockstep_safe = False  # the linear solve stops at its own tolerance on each process

    def __init__(
        self,
        linear_solver: str | LinearSolver = DEFAULT_LINEAR_SOLVER,
        tol: float = 1e-6,
        max_iter: int | None = None,
        warm_start: bool = False,
        tol_end: float | None = None,
        tol_solves: int | None = None,
        **linear_options: Any,
    ) -> None:
        self.linear_solver = LINEAR_SOLVERS.build(linear_solver, **linear_options)
        if warm_start and not self.linear_solver.takes_initial_guess:
            raise JfbError(f"IFT warm_start: linear solver {self.linear_solver!r} takes no initial guess")
        self.warm_start, self.previous = bool(warm_start), None
        require_number("IFT tol", tol, 0)
        if max_iter is not None:
            require_integer("IFT max_iter", max_iter, 1, hint=" or None (the forward max_iter)")
        self.tol, self.max_iter = tol, max_iter
        self.tol_end, self.tol_solves = _tolerance_schedule(tol_end, tol_solves), tol_solves
        self.gradient_solves = 0  # the gradient solves made so far, which the tolerance schedule counts
        self.name = f"ift:{self.linear_solver!r}"

    def current_tol(self) -> float:
        """The tolerance of the next gradient solve (``tol`` without a schedule)."""
        if self.tol_end is None:
            return self.tol
        fraction = min(self.gradient_solves, self.tol_solves) / self.tol_solves
        return self.tol * (self.tol_end / self.tol) ** fraction

    def attach(self, T: FixedPointMap, u_star: Tensor, stats: BackwardStats) -> Tensor:
        out = T(u_star.detach())
        point = out.detach()  # J is taken at the output T(u*), the point the layer reports (see the class docstring)
        if not out.requires_grad and not derivative_levels():  # (forward mode's tangents show no requires_grad)
            return out
        max_iter = self.max_iter or T.forward_max_iter
        if forward_over_reverse():
            return self._attach_forward_over_reverse(T, point, out, stats, max_iter)
        if len(derivative_levels()) > 1:
            self._refuse_func_second_order()  # before functorch's own rules fail less clearly
        inputs = tensors_with_grad(out, T.inputs())
        differentiated, tangent_differentiated = differentiated_check(), differentiated_check(False)

        def implicit_gradient(grad: Tensor, value: Tensor) -> tuple[Tensor | None, ...]:
            second = differentiated()
            if second:
                self._refuse_func_second_order()
            w = self._linear_solve(T, point, grad, max_iter, stats, warm=not second)
            if not second:  # backpropagate w through the output's application of T
                return (w, *(None,) * len(inputs))
            u = value - (value - point).detach()  # the point, with u*'s implicit derivative (this node's)
            w = self._differentiable(T, u, w, grad, max_iter, stats)
            stats.t_evals += 1
            return (None, *_partials(T, u, w, inputs))

        def implicit_tangent(tangent: Tensor) -> Tensor:  # (I - J)^{-1} t: the tangent of u* from T's own
            if tangent_differentiated():
                self._refuse_func_second_order()
            return self._linear_solve(T, point, tangent, max_iter, stats, transposed=True)

        return GradientOverride.apply(implicit_gradient, implicit_tangent, out, *inputs)

    def _attach_forward_over_reverse(
        self, T: FixedPointMap, point: Tensor, out: Tensor, stats: BackwardStats, max_iter: int
    ) -> Tensor:
        """The attachment for ``torch.func.hessian`` (a ``jvp`` over the ``grad`` that called the layer).

        ``out`` is ``T(u*)``, ``point`` its value (where J is taken). ``u`` is ``u*`` carrying its implicit
        tangent ``(I - J)^{-1} (dT/dx) dx`` at the
        ``jvp`` level but no reverse-mode history, so ``T(u)`` has the tangent ``J du* + (dT/dx) dx = du*`` (the
        fixed point's own) and its recorded graph holds every mixed second-order term of T. The backward pass
        replaces the incoming ``g`` by ``w = (I - J^T)^{-1} g``, attached as the fixed point of ``J(u)^T w + g``
        so that its tangent is ``(I - J^T)^{-1} (dJ^T w + dg)``.
        """
        layers = InnerLayers()

        def fixed_point_tangent(tangent: Tensor) -> Tensor:
            with layers.restored():  # T's inputs are wrapped at the grad level, which a jvp rule runs below
                return self._linear_solve(T, point, tangent, max_iter, stats, transposed=True)

        u = reverse_detached(GradientOverride.apply(_no_gradient, fixed_point_tangent, out))
        out, transposed_products = torch.func.vjp(T, u)  # now, while T's parameters are those the caller passed
        stats.t_evals += 1

        def implicit_gradient(grad: Tensor, value: Tensor) -> tuple[Tensor]:
            w = self._linear_solve(T, point, grad, max_iter, stats)
            (jt_w,) = transposed_products(w)
            stats.j_matvecs += 1

            def w_tangent(tangent: Tensor) -> Tensor:
                return self._linear_solve(T, point, tangent, max_iter, stats)

            return (GradientOverride.apply(_no_gradient, w_tangent, jt_w + grad),)

        return GradientOverride.apply(implicit_gradient, _same, out)

    def _refuse_func_second_order(self) -> None:
        if active():
            raise JfbError(
                f"of the torch.func second derivatives through backward {self.name!r} only torch.func.hessian (jacfwd "
                "of jacrev) is supported, not jacrev of jacrev or jacfwd of jacfwd; or take them with torch.autograd "
                "(create_graph=True, torch.autograd.functional.hessian), or use backward 'unroll', 'phantom:K' or 'jfb'"
            )

    def _linear_solve(
        self,
        T: FixedPointMap,
        point: Tensor,
        b: Tensor,
        max_iter: int,
        stats: BackwardStats,
        transposed: bool = False,
        warm: bool = False,
    ) -> Tensor:
        """``(I - J^T)^{-1} b`` (``transposed``: ``(I - J)^{-1} b``) with J at ``point``; ``warm``: the gradient's own
        solve, which a warm start may start from the previous one and which advances the tolerance schedule."""
        tol = self.current_tol()
        self.gradient_solves += int(warm)
        warm = warm and self.warm_start and not active()

        def solve(products: JacobianProducts, rhs: Tensor) -> Tensor:
            w0 = self.previous if warm and _same_kind(self.previous, rhs) else None
            w = self._solve(TransposedProducts(products) if transposed else products, rhs, max_iter, T, stats, tol, w0)
            self.previous = w.detach() if warm else self.previous
            return w

        return with_products(T, point, b, solve)

    def _solve(
        self,
        products: Any,
        b: Tensor,
        max_iter: int,
        T: FixedPointMap,
        stats: BackwardStats,
        tol: float,
        w0: Tensor | None = None,
    ) -> Tensor:
        """The linear solve (``(I - J^T) w = b``, or with transposed products ``(I - J) v = b``), counted."""
        stats.t_evals += 1
        with torch.no_grad():
            guess = {} if w0 is None else {"w0": w0}
            w, info = self.linear_solver.solve(products, b, tol, max_iter, **guess)
        stats.j_matvecs += products.count
        stats.iterations, stats.relative_residual, stats.status = info.iterations, info.relative_residual, info.status
        stats.fallback = info.fallback
        T.report(f"backward linear solve ({self.name})", stats, f", relative residual {stats.relative_residual:.3g}")
        return w

    def _differentiable(
        self, T: FixedPointMap, u: Tensor, w: Tensor, grad: Tensor, max_iter: int, stats: BackwardStats
    ) -> Tensor:
        """``w`` as a differentiable function of ``grad``, ``u`` and what T depends on.

        ``w`` is the fixed point of ``F(w) = J(u*)^T w + grad``, so it is attached like a fixed point:
        ``F(w)`` evaluated with a graph (its value is ``w``), whose incoming gradient ``v`` is replaced by
        ``(I - J)^{-1} v`` (the implicit function theorem again, with ``dF/dw = J^T``). ``u`` carries ``u*``'s
        own implicit derivative (the output's hook), so every term of the second derivative is present.
        """
        with torch.enable_grad(), T.frozen():
            (jt_w,) = torch.autograd.grad(T(u), u, w.detach(), create_graph=True)
        stats.t_evals += 1
        stats.j_matvecs += 1
        attached = jt_w + grad

        def inverse_transpose(v: Tensor) -> Tensor:
            if torch.is_grad_enabled():
                raise JfbError(
                    f"third derivatives through backward {self.name!r} are not supported "
                    "(the backward pass of a second derivative ran with create_graph=True)"
                )
            products = TransposedProducts(JacobianProducts(*T.linearization(u)))
            return self._solve(products, v, max_iter, T, stats, self.current_tol())

        if attached.requires_grad:
            attached.register_hook(inverse_transpose)
        return attached

    def __repr__(self) -> str:
        extra = "" if self.tol == 1e-6 else f":tol={self.tol:g}"
        extra += "" if self.tol_end is None else f":tol_end={self.tol_end:g}:tol_solves={self.tol_solves}"
        extra += ":warm_start=1" if self.warm_start else ""
        return self.name + extra + ("" if self.max_iter is None else f":max_iter={self.max_iter}")


def _tolerance_schedule(tol_end: float | None, tol_solves: int | None) -> float | None:
    """``tol_end`` checked: positive, over a positive number of solves (or neither option given)."""
    if tol_end is None and tol_solves is None:
        return None
    if tol_end is None or tol_solves is None:
        raise JfbError(
            "IFT tolerance schedule: give both tol_end and tol_solves (e.g. ift:tol=1e-2:tol_end=1e-6:tol_solves=600)"
        )
    require_number("IFT tol_end", tol_end, 0)
    require_integer("IFT tol_solves", tol_solves, 1)
    return float(tol_end)


def _same_kind(previous: Tensor | None, b: Tensor) -> bool:
    """Whether a previous solution can start the solve for ``b`` (same shape, dtype and device)."""
    return previous is not None and (previous.shape, previous.dtype, previous.device) == (b.shape, b.dtype, b.device)


def _no_gradient(grad: Tensor, value: Tensor) -> tuple[None]:
    raise JfbError("third derivatives through backward 'ift' under torch.func are not supported")


def _same(tangent: Tensor) -> Tensor:
    return tangent


def _partials(T: FixedPointMap, u: Tensor, w: Tensor, inputs: list[Tensor]) -> list[Tensor | None]:
    """``(dT/dp)(u)^T w`` for each input ``p``, differentiable in ``u``, the inputs and ``w``.

    Taken at a detached copy of ``u``: through ``u`` itself autograd would reach the inputs again via this
    very node. The dependence on ``u`` is put back as the zero-valued directional derivative along
    ``u - u.detach()`` (by the double-backward trick), which carries exactly the missing first derivative.
    """
    leaf = u.detach().requires_grad_()
    with torch.enable_grad(), T.frozen():
        grads = torch.autograd.grad(T(leaf), inputs, w, create_graph=True, allow_unused=True)
        present = [g for g in grads if g is not None and g.requires_grad]
        probes = [torch.zeros_like(g, requires_grad=True) for g in present]
        (back,) = torch.autograd.grad(present, leaf, probes, create_graph=True, allow_unused=True)
        if back is None:  # T is affine in u: nothing to put back
            return list(grads)
        along = torch.autograd.grad(back, probes, u - u.detach(), create_graph=True, allow_unused=True)
    carried = iter(along)
    return [g if g is None or not g.requires_grad else g + _zero_if_none(next(carried), g) for g in grads]


def _zero_if_none(t: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if t is None else t
